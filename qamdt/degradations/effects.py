"""Signal-processing degradations of graded severity (everything but the codecs).

Each function takes a clean mono clip ``x`` (float), its rate ``sr``, a severity ``s`` in
[0, 1] and a seeded generator, and returns the degraded clip (same length) and the
physical parameters used. Severity is a perceptual scale shared by every kind: ``s`` near 0
is barely audible, ``s = 0.5`` is clearly audible damage ("fair"), ``s = 1`` is the damage a
listener would call bad. Each kind's mapping from ``s`` to its physical parameter is given
in its docstring; most are geometric (equal severity steps are equal ratios of the
parameter), as loudness and bitrate are heard.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, signal

from qamdt.loudness import a_weighted_rms

EPS = 1e-12


def rms(x: np.ndarray) -> float:
    """Root mean square of a signal (never exactly zero)."""
    return float(np.sqrt(np.mean(np.square(x)) + EPS))


def geometric(start: float, end: float, severity: float) -> float:
    """The value ``start * (end / start) ** severity``: equal steps are equal ratios."""
    return float(start * (end / start) ** severity)


def _shaped_noise(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Noise whose power spectrum goes as ``f ** exponent`` (0 white, -1 pink, -2 brown)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0
    return np.fft.irfft(spectrum * freqs ** (exponent / 2.0), n)


NOISE_COLOURS = {"white": 0.0, "pink": -1.0, "brown": -2.0, "blue": 1.0}


def coloured_noise(x, sr, severity, rng):
    """Additive noise of a random colour or a tape-hiss source at an SNR of 45 dB .. 0 dB.

    Colours: white, pink, brown, blue (power ``f**a``, a = 0, -1, -2, 1) and ``hiss``
    (white noise band-passed to 2-10 kHz with a slow level wobble, as tape hiss).
    """
    snr_db = 45.0 - 45.0 * severity
    kind = str(rng.choice([*NOISE_COLOURS, "hiss"]))
    if kind == "hiss":
        high = min(10000.0, 0.45 * sr)
        sos = signal.butter(4, [2000.0, high], btype="bandpass", fs=sr, output="sos")
        noise = signal.sosfilt(sos, rng.standard_normal(x.size))
        noise *= 1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.2, 1.0) * np.arange(x.size) / sr)
    else:
        noise = _shaped_noise(x.size, NOISE_COLOURS[kind], rng)
    noise *= rms(x) / (rms(noise) * 10.0 ** (snr_db / 20.0))
    return x + noise, {"snr_db": round(snr_db, 2), "colour": kind}


def bandpass(x, sr, severity, rng):
    """Band limiting: low-pass from 10 kHz down to 700 Hz, high-pass from 20 Hz up to 500 Hz."""
    low = min(geometric(10000.0, 700.0, severity), 0.45 * sr)
    high = geometric(20.0, 500.0, severity * rng.uniform(0.3, 1.0))
    sos = signal.butter(6, [high, low], btype="bandpass", fs=sr, output="sos")
    return signal.sosfiltfilt(sos, x), {"lowpass_hz": round(low, 1), "highpass_hz": round(high, 1)}


def tilt(x: np.ndarray, sr: int, db_per_octave: float) -> np.ndarray:
    """A spectral tilt around 1 kHz (gains held below 30 Hz, within -60 .. +30 dB).

    Args:
        x: ``(samples,)`` audio.
        sr: Its rate.
        db_per_octave: Slope; negative is dull, positive harsh.

    Returns:
        The tilted audio, as long as ``x``.
    """
    spectrum = np.fft.rfft(x)
    freqs = np.maximum(np.fft.rfftfreq(x.size, 1.0 / sr), 30.0)
    gain_db = np.clip(db_per_octave * np.log2(freqs / 1000.0), -60.0, 30.0)
    return np.fft.irfft(spectrum * 10.0 ** (gain_db / 20.0), x.size)


def eq_tilt(x, sr, severity, rng):
    """Spectral tilt around 1 kHz of up to 9 dB per octave, dull (negative) or harsh."""
    slope = 9.0 * severity * (1.0 if rng.random() < 0.5 else -1.0)
    return tilt(x, sr, slope), {"db_per_octave": round(slope, 2)}


def aliasing(x, sr, severity, rng):
    """Resampling without an anti-aliasing filter: decimation to sr / 1.25 .. sr / 10.

    Every ``factor``-th sample is kept and linear interpolation brings the clip back to
    ``sr``, so content above the reduced Nyquist frequency folds down as inharmonic tones.
    """
    factor = geometric(1.25, 10.0, severity)
    positions = np.arange(0.0, x.size - 1, factor)
    kept = np.interp(positions, np.arange(x.size), x)
    return np.interp(np.arange(x.size), positions, kept), {"reduced_rate_hz": round(sr / factor, 1)}


def bit_depth(x, sr, severity, rng):
    """Requantisation to 11 .. 3 bits, linear or with mu-law or A-law companding."""
    bits = int(round(11 - 8 * severity))
    levels = 2 ** (bits - 1)
    peak = np.max(np.abs(x)) + EPS
    y = x / peak
    law = str(rng.choice(["linear", "mu-law", "a-law"]))
    if law == "mu-law":
        mu = 255.0
        y = np.sign(y) * np.log1p(mu * np.abs(y)) / np.log1p(mu)
        y = np.round(y * levels) / levels
        y = np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu
    elif law == "a-law":
        a = 87.6
        ay = np.abs(y)
        small = ay < 1.0 / a
        c = np.where(small, a * ay, 1.0 + np.log(np.maximum(a * ay, 1.0))) / (1.0 + np.log(a))
        c = np.round(c * levels) / levels
        inv = np.where(
            c < 1.0 / (1.0 + np.log(a)),
            c * (1.0 + np.log(a)) / a,
            np.exp(c * (1.0 + np.log(a)) - 1.0) / a,
        )
        y = np.sign(y) * inv
    else:
        y = np.round(y * levels) / levels
    return y * peak, {"bits": bits, "companding": law}


def dynamics(x, sr, severity, rng):
    """Over-eager dynamic range compression and limiting, with pumping.

    A feed-forward compressor: the level follows the signal's peak (attack 1-10 ms) and
    falls back with a release of 40-300 ms; above the threshold (6 dB under the peak at
    s = 0, 36 dB under at s = 1) gain is reduced with a ratio of 2 .. 30, and make-up gain
    restores the peak.
    """
    threshold_db = -6.0 - 30.0 * severity
    ratio = geometric(2.0, 30.0, severity)
    attack = rng.uniform(0.001, 0.01)
    release = rng.uniform(0.04, 0.3)
    peak = np.max(np.abs(x)) + EPS
    held = ndimage.maximum_filter1d(np.abs(x) / peak, size=max(1, int(attack * sr)))
    pole = np.exp(-1.0 / (release * sr))
    envelope = signal.lfilter([1.0 - pole], [1.0, -pole], held)
    envelope = np.maximum(envelope, held)
    level_db = 20.0 * np.log10(envelope + EPS)
    over = np.maximum(level_db - threshold_db, 0.0)
    gain = 10.0 ** (-over * (1.0 - 1.0 / ratio) / 20.0)
    y = x * gain
    return y * peak / (np.max(np.abs(y)) + EPS), {
        "threshold_db": round(threshold_db, 2),
        "ratio": round(ratio, 2),
        "attack_ms": round(attack * 1000, 2),
        "release_ms": round(release * 1000, 1),
    }


def soft_clip(x, sr, severity, rng):
    """Saturation: a tanh curve driven 1.5x (s = 0) .. 40x (s = 1), slightly asymmetric."""
    drive = geometric(1.5, 40.0, severity)
    bias = rng.uniform(0.0, 0.2) * severity
    peak = np.max(np.abs(x)) + EPS
    y = np.tanh(drive * x / peak + bias) - np.tanh(bias)
    y -= np.mean(y)
    return y * peak / (np.max(np.abs(y)) + EPS), {"drive": round(drive, 2), "bias": round(bias, 3)}


def hum(x, sr, severity, rng):
    """Mains hum or buzz (50/60 Hz and harmonics), heard at -50 dB .. -10 dB against the music.

    Levels are A-weighted (hum and music alike): the ear hears a 50 Hz tone about 30 dB
    below a 1 kHz one, so an unweighted level would make hum of one severity far quieter
    than noise of the same severity. At s = 1 a hum of four harmonics is then typically
    7-9 dB above the music unweighted; a buzz, whose harmonics reach the ear's sensitive
    range, 3-4 dB below it.
    """
    mains = 50.0 if rng.random() < 0.5 else 60.0
    buzz = rng.random() < 0.5
    count = 15 if buzz else 4
    harmonics = np.arange(1, count + 1, dtype=np.float64)
    harmonics = harmonics[harmonics * mains < 0.45 * sr]
    t = np.arange(x.size) / sr
    phases = rng.uniform(0, 2 * np.pi, size=harmonics.size)
    weights = 1.0 / harmonics if buzz else 1.0 / harmonics**2
    tone = np.sin(2 * np.pi * mains * np.outer(t, harmonics) + phases) @ weights
    level_dba = -50.0 + 40.0 * severity
    tone *= a_weighted_rms(x, sr) * 10.0 ** (level_dba / 20.0) / a_weighted_rms(tone, sr)
    return x + tone, {"mains_hz": mains, "buzz": buzz, "level_dba": round(level_dba, 2)}


def crackle(x, sr, severity, rng):
    """Clicks and pops of a worn record: 1 .. 400 per second, at 1-8x the music's RMS."""
    rate = geometric(1.0, 400.0, severity)
    count = rng.poisson(rate * x.size / sr)
    clicks = np.zeros(x.size)
    where = rng.integers(0, x.size, size=count)
    clicks[where] = rng.standard_normal(count) * rms(x) * rng.uniform(1.0, 8.0, count)
    kernel = np.exp(-np.arange(int(0.003 * sr)) / (0.0005 * sr))
    return x + signal.fftconvolve(clicks, kernel)[: x.size], {"clicks_per_s": round(rate, 1)}


