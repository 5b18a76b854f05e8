import numpy as np
import pytest
from scipy import signal

from qamdt.corpus.degrade import (
    DEGRADATIONS,
    IMPAIRMENT_WEIGHTS,
    DegradationSettings,
    add_noise,
    band_limit,
    crackle_hum,
    degrade_clip,
    hard_clip,
    quantize,
    reference_quality,
    reverberate,
)

SR = 22050


def music_like(seconds=2.0, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    freqs = [220, 330, 440, 660]
    x = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6)) / (i + 1) for i, f in enumerate(freqs))
    return 0.5 * x / np.abs(x).max()


def band_energy_db(x, low, high):
    f, p = signal.welch(x, SR, nperseg=4096)
    return 10 * np.log10(np.sum(p[(f >= low) & (f < high)]) + 1e-30)


@pytest.mark.parametrize("severity", [0.0, 0.5, 1.0])
def test_noise_reaches_the_stated_snr(severity):
    x = music_like()
    y, params = add_noise(x, SR, severity, np.random.default_rng(1))
    measured = 10 * np.log10(np.sum(x**2) / np.sum((y - x) ** 2))
    assert params["snr_db"] == pytest.approx(40 - 38 * severity, abs=0.01)
    assert measured == pytest.approx(params["snr_db"], abs=0.05)


def test_band_limit_removes_energy_above_the_cutoff():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SR * 2)
    y, params = band_limit(x, SR, 1.0, np.random.default_rng(2))
    assert params["lowpass_hz"] == pytest.approx(1000.0, rel=1e-3)
    drop = band_energy_db(x, 3000, 8000) - band_energy_db(y, 3000, 8000)
    assert drop > 60
    assert abs(band_energy_db(x, 500, 900) - band_energy_db(y, 500, 900)) < 3


def test_clipping_flattens_peaks_at_the_stated_level():
    x = music_like()
    y, params = hard_clip(x, SR, 0.5, np.random.default_rng(0))
    level = np.abs(x).max() * 10 ** (-params["clip_db_below_peak"] / 20)
    assert np.abs(y).max() == pytest.approx(level)
    assert np.mean(np.isclose(np.abs(y), level)) > 0.05


def test_quantisation_leaves_at_most_two_to_the_bits_levels():
    x = music_like()
    for seed in range(4):
        y, params = quantize(x, SR, 1.0, np.random.default_rng(seed))
        assert params["bits"] == 3
        assert np.unique(np.round(y, 12)).size <= 2 ** params["bits"] + 1


def test_hum_appears_at_the_mains_frequency():
    x = music_like()
    y, params = crackle_hum(x, SR, 1.0, np.random.default_rng(3))
    f, p = signal.welch(y - x, SR, nperseg=SR // 2)
    low = f < 400
    assert f[low][np.argmax(p[low])] == pytest.approx(params["mains_hz"], abs=2.5)


def test_reverb_leaves_a_decaying_tail():
    x = np.zeros(SR * 3)
    x[:2000] = np.random.default_rng(0).standard_normal(2000)
    y, params = reverberate(x, SR, 1.0, np.random.default_rng(1))
    assert params["rt60_s"] == pytest.approx(4.0)
    tail = y[SR : 2 * SR]
    assert np.sqrt(np.mean(tail**2)) > 1e-3
    assert np.sqrt(np.mean(y[2 * SR :] ** 2)) < np.sqrt(np.mean(tail**2))


def test_reference_quality_hand_computed():
    assert reference_quality([]) == 5.0
    one = [{"type": "noise", "severity": 0.5}]
    assert reference_quality(one) == pytest.approx(1 + 4 * (1 - 0.95 * 0.5))
    two = one + [{"type": "reverb", "severity": 1.0}]
    assert reference_quality(two) == pytest.approx(1 + 4 * (1 - 0.475) * (1 - 0.7), abs=1e-4)
    assert set(IMPAIRMENT_WEIGHTS) == set(DEGRADATIONS)


def test_degrade_clip_is_seeded_and_respects_the_clean_share():
    x = music_like(1.0)
    settings = DegradationSettings()
    a, applied_a = degrade_clip(x, SR, np.random.default_rng(7), settings)
    b, applied_b = degrade_clip(x, SR, np.random.default_rng(7), settings)
    assert applied_a == applied_b and np.array_equal(a, b)
    never = DegradationSettings(clean_fraction=0.0)
    always = DegradationSettings(clean_fraction=1.0)
    for seed in range(20):
        y, applied = degrade_clip(x, SR, np.random.default_rng(seed), never)
        assert 1 <= len(applied) <= 3 and np.abs(y).max() <= 0.99 + 1e-9
        assert len({d["type"] for d in applied}) == len(applied)
        assert degrade_clip(x, SR, np.random.default_rng(seed), always)[1] == []


def test_settings_reject_unknown_degradations():
    with pytest.raises(ValueError, match="unknown degradation"):
        DegradationSettings(kinds=("noise", "wow_and_flutter"))
