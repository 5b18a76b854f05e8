"""``qamdt app``: the page's logic, its API through gradio_client, and a real headless Chromium.

One server per test module (per xdist worker) runs the real command on tiny models
saved to folders, on a free port of 127.0.0.1.
"""

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
from test_pipeline import tiny_pipeline
from tiny_clap import TINY_CLAP

from captioning.embedded_clap import EmbeddedClapScorer
from mos_predictor.models import build_mos_model
from mos_predictor.stats import QualityStats
from qamdt.app.dataset import DatasetView
from qamdt.app.generate import (
    InputError,
    build_settings,
    edit_settings,
    parse_ranges,
    sweep_levels,
)
from qamdt.manifest import ClipRecord, write_manifest

SR = 22050
TINY_MOS = {"kind": "embedded", "window_seconds": 0.5, "cnn_channels": [4, 8], "embed_dim": 8}
TINY_MOS["cnn_strides"] = [[4, 2], [4, 2]]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

# The Generate tab's controls, in the order of the API's inputs.
CONTROLS = {
    "prompt": "a calm piano piece",
    "quality": 4.0,
    "guidance": "quality",
    "negative_level": "default",
    "negative_prompt": "",
    "guidance_scale": 3.5,
    "guidance_rescale": 0.0,
    "use_interval": False,
    "interval_low": 0,
    "interval_high": 1000,
    "sampler": "ddim",
    "steps": 3,
    "eta": 0.0,
    "length": 1.0,
    "random_seed": False,
    "seed": 11,
    "candidates": 1,
}


def tone(freq, seconds=1.0, noise=0.01, seed=0):
    t = np.arange(int(seconds * SR)) / SR
    hiss = np.random.default_rng(seed).normal(0, noise, t.shape)
    return (0.4 * np.sin(2 * np.pi * freq * t) + hiss).astype(np.float32)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    stats = QualityStats.from_mu_sigma(3.0, 0.5)
    tiny_pipeline(quality_stats=stats.to_dict()).save_pretrained(root / "pipe")
    build_mos_model(TINY_MOS).eval().save_pretrained(root / "mos")
    EmbeddedClapScorer(TINY_CLAP).save_pretrained(root / "clap")
    data = root / "data"
    records = []
    for i, (level, split, source) in enumerate(
        [(1, "train", "original"), (5, "train", "merged"), (5, "test", "generated")]
    ):
        (data / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(data / "audio" / f"c{i}.wav", tone(220 * (i + 1), seed=i), SR)
        records.append(
            ClipRecord(
                id=f"c{i}",
                audio=f"audio/c{i}.wav",
                duration=1.0,
                sample_rate=SR,
                split=split,
                original_caption=f"tune {i}",
                final_caption=f"a tune {i}",
                caption_source=source,
                clap={"original_audio": 0.1 * i, "generated_audio": 0.2},
                pmos=2.0 + i,
                quality_level=level,
                quality_prefix="low quality" if level < 3 else "high quality",
            )
        )
    write_manifest(data / "manifest.jsonl", records)
    stats.save(data / "quality_stats.json")
    sf.write(root / "upload.wav", tone(330, seconds=1.5), 16000)
    return root


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(folders, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "app.log"
    command = [sys.executable, "-m", "qamdt.cli.main", "app", "--model", str(folders / "pipe")]
    command += ["--mos", str(folders / "mos"), "--clap", str(folders / "clap")]
    command += ["--manifest", str(folders / "data" / "manifest.jsonl")]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    # One thread: the tiny models gain nothing from more, and the suite runs beside it.
    env = {**os.environ, "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio"))}
    env["OMP_NUM_THREADS"] = "1"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"qamdt app exited with {process.returncode}:\n{log.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as page:
                    if page.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"qamdt app did not answer within 120 s:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def generate(client, api="/generate", **changes):
    values = {**CONTROLS, **changes}
    return client.predict(*values.values(), api_name=api)


# ------------------------------------------------------------------------------ logic


def controls(**changes):
    values = {k: v for k, v in CONTROLS.items() if k != "prompt"}
    values["quality"] = values.pop("quality")
    values.update(changes)
    return values


