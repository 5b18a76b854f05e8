"""Nothing lost when a stage is killed: SIGKILL at seeded random moments, then resume.

Each stage runs in a forked process killed after a seeded random delay (which lands in
scoring, in shard appends, in the final merge or in a checkpoint write), is resumed to the
end, and its output is compared byte for byte with an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import soundfile as sf
import torch
from kill_stages import SR, FakeCaptioner, FakeClap, FakeMos, make_manifest, run_killed

from captioning.refine import RefineSettings, refine_manifest
from mos_predictor.label import label_manifest
from qamdt.checkpoint_folders import CheckpointFolders, check_folder
from qamdt.cli.main import main
from qamdt.errors import QamdtError
from qamdt.manifest import read_manifest
from qamdt.manifest.stage_state import (
    ManifestLock,
    StageBusyError,
    lock_path,
    shard_path,
    shard_state_path,
)

SETTINGS = RefineSettings(rho1="p20", rho2="p20", rho3=0.9)


def label(manifest, bias=0.0, delay=0.0, **kw):
    return label_manifest(manifest, FakeMos(bias, delay), batch_size=2, progress=False, **kw)


def refine(manifest, delay=0.0, **kw):
    return refine_manifest(
        manifest,
        FakeClap(delay),
        FakeCaptioner(),
        settings=SETTINGS,
        batch_size=2,
        progress=False,
        **kw,
    )


@pytest.fixture
def manifest(tmp_path):
    return make_manifest(tmp_path / "data")


def content(path):
    """The manifest's bytes, its folder (named in error messages) left out."""
    return path.read_bytes().replace(str(path.parent).encode(), b"DIR")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """label then refine, uninterrupted."""
    path = make_manifest(tmp_path_factory.mktemp("reference"))
    label(path)
    refine(path)
    return content(path)


def leftovers(folder):
    return sorted(
        p.name for p in folder.iterdir() if "shard" in p.name or p.name.endswith((".tmp", ".lock"))
    )


def test_a_killed_label_does_not_undo_a_later_refine(manifest, reference):
    assert not run_killed(label, manifest, delay=0.05, after=0.6)
    shard = shard_path(manifest, "pmos", 0)
    assert shard.is_file() and lock_path(manifest).is_file()
    refine(manifest)  # takes over the dead run's lock
    label(manifest)
    assert content(manifest) == reference
    assert leftovers(manifest.parent) == []


def test_a_killed_refine_does_not_undo_a_later_label(manifest, reference):
    assert not run_killed(refine, manifest, delay=0.05, after=0.6)
    label(manifest)
    refine(manifest)
    assert content(manifest) == reference


def test_a_shard_of_another_model_is_discarded_unless_asked(manifest, capfd):
    assert not run_killed(label, manifest, bias=1.0, delay=0.05, after=0.6)
    kept = {r.id: r.pmos for r in read_manifest(shard_path(manifest, "pmos", 0))}
    assert kept and json.loads(shard_state_path(shard_path(manifest, "pmos", 0)).read_text())
    label(manifest)
    assert "a different model" in capfd.readouterr().err
    fresh = FakeMos()
    for row in read_manifest(manifest)[1:]:
        assert row.pmos == pytest.approx(
            fresh.predict([_wave(manifest, row)], [SR])[0]["omq"], abs=1e-4
        )

    again = make_manifest(manifest.parent.parent / "again")
    assert not run_killed(label, again, bias=1.0, delay=0.05, after=0.6)
    kept = {r.id: r.pmos for r in read_manifest(shard_path(again, "pmos", 0))}
    label(again, resume_anyway=True)
    rows = {r.id: r.pmos for r in read_manifest(again)}
    old = {r: v for r, v in kept.items() if v is not None}
    assert old and all(rows[r] == v for r, v in old.items())


def _wave(manifest, row):
    wave, _ = sf.read(manifest.parent / row.audio, dtype="float32")
    return wave


def test_overwrite_is_a_setting_of_the_shard(manifest, capfd):
    label(manifest, bias=1.0)
    assert not run_killed(label, manifest, bias=2.0, delay=0.05, after=0.6, overwrite=True)
    label(manifest, bias=2.0)  # without --overwrite: the overwrite run's shard is not reused
    assert "a different settings" in capfd.readouterr().err


def test_a_second_run_is_refused_naming_the_first(manifest):
    lock = ManifestLock(lock_path(manifest), print)
    lock.acquire()
    try:
        with pytest.raises(StageBusyError, match=f"process {os.getpid()}"):
            label(manifest)
    finally:
        lock.release()
    label(manifest)


