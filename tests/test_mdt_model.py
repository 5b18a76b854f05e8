import json

import pytest
import torch

from qamdt.errors import ConfigError
from qamdt.models.attention import attend
from qamdt.models.model_info import describe_model, read_model_config
from qamdt.models.patchify import Patcher
from qamdt.models.positions import apply_rope, rope_2d, sincos_2d
from qamdt.models.transformer import (
    QualityMDTTransformer,
    check_model_config,
    count_parameters,
    kept_tokens,
)

TINY = {
    "in_channels": 4,
    "sample_size": [24, 8],
    "patch_size": [4, 2],
    "hidden_size": 32,
    "num_heads": 2,
    "encoder_depth": 4,
    "side_depth": 1,
    "decoder_depth": 1,
    "text_dim": 12,
}


def tiny_model(**changes) -> QualityMDTTransformer:
    torch.manual_seed(0)
    model = QualityMDTTransformer(**{**TINY, **changes})
    # The output layer starts at zero; give it weights so outputs depend on the inputs.
    torch.nn.init.normal_(model.final_proj.weight, std=0.05)
    for block in (*model.encoder_blocks, *model.side_blocks, *model.decoder_blocks):
        torch.nn.init.normal_(block.cross_attn.proj.weight, std=0.05)
    return model.eval()


def inputs(batch=2, time=24, freq=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, time, freq, generator=generator)
    text = torch.randn(batch, 5, 12, generator=generator)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return latents, torch.tensor([10, 900])[:batch], text, mask


@pytest.mark.parametrize(
    "patch, overlap, shape",
    [
        ((4, 1), (0, 0), (16, 8)),
        ((4, 2), (2, 1), (18, 7)),
        ((3, 3), (1, 2), (10, 11)),
        (2, 0, (5, 5)),
    ],
)
def test_patchify_round_trip_is_exact(patch, overlap, shape):
    patcher = Patcher(patch, overlap)
    x = torch.randn(2, 3, *shape, dtype=torch.float64)
    tokens = patcher.patchify(x)
    assert tokens.shape == (2, patcher.num_tokens(*shape), patcher.patch_dim(3))
    restored = patcher.unpatchify(tokens, *shape)
    # Averaging k identical copies can round in the last bit; without overlap it is exact.
    assert torch.allclose(restored, x, rtol=1e-15, atol=0)
    if patcher.overlap == (0, 0):
        assert torch.equal(restored, x)


def test_patch_count_follows_eq3():
    # P = (floor((F - p_f) / s_f) + 1) * (floor((T - p_t) / s_t) + 1), s = p - o.
    patcher = Patcher((4, 2), (2, 1))
    assert patcher.grid(16, 8) == ((16 - 4) // 2 + 1, (8 - 2) // 1 + 1)
    assert Patcher((4, 1)).num_tokens(256, 16) == 1024


def test_patch_tokens_are_time_major_patches():
    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(1, 1, 8, 3)
    tokens = Patcher((4, 1)).patchify(x)
    assert torch.equal(tokens[0, 1], x[0, 0, 0:4, 1])
    assert torch.equal(tokens[0, 3], x[0, 0, 4:8, 0])


def test_bad_patch_settings_are_rejected():
    with pytest.raises(ConfigError, match="overlap"):
        Patcher((2, 2), (2, 0))


def test_sincos_positions_are_distinct_and_fixed():
    table = sincos_2d(16, (3, 5))
    assert table.shape == (15, 16)
    assert torch.cdist(table, table).add(torch.eye(15)).min() > 0.1
    assert torch.equal(table, sincos_2d(16, (3, 5)))


def test_cpu_attention_in_16_bits_computes_in_float32():
    torch.manual_seed(0)
    query, key, value = (torch.randn(2, 3, 7, 8).bfloat16() for _ in range(3))
    mask = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    for key_mask in (None, mask):
        rows = None if key_mask is None else key_mask[:, None, None, :]
        exact = torch.nn.functional.scaled_dot_product_attention(
            query.float(), key.float(), value.float(), attn_mask=rows
        )
        out = attend(query, key, value, key_mask=key_mask)
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, exact.bfloat16())
        # Autocast would round float32 inputs back to bfloat16; inside it the same holds.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(attend(query, key, value, key_mask=key_mask), out)
    leaves = [t.clone().requires_grad_() for t in (query, key, value)]
    attend(*leaves).float().sum().backward()
    assert all(t.grad.dtype == torch.bfloat16 and t.grad.abs().sum() > 0 for t in leaves)


