"""The degradation family: each kind's physics, the reference-quality model, chains, codecs."""

import math
import shutil

import numpy as np
import pytest
from scipy import signal

from qamdt import loudness
from qamdt.degradations import (
    CHAIN_ORDER,
    KINDS,
    ChainSettings,
    apply_chain,
    check_kinds,
    codecs,
    draw_chain,
    effects,
    reference_quality,
)

SR = 22050


def music_like(seconds=2.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = sum(
        np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / k
        for k, f in enumerate([220, 330, 440, 660, 1760, 3520], 1)
    )
    return 0.5 * x / np.abs(x).max()


def tone(freq, seconds=1.0):
    return 0.5 * np.sin(2 * np.pi * freq * np.arange(int(seconds * SR)) / SR)


def band_db(x, low, high):
    f, p = signal.welch(x, SR, nperseg=4096)
    return 10 * np.log10(np.sum(p[(f >= low) & (f < high)]) + 1e-30)


def test_reference_quality_compounds_from_the_base():
    assert reference_quality([]) == 5.0
    assert reference_quality([{"severity": 0.5}]) == 3.0
    assert reference_quality([{"severity": 0.5}, {"severity": 0.5}]) == 2.0
    assert reference_quality([{"severity": 0.5}], base=3.0) == 2.0
    assert reference_quality([{"severity": 1.0}], base=4.2) == 1.0


def test_every_kind_keeps_length_is_finite_and_seeded():
    x = music_like(1.5)
    for kind in KINDS:
        if kind in codecs.TOOL_PACKAGES or kind in ("mp3", "vorbis", "opus"):
            continue
        a, applied = apply_chain(x, SR, [(kind, 0.7)], np.random.default_rng(3))
        b, _ = apply_chain(x, SR, [(kind, 0.7)], np.random.default_rng(3))
        assert a.shape == x.shape and a.dtype == np.float32, kind
        assert np.all(np.isfinite(a)) and np.max(np.abs(a)) <= 0.99 + 1e-6, kind
        assert np.array_equal(a, b), kind
        assert applied[0]["type"] == kind and applied[0]["severity"] == 0.7


def test_noise_reaches_the_stated_snr():
    x = music_like()
    for severity in (0.0, 0.5, 1.0):
        y, params = effects.coloured_noise(x, SR, severity, np.random.default_rng(1))
        measured = 10 * np.log10(np.sum(x**2) / np.sum((y - x) ** 2))
        assert params["snr_db"] == pytest.approx(45 - 45 * severity)
        assert measured == pytest.approx(params["snr_db"], abs=0.1)


def test_bandpass_removes_what_lies_above_the_cutoff():
    x = music_like()
    y, params = effects.bandpass(x, SR, 1.0, np.random.default_rng(0))
    assert params["lowpass_hz"] == pytest.approx(700.0)
    assert band_db(x, 1500, 4000) - band_db(y, 1500, 4000) > 40


def test_aliasing_folds_a_tone_down_to_the_reduced_nyquist_mirror():
    # Factor 2 (reduced rate 11025 Hz): a 9 kHz tone folds to 11025 - 9000 = 2025 Hz.
    severity = math.log(2 / 1.25) / math.log(10 / 1.25)
    y, params = effects.aliasing(tone(9000.0), SR, severity, np.random.default_rng(0))
    assert params["reduced_rate_hz"] == pytest.approx(SR / 2, rel=1e-6)
    f, p = signal.welch(y, SR, nperseg=4096)
    assert abs(f[np.argmax(p)] - 2025.0) < 2 * SR / 4096


def test_eq_tilt_changes_level_by_the_slope_per_octave():
    y1, params = effects.eq_tilt(tone(1000.0), SR, 0.5, np.random.default_rng(0))
    y2, _ = effects.eq_tilt(tone(2000.0), SR, 0.5, np.random.default_rng(0))
    gain = 20 * np.log10(np.std(y2[2000:-2000]) / np.std(y1[2000:-2000]))
    assert gain == pytest.approx(params["db_per_octave"], abs=0.2)
    assert abs(params["db_per_octave"]) == pytest.approx(4.5)


def test_bit_depth_leaves_at_most_two_to_the_bits_levels():
    x = music_like()
    for seed in range(3):
        y, params = effects.bit_depth(x, SR, 1.0, np.random.default_rng(seed))
        assert params["bits"] == 3
        assert np.unique(np.round(y, 9)).size <= 2**3 + 1


def test_a_weighting_matches_the_standard_table():
    # IEC 61672-1 table values, dB, at nominal frequencies (31.5 Hz is 31.6 exactly).
    table = {31.5: -39.4, 50.0: -30.2, 100.0: -19.1, 1000.0: 0.0, 4000.0: 1.0, 10000.0: -2.5}
    got = loudness.a_weighting_db(np.array(list(table)))
    assert np.allclose(got, list(table.values()), atol=0.15)
    t = np.arange(SR) / SR
    tone = np.sin(2 * np.pi * 100.0 * t)
    heard = 20 * np.log10(loudness.a_weighted_rms(tone, SR) / effects.rms(tone))
    assert heard == pytest.approx(-19.1, abs=0.1)


def test_hum_is_added_at_the_stated_heard_level():
    x = music_like()
    for seed in range(4):
        y, params = effects.hum(x, SR, 0.5, np.random.default_rng(seed))
        heard = 20 * np.log10(loudness.a_weighted_rms(y - x, SR) / loudness.a_weighted_rms(x, SR))
        assert heard == pytest.approx(params["level_dba"], abs=0.01)
        assert params["level_dba"] == pytest.approx(-30.0)
        # Unweighted, the low tone is far louder than it is heard.
        assert 20 * np.log10(effects.rms(y - x) / effects.rms(x)) > params["level_dba"] + 3


def test_dropouts_silence_at_least_the_stated_share():
    x = music_like() + 0.01
    y, params = effects.dropouts(x, SR, 1.0, np.random.default_rng(0))
    assert params["share_lost"] == pytest.approx(0.35)
    assert np.mean(y == 0.0) >= 0.2


def test_packet_loss_repeats_the_previous_packet():
    x = np.random.default_rng(0).standard_normal(SR)
    y, params = effects.packet_loss(x, SR, 0.5, np.random.default_rng(1))
    size = int(0.02 * SR)
    changed = [
        i
        for i in range(x.size // size)
        if not np.array_equal(y[i * size : (i + 1) * size], x[i * size : (i + 1) * size])
    ]
    assert len(changed) == params["packets_lost"] > 0
    for i in changed:
        # The head of a lost packet is the previous (possibly concealed) packet's head.
        assert np.allclose(y[i * size : i * size + 100], y[(i - 1) * size : (i - 1) * size + 100])


def test_mono_fold_is_the_comb_filter_it_states():
    x = music_like()
    y, params = effects.mono_fold(x, SR, 0.6, np.random.default_rng(2))
    delay = round(params["delay_ms"] * SR / 1000)
    b = np.zeros(delay + 1)
    b[0], b[delay] = 1.0, params["polarity"] * params["weight"]
    assert np.allclose(y, signal.lfilter(b / (1 + params["weight"]), [1.0], x))


def test_dynamics_reduce_the_crest_factor_more_when_severer():
    x = music_like() * (1 + 3 * (np.arange(2 * SR) > SR))
    crest = []
    for severity in (0.1, 1.0):
        y, _ = effects.dynamics(x, SR, severity, np.random.default_rng(0))
        crest.append(np.max(np.abs(y)) / effects.rms(y))
    assert crest[1] < crest[0]


def test_time_stretch_artefacts_grow_with_severity():
    """Severity grades the vocoder's change; before, 1.03x and 2.5x moved the log-mel alike."""
    t = np.arange(2 * SR) / SR
    notes = music_like(2.0) * np.exp(-6.0 * (t % 0.25))  # a struck note every 0.25 s

    def log_spectrum(y):
        _, _, z = signal.stft(y, SR, nperseg=1024)
        return np.log(np.abs(z) ** 2 + 1e-8)

    change = []
    for severity in (0.0, 0.1, 0.5, 1.0):
        y, params = effects.time_stretch(notes, SR, severity, np.random.default_rng(0))
        change.append(np.abs(log_spectrum(y) - log_spectrum(notes)).mean())
        assert params["share"] == severity
    assert change[0] < 1e-3 < change[1] and change[1] < 0.5 * change[2] < change[3]


def test_chains_follow_the_recording_order_and_reject_unknown_kinds():
    settings = ChainSettings(kinds=("reverb", "mp3", "hum", "dropouts"), count_weights=(0, 0, 1))
    rng = np.random.default_rng(0)
    for _ in range(10):
        chain = draw_chain(rng, settings)
        kinds = [k for k, _ in chain]
        assert len(kinds) == 3 == len(set(kinds))
        assert kinds == sorted(kinds, key=CHAIN_ORDER.index)
        assert all(0.05 <= s <= 1.0 for _, s in chain)
    assert set(CHAIN_ORDER) == set(KINDS)
    with pytest.raises(ValueError, match="holdout_families: unknown degradation kind.*'warble'"):
        check_kinds(["warble"], "holdout_families")


def test_missing_codec_tool_names_the_debian_package(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(codecs.CodecError, match="'lame'.*Debian package 'lame'"):
        codecs.mp3(music_like(), SR, 0.5, np.random.default_rng(0))
    with pytest.raises(codecs.CodecError, match="opus-tools"):
        codecs.opus(music_like(), SR, 0.5, np.random.default_rng(0))


needs_codecs = pytest.mark.skipif(
    any(shutil.which(t) is None for t in codecs.TOOL_PACKAGES),
    reason="lame, vorbis-tools and opus-tools are not installed (scripts/setup.sh)",
)


@needs_codecs
@pytest.mark.parametrize("kind", ["mp3", "vorbis", "opus"])
def test_codecs_are_transparent_when_mild_and_lose_highs_when_harsh(kind):
    x = music_like(2.0) + tone(5000.0, 2.0) * 0.2 + tone(7000.0, 2.0) * 0.1
    mild, _ = apply_chain(x, SR, [(kind, 0.0)], np.random.default_rng(0))
    harsh, applied = apply_chain(x, SR, [(kind, 1.0)], np.random.default_rng(0))
    assert mild.shape == harsh.shape == x.shape
    # Aligned to the input: mild coding keeps the waveform.
    assert np.corrcoef(mild, x)[0, 1] > 0.95
    assert band_db(x, 4500, 8000) - band_db(harsh, 4500, 8000) > 15
    assert applied[0]["params"]