def test_links_relative_and_absolute_paths_and_temporaries(tmp_path):
    real = make_manifest(tmp_path / "real")
    rows = real.read_text().splitlines()
    first = json.loads(rows[1])
    first["audio"] = str(real.parent / first["audio"])  # absolute: must stay absolute
    rows[1] = json.dumps(first)
    real.write_text("\n".join(rows) + "\n")
    (tmp_path / "elsewhere").mkdir()
    link = tmp_path / "elsewhere" / "manifest.jsonl"
    link.symlink_to(real)
    junk = real.with_name(f".{real.name}.0123abcd.tmp")
    junk.write_bytes(b"x" * 100)
    summary = label(link)
    assert link.is_symlink() and not junk.exists()
    assert summary["scored"] == 23 and summary["failed"] == 1
    out = read_manifest(real)
    assert all(r.pmos is not None for r in out[1:])
    assert json.loads(real.read_text().splitlines()[1])["audio"] == first["audio"]
    assert "shorter than the 0.5 s minimum" in out[0].errors["mos"]


def test_arguments_are_checked_before_work(manifest, capsys):
    for bad in (["--batch-size", "0"], ["--min-seconds", "nan"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["mos", "label", str(manifest), "--model", "x", *bad])
        assert exit_info.value.code == 2
        assert bad[0] in capsys.readouterr().err
    assert main(["manifest", "validate", str(manifest.parent / "missing.jsonl")]) != 0
    assert main(["manifest", "validate", str(manifest.parent)]) != 0


def test_every_row_failing_exits_non_zero(tmp_path, monkeypatch):
    path = make_manifest(tmp_path, rows=3, short=3)
    import mos_predictor.models as models

    monkeypatch.setattr(models, "load_mos_model", lambda _: FakeMos())
    assert main(["mos", "label", str(path), "--model", "fake", "--quiet"]) == 1


@pytest.mark.parametrize("stage", ["label", "refine"])
def test_random_kills_lose_nothing(stage, tmp_path, reference):
    rng = random.Random(23)
    path = make_manifest(tmp_path)
    if stage == "refine":
        label(path)
    run = label if stage == "label" else refine
    for _ in range(4):
        if run_killed(run, path, delay=0.02, after=rng.uniform(0.0, 1.2)):
            break
    run(path)
    if stage == "label":
        refine(path)
    assert content(path) == reference
    assert leftovers(path.parent) == []


# --- checkpoints and training ----------------------------------------------------------


def _save(folders, step):
    def write(path):
        path.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.full((100,), float(step))}, path / "state.pt")

    folders.save(write, {"step": step})


def test_checkpoints_survive_kills_and_damage(tmp_path, capfd):
    folders = CheckpointFolders(tmp_path)
    assert folders.recover() is None
    _save(folders, 1)
    _save(folders, 2)
    assert folders.recover() == {"step": 2}
    # A kill while the next one is written: it is discarded.
    (tmp_path / "checkpoint.next").mkdir()
    (tmp_path / "checkpoint.next" / "state.pt").write_bytes(b"half")
    assert folders.recover() == {"step": 2} and not (tmp_path / "checkpoint.next").exists()
    # A kill between the two renames: the finished one is put in place.
    _save(folders, 3)
    os.replace(tmp_path / "checkpoint", tmp_path / "checkpoint.next")
    assert folders.recover() == {"step": 3}
    # A damaged file: the previous checkpoint is used, with a message.
    state = tmp_path / "checkpoint" / "state.pt"
    state.write_bytes(state.read_bytes()[:50])
    assert folders.recover() == {"step": 2}
    assert "broken" in capfd.readouterr().err
    assert check_folder(tmp_path / "checkpoint") is None
    state = tmp_path / "checkpoint" / "state.pt"
    state.write_bytes(state.read_bytes()[:50])
    assert not (tmp_path / "checkpoint.prev").exists()  # it became the current one
    with pytest.raises(QamdtError, match="no usable previous checkpoint"):
        folders.recover()


@pytest.fixture(scope="module")
def mdt_data(tmp_path_factory):
    from qamdt.models.vae import LatentVAE

    root = tmp_path_factory.mktemp("mdt")
    (root / "audio").mkdir()
    rows = []
    for i in range(10):
        t = np.arange(int(22050 * 0.6)) / 22050
        wave = 0.3 * np.sin(2 * np.pi * 220 * 2 ** (i / 12) * t)
        sf.write(root / "audio" / f"c{i}.wav", wave.astype(np.float32), 22050)
        rows.append(
            {
                "id": f"c{i}",
                "audio": f"audio/c{i}.wav",
                "split": "train",
                "final_caption": f"tone {i}",
                "quality_level": 1 + i % 5,
                "quality_prefix": "medium quality",
            }
        )
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)
    vae = LatentVAE.from_config(
        {"latent_channels": 4, "block_out_channels": [4, 4, 4], "layers_per_block": 1,
         "norm_num_groups": 2}
    )  # fmt: skip
    vae.set_scaling_factor(0.5)
    vae.save_pretrained(root / "vae")
    return root


