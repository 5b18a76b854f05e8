import dataclasses
import functools
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from qamdt.demo.pitch import music_vs_noise, pitch_confidence, shaped_noise
from qamdt.demo.run import STAGE_NAMES, choose_prompts
from qamdt.demo.settings import PROJECT_ROOT, DemoSettings, load_demo_settings
from qamdt.demo.stages import STATE_NAME, Stage, run_stages
from qamdt.demo.summary import compute_checks
from qamdt.errors import ConfigError, QamdtError
from qamdt.manifest import ClipRecord

DEMO_YAML = PROJECT_ROOT / "configs" / "demo.yaml"


# ------------------------------------------------------------------------------ settings


def test_packaged_settings_are_the_demo_yaml():
    assert load_demo_settings(DEMO_YAML) == DemoSettings.full() == load_demo_settings(None)
    assert load_demo_settings(DEMO_YAML, quick=True) == DemoSettings.quick()
    assert DemoSettings.quick().clips < DemoSettings.full().clips


def test_a_users_file_changes_only_its_values(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("clips: 500\nmos_epochs: 9\nquick:\n  clips: 30\n")
    full, quick = DemoSettings.full(), DemoSettings.quick()
    assert load_demo_settings(path) == full.replace(clips=500, mos_epochs=9)
    # --quick: the packaged quick values win over the file's top level, its own quick wins.
    assert load_demo_settings(path, quick=True) == quick.replace(clips=30)
    with pytest.raises(ConfigError, match="missing setting"):
        DemoSettings.from_dict({"clips": 3})


def test_unknown_settings_are_named(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text("clips: 10\nclipz: 3\n")
    with pytest.raises(ConfigError, match="'clipz' \\(did you mean 'clips'\\?\\)"):
        load_demo_settings(path)
    path.write_text("clips: 10\nquick:\n  mos_epoch: 1\n")
    with pytest.raises(ConfigError, match="mos_epoch"):
        load_demo_settings(path)
    with pytest.raises(ConfigError, match="clips"):
        DemoSettings.full().replace(clips=0)
    with pytest.raises(ConfigError, match="vae_max_minutes"):
        DemoSettings.full().replace(vae_max_minutes=0)
    with pytest.raises(ConfigError, match="stage_processes"):
        DemoSettings.full().replace(stage_processes=0)
    with pytest.raises(
        ConfigError, match=r"demo settings: torch_dtype: unknown model\(s\) \['voc'\]"
    ):
        DemoSettings.full().replace(torch_dtype="voc=bfloat16")
    # Trainers stop on their counts: no time cap unless one is asked for.
    assert all(
        getattr(DemoSettings.quick(), f"{name}_max_minutes") is None
        for name in ("mos", "captioner", "clap", "vae")
    )
    path.write_text("guidance_interval: [800, 0]\n")
    with pytest.raises(ConfigError, match="guidance_interval"):
        load_demo_settings(path)
    path.write_text("guidance_interval: null\n")
    assert load_demo_settings(path).guidance_interval is None


def test_seed_override_keeps_other_settings():
    settings = DemoSettings.quick().replace(seed=7, clips=None)
    assert settings.seed == 7 and settings.clips == DemoSettings.quick().clips


# -------------------------------------------------------------------------- stage runner


class Recorder:
    """Fake stages a -> b -> c and a -> d that count their runs."""

    def __init__(self, fail: set[str] | None = None):
        self.runs: list[str] = []
        self.fail = fail or set()

    def stage(self, name: str, needs=(), outputs=()):
        def run(ctx):
            self.runs.append(name)
            if name in self.fail:
                raise RuntimeError(f"{name} broke")
            if name == "b":
                time.sleep(0.05)
                (ctx.out / "b-output").write_text("x")
            return {"name": name, "seen": sorted(k for k, v in ctx.results.items() if v)}

        return Stage(name, run, tuple(needs), tuple(outputs))

    def stages(self):
        return (
            self.stage("a"),
            self.stage("b", ["a"], ["b-output"]),
            self.stage("c", ["b"]),
            self.stage("d", ["a"]),
        )


def state_of(out: Path) -> dict:
    return json.loads((out / STATE_NAME).read_text())["stages"]


def test_runner_records_and_skips_done_stages(tmp_path):
    recorder = Recorder()
    settings = DemoSettings.quick()
    run_stages(recorder.stages(), tmp_path, settings, log=lambda _: None)
    assert recorder.runs == ["a", "b", "c", "d"]
    stages = state_of(tmp_path)
    assert all(stages[n]["done"] for n in "abcd")
    assert stages["b"]["seconds"] >= 0.05
    assert stages["c"]["result"] == {"name": "c", "seen": ["a", "b"]}

    run_stages(recorder.stages(), tmp_path, settings, log=lambda _: None)
    assert recorder.runs == ["a", "b", "c", "d"]


def test_redo_reruns_the_stage_and_what_depends_on_it(tmp_path):
    recorder = Recorder()
    settings = DemoSettings.quick()
    run_stages(recorder.stages(), tmp_path, settings, log=lambda _: None)
    (tmp_path / "b-output").write_text("old")
    recorder.runs.clear()

    run_stages(recorder.stages(), tmp_path, settings, redo=["b"], log=lambda _: None)
    assert recorder.runs == ["b", "c"]
    assert (tmp_path / "b-output").read_text() == "x"

    recorder.runs.clear()
    run_stages(recorder.stages(), tmp_path, settings, only=["b"], redo=["b"], log=print)
    assert recorder.runs == ["b"]
    assert not state_of(tmp_path)["c"]["done"] and state_of(tmp_path)["c"]["stale"]
    run_stages(recorder.stages(), tmp_path, settings, log=lambda _: None)
    assert recorder.runs == ["b", "c"]


def test_single_stage_runs_alone_and_needs_its_inputs(tmp_path):
    recorder = Recorder()
    settings = DemoSettings.quick()
    with pytest.raises(QamdtError, match="needs"):
        run_stages(recorder.stages(), tmp_path, settings, only=["c"], log=lambda _: None)
    run_stages(recorder.stages(), tmp_path, settings, only=["a", "d"], log=lambda _: None)
    assert recorder.runs == ["a", "d"]
    assert "b" not in state_of(tmp_path)
    with pytest.raises(ConfigError, match="nope"):
        run_stages(recorder.stages(), tmp_path, settings, only=["nope"], log=lambda _: None)


def test_failed_stage_is_recorded_and_resumed(tmp_path):
    settings = DemoSettings.quick()
    broken = Recorder(fail={"c"})
    with pytest.raises(RuntimeError):
        run_stages(broken.stages(), tmp_path, settings, log=lambda _: None)
    entry = state_of(tmp_path)["c"]
    assert not entry["done"] and "c broke" in entry["result"]["error"]
    fixed = Recorder()
    run_stages(fixed.stages(), tmp_path, settings, log=lambda _: None)
    assert fixed.runs == ["c", "d"]


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    recorder = Recorder()
    run_stages(recorder.stages(), tmp_path, DemoSettings.quick(), log=lambda _: None)
    other = DemoSettings.quick().replace(clips=41)
    with pytest.raises(QamdtError, match=r"differs in clips\)"):
        run_stages(recorder.stages(), tmp_path, other, log=lambda _: None)
    run_stages(recorder.stages(), tmp_path, other, redo=["d"], log=lambda _: None)
    assert recorder.runs[-1] == "d"


# --------------------------------------------------------------------------- pitch check


def harmonic_tone(seconds=2.0, rate=22050, f0=220.0):
    t = np.arange(int(seconds * rate)) / rate
    return sum(0.5**k * np.sin(2 * np.pi * f0 * (k + 1) * t) for k in range(6)), rate


def test_harmonic_tone_is_far_more_periodic_than_its_shaped_noise():
    tone, rate = harmonic_tone()
    noise = shaped_noise(tone, rate, seed=1)
    assert noise.shape == tone.shape
    assert np.sqrt(np.mean(noise**2)) == pytest.approx(np.sqrt(np.mean(tone**2)), rel=1e-3)
    assert pitch_confidence(tone, rate) > 0.95
    assert pitch_confidence(noise, rate) < 0.5
    figures = music_vs_noise([tone, 0.5 * tone], rate)
    assert figures["clips"] == 2 and figures["music"] > figures["shaped_noise"] + 0.4


def test_silence_has_no_pitch_confidence():
    assert pitch_confidence(np.zeros(22050), 22050) == 0.0


# ------------------------------------------------------------------------ prompts, checks


def record(clip_id, split, degradations, caption):
    meta = {"degradations": degradations, "true_caption": caption}
    return ClipRecord(id=clip_id, audio=f"{clip_id}.wav", split=split, meta=meta)


def test_prompts_prefer_clean_test_clips_and_fall_back():
    rows = [
        record("t1", "train", [], "train piece"),
        record("d1", "test", [{"type": "noise"}], "noisy test piece"),
        record("c1", "test", [], "clean test piece"),
        record("c2", "test", [], "clean test piece"),
    ]
    assert [p["reference_id"] for p in choose_prompts(rows, 1)] == ["c1"]
    chosen = choose_prompts(rows, 3)
    assert [p["reference_id"] for p in chosen] == ["c1", "d1", "t1"]
    assert [p["clean_test"] for p in chosen] == [True, False, False]
    chosen = choose_prompts(rows + [record("v1", "valid", [], "clean valid piece")], 2, "valid")
    assert [p["reference_id"] for p in chosen] == ["v1", "t1"]  # then in manifest order
    assert [p["clean_test"] for p in chosen] == [True, False]


def test_recorded_settings_of_another_version_are_read_with_the_full_values():
    given = dataclasses.asdict(DemoSettings.full())
    del given["prompts"]
    given.update(clips=123, retired_setting=1)
    said = []
    settings = DemoSettings.from_recorded(given, log=said.append)
    assert settings.clips == 123
    assert settings.prompts == DemoSettings.full().prompts
    assert said == [
        "settings of the run not known here: retired_setting",
        "settings of the run missing: prompts",
    ]


def test_decoder_reference_takes_held_out_clips_of_each_level_first():
    from qamdt.demo.decoder_reference import _clips_of_level

    rows = [
        ClipRecord(id=i, audio=f"{i}.wav", split=split, quality_level=level)
        for i, split, level in [
            ("b", "test", 5),
            ("a", "test", 5),
            ("v", "valid", 1),
            ("t", "train", 1),
            ("x", "train", 3),
        ]
    ]
    split, chosen = _clips_of_level(rows, 5)
    assert split == "test" and [r.id for r in chosen] == ["a", "b"]
    assert _clips_of_level(rows, 1)[0] == "valid"
    assert _clips_of_level(rows, 3)[0] == "train"
    assert _clips_of_level(rows, 2) == (None, [])


def test_checks_pass_and_fail_on_the_figures():
    low = {"level": 1, "pmos_mean": 2.0, "frechet": 10.0}
    high = {"level": 5, "pmos_mean": 3.5, "frechet": 6.0, "frechet_se": 0.3}
    baselines = {
        # 0.5 further than mdt: within 2 x hypot(0.3, 0.4) = 1.0
        "mdt": {"pmos_mean": 3.0, "frechet": 5.5, "frechet_se": 0.4},
        # 1.0 further than tight: beyond 2 x hypot(0.3, 0.1) = 0.63
        "tight": {"pmos_mean": 3.0, "frechet": 5.0, "frechet_se": 0.1},
        "neg": {"pmos_mean": 3.6, "frechet": 7.0},  # no standard error: fails
    }
    checks = compute_checks(
        low, high, {"matched": 0.3, "shuffled": 0.1}, baselines, {"level5": 0.7}, 1.0, 2.0
    )
    passed = {c["check"]: c["passed"] for c in checks}
    values = {c["check"]: c["values"] for c in checks}
    assert passed["quality control (p-MOS)"] and passed["quality control (Frechet)"]
    assert passed["text control (CLAP)"] and passed["beats mdt (p-MOS)"]
    assert passed["as close to clean audio as mdt (Frechet)"]
    assert values["as close to clean audio as mdt (Frechet)"] == "6 vs 5.5 (allowance 1)"
    assert not passed["as close to clean audio as tight (Frechet)"]
    assert not passed["beats neg (p-MOS)"]
    assert not passed["as close to clean audio as neg (Frechet)"]
    assert values["as close to clean audio as neg (Frechet)"] == "missing"
    assert not passed["music, not noise (pitch confidence)"]  # noise figure missing
    assert len(checks) == 10


# ---------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capfd):
    from captioning.base import load_captioner, load_clap
    from mos_predictor.models import load_mos_model
    from qamdt.cli.main import main
    from qamdt.demo.decoder_reference import resynthesise
    from qamdt.generation.pipeline import QAMDTPipeline
    from qamdt.mel import MelFrontEnd

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    printed = capfd.readouterr().out
    assert f"demo: report: {out / 'report' / 'report.html'}" in printed
    # By default independent stages run side by side, each in its own process.
    for name in ("vae", "mos", "judge", "mdt", "mdt-baseline"):
        assert f"demo: {name}: in process" in printed, name
    for name in ("generate", "edit", "evaluate"):  # alone, on every thread
        assert f"demo: {name}: running" in printed, name
        assert f"demo: {name}: in process" not in printed, name

    report = json.loads((out / "report" / "report.json").read_text())
    for key in ("stage_seconds", "quality_sweep", "clap", "baselines", "pitch", "checks"):
        assert key in report, key
    assert [row["level"] for row in report["quality_sweep"]] == [1, 2, 3, 4, 5]
    assert {"pmos_mean", "frechet"} <= set(report["quality_sweep"][0])
    assert {"matched", "shuffled"} <= set(report["clap"])
    assert {"qa-mdt (level 5)", "mdt", "mdt + negative prompt 'low quality'"} == set(
        report["baselines"]
    )
    assert {"level5", "shaped_noise"} <= set(report["pitch"])
    reference = report["decoder_reference"]
    assert [row["level"] for row in reference] == [1, 5]
    for row in reference:
        assert row["clips"] >= 1 and row["split"] in ("test", "valid", "train")
        assert np.isfinite([row["pmos_recorded"], row["pmos_resynthesised"]]).all()
    assert set(report["stage_seconds"]) >= {"corpus", "mdt", "evaluate", "wall clock"}
    assert report["stage_seconds"]["wall clock"] < report["stage_seconds"]["sum of stages"]
    stages = json.loads((out / STATE_NAME).read_text())["stages"]
    assert all(entry["done"] for entry in stages.values()) and len(stages) == len(STAGE_NAMES)
    targets = {row["measure"].split(" (")[0] for row in report["long_form_and_editing"]}
    assert len(targets) == 4 and len(report["audio_to_audio_enhancement"]) >= 1
    assert {"long-form 12 s piece", "continuation to 4.0 s"} <= {
        e["name"] for e in report["examples"]
    }
    # Both MDTs train the settings' steps, with no time cap.
    steps = [stages[name]["result"]["train"]["steps"] for name in ("mdt", "mdt-baseline")]
    assert steps[0] == steps[1] == DemoSettings.quick().mdt_max_steps
    baseline_config = json.loads((out / "work" / "mdt-baseline" / "train_config.json").read_text())
    assert baseline_config["max_minutes"] is None
    vae_config = json.loads((out / "work" / "vae" / "train_config.json").read_text())
    assert vae_config["max_minutes"] is None
    assert stages["vae"]["result"]["steps"] == DemoSettings.quick().vae_steps

    models = out / "models"
    assert load_mos_model(models / "mos") is not None
    # The corpus is labelled by the real-music model; generated audio is judged by a model
    # of the corpus alone.
    for name, real in (("mos", True), ("judge", False)):
        config = json.loads((out / "work" / name / "train_config.json").read_text())
        assert bool(config["real_sources"]) == real, name
        assert load_mos_model(models / name) is not None
    assert stages["evaluate"]["result"]["judge"] == str(models / "judge")
    assert load_clap(models / "clap") is not None
    assert load_captioner(models / "captioner") is not None
    assert QAMDTPipeline.from_pretrained(models / "pipeline").quality_token
    assert not QAMDTPipeline.from_pretrained(models / "pipeline-mdt").quality_token

    # The decoder round trip keeps the length, cut to whole latent frames.
    pipeline = QAMDTPipeline.from_pretrained(models / "pipeline")
    rate, hop = pipeline.spec.sample_rate, pipeline.spec.hop_length
    wave = 0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)
    frames = MelFrontEnd(pipeline.spec).frames_for(wave.size)
    frames -= frames % pipeline.vae.downsample_factor
    resynthesised = resynthesise(pipeline, wave)
    assert resynthesised.shape == (frames * hop,) and np.isfinite(resynthesised).all()

    sidecars = sorted((out / "generated" / "qa-mdt").glob("level5_*.json"))
    assert len(sidecars) == DemoSettings.quick().prompts
    sidecar = json.loads(sidecars[0].read_text())
    assert sidecar["quality_level"] == 5 and not sidecar["prompt"].startswith("high quality")

    started = time.monotonic()
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    assert time.monotonic() - started < 10
    assert "skipped" in capfd.readouterr().out
    # Without settings options a folder keeps its own (here the quick ones).
    assert main(["demo", "--out", str(out), "--stage", "report"]) == 0
    assert "report.html" in capfd.readouterr().out


@pytest.mark.slow
def test_quick_demo_one_stage_after_the_other(tmp_path, capfd):
    from qamdt.cli.main import main

    config = tmp_path / "one-after-the-other.yaml"
    config.write_text("quick:\n  stage_processes: 1\n  judge_config: null\n")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--config", str(config)]) == 0
    printed = capfd.readouterr().out
    assert "in process" not in printed
    saved = json.loads((out / STATE_NAME).read_text())
    assert saved["settings"]["stage_processes"] == 1
    # Without a judge of its own the labelling model judges.
    assert saved["stages"]["judge"]["result"]["model"] == str(out / "models" / "mos")
    assert saved["stages"]["evaluate"]["result"]["judge"] == str(out / "models" / "mos")
    assert not (out / "models" / "judge").exists()
    assert all(entry["done"] for entry in saved["stages"].values())
    assert len(saved["stages"]) == len(STAGE_NAMES)
    assert saved["wall_seconds"] >= sum(e["seconds"] for e in saved["stages"].values())


# ---------------------------------------------------------------------- sidecars


class FakePipeline:
    """Returns a quiet tone per prompt and candidate, recording each call."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, settings, **options):
        from qamdt.generation.pipeline import PipelineOutput

        self.calls.append((list(prompts), options))
        repeat = settings.num_waveforms_per_prompt
        owners = [p for p in prompts for _ in range(repeat)]
        audios = np.full((len(owners), 2205), 0.1, dtype=np.float32)
        texts = [f"high quality, {p}" for p in owners]
        return PipelineOutput(audios, 22050, None, None, owners, texts)


def test_generated_files_carry_the_sidecar_format(tmp_path):
    from qamdt.evaluation.inputs import read_generated
    from qamdt.generation.settings import GenerationSettings
    from qamdt.generation.writer import generate_to_folder

    pipeline = FakePipeline()
    settings = GenerationSettings(quality_level=5, num_inference_steps=2, seed=3)
    files = generate_to_folder(
        pipeline,
        ["a fugue", "a reel", "a motet"],
        settings,
        tmp_path / "out",
        model=str(tmp_path),
        batch_size=2,
        name_prefix="level5_",
        extra=[{"reference_id": f"clip{i}"} for i in range(3)],
    )
    assert [f.name for f in files] == [
        "level5_0000_a-fugue.wav",
        "level5_0001_a-reel.wav",
        "level5_0002_a-motet.wav",
    ]
    assert [options["generator"].initial_seed() for _, options in pipeline.calls] == [3, 5]
    sidecar = json.loads(files[2].with_suffix(".json").read_text())
    assert sidecar["prompt"] == "a motet" and sidecar["text"] == "high quality, a motet"
    assert sidecar["quality_level"] == 5 and sidecar["seed"] == 5
    assert sidecar["reference_id"] == "clip2"
    clips, failures = read_generated(tmp_path / "out")
    assert not failures and [c.key for c in clips] == ["clip0", "clip1", "clip2"]


# --------------------------------------------------------------- stages side by side


def _side_by_side(name: str, partner: str | None, fail: bool, ctx) -> dict:
    """A concurrent stage: waits for its partner to start (proof that both run at once)."""
    import torch

    (ctx.out / f"{name}.started").write_text("x")
    if partner is not None:
        deadline = time.monotonic() + 60
        while not (ctx.out / f"{partner}.started").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{partner} never started beside {name}")
            time.sleep(0.01)
    if fail:
        raise ValueError(f"{name} broke")
    return {"pid": os.getpid(), "threads": torch.get_num_threads(), "seen": sorted(ctx.results)}


def _concurrent_stages(fail: str = "", x_partner: str | None = "y", y_needs=("a",)):
    return (
        Stage("a", functools.partial(_side_by_side, "a", None, False), concurrent=True),
        Stage(
            "x",
            functools.partial(_side_by_side, "x", x_partner, fail == "x"),
            ("a",),
            concurrent=True,
        ),
        Stage(
            "y",
            functools.partial(_side_by_side, "y", None, fail == "y"),
            tuple(y_needs),
            concurrent=True,
        ),
        Stage("z", functools.partial(_side_by_side, "z", None, False), ("x", "y")),
    )


def test_concurrent_stages_run_side_by_side_in_their_own_processes(tmp_path):
    import torch

    state = run_stages(_concurrent_stages(), tmp_path, DemoSettings.quick(), processes=2)
    results = {name: state.record(name)["result"] for name in "axyz"}
    assert all(state.done(name) for name in "axyz")
    # a runs alone in this process (nothing to pair it with: x and y need it).
    assert results["a"]["pid"] == os.getpid() == results["z"]["pid"]
    assert results["a"]["threads"] == torch.get_num_threads()
    assert len({results["x"]["pid"], results["y"]["pid"], os.getpid()}) == 3
    assert (
        results["x"]["threads"] == results["y"]["threads"] == max(1, torch.get_num_threads() // 2)
    )
    assert results["z"]["seen"] == ["a", "x", "y"]
    saved = json.loads((tmp_path / STATE_NAME).read_text())
    assert 0 < saved["wall_seconds"] <= sum(e["seconds"] for e in saved["stages"].values()) + 1


def test_one_process_runs_concurrent_stages_in_order_here(tmp_path):
    stages = _concurrent_stages(x_partner=None)
    state = run_stages(stages, tmp_path, DemoSettings.quick(), processes=1)
    assert {state.record(n)["result"]["pid"] for n in "axyz"} == {os.getpid()}


def test_a_stage_needing_its_neighbour_waits_for_it(tmp_path):
    stages = _concurrent_stages(x_partner=None, y_needs=("x",))
    state = run_stages(stages, tmp_path, DemoSettings.quick(), processes=2)
    assert "x" in state.record("y")["result"]["seen"]


def test_a_failed_concurrent_stage_lets_its_neighbour_finish_and_resumes(tmp_path):
    settings = DemoSettings.quick()
    with pytest.raises(QamdtError, match="stage 'y' failed: ValueError: y broke"):
        run_stages(_concurrent_stages(fail="y"), tmp_path, settings, processes=2)
    stages = state_of(tmp_path)
    assert stages["x"]["done"] and not stages["y"]["done"]
    assert "y broke" in stages["y"]["result"]["error"]
    assert "z" not in stages
    state = run_stages(_concurrent_stages(x_partner=None), tmp_path, settings, processes=2)
    assert state.done("y") and state.done("z")
    assert state.record("x")["result"] == stages["x"]["result"]  # not run again


def _wait_forever(name: str, ctx) -> dict:
    (ctx.out / f"{name}.pid").write_text(str(os.getpid()))
    time.sleep(120)
    return {}


def test_stages_in_processes_die_with_the_demo(tmp_path):
    import signal
    import subprocess
    import sys

    script = (
        "import functools, sys; sys.path.insert(0, sys.argv[1]);"
        "from test_demo import _wait_forever;"
        "from qamdt.demo.settings import DemoSettings;"
        "from qamdt.demo.stages import Stage, run_stages;"
        "stages = [Stage(n, functools.partial(_wait_forever, n), concurrent=True) for n in 'pq'];"
        "run_stages(stages, sys.argv[2], DemoSettings.quick(), processes=2)"
    )
    here = str(Path(__file__).parent)
    demo = subprocess.Popen([sys.executable, "-c", script, here, str(tmp_path)])
    files = [tmp_path / "p.pid", tmp_path / "q.pid"]
    deadline = time.monotonic() + 120
    while not all(f.exists() and f.read_text() for f in files):
        assert time.monotonic() < deadline and demo.poll() is None
        time.sleep(0.05)
    pids = [int(f.read_text()) for f in files]
    demo.send_signal(signal.SIGKILL)
    demo.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid) for pid in pids):
        assert time.monotonic() < deadline, "a stage's process outlived the demo"
        time.sleep(0.05)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return "Z"