def reverb(x, sr, severity, rng):
    """A room: pre-delay, then a damped noise tail; RT60 0.2 .. 5 s, wet share 0.1 .. 0.9.

    The tail loses high frequencies as it decays (a one-pole low-pass whose cut-off falls
    from 8 kHz), as real rooms do.
    """
    rt60 = geometric(0.2, 5.0, severity)
    wet = 0.1 + 0.8 * severity
    predelay = int(rng.uniform(0.005, 0.04) * sr)
    length = int(min(rt60, 4.0) * sr)
    t = np.arange(length) / sr
    tail = rng.standard_normal(length) * np.exp(-6.91 * t / rt60)
    half = signal.butter(1, min(8000.0, 0.45 * sr) / 2, fs=sr, output="sos")
    tail = 0.5 * tail + 0.5 * signal.sosfilt(half, tail) * np.linspace(0.0, 2.0, length)
    impulse = np.concatenate([np.zeros(predelay), tail])
    wetted = signal.fftconvolve(x, impulse)[: x.size]
    wetted *= rms(x) / rms(wetted)
    return (1.0 - wet) * x + wet * wetted, {
        "rt60_s": round(rt60, 2),
        "wet": round(wet, 3),
        "predelay_ms": round(1000 * predelay / sr, 1),
    }


