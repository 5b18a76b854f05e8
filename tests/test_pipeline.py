import json

import numpy as np
import pytest
import soundfile as sf
import torch

from qamdt.cli.main import main
from qamdt.diffusion.schedule import DiffusionConfig, build_train_scheduler
from qamdt.errors import ConfigError
from qamdt.generation.pipeline import QAMDTPipeline
from qamdt.models.text_encoder import TextEncoder
from qamdt.models.transformer import QualityMDTTransformer
from qamdt.models.vae import LatentVAE
from qamdt.models.vocoder import Vocoder


def tiny_pipeline(**options) -> QAMDTPipeline:
    """A pipeline of tiny random models (Griffin-Lim vocoder) for fast tests.

    ``options`` go to :class:`QAMDTPipeline` (e.g. ``quality_stats``).
    """
    torch.manual_seed(0)
    transformer = QualityMDTTransformer(
        in_channels=4,
        sample_size=[8, 20],
        patch_size=[4, 4],
        hidden_size=16,
        num_heads=2,
        encoder_depth=2,
        decoder_depth=1,
        text_dim=384,
    )
    # Untrained models start with a zero output layer; give it weights so outputs vary.
    torch.nn.init.normal_(transformer.final_proj.weight, std=0.1)
    vae = LatentVAE.from_config(
        {
            "latent_channels": 4,
            "block_out_channels": [4, 4, 4],
            "layers_per_block": 1,
            "norm_num_groups": 2,
        }
    )
    return QAMDTPipeline(
        transformer,
        vae,
        Vocoder.griffin_lim("embedded", n_iter=2),
        TextEncoder.from_pretrained("embedded"),
        build_train_scheduler(DiffusionConfig()),
        audio="embedded",
        text_encoder_name="embedded",
        **options,
    )


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline()


def run(pipeline, **kw):
    settings = {"num_inference_steps": 3, "audio_length_in_s": 0.3, "generator": 7}
    settings.update(kw)
    return pipeline("a calm piano piece", **settings)


def test_same_seed_same_audio_and_levels_matter(pipeline):
    a, b = run(pipeline), run(pipeline)
    assert np.array_equal(a.audios, b.audios)
    assert a.audios.shape == (1, int(round(0.3 * 22050)))
    assert a.texts == ["high quality, a calm piano piece"] and a.prompts == ["a calm piano piece"]
    low = run(pipeline, quality_level=1)
    assert low.texts == ["low quality, a calm piano piece"]
    assert not np.allclose(a.latents, low.latents)
    assert not np.allclose(run(pipeline, generator=8).latents, a.latents)


def test_quality_token_reaches_the_model_with_the_prefix_fixed(pipeline):
    pipeline.quality_prefix = False
    try:
        four, five = run(pipeline, quality_level=4), run(pipeline, quality_level=5)
        assert four.texts == five.texts
        assert not torch.allclose(four.latents, five.latents)
        between = run(pipeline, quality_level=4.5)
        assert not torch.allclose(between.latents, four.latents)
    finally:
        pipeline.quality_prefix = True


def test_guidance_modes(pipeline):
    quality = run(pipeline)
    released = run(pipeline, guidance="released")
    assert not torch.allclose(quality.latents, released.latents)
    plain1 = run(pipeline, guidance="negative-prompt", quality_level=1)
    plain5 = run(pipeline, guidance="negative-prompt", quality_level=5)
    # eq. 11 uses no quality tokens or prefixes: the level does not matter.
    assert torch.equal(plain1.latents, plain5.latents) and plain5.texts == ["a calm piano piece"]
    unguided = run(pipeline, guidance_scale=1.0)
    assert not torch.allclose(unguided.latents, quality.latents)


def test_schedulers_lengths_and_output_types(pipeline):
    for name in ("ddim", "dpmsolver++", "unipc"):
        assert np.isfinite(run(pipeline, scheduler=name).audios).all()
    latent = run(pipeline, output_type="latent")
    assert latent.audios is None and latent.latents.shape == (
        1,
        4,
        7,
        20,
    )  # 0.3 s = 25.8 frames -> 7 latent frames
    mel = run(pipeline, output_type="mel", audio_length_in_s=None)
    assert mel.mels.shape == (1, 864, 80)
    two = pipeline(
        ["a", "b"],
        num_inference_steps=2,
        audio_length_in_s=0.2,
        num_waveforms_per_prompt=2,
        generator=1,
    )
    assert two.audios.shape[0] == 4 and two.prompts == ["a", "a", "b", "b"]


def test_given_latents_are_used(pipeline):
    start = torch.randn(1, 4, 7, 20)
    a = run(pipeline, latents=start, generator=1)
    b = run(pipeline, latents=start, generator=2)
    assert torch.equal(a.latents, b.latents)
    with pytest.raises(ConfigError, match="latents"):
        run(pipeline, latents=torch.randn(1, 4, 5, 20))


def test_bad_arguments_are_named(pipeline):
    with pytest.raises(ConfigError, match="quality_level"):
        run(pipeline, quality_level=7)
    with pytest.raises(ConfigError, match="guidance"):
        run(pipeline, guidance="cfg++")
    with pytest.raises(ConfigError, match="scheduler"):
        run(pipeline, scheduler="heun9")
    with pytest.raises(ConfigError, match="guidance_interval"):
        run(pipeline, guidance_interval=(900, 100))
    with pytest.raises(ConfigError, match="prompt"):
        pipeline([], num_inference_steps=1)


