"""Long-form, continuation, audio-to-audio and inpainting on a tiny pipeline."""

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from test_pipeline import tiny_pipeline

from qamdt.cli.main import main
from qamdt.diffusion.inpainting import repaint_schedule, truncated_start
from qamdt.errors import ConfigError
from qamdt.generation.modes import evenly_spaced_frames
from qamdt.generation.settings import GenerationSettings
from qamdt.generation.sidecar import read_sidecar
from qamdt.generation.writer import generate_to_folder
from qamdt.mel import MelFrontEnd
from qamdt.models.chunked import overlap_add, window_starts

RATE = 22050
BLOCK = 4 * 256  # samples per latent frame of the embedded preset with a 4x VAE
WINDOW = 0.5  # seconds: 11 latent frames, so a few seconds make several windows


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def song(tmp_path_factory):
    """1.3 s of stereo chords at 44.1 kHz: resampled and downmixed on the way in."""
    t = np.arange(int(1.3 * 44100)) / 44100
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 660 * t)
    right = 0.3 * np.sin(2 * np.pi * 330 * t)
    path = tmp_path_factory.mktemp("audio") / "song.wav"
    sf.write(path, np.stack([left, right], 1).astype(np.float32), 44100)
    return path


def call(pipeline, **kw):
    options = {"num_inference_steps": 2, "generator": 3, "window_seconds": WINDOW}
    options.update(kw)
    return pipeline("a calm piano piece", **options)


def input_latent(pipeline, path, samples):
    """The input's latent as the pipeline encodes it (mono, 22.05 kHz, zero-padded)."""
    from qamdt.audio_io import load_audio

    wave, _ = load_audio(path, RATE)
    wave = np.pad(wave[:samples], (0, -samples % BLOCK))
    # Outside autograd, as in the pipeline (the VAE then runs clip by clip).
    with torch.no_grad():
        mel = MelFrontEnd("embedded")(torch.from_numpy(wave)).T[None]
        return pipeline.vae.encode(mel)


def test_windows_and_crossfade_helpers():
    assert window_starts(10, 10, 2) == [0] and window_starts(25, 10, 2) == [0, 8, 15]
    with pytest.raises(ValueError, match="overlap"):
        window_starts(25, 4, 4)
    signal = torch.randn(2, 25 * 3)
    # Windows of the same signal crossfade back into the signal.
    out = overlap_add(lambda a, b: signal[:, a * 3 : b * 3], 25, 10, 2, 3)
    assert torch.allclose(out, signal, atol=1e-6)
    moves = repaint_schedule(6, 2, 3)
    assert moves[:4] == [(0, 1), (1, 2), (2, 0), (0, 1)]
    assert sum(1 for a, b in moves if b > a) == 6 + 2 * 2 * 2 and moves[-1] == (5, 6)
    assert truncated_start(10, 0.0) == 10 and truncated_start(10, 1.0) == 0
    assert truncated_start(10, 0.5) == 5


def test_windows_keep_one_spacing_to_the_end():
    assert evenly_spaced_frames(33, 0, 11, 3) == 35
    assert evenly_spaced_frames(27, 0, 11, 3) == 27  # 11 + 2 x 8: an exact fit
    assert evenly_spaced_frames(11, 0, 11, 3) == 11 and evenly_spaced_frames(9, 0, 11, 3) == 9
    # A continuation's first window starts `overlap` frames before the first new frame.
    assert evenly_spaced_frames(30, 5, 11, 3) == 32
    for frames in range(12, 60):
        sampled = evenly_spaced_frames(frames, 0, 11, 3)
        starts = window_starts(sampled, 11, 3)
        assert sampled - 8 < frames <= sampled and set(np.diff(starts)) == {8}