def wow_flutter(x, sr, severity, rng):
    """Speed wobble of a worn tape or turntable: wow (0.5-2 Hz) plus flutter (6-12 Hz).

    The peak pitch deviation grows from 3 cents (s = 0) to 120 cents (s = 1).
    """
    cents = geometric(3.0, 120.0, severity)
    wow_hz, flutter_hz = rng.uniform(0.5, 2.0), rng.uniform(6.0, 12.0)
    t = np.arange(x.size) / sr
    ratio = 2.0 ** (cents / 1200.0) - 1.0
    # Speed deviation ratio * (0.7 wow + 0.3 flutter); the read position is its integral.
    speed = ratio * (
        0.7 * np.sin(2 * np.pi * wow_hz * t + rng.uniform(0, 6.28))
        + 0.3 * np.sin(2 * np.pi * flutter_hz * t + rng.uniform(0, 6.28))
    )
    position = np.arange(x.size) + np.cumsum(speed)
    position = np.clip(position - position.min() * (position.min() < 0), 0, x.size - 1)
    return np.interp(position, np.arange(x.size), x), {
        "cents": round(cents, 2),
        "wow_hz": round(wow_hz, 2),
        "flutter_hz": round(flutter_hz, 2),
    }


def dropouts(x, sr, severity, rng):
    """Gaps of silence 20-250 ms long covering 0.5% (s = 0) .. 35% (s = 1) of the clip."""
    share = geometric(0.005, 0.35, severity)
    y = x.copy()
    lost, target = 0, int(share * x.size)
    gaps = 0
    while lost < target:
        size = int(rng.uniform(0.02, 0.25) * sr)
        start = int(rng.integers(0, max(1, x.size - size)))
        y[start : start + size] = 0.0
        lost += size
        gaps += 1
    return y, {"share_lost": round(share, 4), "gaps": gaps}