class FakeClap:
    def text_audio_scores(self, audio, sample_rates, texts):
        return np.array([float(np.abs(a).mean()) for a in audio])


def test_clap_reranking_orders_candidates(pipeline):
    out = run(pipeline, num_waveforms_per_prompt=3, clap=FakeClap())
    assert out.clap_scores == sorted(out.clap_scores, reverse=True)
    assert np.isclose(np.abs(out.audios[0]).mean(), out.clap_scores[0], rtol=1e-5)


def test_save_and_load_round_trip(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path / "pipe")
    assert not (tmp_path / "pipe" / "text_encoder").exists()
    loaded = QAMDTPipeline.from_pretrained(tmp_path / "pipe")
    assert torch.equal(run(pipeline).latents, run(loaded).latents)
    with pytest.raises(ConfigError, match="pipeline"):
        QAMDTPipeline.from_pretrained(tmp_path)


def test_generate_command_writes_audio_and_sidecars(pipeline, tmp_path, capsys):
    pipeline.save_pretrained(tmp_path / "pipe")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\nslow organ chorale\n\nfast fiddle reel\n")
    argv = [
        "generate",
        "a string quartet",
        "--prompts-file",
        str(prompts),
        "--model",
        str(tmp_path / "pipe"),
        "--quality",
        "4",
        "--steps",
        "2",
        "--length",
        "0.25",
        "--seed",
        "3",
        "--out",
        str(tmp_path / "gen"),
        "--batch-size",
        "2",
        "--cfg-interval",
        "0",
        "800",
        "--quiet",
    ]
    assert main(argv) == 0
    wavs = sorted((tmp_path / "gen").glob("*.wav"))
    assert len(wavs) == 3
    sidecar = json.loads(wavs[2].with_suffix(".json").read_text())
    assert sidecar["prompt"] == "fast fiddle reel" and sidecar["quality_level"] == 4.0
    assert (
        sidecar["steps"] == 2
        and sidecar["seed"] == 5
        and sidecar["text"].startswith("high quality")
        and sidecar["guidance_interval"] == [0.0, 800.0]
    )
    assert sf.info(wavs[0]).samplerate == 22050
    capsys.readouterr()
    assert main(["generate", "--model", str(tmp_path / "pipe"), "--out", str(tmp_path / "x")]) == 2
    assert "prompt" in capsys.readouterr().err


def test_settings_object_and_keywords_give_the_same_call(pipeline):
    from qamdt.generation.settings import GenerationSettings

    keywords = run(pipeline, quality_level=2, guidance_rescale=0.5)
    settings = GenerationSettings(
        quality_level=2, guidance_rescale=0.5, num_inference_steps=3, audio_length_in_s=0.3
    )
    assert torch.equal(pipeline("a calm piano piece", settings, generator=7).latents,
                       keywords.latents)  # fmt: skip
    seeded = pipeline("a calm piano piece", settings.replace(seed=7))
    assert torch.equal(seeded.latents, keywords.latents)
    with pytest.raises(ConfigError, match="guidance_scal"):
        run(pipeline, guidance_scal=2.0)
    with pytest.raises(ConfigError, match="eta: must be >= 0"):
        run(pipeline, eta=-1.0)


def test_generation_defaults_apply_where_a_call_gives_no_value(pipeline, tmp_path):
    defaults = {"guidance": "released", "num_inference_steps": 2, "audio_length_in_s": 0.2}
    pipeline.generation_defaults = dict(defaults)
    try:
        assert pipeline.generation_settings().guidance == "released"
        plain = pipeline("a", generator=1)
        assert plain.audios.shape[1] == int(round(0.2 * 22050))
        released = pipeline("a", guidance="released", num_inference_steps=2,
                            audio_length_in_s=0.2, generator=1)  # fmt: skip
        assert torch.equal(plain.latents, released.latents)
        # An explicit value wins over the pipeline's default.
        assert run(pipeline).audios.shape[1] == int(round(0.3 * 22050))
        pipeline.save_pretrained(tmp_path / "pipe")
    finally:
        pipeline.generation_defaults = {}
    index = json.loads((tmp_path / "pipe" / "pipeline.json").read_text())
    assert index["generation_defaults"] == defaults
    loaded = QAMDTPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.generation_defaults == defaults
    assert loaded.name_or_path == str(tmp_path / "pipe")

    # The command line: flags win, the folder's defaults fill the rest.
    out = tmp_path / "gen"
    argv = ["generate", "x", "--model", str(tmp_path / "pipe"), "--out", str(out), "--quiet"]
    assert main([*argv, "--steps", "1"]) == 0
    sidecar = json.loads(next(out.glob("*.json")).read_text())
    assert sidecar["guidance"] == "released" and sidecar["audio_length_in_s"] == 0.2
    assert sidecar["num_inference_steps"] == 1 and sidecar["guidance_scale"] == 3.5

    # A folder written before generation defaults existed still loads.
    del index["generation_defaults"]
    (tmp_path / "pipe" / "pipeline.json").write_text(json.dumps(index))
    assert QAMDTPipeline.from_pretrained(tmp_path / "pipe").generation_defaults == {}


def test_bad_flags_are_named_before_loading(pipeline, tmp_path, capsys):
    pipeline.save_pretrained(tmp_path / "pipe")
    argv = ["generate", "x", "--model", str(tmp_path / "pipe"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--cfg", "nan"]) == 2
    assert "--cfg (guidance_scale): must be finite" in capsys.readouterr().err
    assert main([*argv, "--cfg-interval", "900", "100"]) == 2
    assert "--cfg-interval (guidance_interval)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