def test_rope_attention_depends_only_on_relative_position():
    cos, sin = rope_2d(8, (6, 6))
    q = torch.randn(1, 1, 1, 8).expand(1, 1, 36, 8)
    k = torch.randn(1, 1, 1, 8).expand(1, 1, 36, 8)
    scores = (apply_rope(q, cos, sin) * apply_rope(k, cos, sin)).sum(-1)[0, 0]
    rq, rk = apply_rope(q, cos, sin)[0, 0], apply_rope(k, cos, sin)[0, 0]
    # token (t, f) = 6 t + f; the same offset gives the same score.
    assert torch.allclose(rq[0] @ rk[7], rq[14] @ rk[21], atol=1e-5)
    assert scores.shape == (36,)


@pytest.mark.parametrize("position_encoding", ["sincos", "rope"])
def test_forward_shapes_and_masked_training_pass(position_encoding):
    model = tiny_model(position_encoding=position_encoding)
    latents, t, text, mask = inputs()
    out = model(latents, t, text, mask, torch.tensor([1, 5]))
    assert out.shape == latents.shape and torch.isfinite(out).all()
    masked = model(latents, t, text, mask, torch.tensor([1, 5]), mask_ratio=0.4)
    assert masked.shape == latents.shape
    # Any clip length works: positions follow the grid.
    longer = model(torch.randn(1, 4, 40, 8), t[:1], text[:1], mask[:1], torch.tensor([3]))
    assert longer.shape == (1, 4, 40, 8)


def test_quality_level_reaches_the_output_and_null_differs():
    model = tiny_model()
    latents, t, text, mask = inputs()
    outs = [model(latents, t, text, mask, torch.tensor([q, q])) for q in (0, 1, 5)]
    assert not torch.allclose(outs[0], outs[1])
    assert not torch.allclose(outs[1], outs[2])


def test_quality_modulation_adds_the_level_to_the_timestep_condition():
    plain, modulated = tiny_model(), tiny_model(quality_modulation=True)
    modulated.load_state_dict(plain.state_dict())  # the option adds no parameters
    latents, t, text, mask = inputs()
    level = torch.tensor([5, 5])
    # The same weights: the only difference is the level inside the adaLN condition.
    assert not torch.allclose(
        plain(latents, t, text, mask, level), modulated(latents, t, text, mask, level)
    )
    # By hand: the timestep embedding plus the level embedding, through the same layers.
    captured = []
    handle = modulated.time_block.register_forward_pre_hook(lambda _, a: captured.append(a[0]))
    modulated(latents, t, text, mask, level)
    handle.remove()
    expected = modulated.time_embed(modulated.time_proj(t)) + modulated.quality_embed(level)
    assert torch.allclose(captured[0], expected, atol=1e-6)


def test_float_level_interpolates_embeddings():
    model = tiny_model()
    table = model.quality_embed.table.weight
    mixed = model.quality_embed(torch.tensor([2.25]))
    assert torch.allclose(mixed[0], 0.75 * table[2] + 0.25 * table[3], atol=1e-6)
    assert torch.allclose(model.quality_embed(torch.tensor([4.0])), table[4:5])
    with pytest.raises(ConfigError, match="quality level"):
        model.quality_embed(torch.tensor([6]))
    with pytest.raises(ConfigError, match="quality level"):
        model.quality_embed(torch.tensor([0.5]))


def test_text_padding_is_ignored():
    model = tiny_model()
    latents, t, text, mask = inputs(batch=1)
    mask = torch.ones(1, 3, dtype=torch.bool)
    short = model(latents, t, text[:, :3], mask, torch.tensor([3]))
    padded_text = torch.cat([text[:, :3], torch.randn(1, 4, 12)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(1, 4, dtype=torch.bool)], dim=1)
    padded = model(latents, t, padded_text, padded_mask, torch.tensor([3]))
    assert torch.allclose(short, padded, atol=1e-5)