def packet_loss(x, sr, severity, rng):
    """Lost 20 ms packets (1% .. 45% of them), concealed by repeating the last good one."""
    rate = geometric(0.01, 0.45, severity)
    size = int(0.02 * sr)
    y = x.copy()
    count = x.size // size
    lost = rng.random(count) < rate
    lost[0] = False
    fade = np.hanning(2 * 32)[32:]
    for i in np.flatnonzero(lost):
        previous = y[(i - 1) * size : i * size].copy()
        previous[-fade.size :] *= fade  # soften the seam the repetition makes
        y[i * size : (i + 1) * size] = previous
    return y, {"loss_rate": round(rate, 4), "packets_lost": int(lost.sum())}


def denoise(x, sr, severity, rng):
    """A spectral-subtraction denoiser set too hard: musical noise and swallowed detail.

    The noise floor per band is taken as the 20th percentile of the magnitude over time,
    multiplied by an over-subtraction factor of 0.5 (s = 0) .. 12 (s = 1), and subtracted
    with a spectral floor of 2%.
    """
    import librosa

    alpha = geometric(0.5, 12.0, severity)
    stft = librosa.stft(x, n_fft=1024, hop_length=256)
    magnitude = np.abs(stft)
    floor = np.percentile(magnitude, 20, axis=1, keepdims=True)
    cleaned = np.maximum(magnitude - alpha * floor, 0.02 * magnitude)
    y = librosa.istft(stft * (cleaned / (magnitude + EPS)), hop_length=256, length=x.size)
    return y, {"over_subtraction": round(alpha, 2)}


def time_stretch(x, sr, severity, rng):
    """Phase-vocoder artefacts (phasiness, smeared transients), graded by severity.

    The clip is stretched by a factor 1.03 (s = 0) .. 2.5 (s = 1) and back with librosa's
    phase vocoder. The vocoder's loss of phase coherence is nearly the same at any factor
    (the log-mel moves about as much at 1.03 as at 2.5), so severity also sets how far the
    result moves from the clip towards the round trip: the STFT of the output has the
    clip's magnitudes and phases moved by a fraction ``s`` of the way to the round trip's
    (magnitudes geometrically).
    """
    import librosa

    rate = geometric(1.03, 2.5, severity)
    if rng.random() < 0.5:
        rate = 1.0 / rate
    there = librosa.effects.time_stretch(x, rate=rate)
    back = librosa.effects.time_stretch(there, rate=there.size / x.size)
    back = librosa.util.fix_length(back, size=x.size)
    clean, vocoded = librosa.stft(x), librosa.stft(back)
    share = float(np.clip(severity, 0.0, 1.0))
    magnitude = np.abs(clean) ** (1.0 - share) * np.abs(vocoded) ** share
    phase = np.angle(clean) + share * np.angle(vocoded * np.conj(clean))
    y = librosa.istft(magnitude * np.exp(1j * phase), length=x.size)
    return y, {"rate": round(rate, 3), "share": round(share, 3)}


def mono_fold(x, sr, severity, rng):
    """Folding a spaced-microphone stereo pair to mono: comb filtering.

    The second channel, delayed by 0.2-3 ms, is added with a weight of 0.15 (s = 0) ..
    1.0 (s = 1) and a random polarity, so notches appear at regular frequency spacing.
    """
    weight = 0.15 + 0.85 * severity
    delay = max(1, int(rng.uniform(0.0002, 0.003) * sr))
    polarity = 1.0 if rng.random() < 0.5 else -1.0
    delayed = np.concatenate([np.zeros(delay), x[:-delay]])
    return (x + polarity * weight * delayed) / (1.0 + weight), {
        "delay_ms": round(1000 * delay / sr, 3),
        "weight": round(weight, 3),
        "polarity": int(polarity),
    }