def test_long_form_lengths_seeds_and_windows(pipeline):
    a = call(pipeline, audio_length_in_s=1.5)
    assert a.audios.shape == (1, round(1.5 * RATE))
    assert a.latents.shape[2] == -(-round(1.5 * RATE) // BLOCK) == 33
    facts = a.mode_facts
    assert facts["mode"] == "long-form" and len(facts["windows"]) == 4
    # Windows of 11 frames, each repeating 3 of the one before: starts 0, 8, 16, 24. The
    # last runs 2 frames past the 33 wanted, which are sampled and cut.
    frame = BLOCK / RATE
    assert [w[0] for w in facts["windows"]] == pytest.approx(
        [0, 8 * frame, 16 * frame, 24 * frame], abs=1e-4
    )
    assert facts["windows"][-1][1] == pytest.approx(35 * frame, abs=1e-4)
    assert torch.equal(
        call(pipeline, audio_length_in_s=1.5, output_type="latent").latents, a.latents
    )
    other = call(pipeline, audio_length_in_s=1.5, generator=4, output_type="latent")
    assert not torch.equal(other.latents, a.latents)
    # Candidates, prompts and float levels go through the windows as in a plain call.
    many = pipeline(["a", "b"], num_inference_steps=1, audio_length_in_s=0.8,
                    window_seconds=WINDOW, num_waveforms_per_prompt=2, quality_level=4.5,
                    generator=1)  # fmt: skip
    assert many.audios.shape == (4, round(0.8 * RATE)) and many.prompts == ["a", "a", "b", "b"]
    # One window or less: the plain path, whatever the window setting.
    assert call(pipeline, audio_length_in_s=0.4).mode_facts == {"mode": "text"}


def test_long_form_memory_stays_flat(pipeline, monkeypatch):
    seen = {"vae": [], "vocoder": [], "transformer": []}
    decode = pipeline.vae.decode
    monkeypatch.setattr(
        pipeline.vae, "decode", lambda z: seen["vae"].append(z.shape[2]) or decode(z)
    )

    def vocoder(mel):  # only the windows' sizes matter here, not Griffin-Lim's sound
        seen["vocoder"].append(mel.shape[1])
        return torch.zeros(len(mel), mel.shape[1] * 256)

    monkeypatch.setattr(pipeline.vocoder, "forward", vocoder)
    hook = pipeline.transformer.register_forward_hook(
        lambda module, args, out: seen["transformer"].append(args[0].shape[2])
    )
    try:
        largest, calls = [], []
        for seconds in (12.0, 24.0, 48.0):
            for key in seen:
                seen[key].clear()
            call(pipeline, audio_length_in_s=seconds, num_inference_steps=1, window_seconds=2.0)
            largest.append({key: max(values) for key, values in seen.items()})
            calls.append(len(seen["vae"]))
    finally:
        hook.remove()
    # Sampling windows of 44 latent frames; VAE and vocoder windows of the preset's clip.
    assert largest[0] == largest[1] == largest[2] == {"vae": 216, "vocoder": 864, "transformer": 44}
    assert calls[0] < calls[1] < calls[2]


def test_continuation_keeps_the_input(pipeline, song):
    out = call(pipeline, continue_audio=str(song), audio_length_in_s=2.0)
    assert out.audios.shape == (1, round(2.0 * RATE))
    kept = round(1.3 * RATE) // BLOCK
    reference = input_latent(pipeline, song, kept * BLOCK)
    assert torch.equal(out.latents[:, :, :kept], reference)
    assert not torch.equal(out.latents[:, :, kept:], torch.zeros_like(out.latents[:, :, kept:]))
    facts = out.mode_facts
    assert facts["mode"] == "continuation" and facts["input_audio"] == str(song)
    assert facts["input_sha256"] == hashlib.sha256(song.read_bytes()).hexdigest()
    assert facts["windows"][0][0] > 0  # windows wholly inside the input are not sampled


def test_inpainting_keeps_everything_outside_the_ranges(pipeline, song):
    samples = round(1.3 * RATE)
    reference = input_latent(pipeline, song, samples)
    ranges = [(0.2, 0.45), (0.9, 1.0)]
    resample = {"repaint_resamples": 2, "repaint_jump": 1, "num_inference_steps": 3}
    for extra in ({}, {**resample, "output_type": "latent"}):
        out = call(pipeline, inpaint_audio=song, inpaint_ranges=ranges, **extra)
        assert out.audios is None or out.audios.shape == (1, samples)
        per_frame = BLOCK / RATE
        hole = torch.zeros(out.latents.shape[2], dtype=torch.bool)
        for start, end in ranges:
            hole[int(start // per_frame) : int(np.ceil(end / per_frame))] = True
        assert torch.equal(out.latents[:, :, ~hole], reference[:, :, ~hole])
        assert not torch.allclose(out.latents[:, :, hole], reference[:, :, hole])
    wave, _ = sf.read(song)
    array = call(pipeline, inpaint_audio=(wave.T, 44100), inpaint_ranges=ranges, **resample,
                 output_type="latent")  # fmt: skip
    assert torch.equal(array.latents, out.latents)
    assert array.mode_facts["input_audio"] is None and array.mode_facts["mode"] == "inpainting"


def test_audio_to_audio_strength_ends(pipeline, song):
    samples = round(1.3 * RATE)
    reference = input_latent(pipeline, song, samples)
    zero = call(pipeline, init_audio=song, strength=0.0)
    assert torch.equal(zero.latents, reference)
    with torch.no_grad():
        round_trip = pipeline.vocoder(pipeline.vae.decode(reference).float())[:, :samples]
    assert np.array_equal(zero.audios, round_trip.numpy())
    # Strength 1 ignores the input: the same as a fresh piece of that length and seed.
    one = call(pipeline, init_audio=song, strength=1.0)
    fresh = call(pipeline, audio_length_in_s=samples / RATE)
    assert torch.equal(one.latents, fresh.latents)
    half = {"init_audio": song, "strength": 0.5, "num_inference_steps": 4}
    half5 = call(pipeline, quality_level=5, **half)
    half1 = call(pipeline, quality_level=1, output_type="latent", **half)
    assert not torch.equal(half5.latents, half1.latents)
    assert torch.equal(call(pipeline, quality_level=5, output_type="latent", **half).latents,
                       half5.latents)  # fmt: skip
    assert half5.audios.shape == (1, samples)


def test_bad_arguments_are_named(pipeline, song, tmp_path):
    cases = [
        ({"init_audio": song, "inpaint_audio": song}, "init_audio and inpaint_audio"),
        ({"inpaint_ranges": [(0, 1)]}, "inpaint_ranges: only with inpaint_audio"),
        ({"inpaint_audio": song}, "inpaint_ranges: give at least one range"),
        ({"inpaint_audio": song, "inpaint_ranges": [(1.0, 2.0)]}, "inpaint_ranges: .*ends after"),
        (
            {"inpaint_audio": song, "inpaint_ranges": [(0.5, 0.2)]},
            "inpaint_ranges: need 0 <= start",
        ),
        ({"continue_audio": song}, "audio_length_in_s: continuation needs"),
        (
            {"continue_audio": song, "audio_length_in_s": 1.0},
            "audio_length_in_s: 1.0 s must exceed",
        ),
        ({"init_audio": song, "audio_length_in_s": 5.0}, "audio_length_in_s: 5.0 s is longer"),
        ({"init_audio": tmp_path / "none.wav"}, "init_audio: .*none.wav"),
        ({"init_audio": np.zeros(100)}, "init_audio: give a file path or"),
        ({"init_audio": (np.zeros(100, np.float32), RATE)}, "init_audio: .*shorter than one"),
        ({"init_audio": song, "strength": 1.5}, "strength: must lie in"),
        ({"window_overlap": 0.9}, "window_overlap"),
        (
            {
                "inpaint_audio": song,
                "inpaint_ranges": [(0, 0.5)],
                "repaint_resamples": 2,
                "scheduler": "unipc",
            },
            "repaint_resamples",
        ),  # fmt: skip
    ]
    for options, message in cases:
        with pytest.raises(ConfigError, match=message):
            call(pipeline, **options)


def test_sidecars_and_the_command_line(pipeline, song, tmp_path, capsys):
    settings = GenerationSettings(
        num_inference_steps=1, inpaint_ranges=((0.2, 0.4),), window_seconds=WINDOW, seed=2
    )
    wavs = generate_to_folder(pipeline, ["a reel"], settings, tmp_path / "gen",
                              audio_inputs={"inpaint_audio": song})  # fmt: skip
    sidecar = read_sidecar(wavs[0].with_suffix(".json"))
    assert sidecar.settings == settings and sidecar.mode == "inpainting"
    assert sidecar.input_audio == str(song)
    assert sidecar.fields["input_sha256"] == hashlib.sha256(song.read_bytes()).hexdigest()
    assert sidecar.fields["inpaint_ranges"] == [[0.2, 0.4]]

    pipeline.save_pretrained(tmp_path / "pipe")
    base = ["generate", "x", "--model", str(tmp_path / "pipe"), "--steps", "1", "--quiet",
            "--window", str(WINDOW)]  # fmt: skip
    out = tmp_path / "cli"
    argv = [*base, "--out", str(out), "--init-audio", str(song), "--strength", "0.3"]
    assert main(argv) == 0
    written = json.loads(next(out.glob("*.json")).read_text())
    assert written["mode"] == "audio-to-audio" and written["strength"] == 0.3
    assert sf.info(next(out.glob("*.wav"))).frames == round(1.3 * RATE)
    argv = [*base, "--out", str(tmp_path / "c"), "--continue-audio", str(song), "--length", "2"]
    assert main(argv) == 0
    assert sf.info(next((tmp_path / "c").glob("*.wav"))).frames == 2 * RATE
    argv = [*base, "--out", str(tmp_path / "i"), "--inpaint-audio", str(song),
            "--inpaint", "0.1", "0.3", "--inpaint", "0.6", "0.7"]  # fmt: skip
    assert main(argv) == 0
    written = json.loads(next((tmp_path / "i").glob("*.json")).read_text())
    assert written["inpaint_ranges"] == [[0.1, 0.3], [0.6, 0.7]]
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "o"), "--strength", "3"]) == 2
    assert "--strength (strength)" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "o"), "--init-audio", "nope.wav"]) == 2
    assert "--init-audio: nope.wav: file not found" in capsys.readouterr().err


