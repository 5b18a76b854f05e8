import librosa
import numpy as np
import pytest
import torch

from qamdt.audio_spec import get_audio_spec
from qamdt.mel import MelFrontEnd

PRESETS = ["paper", "embedded"]

# float32 torch against float64 librosa: the log-mel may differ by float32 rounding, so
# compare with a tolerance, and only where the reference mel energy is above the log floor
# (below it both sides are clamped to log(floor) anyway).
LOG_MEL_ATOL = 1e-3


def _test_signal(spec, seed=0, n=None):
    n = spec.clip_samples if n is None else n
    rng = np.random.default_rng(seed)
    t = np.arange(n) / spec.sample_rate
    wave = np.zeros(n)
    for freq, amp in [(220.0, 0.3), (1234.5, 0.2), (3700.0, 0.1), (6100.0, 0.05)]:
        wave += amp * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))
    wave += 0.02 * rng.standard_normal(n)
    return wave


def _librosa_log_mel(wave, spec):
    pad = (spec.n_fft - spec.hop_length) // 2
    padded = np.pad(wave, (pad, pad), mode="reflect")
    mel = librosa.feature.melspectrogram(
        y=padded,
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
    return mel, np.log(np.maximum(mel, spec.log_floor))


@pytest.fixture(scope="module", params=PRESETS)
def front(request):
    return MelFrontEnd(request.param)


def test_matches_librosa_and_frame_count(front):
    spec = front.spec
    wave = _test_signal(spec)
    ref_mel, ref = _librosa_log_mel(wave, spec)
    out = front(torch.from_numpy(wave).float())
    assert out.shape == (spec.n_mels, spec.clip_frames)
    assert ref.shape == out.shape
    assert front.frames_for(spec.clip_samples) == spec.clip_frames
    above = ref_mel > spec.log_floor
    assert above.mean() > 0.9
    diff = np.abs(out.numpy().astype(np.float64) - ref)
    assert diff[above].max() < LOG_MEL_ATOL, diff[above].max()


def test_magnitude_matches_librosa_stft(front):
    spec = front.spec
    wave = _test_signal(spec, seed=3, n=spec.sample_rate)
    pad = (spec.n_fft - spec.hop_length) // 2
    ref = np.abs(
        librosa.stft(
            np.pad(wave, (pad, pad), mode="reflect"),
            n_fft=spec.n_fft,
            hop_length=spec.hop_length,
            win_length=spec.win_length,
            window="hann",
            center=False,
        )
    )
    mag = front.magnitude(torch.from_numpy(wave)).numpy()
    assert mag.shape == ref.shape == (spec.n_fft // 2 + 1, front.frames_for(len(wave)))
    np.testing.assert_allclose(mag, ref, rtol=1e-3, atol=1e-3)


def test_frames_for_other_lengths(front):
    hop = front.spec.hop_length
    for n in [front.min_samples, hop * 7 + 3, 12345]:
        assert front.frames_for(n) == n // hop
        assert front(torch.zeros(n)).shape[-1] == n // hop
    with pytest.raises(ValueError, match="at least"):
        front(torch.zeros(front.min_samples - 1))


def test_batched_equals_per_item(front):
    spec = front.spec
    # Four seconds: long enough that the CPU path splits the batch into pieces.
    n = 4 * spec.sample_rate
    batch = torch.stack(
        [torch.from_numpy(_test_signal(spec, seed=s, n=n)).float() for s in range(3)]
    )
    out = front(batch)
    assert out.shape == (3, spec.n_mels, front.frames_for(n))
    for i in range(3):
        torch.testing.assert_close(out[i], front(batch[i]), rtol=1e-5, atol=1e-5)


def test_one_d_gives_two_d_and_numpy(front):
    spec = front.spec
    wave = _test_signal(spec, n=4 * spec.hop_length * 10)
    out = front(torch.from_numpy(wave))
    assert out.ndim == 2 and out.dtype == torch.float32
    arr = front.mel_numpy(wave)
    assert isinstance(arr, np.ndarray) and arr.shape == tuple(out.shape)
    np.testing.assert_allclose(arr, out.numpy(), atol=1e-6)
    with pytest.raises(TypeError, match="mel_numpy"):
        front(wave)
    with pytest.raises(ValueError, match="batch"):
        front(torch.zeros(1, 1, 5000))


@pytest.mark.parametrize("preset", PRESETS)
def test_sine_energy_in_band_containing_440(preset):
    spec = get_audio_spec(preset)
    front = MelFrontEnd(spec)
    t = np.arange(spec.sample_rate) / spec.sample_rate
    out = front.mel_numpy(0.5 * np.sin(2 * np.pi * 440.0 * t))
    band_energy = out.mean(axis=1)
    # Centre frequencies of the mel bands; the triangle peaking nearest 440 Hz wins.
    centres = librosa.mel_frequencies(spec.n_mels + 2, fmin=spec.fmin, fmax=spec.fmax)[1:-1]
    expected = int(np.argmin(np.abs(centres - 440.0)))
    assert abs(int(np.argmax(band_energy)) - expected) <= 1
    basis = front.mel_basis.numpy()
    bin_440 = int(round(440.0 * spec.n_fft / spec.sample_rate))
    assert basis[np.argmax(band_energy), bin_440] > 0


def test_float64_module(front):
    spec = front.spec
    wave = _test_signal(spec, n=spec.sample_rate)
    module = MelFrontEnd(spec).to(torch.float64)
    assert module.mel_basis.dtype == torch.float64 and module.window.dtype == torch.float64
    out64 = module(torch.from_numpy(wave))
    assert out64.dtype == torch.float64
    ref_mel, ref = _librosa_log_mel(wave, spec)
    above = ref_mel > spec.log_floor
    # Not exact even in float64: the 1e-9 inside the square root shifts weak bins slightly.
    assert np.abs(out64.numpy() - ref)[above].max() < 1e-4
    torch.testing.assert_close(out64.float(), front(torch.from_numpy(wave)), atol=1e-3, rtol=0)


def test_buffers_are_not_persistent(front):
    assert front.state_dict() == {}
    assert {name for name, _ in front.named_buffers()} == {"mel_basis", "window"}
    torch.testing.assert_close(front.window, torch.hann_window(front.spec.win_length))


def test_gradient_flows_and_silence_is_finite(front):
    spec = front.spec
    n = spec.hop_length * 40
    wave = torch.from_numpy(_test_signal(spec, n=n)).float().requires_grad_(True)
    front(wave).sum().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0

    silent = torch.zeros(2, n, requires_grad=True)
    front.magnitude(silent).sum().backward()
    assert torch.isfinite(silent.grad).all()
    silent.grad = None
    out = front(silent)
    assert torch.allclose(out, torch.full_like(out, np.log(spec.log_floor)))
    out.sum().backward()
    assert torch.isfinite(silent.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(front):
    spec = front.spec
    wave = torch.from_numpy(_test_signal(spec)).float()
    gpu = MelFrontEnd(spec).to("cuda")
    out = gpu(torch.stack([wave, wave]))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out[0].cpu(), front(wave), atol=1e-3, rtol=0)
