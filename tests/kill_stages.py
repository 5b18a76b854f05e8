"""Tiny data, models with known answers and a SIGKILL harness for the resume tests."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from types import SimpleNamespace

import numpy as np
import soundfile as sf
import torch

from captioning.base import Captioner, ClapScorer
from qamdt.manifest import ClipRecord, write_manifest

SR = 8000
WORDS = ["strings", "piano", "organ", "flute", "choir", "brass"]


class FakeMos(torch.nn.Module):
    """p-MOS from the clip's loudness; ``bias`` stands for another model's weights."""

    def __init__(self, bias: float = 0.0, delay: float = 0.0):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor(float(bias)))
        self.config = SimpleNamespace(kind="embedded")
        self.delay = delay

    def predict(self, waves, rates, texts=None, batch_size=16):
        time.sleep(self.delay)
        return [
            {"omq": 1.0 + 20.0 * float(np.abs(w).mean()) + float(self.bias.detach())} for w in waves
        ]


class FakeClap(ClapScorer):
    """Audio embeds by its loudness, text by its length: scores are known and spread."""

    sample_rate = SR

    def __init__(self, delay: float = 0.0):
        self.delay = delay

    def embed_audio(self, audio, sample_rates, batch_size=8):
        time.sleep(self.delay)
        angles = np.array([float(np.abs(w).mean()) * 8 for w in audio])
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def embed_text(self, texts, batch_size=32):
        angles = np.array([len(t) % 7 * 0.25 for t in texts])
        return np.stack([np.cos(angles), np.sin(angles)], axis=1)

    def save_pretrained(self, directory):
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path):
        raise NotImplementedError


class FakeCaptioner(Captioner):
    """Names an instrument by the clip's loudness."""

    sample_rate = SR

    def caption(self, audio, sample_rates, batch_size=8):
        return [f"a piece for {WORDS[int(np.abs(w).mean() * 40) % len(WORDS)]}" for w in audio]

    def save_pretrained(self, directory):
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path):
        raise NotImplementedError


def make_manifest(root, rows: int = 24, short: int = 1):
    """``rows`` one-second tones of rising loudness (the first ``short`` ones 0.05 s)."""
    (root / "audio").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(rows):
        seconds = 0.05 if i < short else 1.0
        t = np.arange(int(SR * seconds)) / SR
        wave = (0.02 + 0.01 * i) * np.sin(2 * np.pi * (200 + 15 * i) * t)
        sf.write(root / "audio" / f"c{i}.wav", wave.astype(np.float32), SR)
        caption = None if i % 5 == 0 else f"{WORDS[i % len(WORDS)]}, calm"
        records.append(
            ClipRecord(
                id=f"c{i:02d}", audio=f"audio/c{i}.wav", original_caption=caption, split="train"
            )
        )
    write_manifest(root / "manifest.jsonl", records)
    return root / "manifest.jsonl"


def _child(target, args, kwargs):
    import sys

    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - the child ends with the kill
    # A forked child cannot use the parent's OpenMP threads; the caller runs its reference
    # with one thread too, since the thread count changes float sums.
    torch.set_num_threads(1)
    target(*args, **kwargs)
    os._exit(0)


def run_killed(target, *args, after: float, **kwargs) -> bool:
    """Runs ``target`` in a forked process and SIGKILLs it after ``after`` seconds.

    Returns:
        Whether the process finished by itself (not killed, by the caller or itself).
    """
    process = multiprocessing.get_context("fork").Process(
        target=_child, args=(target, args, kwargs)
    )
    process.start()
    process.join(after)
    if process.is_alive():
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    return process.exitcode == 0
