import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from qamdt.checkpoints import CheckpointError
from qamdt.convert.checkpoint import checkpoint_parts, joined_file, load_checkpoint
from qamdt.convert.released_transformer import (
    EMA_PREFIX,
    RAW_PREFIX,
    convert_transformer_state,
    model_config_from_unet,
    read_authors_config,
    their_parameter_shapes,
)
from qamdt.errors import ConfigError
from qamdt.models.model_info import describe_model, read_model_config
from qamdt.models.positions import sincos_2d
from qamdt.models.transformer import QualityMDTTransformer

ROOT = Path(__file__).resolve().parents[1]

# A released-shaped network at a tiny width; patches of 2 x 2 so that the order of the
# patch values matters.
TINY_UNET = {
    "input_size": [8, 4],
    "patch_size": [2, 2],
    "overlap_size": [0, 0],
    "in_channels": 3,
    "hidden_size": 16,
    "depth": 6,
    "num_heads": 2,
    "mlp_ratio": 2.0,
    "cond_dim": 6,
    "mask_ratio": 0.3,
    "decode_layer": 2,
}


def released_state(seed: int = 0, ema_shift: float = 0.5) -> tuple[dict, QualityMDTTransformer]:
    """A released-layout transformer state dict (raw and EMA copies) with random values."""
    model = QualityMDTTransformer(**model_config_from_unet(TINY_UNET))
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in their_parameter_shapes(model).items():
        tensor = torch.randn(shape, generator=generator) * 0.2
        state[RAW_PREFIX + name] = tensor
        state[EMA_PREFIX + name.replace(".", "")] = tensor + ema_shift
    grid = model.grid(*model.config.sample_size)
    state[RAW_PREFIX + "pos_embed"] = model._positions(grid, "cpu", torch.float32)[0][None]
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(7, dtype=torch.int32)
    return state, model


def test_released_preset_has_the_released_parameter_count():
    info = describe_model(read_model_config(ROOT / "configs/mdt/released.yaml"))
    # 676,245,920 as released, plus the null-level row of the quality table.
    assert info["parameters"] == 676_245_920 + 1152
    assert info["tokens"] == 1025


def test_published_unet_builds_the_released_preset():
    from accelerate import init_empty_weights

    with init_empty_weights():
        preset = QualityMDTTransformer(**read_model_config(ROOT / "configs/mdt/released.yaml"))
        built = QualityMDTTransformer(**model_config_from_unet(None))

    def plain(config):
        return {
            k: list(v) if isinstance(v, tuple) else v
            for k, v in dict(config).items()
            if not k.startswith("_")
        }

    assert plain(built.config) == plain(preset.config)


def test_scaled_sincos_layout_matches_a_hand_computed_table():
    table = sincos_2d(8, (2, 3), scales=(2.0, 8.0), freq_first=True)
    omegas = [1.0, 1.0 / 10000**0.5]
    for t in range(2):
        for f in range(3):
            row = table[t * 3 + f]
            freq_half = [math.sin(8 * f * w) for w in omegas] + [
                math.cos(8 * f * w) for w in omegas
            ]
            time_half = [math.sin(2 * t * w) for w in omegas] + [
                math.cos(2 * t * w) for w in omegas
            ]
            assert row.tolist() == pytest.approx(freq_half + time_half, abs=1e-6)


def test_released_position_scales_come_from_the_trained_size():
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = QualityMDTTransformer(**model_config_from_unet(None))
    grid = model.grid(256, 16)
    table, _ = model._positions(grid, "cpu", torch.float32)
    # Their base size is twice the time patches: time positions x 2, frequency x 8.
    assert torch.allclose(table, sincos_2d(1152, (64, 16), scales=(2, 8), freq_first=True))
    longer, _ = model._positions(model.grid(512, 16), "cpu", torch.float32)
    assert torch.equal(longer[: 64 * 16], table)