def test_seam_flux_sees_a_jump_and_not_a_smooth_join():
    from qamdt.evaluation.seams import seam_flux_ratios, window_seams

    rng = np.random.default_rng(0)
    t = np.arange(6 * RATE) / RATE
    # A steady tone with soft notes every 0.5 s: onsets everywhere, none special at 3 s.
    envelope = 0.6 + 0.4 * np.cos(2 * np.pi * 2 * t)
    steady = (0.3 * envelope * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    smooth = seam_flux_ratios(steady, [3.0])
    assert 0.5 < smooth["mean"] < 1.5
    jump = steady.copy()
    jump[3 * RATE :] = 0.3 * rng.standard_normal(3 * RATE).astype(np.float32)
    assert seam_flux_ratios(jump, [3.0])["max"] > 3 * smooth["max"]
    assert window_seams([[0, 2], [1.5, 3.5], [3, 5]]) == [2.0, 3.5]
    assert seam_flux_ratios(steady, [])["ratios"] == []


def test_pieces_and_clips_are_scored_in_excerpts_of_the_clip_length():
    from qamdt.demo.editing import excerpt_pmos

    seen = []

    def score(waves):
        # A scorer that hears loudness (as the MOS predictor's peak normalisation makes
        # it): the mean absolute sample of each excerpt.
        seen.extend(len(w) for w in waves)
        return [float(np.abs(w).mean()) for w in waves]

    rate, clip = 100, 5.0
    # A 30 s piece of six 5 s stretches at two levels; a 5 s clip; a 7.4 s and a 7.6 s one.
    piece = np.concatenate([np.full(500, 0.2 if k % 2 else 0.4) for k in range(6)])
    clips = [np.full(500, 0.3), np.full(740, 0.3), np.full(760, 0.3)]
    values = excerpt_pmos([piece, *clips], clip, rate, score)
    assert seen == [500] * 6 + [500, 740, 500, 260]  # a remainder under half joins the last
    assert values == pytest.approx([0.3, 0.3, 0.3, 0.3])


def test_seam_statistic_midway_between_seams_shares_the_seams_reference():
    from qamdt.audio_spec import get_audio_spec
    from qamdt.demo.editing import midpoints
    from qamdt.evaluation.seams import seam_flux_ratios

    assert midpoints([5.0, 9.0, 13.0]) == [7.0, 11.0] and midpoints([5.0]) == []
    spec = get_audio_spec("embedded")
    t = np.arange(12 * RATE) / RATE
    wave = (0.3 * (0.6 + 0.4 * np.cos(2 * np.pi * 2 * t)) * np.sin(2 * np.pi * 330 * t)).astype(
        np.float32
    )
    # A jump midway between two seams shows at the control, measured on the seams' scale.
    wave[6 * RATE :] += 0.2 * np.random.default_rng(0).standard_normal(6 * RATE).astype(np.float32)
    seams = [3.0, 9.0]
    found = seam_flux_ratios(wave, seams, spec, controls=midpoints(seams))
    [control] = found["control_ratios"]
    assert control > 2 * found["max"]
    assert seam_flux_ratios(wave, seams, spec)["control_ratios"] == []