def test_mask_is_seeded_and_changes_the_output():
    model = tiny_model()
    latents, t, text, mask = inputs()
    q = torch.tensor([2, 4])

    def run(seed):
        return model(
            latents, t, text, mask, q, mask_ratio=0.5, generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(run(1), run(1))
    assert not torch.allclose(run(1), run(2))


def test_encoder_sees_only_kept_tokens():
    model = tiny_model()
    seen = []
    model.encoder_blocks[0].register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
    model.decoder_blocks[0].register_forward_hook(lambda m, args, out: seen.append(out.shape[1]))
    latents, t, text, mask = inputs()
    model(latents, t, text, mask, None, mask_ratio=0.5)
    patches = model.patcher.num_tokens(24, 8)
    assert seen == [1 + round(patches * 0.5), 1 + patches]


def test_kept_tokens_counts_rounds_and_repeats_with_the_seed():
    def draw(ratio, rounding="round", seed=0):
        generator = torch.Generator().manual_seed(seed)
        return kept_tokens(3, 10, ratio, rounding, generator, torch.device("cpu"))

    assert draw(None) is None and draw(0.0) is None
    # 10 * (1 - 0.25) = 7.5: rounded (half to even) 8, floored 7; 10 * 0.25 = 2.5: 2 and 2.
    assert draw(0.25).shape == (3, 8) and draw(0.25, "floor").shape == (3, 7)
    assert draw(0.75).shape == (3, 2) and draw(0.75, "floor").shape == (3, 2)
    assert draw(0.999).shape == (3, 1) and draw(0.999, "floor").shape == (3, 1)
    kept = draw(0.5)
    assert all(len(set(row.tolist())) == 5 for row in kept) and kept.max() < 10
    assert torch.equal(draw(0.5, seed=4), draw(0.5, seed=4))
    assert not torch.equal(draw(0.5, seed=4), draw(0.5, seed=5))


def test_gradient_checkpointing_gives_the_same_gradients():
    def grads(checkpointing):
        model = tiny_model().train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        latents, t, text, mask = inputs()
        out = model(
            latents,
            t,
            text,
            mask,
            torch.tensor([1, 2]),
            mask_ratio=0.3,
            generator=torch.Generator().manual_seed(0),
        )
        out.square().mean().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    assert torch.allclose(grads(False), grads(True), atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(position_encoding="rope", patch_overlap=[2, 0])
    model.save_pretrained(tmp_path / "transformer")
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = QualityMDTTransformer.from_pretrained(tmp_path / "transformer").eval()
    latents, t, text, mask = inputs()
    assert torch.equal(model(latents, t, text, mask), loaded(latents, t, text, mask))
    assert loaded.config.position_encoding == "rope"


def test_bad_configs_name_the_problem():
    with pytest.raises(ConfigError, match="hidden_sise"):
        check_model_config({"hidden_sise": 3})
    with pytest.raises(ConfigError, match="position_encoding"):
        QualityMDTTransformer(**{**TINY, "position_encoding": "alibi"})
    with pytest.raises(ConfigError, match="mask_ratio_range"):
        QualityMDTTransformer(**{**TINY, "mask_ratio_range": [0.5, 1.2]})


def test_model_info_of_the_paper_preset_on_meta_device():
    values = read_model_config("configs/mdt/paper.yaml")
    info = describe_model(values)
    assert 600e6 < info["parameters"] < 700e6
    assert info["tokens"] == 1025 and info["latent_shape"] == [8, 256, 16]
    embedded = describe_model(read_model_config("configs/mdt/embedded.yaml"))
    assert embedded["parameters"] < 20e6


def test_model_info_counts_match_a_real_model(tmp_path):
    model = tiny_model()
    (tmp_path / "m.json").write_text(json.dumps(TINY))
    assert describe_model(read_model_config(tmp_path / "m.json"))["parameters"] == count_parameters(
        model
    )
