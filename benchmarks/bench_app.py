"""The web app under use: time from pressing Generate to playable audio, and a load test.

Usage: python benchmarks/bench_app.py --out OUT [--full-size-mdt] [--seconds 10]
       [--steps 25] [--users 1,4,16] [--time-limit 600]

Starts ``qamdt app`` on OUT/models (a ``qamdt demo`` folder) on a free port of 127.0.0.1
and nowhere else, then

1. in a headless Chromium: loads the page, types a prompt, sets the length and steps,
   presses Generate and times until the result's player has decoded the audio and shows
   its duration (playable); three times, the page reloaded each time;
2. load test: for each number of users, that many gradio_client users submit one
   generation each at the same moment; counts successes and errors and reports the
   latencies. Every request has a deadline (``--time-limit`` for the whole test), after
   which the rest are cancelled and counted as not served.

``--full-size-mdt`` swaps the pipeline's transformer for a random one of
configs/mdt/embedded.yaml (the full demo's 6 M-parameter network; the quick demo trains a
smaller one): speed does not depend on the weights. The sampling settings are the demo's
(DDIM, guidance 8, rescale 0.7, interval 0-700).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HOST = "127.0.0.1"


def controls(prompt: str, seconds: float, steps: int, seed: int) -> list:
    return [prompt, 5.0, "quality", "1", "", 8.0, 0.7, True, 0, 700, "ddim", steps, 0.0,
            seconds, False, seed, 1]  # fmt: skip


def full_size_copy(pipeline: Path, work: Path) -> Path:
    import torch

    from qamdt.models.model_info import read_model_config
    from qamdt.models.transformer import QualityMDTTransformer

    copy = work / "pipeline"
    shutil.copytree(pipeline, copy)
    torch.manual_seed(0)
    transformer = QualityMDTTransformer(**read_model_config("configs/mdt/embedded.yaml"))
    shutil.rmtree(copy / "transformer")
    transformer.save_pretrained(copy / "transformer")
    return copy


def start_app(models: Path, pipeline: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "qamdt.cli.main", "app", "--model", str(pipeline)]
    for flag, name in (("--mos", "mos"), ("--clap", "clap"), ("--captioner", "captioner")):
        if (models / name).is_dir():
            command += [flag, str(models / name)]
    manifest = models.parent / "corpus" / "manifest.jsonl"
    if manifest.is_file():
        command += ["--manifest", str(manifest)]
    command += ["--host", HOST, "--port", str(port)]
    process = subprocess.Popen(command, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"qamdt app exited:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/", timeout=2):
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("qamdt app did not answer within 180 s")


def browser_times(url: str, seconds: float, steps: int, runs: int = 3) -> list[float]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {HOST}")
    driver = webdriver.Chrome(
        service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options
    )
    wait = WebDriverWait(driver, 900, poll_frequency=0.05)
    # The player is ready when its waveform is decoded and it shows the clip's duration.
    playable = (
        "const t = document.querySelector('#clip-0 #duration');"
        "return t !== null && t.textContent.trim() !== '0:00';"
    )
    times = []
    try:
        for _ in range(runs):
            driver.get(url)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#prompt textarea"))
            driver.find_element(By.CSS_SELECTOR, "#prompt textarea").send_keys("a fiddle reel")
            for css, value in (("#steps input", steps), ("#length input", seconds)):
                field = driver.find_element(By.CSS_SELECTOR, css)
                field.send_keys(Keys.CONTROL, "a")
                field.send_keys(Keys.BACKSPACE, str(value))
            began = time.perf_counter()
            driver.find_element(By.CSS_SELECTOR, "#generate-button").click()
            wait.until(lambda d: d.execute_script(playable))
            times.append(time.perf_counter() - began)
    finally:
        driver.quit()
    return times


def load_test(url: str, users: int, seconds: float, steps: int, deadline: float) -> dict:
    from gradio_client import Client

    def one(i: int) -> tuple[str, float]:
        client = Client(url, verbose=False)
        began = time.perf_counter()
        job = client.submit(*controls("a fiddle reel", seconds, steps, i), api_name="/generate")
        try:
            job.result(timeout=max(1.0, deadline - time.monotonic()))
            return "ok", time.perf_counter() - began
        except TimeoutError:
            job.cancel()
            return "timeout", time.perf_counter() - began
        except Exception as error:  # noqa: BLE001 - each failure is counted by kind
            return type(error).__name__, time.perf_counter() - began

    began = time.perf_counter()
    with ThreadPoolExecutor(users) as pool:
        results = list(pool.map(one, range(users)))
    ok = sorted(t for kind, t in results if kind == "ok")
    return {
        "users": users,
        "served": len(ok),
        "failed": {k: sum(1 for r in results if r[0] == k) for k, _ in results if k != "ok"},
        "latency_s": {
            "min": round(ok[0], 2) if ok else None,
            "median": round(statistics.median(ok), 2) if ok else None,
            "max": round(ok[-1], 2) if ok else None,
        },
        "wall_s": round(time.perf_counter() - began, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="a qamdt demo folder")
    parser.add_argument("--full-size-mdt", action="store_true")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--browser-runs", type=int, default=3)
    parser.add_argument("--users", default="1,4,16")
    parser.add_argument("--load-seconds", type=float, default=10.0, help="clip length, load test")
    parser.add_argument("--time-limit", type=float, default=600.0, help="whole load test, s")
    args = parser.parse_args()

    models = args.out / "models"
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        pipeline = models / "pipeline"
        if args.full_size_mdt:
            pipeline = full_size_copy(pipeline, work)
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            port = probe.getsockname()[1]
        process = start_app(models, pipeline, port, work / "app.log")
        url = f"http://{HOST}:{port}/"
        try:
            times = browser_times(url, args.seconds, args.steps, args.browser_runs)
            report = {
                "cpu_threads": os.cpu_count(),
                "full_size_mdt": args.full_size_mdt,
                "press_to_playable_s": [round(t, 2) for t in times],
                "clip_s": args.seconds,
                "steps": args.steps,
                "load": [],
            }
            print(json.dumps(report), flush=True)
            deadline = time.monotonic() + args.time_limit
            for users in (int(u) for u in args.users.split(",")):
                if time.monotonic() >= deadline:
                    break
                row = load_test(url, users, args.load_seconds, args.steps, deadline)
                report["load"].append(row)
                print(json.dumps(row), flush=True)
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