def test_controls_build_the_settings_over_the_pipeline_defaults():
    defaults = {"guidance": "released", "eta": 1.0, "num_inference_steps": 200}
    settings = build_settings(defaults, **controls(eta=None, steps=None, quality=3.5))
    assert settings.quality_level == 3.5 and settings.guidance == "quality"
    assert settings.eta == 1.0 and settings.num_inference_steps == 200
    assert settings.seed == 11 and settings.audio_length_in_s == 1.0
    interval = build_settings(
        None, **controls(use_interval=True, interval_low=0, interval_high=700)
    )
    assert interval.guidance_interval == (0, 700)
    drawn = {build_settings(None, **controls(random_seed=True)).seed for _ in range(4)}
    assert len(drawn) > 1 and all(isinstance(s, int) and s >= 0 for s in drawn)
    assert build_settings(None, **controls(negative_level="2")).negative_quality_level == 2.0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, r"Steps \(num_inference_steps\): must be >= 1"),
        ({"length": 0}, r"Length \(s\) \(audio_length_in_s\)"),
        ({"candidates": 9}, r"Candidates \(num_waveforms_per_prompt\): at most 4"),
        ({"use_interval": True, "interval_low": 800, "interval_high": 100}, "Guidance interval"),
        ({"negative_level": "high"}, r"Negative level \(negative_quality_level\)"),
        ({"quality": 7}, r"Quality \(quality_level\)"),
        ({"seed": None}, r"Seed \(seed\)"),
        ({"sampler": "nope"}, r"Sampler \(scheduler\): unknown 'nope'"),
    ],
)
def test_bad_controls_are_named(changes, message):
    with pytest.raises(InputError, match=message):
        build_settings(None, **controls(**changes))


def test_sweep_keeps_everything_but_the_level():
    settings = build_settings(None, **controls())
    sweep = sweep_levels(settings)
    assert [s.quality_level for s in sweep] == [1, 2, 3, 4, 5]
    assert {s.replace(quality_level=5.0) for s in sweep} == {settings.replace(quality_level=5.0)}
    with pytest.raises(InputError, match="negative-prompt"):
        sweep_levels(settings.replace(guidance="negative-prompt"))


def test_edit_modes_add_their_settings():
    base = build_settings(None, **controls())
    a2a, argument = edit_settings(base, "audio-to-audio", strength=0.3, ranges="", resamples=1,
                                  jump=10, total_length=None)  # fmt: skip
    assert argument == "init_audio" and a2a.strength == 0.3 and a2a.audio_length_in_s is None
    paint, argument = edit_settings(base, "inpainting", strength=None, ranges="1-2; 3.5-4",
                                    resamples=2, jump=5, total_length=None)  # fmt: skip
    assert argument == "inpaint_audio" and paint.inpaint_ranges == ((1, 2), (3.5, 4))
    assert (paint.repaint_resamples, paint.repaint_jump) == (2, 5)
    more, argument = edit_settings(base, "continuation", strength=None, ranges="",
                                   resamples=None, jump=None, total_length=12.0)  # fmt: skip
    assert argument == "continue_audio" and more.audio_length_in_s == 12.0
    assert parse_ranges("  ") is None
    with pytest.raises(InputError, match=r"'4-2' needs 0 <= start < end"):
        parse_ranges("4-2")
    with pytest.raises(InputError, match=r"Strength \(strength\)"):
        edit_settings(base, "audio-to-audio", strength=1.5, ranges="", resamples=1, jump=10,
                      total_length=None)  # fmt: skip
    with pytest.raises(InputError, match=r"RePaint resamples \(repaint_resamples\)"):
        edit_settings(base.replace(scheduler="dpmsolver++"), "inpainting", strength=None,
                      ranges="1-2", resamples=3, jump=10, total_length=None)  # fmt: skip
    with pytest.raises(InputError, match="Mode: unknown 'remix'"):
        edit_settings(base, "remix", strength=None, ranges="", resamples=None, jump=None,
                      total_length=None)  # fmt: skip


def test_dataset_view_filters_rows_and_draws_plots(folders, tmp_path):
    stats = QualityStats.load(folders / "data" / "quality_stats.json")
    view = DatasetView(folders / "data" / "manifest.jsonl", stats, tmp_path)
    assert all(p.is_file() for p in (view.pmos_plot, view.levels_plot, view.clap_plot))
    assert [row[0] for row in view.rows(level="5")[0]] == ["c1", "c2"]
    assert [row[0] for row in view.rows(level="5", split="test")[0]] == ["c2"]
    assert [row[0] for row in view.rows(branch="merged")[0]] == ["c1"]
    assert view.rows(level="unset")[1] == 0
    assert "3 clips" in view.summary()
    with pytest.raises(InputError, match="Split: unknown 'dev'"):
        view.rows(split="dev")
    with pytest.raises(InputError, match="no row with id 'zz'"):
        view.audio_path("zz")


