"""Times MelFrontEnd against librosa on a batch of 16 ten-second clips per preset.

Run with ``python benchmarks/bench_mel.py``. Both implementations compute the same log-mel
(reflect padding, ``center=False``, magnitude spectrum, Slaney mel basis, log clamp);
librosa processes the clips one by one, MelFrontEnd as one batch (and, for reference,
one clip at a time). A CUDA row is added when a GPU is present.
"""

from __future__ import annotations

import argparse
import statistics
import time

import librosa
import numpy as np
import torch

from qamdt.audio_spec import get_audio_spec
from qamdt.mel import MelFrontEnd


def librosa_log_mel(clips, spec):
    pad = (spec.n_fft - spec.hop_length) // 2
    out = []
    for clip in clips:
        mel = librosa.feature.melspectrogram(
            y=np.pad(clip, (pad, pad), mode="reflect"),
            sr=spec.sample_rate,
            n_fft=spec.n_fft,
            hop_length=spec.hop_length,
            win_length=spec.win_length,
            window="hann",
            center=False,
            power=1.0,
            n_mels=spec.n_mels,
            fmin=spec.fmin,
            fmax=spec.fmax,
        )
        out.append(np.log(np.maximum(mel, spec.log_floor)))
    return out


def median_seconds(fn, repeats, sync=None):
    fn()  # warm-up
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_preset(spec, clips, repeats):
    batch = torch.from_numpy(clips)
    front = MelFrontEnd(spec)
    timings = [("librosa (loop)", median_seconds(lambda: librosa_log_mel(clips, spec), 3))]
    with torch.inference_mode():
        timings.append(("MelFrontEnd cpu (batch)", median_seconds(lambda: front(batch), repeats)))
        timings.append(
            ("MelFrontEnd cpu (loop)", median_seconds(lambda: [front(c) for c in batch], repeats))
        )
        if torch.cuda.is_available():
            gpu = MelFrontEnd(spec).to("cuda")
            batch_gpu = batch.cuda()
            sec = median_seconds(lambda: gpu(batch_gpu), repeats, sync=torch.cuda.synchronize)
            timings.append(("MelFrontEnd cuda (batch)", sec))
    return timings


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    rows = []
    for preset in ["paper", "embedded"]:
        spec = get_audio_spec(preset)
        n = int(args.seconds * spec.sample_rate)
        rng = np.random.default_rng(0)
        clips = (0.1 * rng.standard_normal((args.batch, n))).astype(np.float32)
        timings = time_preset(spec, clips, args.repeats)
        base = timings[0][1]
        rows += [(preset, name, sec, args.batch / sec, base / sec) for name, sec in timings]

    print(
        f"{args.batch} clips x {args.seconds:g} s, median of {args.repeats} runs "
        f"(librosa: 3), torch threads: {torch.get_num_threads()}"
    )
    header = f"{'preset':<9} {'implementation':<25} {'seconds':>8} {'clips/s':>9} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for preset, name, sec, rate, ratio in rows:
        print(f"{preset:<9} {name:<25} {sec:>8.3f} {rate:>9.1f} {ratio:>8.2f}x")


if __name__ == "__main__":
    main()