def test_patch_embedding_conversion_equals_their_convolution():
    state, model = released_state()
    converted, _ = convert_transformer_state(state, model, "raw")
    model.load_state_dict(converted)
    latents = torch.randn(2, 3, 8, 4)
    conv = F.conv2d(
        latents,
        state[RAW_PREFIX + "x_embedder.proj.weight"],
        state[RAW_PREFIX + "x_embedder.proj.bias"],
        stride=(2, 2),
    )
    theirs = conv.flatten(2).transpose(1, 2)
    ours = model.patch_embed(model.patcher.patchify(latents))
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_final_projection_rows_are_reordered_as_their_unpatchify_reads_them():
    state, model = released_state()
    # Zero weights: every token's output is the bias, so the output shows where each of
    # their rows lands. Their row (p, q, c) fills channel c at (2 t + p, 2 f + q).
    state[RAW_PREFIX + "final_layer.linear.weight"].zero_()
    state[RAW_PREFIX + "final_layer.linear.bias"].copy_(torch.arange(12.0))
    converted, _ = convert_transformer_state(state, model, "raw")
    model.load_state_dict(converted)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 8, 4), torch.tensor([5]), torch.randn(1, 2, 6), None, [3])
    for c in range(3):
        for p in range(2):
            for q in range(2):
                expected = (p * 2 + q) * 3 + c
                assert torch.all(out[0, c, p::2, q::2] == expected)


def test_ema_weights_are_chosen_by_default_and_the_null_row_is_zero():
    state, model = released_state(ema_shift=0.5)
    ema, used = convert_transformer_state(state, model)
    raw, _ = convert_transformer_state(state, model, "raw")
    assert torch.allclose(ema["time_block.1.weight"], raw["time_block.1.weight"] + 0.5)
    table = ema["quality_embed.table.weight"]
    assert torch.equal(table[0], torch.zeros(16))
    assert torch.equal(table[1:], state[EMA_PREFIX + "mos_embedweight"])
    # Both copies, the position buffer and the EMA bookkeeping are accounted for.
    assert used == set(state)


def test_missing_and_misshapen_tensors_are_named():
    state, model = released_state()
    del state[EMA_PREFIX + "de_blocks1skip_linearweight"]
    with pytest.raises(CheckpointError, match="de_blocks1skip_linearweight"):
        convert_transformer_state(state, model)
    state, model = released_state()
    state[RAW_PREFIX + "en_outblocks.1.cross_attn.kv_linear.weight"] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match="en_outblocks.1.cross_attn.kv_linear.weight"):
        convert_transformer_state(state, model, "raw")
    with pytest.raises(ConfigError, match="weights"):
        convert_transformer_state(state, model, "best")


def test_a_position_table_of_another_layout_is_refused():
    state, model = released_state()
    state[RAW_PREFIX + "pos_embed"] = sincos_2d(16, model.grid(8, 4))[None]
    with pytest.raises(CheckpointError, match="pos_embed"):
        convert_transformer_state(state, model, "raw")


def test_authors_yaml_is_read_in_their_layout(tmp_path):
    config = tmp_path / "qa_mdt.yaml"
    config.write_text(
        "variables:\n  t: &t 256\npreprocessing:\n  audio: {sampling_rate: 16000}\n"
        "  stft: {hop_length: 160}\n  mel: {n_mel_channels: 64}\n"
        "model:\n  params:\n    linear_start: 0.0015\n    linear_end: 0.0195\n"
        "    timesteps: 1000\n    parameterization: eps\n    unet_config:\n"
        "      target: x.Your_Class\n      params:\n        input_size: [*t, 16]\n"
        "        patch_size: [4, 1]\n        depth: 28\n        decode_layer: 8\n"
        "        window_block_indexes: None\n"
    )
    values = read_authors_config(config)
    assert values["unet"]["input_size"] == [256, 16]
    assert values["diffusion"]["parameterization"] == "eps"
    assert values["audio"] == {"sampling_rate": 16000, "hop_length": 160, "n_mels": 64}
    assert model_config_from_unet(values["unet"])["encoder_depth"] == 20
    with pytest.raises(ConfigError, match="unknown key"):
        model_config_from_unet({"hidden_sise": 4})
    (tmp_path / "other.yaml").write_text("model: {}\n")
    with pytest.raises(ConfigError, match="unet_config"):
        read_authors_config(tmp_path / "other.yaml")