def test_command_names_what_it_cannot_load(folders, tmp_path, capsys, monkeypatch):
    from qamdt.cli.app_commands import OFFLINE_ENVIRONMENT
    from qamdt.cli.main import main

    for key in OFFLINE_ENVIRONMENT:  # the command sets them; the teardown restores them
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)

    assert main(["app", "--model", str(folders / "pipe"), "--port", "0"]) == 2
    assert "--port: must be within 1..65535" in capsys.readouterr().err
    assert main(["app", "--model", str(folders / "pipe"), "--torch-dtype", "vocder=bfloat16"]) == 2
    assert "--torch-dtype: unknown model(s) ['vocder']" in capsys.readouterr().err
    assert main(["app", "--model", str(tmp_path / "none")]) == 2
    assert str(tmp_path / "none") in capsys.readouterr().err
    missing = tmp_path / "rows.jsonl"
    assert main(["app", "--model", str(folders / "pipe"), "--manifest", str(missing)]) == 2
    assert f"--manifest {missing}: no such file" in capsys.readouterr().err


def test_models_load_in_the_dtypes_asked_for(folders):
    import torch

    from qamdt.app.models import AppModels

    models = AppModels.load(folders / "pipe", torch_dtype={"vae": torch.bfloat16})
    assert models.pipeline.dtypes["vae"] == torch.bfloat16
    assert models.pipeline.dtypes["transformer"] == torch.float32


# ------------------------------------------------------------------------------ the server


def test_the_running_app(server, client, folders, tmp_path):
    # One test, so that one server serves every check (xdist would start one per worker).
    check_generate(client)
    check_candidates(client)
    check_sweep(client)
    check_errors(client)
    check_edit(client, folders)
    check_score(client, folders)
    check_dataset(client)
    check_concurrent_users(server)
    with open_browser(tmp_path) as browser:
        check_browser(server, browser, tmp_path)


def check_generate(client):
    status, sidecar, files, audio, picture, caption, *rest = generate(client)
    assert status.startswith("1 clip(s)")
    wav = next(f for f in files if f.endswith(".wav"))
    info = sf.info(wav)
    assert info.samplerate == SR and abs(info.duration - 1.0) < 1e-3
    assert sidecar["prompt"] == "a calm piano piece" and sidecar["quality_level"] == 4.0
    assert sidecar["seed"] == 11 and sidecar["num_inference_steps"] == 3
    assert sidecar["text"] == "high quality, a calm piano piece"
    assert isinstance(sidecar["clap_score"], float)
    assert "p-MOS" in caption["value"] and "CLAP" in caption["value"]
    assert audio["visible"] and os.path.isfile(picture["value"])
    assert not rest[0]["visible"]  # the second place stays hidden for one candidate
    again = generate(client)
    assert np.array_equal(sf.read(wav)[0], sf.read(again[3]["value"])[0])  # same seed


def check_candidates(client):
    out = generate(client, candidates=3, random_seed=True)
    captions = [out[5 + 3 * i]["value"] for i in range(3)]
    scores = [float(c.rsplit("CLAP ", 1)[1]) for c in captions]
    assert scores == sorted(scores, reverse=True)
    assert not out[3 + 3 * 3]["visible"]


def check_sweep(client):
    out = generate(client, api="/sweep")
    sidecars = [json.loads(open(f).read()) for f in out[2] if f.endswith(".json")]
    assert [s["quality_level"] for s in sidecars] == [1, 2, 3, 4, 5]
    assert {s["seed"] for s in sidecars} == {11}
    assert [out[5 + 3 * i]["value"].split(" · ")[0] for i in range(5)] == [
        f"level {k}" for k in range(1, 6)
    ]


def check_errors(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="Prompt: type what the music should be"):
        generate(client, prompt="  ")
    with pytest.raises(AppError, match=r"Steps \(num_inference_steps\)"):
        generate(client, steps=0)
    with pytest.raises(AppError, match="negative-prompt"):
        generate(client, api="/sweep", guidance="negative-prompt")


