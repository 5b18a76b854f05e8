import os

import numpy as np
import pytest
import soundfile as sf

from qamdt.audio_io import (
    audio_info,
    crop_or_pad,
    load_audio,
    normalize_waveform,
    resample,
    save_audio,
    to_mono,
    validate_waveform,
)
from qamdt.errors import AudioError

SR = 16000


def _sine(freq, seconds, sr, amp=0.5, phase=0.0):
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def _noise(n, seed=0, amp=0.3):
    return (amp * np.random.default_rng(seed).uniform(-1, 1, n)).astype(np.float32)


# --- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".wav", ".flac"])
def test_round_trip_pcm16(tmp_path, ext):
    wave = _noise(SR)
    path = tmp_path / "sub" / f"clip{ext}"
    save_audio(path, wave, SR)
    loaded, sr = load_audio(path)
    assert sr == SR
    assert loaded.dtype == np.float32
    assert loaded.shape == wave.shape
    assert np.max(np.abs(loaded - wave)) <= 1 / 32768
    assert not [p for p in os.listdir(path.parent) if p.endswith(".tmp")]


def test_round_trip_stereo_and_float(tmp_path):
    wave = np.stack([_noise(SR, 1), _noise(SR, 2)])
    path = tmp_path / "stereo.wav"
    save_audio(path, wave, SR, subtype="FLOAT")
    loaded, _ = load_audio(path, mono=False)
    assert loaded.shape == (2, SR)
    np.testing.assert_array_equal(loaded, wave)
    info = audio_info(path)
    assert info["samplerate"] == SR and info["channels"] == 2 and info["frames"] == SR
    assert info["duration"] == pytest.approx(1.0)


def test_mono_file_with_mono_false_has_channel_axis(tmp_path):
    path = tmp_path / "m.wav"
    save_audio(path, _noise(1000), SR)
    loaded, _ = load_audio(path, mono=False)
    assert loaded.shape == (1, 1000)


def test_save_clips_pcm(tmp_path):
    path = tmp_path / "loud.wav"
    save_audio(path, np.array([2.0, -3.0, 0.5], dtype=np.float32), SR)
    loaded, _ = load_audio(path)
    assert loaded.max() <= 1.0 and loaded.min() >= -1.0
    assert loaded[0] == pytest.approx(1.0, abs=1 / 32768)


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "a.flac"
    save_audio(path, _noise(500, 1), SR)
    save_audio(path, _noise(800, 2), SR)
    assert audio_info(path)["frames"] == 800
    assert os.listdir(tmp_path) == ["a.flac"]


def test_save_rejects_bad_input(tmp_path):
    bad = _noise(100)
    bad[3] = np.nan
    with pytest.raises(AudioError, match="nan.wav"):
        save_audio(tmp_path / "nan.wav", bad, SR)
    bad[3] = np.inf
    with pytest.raises(AudioError, match="inf.wav"):
        save_audio(tmp_path / "inf.wav", bad, SR)
    with pytest.raises(AudioError, match="x.mp3"):
        save_audio(tmp_path / "x.mp3", _noise(100), SR)
    assert os.listdir(tmp_path) == []


def test_stereo_downmix_is_channel_mean(tmp_path):
    left, right = _sine(300, 0.5, SR), _noise(SR // 2)
    path = tmp_path / "st.wav"
    save_audio(path, np.stack([left, right]), SR, subtype="FLOAT")
    mono, _ = load_audio(path)
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-7)
    np.testing.assert_allclose(to_mono(np.stack([left, right])), (left + right) / 2, atol=1e-7)


def test_resample_keeps_frequency_and_length(tmp_path):
    freq, src, dst = 1000.0, 44100, 22050
    wave = _sine(freq, 1.0, src)
    out = resample(wave, src, dst)
    assert out.shape == (dst,)
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * dst / len(out)
    assert peak_hz == pytest.approx(freq, abs=1.0)

    path = tmp_path / "hi.wav"
    save_audio(path, wave, src)
    loaded, sr = load_audio(path, sample_rate=dst)
    assert sr == dst and loaded.shape == (dst,) and loaded.dtype == np.float32
    stereo = resample(np.stack([wave, wave]), src, dst)
    assert stereo.shape == (2, dst)
    np.testing.assert_allclose(stereo[0], out, atol=1e-6)
    assert resample(wave, src, src) is wave