def test_split_pieces_load_like_the_whole_file(tmp_path):
    state, _ = released_state()
    whole = tmp_path / "checkpoint_9.ckpt"
    torch.save({"state_dict": state, "global_step": 9}, whole)
    data = whole.read_bytes()
    folder = tmp_path / "parts"
    folder.mkdir()
    step = len(data) // 3 + 1
    for i in range(3):
        (folder / f"checkpoint_9.ckpt_part_{i}").write_bytes(data[i * step : (i + 1) * step])
    for name in ("checkpoint_9.ckpt", "checkpoint_9.ckpt_part_1"):
        parts = checkpoint_parts(folder / name)
        assert [p.name for p in parts] == [f"checkpoint_9.ckpt_part_{i}" for i in range(3)]
    with joined_file(parts, tmp_path / "work") as path:
        loaded = load_checkpoint(path)["state_dict"]
        assert set(loaded) == set(state)
        assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not list((tmp_path / "work").iterdir())  # the joined copy is removed
    (folder / "checkpoint_9.ckpt_part_1").unlink()
    with pytest.raises(CheckpointError, match="part_1"):
        checkpoint_parts(folder / "checkpoint_9.ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint_parts(tmp_path / "nothing.ckpt")


def test_truncated_and_foreign_files_are_refused(tmp_path):
    state, _ = released_state()
    whole = tmp_path / "c.ckpt"
    torch.save({"state_dict": state}, whole)
    truncated = tmp_path / "t.ckpt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="t.ckpt"):
        load_checkpoint(truncated)
    random = tmp_path / "r.ckpt"
    random.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="r.ckpt"):
        load_checkpoint(random)


class TrainingConfig:
    """Stands for a configuration object pickled beside the weights."""

    def __init__(self, lr):
        self.lr = lr


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_objects_outside_the_allow_list_are_never_built(tmp_path):
    state, _ = released_state()
    marker = tmp_path / "ran"
    path = tmp_path / "c.ckpt"
    torch.save(
        {
            "state_dict": state,
            "hyper_parameters": {"config": TrainingConfig(1e-4)},
            "callbacks": RunsCode(marker),
        },
        path,
    )
    loaded = load_checkpoint(path)
    assert not marker.exists()
    assert "not loaded" in repr(loaded["hyper_parameters"]["config"])
    assert torch.equal(
        loaded["state_dict"][RAW_PREFIX + "mask_token"], state[RAW_PREFIX + "mask_token"]
    )


# ------------------------------------------------------------------ the whole checkpoint

E2E_UNET = {**TINY_UNET, "input_size": [8, 32], "patch_size": [2, 4], "in_channels": 4}


