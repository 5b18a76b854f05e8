import numpy as np
import pytest

from qamdt.audio_io import prepare_clips
from qamdt.audio_windows import padded_windows, split_windows, window_starts


def test_window_starts():
    assert window_starts(50, 100) == [0]
    assert window_starts(100, 100) == [0]
    # Up to 5 % longer: one centred window.
    assert window_starts(104, 100) == [2]
    assert window_starts(250, 100) == [0, 75, 150]
    assert window_starts(200, 100) == [0, 100]
    with pytest.raises(ValueError):
        window_starts(10, 0)
    wave = np.arange(250, dtype=np.float32)
    windows = split_windows(wave, 100)
    assert [w[0] for w in windows] == [0, 75, 150]
    assert all(w.shape == (100,) for w in windows)


def test_padded_windows_cover_the_clip_or_pad_it():
    windows = padded_windows(np.arange(25, dtype=np.float32), 10)
    assert [int(w[0]) for w, _ in windows] == [0, 8, 15]
    assert [n for _, n in windows] == [10, 10, 10]
    ((short, valid),) = padded_windows(np.ones((2, 4), dtype=np.float32), 6, fill=-1.0)
    assert valid == 4 and short.shape == (2, 6) and short.dtype == np.float32
    assert (short[:, 4:] == -1.0).all() and (short[:, :4] == 1.0).all()


def test_prepare_clips_mono_resampled_and_normalised():
    rng = np.random.default_rng(0)
    stereo = rng.standard_normal((2, 8000)).astype(np.float32)
    mono, kept = prepare_clips([stereo, 0.1 * stereo[0]], [8000, 16000], 16000)
    assert mono.dtype == np.float32 and mono.shape == (16000,)
    assert np.isclose(np.abs(mono).max(), 0.5)
    kept_level = prepare_clips([0.1 * stereo[0]], 16000, 16000, peak=None)[0]
    np.testing.assert_array_equal(kept_level, 0.1 * stereo[0])
    assert np.isclose(np.abs(kept).max(), 0.5)
    with pytest.raises(ValueError, match="2 clips but 1 sample rates"):
        prepare_clips([stereo, stereo], [8000], 16000)
    with pytest.raises(ValueError, match="no audio"):
        prepare_clips([], 16000, 16000)