def test_offset_duration_equals_slicing(tmp_path):
    wave = _noise(3 * SR)
    path = tmp_path / "long.flac"
    save_audio(path, wave, SR)
    full, _ = load_audio(path)
    part, _ = load_audio(path, offset=1.25, duration=0.5)
    start = int(1.25 * SR)
    np.testing.assert_array_equal(part, full[start : start + SR // 2])
    tail, _ = load_audio(path, offset=2.5)
    np.testing.assert_array_equal(tail, full[int(2.5 * SR) :])
    # A span past the end is cut short.
    short, _ = load_audio(path, offset=2.9, duration=1.0)
    assert len(short) == 3 * SR - int(2.9 * SR)


def test_normalize_waveform():
    wave = _sine(200, 0.5, SR, amp=0.1) + 0.3
    out = normalize_waveform(wave)
    assert abs(out.mean()) < 1e-6
    assert np.max(np.abs(out)) == pytest.approx(0.5, rel=1e-5)
    out = normalize_waveform(np.stack([wave, 2 * wave]), peak=0.9)
    assert np.allclose(out.mean(axis=-1), 0, atol=1e-6)
    assert np.max(np.abs(out)) == pytest.approx(0.9, rel=1e-5)
    assert np.max(np.abs(out[0])) == pytest.approx(0.45, rel=1e-4)


# --- crop_or_pad -----------------------------------------------------------------------


def test_crop_or_pad_pads_at_end():
    wave = np.arange(1, 6, dtype=np.float32)
    out, start = crop_or_pad(wave, 8, mode="random", rng=np.random.default_rng(0))
    assert start == 0
    np.testing.assert_array_equal(out, [1, 2, 3, 4, 5, 0, 0, 0])
    out, _ = crop_or_pad(np.stack([wave, -wave]), 7)
    assert out.shape == (2, 7)
    np.testing.assert_array_equal(out[1], [-1, -2, -3, -4, -5, 0, 0])


def test_crop_or_pad_deterministic_modes():
    wave = np.arange(10)
    out, start = crop_or_pad(wave, 4, mode="start")
    assert start == 0
    np.testing.assert_array_equal(out, [0, 1, 2, 3])
    out, start = crop_or_pad(wave, 4, mode="center")
    assert start == 3
    np.testing.assert_array_equal(out, [3, 4, 5, 6])
    out, start = crop_or_pad(np.stack([wave, wave]), 4, mode="center")
    assert out.shape == (2, 4) and start == 3
    out, start = crop_or_pad(wave, 10, mode="center")
    assert start == 0 and np.array_equal(out, wave)


def test_crop_or_pad_random_is_seeded_and_in_range():
    wave = np.arange(100)
    first = [crop_or_pad(wave, 30, "random", np.random.default_rng(7))[1] for _ in range(3)]
    assert len(set(first)) == 1
    rng = np.random.default_rng(1)
    starts = []
    for _ in range(200):
        out, start = crop_or_pad(wave, 30, "random", rng)
        assert 0 <= start <= 70
        np.testing.assert_array_equal(out, wave[start : start + 30])
        starts.append(start)
    assert len(set(starts)) > 20
    assert min(starts) < 10 and max(starts) > 60


def test_crop_or_pad_bad_arguments():
    with pytest.raises(ValueError, match="rng"):
        crop_or_pad(np.zeros(10), 5, mode="random")
    with pytest.raises(ValueError, match="mode"):
        crop_or_pad(np.zeros(10), 5, mode="end")
    with pytest.raises(ValueError, match="length"):
        crop_or_pad(np.zeros(10), 0)


# --- bad inputs: every error names the file ---------------------------------------------


def _assert_names(excinfo, path):
    assert os.path.basename(os.fspath(path)) in str(excinfo.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.wav"
    with pytest.raises(AudioError, match="not found") as excinfo:
        load_audio(path)
    _assert_names(excinfo, path)
    with pytest.raises(AudioError) as excinfo:
        audio_info(path)
    _assert_names(excinfo, path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "garbage.wav"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(AudioError, match="cannot be read") as excinfo:
        load_audio(path)
    _assert_names(excinfo, path)
    with pytest.raises(AudioError) as excinfo:
        audio_info(path)
    _assert_names(excinfo, path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match="empty") as excinfo:
        load_audio(path)
    _assert_names(excinfo, path)


def test_zero_length_wav(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(AudioError, match="zero length") as excinfo:
        load_audio(path)
    _assert_names(excinfo, path)


def test_six_channels(tmp_path):
    path = tmp_path / "surround.wav"
    sf.write(path, _noise(600).reshape(100, 6), SR)
    with pytest.raises(AudioError, match="has 6 channels; at most 2 are supported") as excinfo:
        load_audio(path)
    _assert_names(excinfo, path)


@pytest.mark.parametrize("bad,word", [(np.nan, "NaN"), (np.inf, "infinite"), (-np.inf, "inf")])
def test_non_finite_samples(tmp_path, bad, word):
    wave = _noise(1000)
    wave[123] = bad
    path = tmp_path / "nonfinite.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    with pytest.raises(AudioError, match=word) as excinfo:
        load_audio(path)
    _assert_names(excinfo, path)


def test_silent_file(tmp_path):
    path = tmp_path / "quiet.wav"
    sf.write(path, np.zeros(SR, dtype=np.float32), SR)
    with pytest.raises(AudioError, match="silent") as excinfo:
        load_audio(path)
    _assert_names(excinfo, path)
    wave, _ = load_audio(path, allow_silent=True)
    assert wave.shape == (SR,) and not wave.any()


def test_silence_threshold_keyword(tmp_path):
    path = tmp_path / "soft.wav"
    save_audio(path, np.full(100, 1e-3, dtype=np.float32), SR, subtype="FLOAT")
    load_audio(path)
    with pytest.raises(AudioError, match="silent"):
        load_audio(path, silence_threshold=1e-2)


def test_absurd_sample_rate(tmp_path):
    path = tmp_path / "slow.wav"
    sf.write(path, _noise(1000), 100)
    with pytest.raises(AudioError, match="100 Hz") as excinfo:
        load_audio(path)
    _assert_names(excinfo, path)
    with pytest.raises(AudioError, match="500000 Hz"):
        validate_waveform(_noise(10), 500000, path="synth")


def test_offset_past_end(tmp_path):
    path = tmp_path / "short.wav"
    save_audio(path, _noise(SR), SR)
    with pytest.raises(AudioError, match="beyond the end") as excinfo:
        load_audio(path, offset=1.5)
    _assert_names(excinfo, path)
    with pytest.raises(AudioError, match="beyond the end"):
        load_audio(path, offset=1.0)


def test_validate_waveform_on_arrays():
    validate_waveform(_noise(100), SR)
    validate_waveform(np.zeros(100), SR, allow_silent=True)
    with pytest.raises(AudioError, match=r"^<array>: .*silent"):
        validate_waveform(np.zeros(100), SR)
    with pytest.raises(AudioError, match="zero length"):
        validate_waveform(np.zeros(0), SR)
    with pytest.raises(AudioError, match="has 3 channels"):
        validate_waveform(np.ones((3, 10)), SR)
    with pytest.raises(AudioError, match=r"\(channels, samples\)"):
        validate_waveform(np.ones((100, 2)), SR)
    with pytest.raises(AudioError, match="^gen.wav: .*NaN"):
        validate_waveform(np.array([0.1, np.nan]), SR, path="gen.wav")