def whole_checkpoint(tmp_path, extra=None):
    """A released-layout Lightning checkpoint at a tiny width, with every component."""
    from test_convert_components import LdmVae, hifigan, randomise, t5_tokenizer
    from transformers import T5Config, T5EncoderModel

    from qamdt.diffusion.schedule import DiffusionConfig, build_train_scheduler

    tokenizer = t5_tokenizer()
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(tokenizer),
            d_model=16,
            d_kv=4,
            d_ff=24,
            num_layers=2,
            num_heads=4,
            feed_forward_proj="gated-gelu",
        )
    )
    tokenizer.save_pretrained(tmp_path / "flan-t5")
    unet = {**E2E_UNET, "cond_dim": 16}
    model = QualityMDTTransformer(**model_config_from_unet(unet))
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, shape in their_parameter_shapes(model).items():
        state[RAW_PREFIX + name] = torch.randn(shape, generator=generator) * 0.2
        state[EMA_PREFIX + name.replace(".", "")] = state[RAW_PREFIX + name] * 0.9
    grid = model.grid(*model.config.sample_size)
    state[RAW_PREFIX + "pos_embed"] = model._positions(grid, "cpu", torch.float32)[0][None]
    state["model_ema.decay"], state["model_ema.num_updates"] = torch.tensor(0.99), torch.tensor(3)
    for key, value in randomise(LdmVae(latent=4), seed=1).state_dict().items():
        state["first_stage_model." + key] = value
    for key, value in hifigan("weight_g").state_dict().items():
        state["first_stage_model.vocoder." + key] = value
    state["first_stage_model.loss.logvar"] = torch.zeros(())
    for key, value in t5.state_dict().items():
        state["cond_stage_models.0.model." + key] = value
    state["clap.logit_scale_a"] = torch.ones(())
    state["scale_factor"] = torch.tensor(0.8)
    schedule = build_train_scheduler(DiffusionConfig())
    state["betas"], state["alphas_cumprod"] = schedule.betas, schedule.alphas_cumprod
    state["logvar"] = torch.zeros(1000)
    state.update(extra or {})
    path = tmp_path / "checkpoint_3.ckpt"
    torch.save(
        {
            "state_dict": state,
            "optimizer_states": [{"step": 3}],
            "global_step": 3,
            "hyper_parameters": {"config": TrainingConfig(8e-5)},
        },
        path,
    )
    lines = [f"        {k}: {v}" for k, v in unet.items()]
    config = tmp_path / "qa_mdt.yaml"
    config.write_text(
        "preprocessing:\n  audio: {sampling_rate: 16000, duration: 10.24}\n"
        "  stft: {hop_length: 160}\n  mel: {n_mel_channels: 64}\nmodel:\n  params:\n"
        "    linear_start: 0.0015\n    linear_end: 0.0195\n    timesteps: 1000\n"
        "    parameterization: eps\n    unet_config:\n      params:\n" + "\n".join(lines) + "\n"
    )
    return path, config, state, model


def test_a_whole_checkpoint_converts_into_a_pipeline_that_generates(tmp_path):
    from qamdt.cli.main import main
    from qamdt.convert.released import RELEASED_GENERATION
    from qamdt.generation.pipeline import QAMDTPipeline

    path, config, state, model = whole_checkpoint(tmp_path)
    out = tmp_path / "pipeline"
    argv = ["convert", "released", "--checkpoint", str(path), "--config", str(config)]
    assert main([*argv, "--text-encoder", str(tmp_path / "flan-t5"), "--out", str(out)]) == 0
    pipe = QAMDTPipeline.from_pretrained(out)
    expected, _ = convert_transformer_state(state, model, "ema")
    loaded = pipe.transformer.state_dict()
    assert set(loaded) == set(expected)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    assert pipe.vae.autoencoder.config.scaling_factor == pytest.approx(0.8)
    assert pipe.scheduler.config.steps_offset == 1
    assert {k: v for k, v in pipe.generation_defaults.items() if v is not None} == {
        k: v for k, v in RELEASED_GENERATION.items()
    }
    assert pipe.quality_stats["mu"] == pytest.approx(3.8)
    output = pipe("a quiet piano", num_inference_steps=2, audio_length_in_s=0.2, generator=0)
    assert output.audios.shape == (1, 3200) and output.sample_rate == 16000
    assert output.texts == ["high quality, a quiet piano"]
    assert torch.isfinite(torch.as_tensor(output.audios)).all()


def test_keys_neither_converted_nor_dropped_are_named(tmp_path, capsys):
    from qamdt.cli.main import main

    extra = {RAW_PREFIX + "extra_head.weight": torch.zeros(2)}
    path, config, _, _ = whole_checkpoint(tmp_path, extra)
    argv = ["convert", "released", "--checkpoint", str(path), "--config", str(config)]
    out = tmp_path / "pipeline"
    assert main([*argv, "--text-encoder", str(tmp_path / "flan-t5"), "--out", str(out)]) == 2
    assert "model.diffusion_model.extra_head.weight" in capsys.readouterr().err
    assert not out.exists()