def check_edit(client, folders):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    upload = handle_file(str(folders / "upload.wav"))
    seconds = sf.info(folders / "upload.wav").duration

    def edit(mode, strength=0.5, ranges="", total=None):
        inputs = [*CONTROLS.values(), upload, mode, strength, ranges, 1, 10, total]
        return client.predict(*inputs, api_name="/edit")

    for mode, kwargs, length in (
        ("audio-to-audio", {"strength": 0.3}, seconds),
        ("inpainting", {"ranges": "0.5-1.2"}, seconds),
        ("continuation", {"total": seconds + 1.0}, seconds + 1.0),
    ):
        status, sidecar, files, audio, *_ = edit(mode, **kwargs)
        wav = next(f for f in files if f.endswith(".wav"))
        assert abs(sf.info(wav).duration - length) < 0.02, (mode, sf.info(wav).duration)
        assert sidecar["mode"] == mode and sidecar["input_sha256"]
        assert sidecar["prompt"] == CONTROLS["prompt"] and sidecar["seed"] == CONTROLS["seed"]
    assert sidecar["audio_length_in_s"] == seconds + 1.0
    with pytest.raises(AppError, match=r"Ranges to regenerate \(inpaint_ranges\)"):
        edit("inpainting", ranges="late")
    with pytest.raises(AppError, match="audio_length_in_s"):
        edit("continuation", total=0.5)
    with pytest.raises(AppError, match="Input audio: upload or record a clip first"):
        client.predict(*CONTROLS.values(), None, "audio-to-audio", 0.5, "", 1, 10, None,
                       api_name="/edit")  # fmt: skip


def check_score(client, folders):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    scores, picture = client.predict(
        handle_file(str(folders / "upload.wav")), "a sine tone", api_name="/score"
    )
    seconds = sf.info(folders / "upload.wav").duration
    assert scores["sample_rate"] == 16000 and abs(scores["seconds"] - seconds) < 1e-3
    assert isinstance(scores["pmos"], float) and scores["level"] in range(1, 6)
    assert scores["prefix"] in ("low quality", "medium quality", "high quality")
    assert isinstance(scores["clap"], float) and scores["clap_text"] == "a sine tone"
    assert "--captioner" not in json.dumps(scores)  # a text was given
    assert os.path.isfile(picture)
    with pytest.raises(AppError, match="Audio: upload or record a clip first"):
        client.predict(None, "", api_name="/score")


def check_dataset(client):
    note, table = client.predict("5", "all", "all", api_name="/dataset_rows")
    assert note.startswith("2 of 2 rows")
    assert [row[0] for row in table["data"]] == ["c1", "c2"]
    wav, picture = client.predict("c2", api_name="/dataset_clip")
    assert sf.info(wav).samplerate == SR and os.path.isfile(picture)


def check_concurrent_users(server):
    from gradio_client import Client

    def one_user(i):
        return generate(Client(server, verbose=False), seed=i)[1]["seed"]

    with ThreadPoolExecutor(4) as pool:
        assert sorted(pool.map(one_user, range(4))) == [0, 1, 2, 3]


# ------------------------------------------------------------------------------ browser


@contextlib.contextmanager
def open_browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1400,1800")
    # Any address but the app's fails: the page must work with nothing from outside.
    options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(tmp_path), "download.prompt_for_download": 0}
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)}
    )
    try:
        yield driver
    finally:
        driver.quit()


def check_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 60)

    def find(css):
        return browser.find_element(By.CSS_SELECTOR, css)

    def retype(css, text):
        field = find(css)
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys(Keys.BACKSPACE, text)

    browser.get(server)
    wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
    # An invalid input answers with a message in the page.
    find("#generate-button").click()
    wait.until(lambda b: "Prompt: type what the music should be" in find("body").text)

    find("#prompt textarea").send_keys("a slow organ chorale")
    slider = find("#quality input[type=range]")
    slider.send_keys(Keys.ARROW_LEFT * 18)  # 5.0 -> 3.2
    assert find("#quality input[type=number]").get_attribute("value") == "3.2"
    retype("#steps input", "3")
    retype("#length input", "1.5")
    find("#generate-button").click()
    # Playable: the player has decoded the clip and shows its length.
    shown = "const t = document.querySelector('#clip-0 #duration'); return t && t.textContent;"
    wait.until(lambda b: b.execute_script(shown) not in (None, "", "0:00"))
    assert "level 3.2" in find("#clip-0").text
    link = find("#downloads a[download$='.wav']")
    link.click()
    target = tmp_path / link.get_attribute("download")
    wait.until(lambda b: target.is_file() and not list(tmp_path.glob("*.crdownload")))
    info = sf.info(target)
    assert info.samplerate == SR and abs(info.duration - 1.5) < 1e-3
    sidecar = json.loads(_read_sidecar(browser, By))
    assert sidecar["quality_level"] == pytest.approx(3.2)
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert urls and all(u.startswith(server) for u in urls), urls


def _read_sidecar(browser, by):
    href = browser.find_element(by.CSS_SELECTOR, "#downloads a[download$='.json']").get_attribute(
        "href"
    )
    with urllib.request.urlopen(href, timeout=10) as response:
        return response.read().decode()