def mdt_config(data, **changes):
    from qamdt.training.mdt_config import MdtTrainConfig

    values = {
        "manifest": str(data / "manifest.jsonl"),
        "vae": str(data / "vae"),
        "clip_seconds": 0.4,
        "model": {"patch_size": [4, 4], "hidden_size": 16, "num_heads": 2,
                  "encoder_depth": 2, "decoder_depth": 1},
        "batch_size": 4,
        "max_steps": 7,
        "warmup_steps": 2,
        "learning_rate": 1e-3,
        "checkpoint_every": 1,
        "log_every": 1,
        "vocoder": None,
        "cache": str(data / "cache"),
        "ema_decay": 0.9,
    }  # fmt: skip
    values.update(changes)
    return MdtTrainConfig.from_dict(values)


def _train(data, out, **changes):
    from qamdt.training.mdt_train import train_mdt

    return train_mdt(mdt_config(data, **changes), out, progress=False)


def test_latent_cache_build_resumes_to_the_same_files(mdt_data, tmp_path, one_thread):
    from qamdt.training.latent_cache import build_cache

    def build(cache):
        build_cache(mdt_config(mdt_data, cache=str(cache)), cache, progress=False)

    def files(cache):
        return {p.name: p.read_bytes() for p in sorted(cache.iterdir())}

    build(tmp_path / "straight")
    rng = random.Random(3)
    for _ in range(2):
        run_killed(build, tmp_path / "killed", after=rng.uniform(0.5, 3.0))
    build(tmp_path / "killed")
    assert files(tmp_path / "killed") == files(tmp_path / "straight")


def _weights(out):
    return (out / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()


@pytest.fixture
def one_thread():
    """One torch thread, as in the forked runs (the thread count changes float sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_training_resumes_bit_for_bit_across_epochs_and_kills(mdt_data, tmp_path, one_thread):
    straight = tmp_path / "straight"
    _train(mdt_data, straight)
    # 10 clips, batches of 4: two steps an epoch; step 3 stops inside the second epoch.
    stopped = tmp_path / "stopped"
    _train(mdt_data, stopped, max_steps=3)
    _train(mdt_data, stopped)
    assert _weights(stopped) == _weights(straight)
    assert (stopped / "train_log.jsonl").read_text().count("\n") == 7
    rng = random.Random(7)
    killed = tmp_path / "killed"
    for _ in range(3):
        run_killed(_train, mdt_data, killed, after=rng.uniform(0.3, 2.5))
    _train(mdt_data, killed)
    assert _weights(killed) == _weights(straight)
    assert not any(p.name.endswith((".next", ".new", ".old")) for p in killed.iterdir())


@pytest.fixture(scope="module")
def rated(tmp_path_factory):
    """16 rated tones (quality falls with the noise) for MOS training."""
    from qamdt.manifest import ClipRecord, write_manifest

    root = tmp_path_factory.mktemp("rated")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i in range(16):
        t = np.arange(int(22050 * 1.2)) / 22050
        wave = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.02 * (i % 4) * rng.standard_normal(t.size)
        sf.write(root / "audio" / f"c{i}.wav", wave.astype(np.float32), 22050)
        records.append(
            ClipRecord(
                id=f"c{i}",
                audio=f"audio/c{i}.wav",
                split="train" if i < 12 else "valid",
                original_caption="a tone",
                meta={"reference_quality": 5.0 - i % 4, "degradations": [], "source": "t"},
            )
        )
    write_manifest(root / "manifest.jsonl", records)
    return root / "manifest.jsonl"


def _train_mos(manifest, out):
    from mos_predictor.train import train_mos_model
    from mos_predictor.train_config import MosTrainConfig

    config = MosTrainConfig.from_dict(
        {
            "data": f"corpus:{manifest}",
            "model": {"kind": "embedded", "window_seconds": 1.0},
            "epochs": 4,
            "batch_size": 4,
            "learning_rate": 0.003,
            "warmup_steps": 1,
        }
    )
    return train_mos_model(config, out, progress=False)


def test_mos_training_resumes_bit_for_bit(rated, tmp_path, one_thread):
    _train_mos(rated, tmp_path / "straight")
    rng = random.Random(11)
    for _ in range(2):
        run_killed(_train_mos, rated, tmp_path / "killed", after=rng.uniform(0.5, 4.0))
    _train_mos(rated, tmp_path / "killed")
    name = "checkpoint/model.safetensors"
    for run in ("killed",):
        assert (tmp_path / run / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
        log = (tmp_path / run / "train_log.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in log] == [1, 2, 3, 4]


def test_captioner_training_resumes_bit_for_bit(tmp_path_factory, tmp_path, one_thread):
    from test_embedded_captioner import SMALL, corpus

    from captioning.train_captioner import train_embedded_captioner

    manifest = corpus.__wrapped__(tmp_path_factory)

    def train(out):
        train_embedded_captioner(
            manifest, out, epochs=3, batch_size=4, lr=3e-3, seed=3, model_config=SMALL
        )

    train(tmp_path / "straight")
    rng = random.Random(5)
    for _ in range(2):
        run_killed(train, tmp_path / "killed", after=rng.uniform(0.2, 2.0))
    train(tmp_path / "killed")
    name = "model.safetensors"
    assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()
    log = (tmp_path / "killed" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2, 3]
    assert not (tmp_path / "killed" / "checkpoint").exists()
