"""Converting the released checkpoint's VAE, HiFi-GAN and FLAN-T5 (tiny widths, offline).

The references are written here from the published architectures, in the authors' key
layout, and computed independently of diffusers and transformers.
"""

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import T5Config, T5EncoderModel, T5Tokenizer

from qamdt.checkpoints import CheckpointError
from qamdt.convert.released_components import (
    DROPPED_PREFIXES,
    convert_released_vae,
    convert_released_vocoder,
    load_released_text_encoder,
    released_vae_config,
    split_released_state,
)
from qamdt.convert.released_layouts import released_vae_key_shapes
from qamdt.errors import ConfigError
from qamdt.models.text_encoder import TextEncoder
from qamdt.models.vae import LatentVAE
from qamdt.models.vocoder import Vocoder

pytestmark = pytest.mark.filterwarnings("ignore:.*weight_norm.*:FutureWarning")

# ---------------------------------------------------------------- LDM-layout VAE reference


def _norm(channels):
    return nn.GroupNorm(32, channels, eps=1e-6)


class LdmResnet(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.norm1, self.conv1 = _norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = _norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class LdmAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        q, k, v = (layer(h).flatten(2) for layer in (self.q, self.k, self.v))  # [B, C, N]
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / q.shape[1] ** 0.5, dim=-1)
        out = torch.einsum("bij,bcj->bci", weights, v).reshape(x.shape)
        return x + self.proj_out(out)


class LdmMid(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = LdmResnet(c, c), LdmAttention(c), LdmResnet(c, c)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Resample(nn.Module):
    def __init__(self, c, down):
        super().__init__()
        self.down = down
        self.conv = nn.Conv2d(c, c, 3, stride=2 if down else 1, padding=0 if down else 1)

    def forward(self, x):
        if self.down:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class LdmVae(nn.Module):
    """The LDM AutoencoderKL's structure and key names (encoder.down.N, decoder.up.N, ...)."""

    def __init__(self, widths=(32, 64), blocks=1, latent=4):
        super().__init__()
        self.encoder, self.decoder = nn.Module(), nn.Module()
        enc, dec = self.encoder, self.decoder
        enc.conv_in = nn.Conv2d(1, widths[0], 3, padding=1)
        enc.down, c = nn.ModuleList(), widths[0]
        for level, width in enumerate(widths):
            stage = nn.Module()
            stage.block = nn.ModuleList(
                LdmResnet(c if j == 0 else width, width) for j in range(blocks)
            )
            c = width
            if level < len(widths) - 1:
                stage.downsample = Resample(width, down=True)
            enc.down.append(stage)
        enc.mid, enc.norm_out = LdmMid(c), _norm(c)
        enc.conv_out = nn.Conv2d(c, 2 * latent, 3, padding=1)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1)
        self.post_quant_conv = nn.Conv2d(latent, latent, 1)
        dec.conv_in, dec.mid = nn.Conv2d(latent, c, 3, padding=1), LdmMid(c)
        ups = {}
        for level in reversed(range(len(widths))):
            stage = nn.Module()
            stage.block = nn.ModuleList(
                LdmResnet(c if j == 0 else widths[level], widths[level]) for j in range(blocks + 1)
            )
            c = widths[level]
            if level > 0:
                stage.upsample = Resample(c, down=False)
            ups[level] = stage
        dec.up = nn.ModuleList(ups[level] for level in range(len(widths)))
        dec.norm_out, dec.conv_out = _norm(c), nn.Conv2d(c, 1, 3, padding=1)

    def encode_mean(self, image):
        enc = self.encoder
        h = enc.conv_in(image)
        for stage in enc.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = enc.conv_out(F.silu(enc.norm_out(enc.mid(h))))
        return self.quant_conv(h).chunk(2, dim=1)[0]

    def decode(self, z):
        dec = self.decoder
        h = dec.mid(dec.conv_in(self.post_quant_conv(z)))
        for level in reversed(range(len(dec.up))):
            for block in dec.up[level].block:
                h = block(h)
            if level > 0:
                h = dec.up[level].upsample(h)
        return dec.conv_out(F.silu(dec.norm_out(h)))


def randomise(module, seed, scale=0.2):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator)
            if ".norm" in name and name.endswith(".weight"):  # GroupNorm scales
                parameter.copy_(1 + 0.3 * noise)
            else:
                parameter.copy_(scale * noise)
    return module.eval()


@pytest.fixture(scope="module")
def ldm_vae():
    return randomise(LdmVae(), seed=0)


def test_vae_config_from_shapes(ldm_vae):
    config = released_vae_config(ldm_vae.state_dict(), 0.5)
    assert config["block_out_channels"] == [32, 64]
    assert config["layers_per_block"] == 1 and config["latent_channels"] == 4
    assert config["in_channels"] == config["out_channels"] == 1
    assert set(released_vae_key_shapes(config)) == set(ldm_vae.state_dict())


def test_vae_decode_and_encode_match_ldm(ldm_vae, tmp_path):
    scale = torch.tensor(0.73)
    vae = convert_released_vae(ldm_vae.state_dict(), scale)
    assert isinstance(vae, LatentVAE) and vae.scaling_factor == pytest.approx(0.73)
    latents = torch.randn(2, 4, 6, 4, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ldm_vae.decode(latents / scale).squeeze(1)
        assert expected.std() > 0.1
        assert torch.allclose(vae.decode(latents), expected, atol=1e-5)
        mel = torch.randn(2, 12, 8, generator=torch.Generator().manual_seed(2))
        mean = ldm_vae.encode_mean(mel.unsqueeze(1)) * scale
        assert torch.allclose(vae.encode(mel), mean, atol=1e-5)
    vae.save_pretrained(tmp_path)
    again = LatentVAE.from_pretrained(tmp_path)
    assert again.scaling_factor == pytest.approx(0.73)
    with torch.no_grad():
        assert torch.equal(again.decode(latents), vae.decode(latents))


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("drop", "first_stage_model.decoder.mid.attn_1.q.weight"),
        ("reshape", "first_stage_model.decoder.up.0.block.1.conv2.weight"),
        ("add", "first_stage_model.encoder.down.0.attn.0.q.weight"),
        ("add_loss", "first_stage_model.loss.logvar"),
    ],
)
def test_vae_strictness_names_the_key(ldm_vae, edit, named):
    state = dict(ldm_vae.state_dict())
    key = named.removeprefix("first_stage_model.")
    if edit == "drop":
        del state[key]
    elif edit == "reshape":
        state[key] = torch.zeros(32, 32, 1, 1)
    else:
        state[key] = torch.zeros(32, 32, 1, 1)
    with pytest.raises(CheckpointError, match=re.escape(named)):
        convert_released_vae(state, 1.0)


def test_vae_layouts_diffusers_cannot_hold(ldm_vae):
    state = dict(ldm_vae.state_dict())
    state["quant_conv.weight"], state["quant_conv.bias"] = torch.zeros(4, 8, 1, 1), torch.zeros(4)
    with pytest.raises(ConfigError, match="embed_dim 2"):
        convert_released_vae(state, 1.0)
    narrow = LdmVae(widths=(32, 64))
    narrow.encoder.conv_in = nn.Conv2d(1, 48, 3, padding=1)
    with pytest.raises(
        CheckpointError, match=re.escape("first_stage_model.encoder.conv_in.weight")
    ):
        convert_released_vae(narrow.state_dict(), 1.0)


def test_vae_bad_scale(ldm_vae):
    with pytest.raises(ConfigError, match="scaling_factor"):
        convert_released_vae(ldm_vae.state_dict(), 0.0)


# ------------------------------------------------------------- weight-norm HiFi-GAN reference

RATES, KERNELS = [5, 4, 2, 2, 2], [16, 16, 8, 4, 4]
RES_KERNELS, DILATIONS = [3, 7, 11], [[1, 3, 5], [1, 3, 5], [1, 3, 5]]


class HifiResBlock(nn.Module):
    def __init__(self, channels, kernel, dilations, norm):
        super().__init__()
        self.convs1 = nn.ModuleList(
            norm(nn.Conv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2))
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            norm(nn.Conv1d(channels, channels, kernel, padding=(kernel - 1) // 2))
            for _ in dilations
        )

    def forward(self, x):
        for first, second in zip(self.convs1, self.convs2, strict=True):
            x = x + second(F.leaky_relu(first(F.leaky_relu(x, 0.1)), 0.1))
        return x


class HifiGenerator(nn.Module):
    """HiFi-GAN V1's generator as AudioLDM's 16 kHz / 64-mel model lays it out."""

    def __init__(self, channels=32, n_mels=64, norm=nn.utils.weight_norm):
        super().__init__()
        self.conv_pre = norm(nn.Conv1d(n_mels, channels, 7, padding=3))
        self.ups, self.resblocks = nn.ModuleList(), nn.ModuleList()
        for rate, kernel in zip(RATES, KERNELS, strict=True):
            self.ups.append(
                norm(
                    nn.ConvTranspose1d(channels, channels // 2, kernel, rate, (kernel - rate) // 2)
                )
            )
            channels //= 2
            for size, dilations in zip(RES_KERNELS, DILATIONS, strict=True):
                self.resblocks.append(HifiResBlock(channels, size, dilations, norm))
        self.conv_post = norm(nn.Conv1d(channels, 1, 7, padding=3))

    def forward(self, mel):  # [B, n_mels, T]
        x = self.conv_pre(mel)
        n = len(RES_KERNELS)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, 0.1))
            x = sum(block(x) for block in self.resblocks[i * n : (i + 1) * n]) / n
        return torch.tanh(self.conv_post(F.leaky_relu(x))).squeeze(1)


def _plain(module):
    return module


def hifigan(form, seed=3):
    norm = {
        "weight_g": nn.utils.weight_norm,
        "parametrizations": nn.utils.parametrizations.weight_norm,
        "plain": _plain,
    }[form]
    torch.manual_seed(seed)
    model = HifiGenerator(norm=norm)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("weight", "weight_v", "original1")):
                parameter.normal_(0.0, (parameter[0].numel()) ** -0.5)
            elif name.endswith("bias"):
                parameter.normal_(0.0, 0.1)
        for name, parameter in model.named_parameters():
            if name.endswith(("weight_g", "original0")):
                direction = dict(model.named_parameters())[
                    name[:-1] + "v" if name.endswith("_g") else name[:-1] + "1"
                ]
                norm_v = direction.flatten(1).norm(dim=1).reshape(parameter.shape)
                # Magnitudes away from ||v|| so that folding the weight norm matters.
                parameter.copy_(norm_v * (0.5 + torch.rand(parameter.shape)))
    return model.eval()


@pytest.mark.parametrize("form", ["weight_g", "parametrizations", "plain"])
def test_vocoder_matches_original_generator(form, tmp_path):
    model = hifigan(form)
    state = model.state_dict()
    stored_as = {"weight_g": ".weight_g", "parametrizations": ".original0", "plain": "ups.0.weight"}
    assert any(k.endswith(stored_as[form]) for k in state)
    vocoder = convert_released_vocoder(state)
    assert isinstance(vocoder, Vocoder) and vocoder.spec.name == "paper"
    config = vocoder.model.config
    assert config.upsample_kernel_sizes == KERNELS and config.resblock_kernel_sizes == RES_KERNELS
    assert config.upsample_initial_channel == 32 and config.model_in_dim == 64
    mel = torch.randn(2, 6, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(mel.transpose(1, 2))
        wave = vocoder(mel)
    # The generator makes 32 samples more than frames x hop; the vocoder keeps frames x hop.
    assert expected.shape == (2, 6 * 160 + 32) and wave.shape == (2, 6 * 160)
    assert 1e-3 < expected.std() and expected.abs().max() < 0.9
    assert torch.allclose(wave, expected[:, : 6 * 160], atol=2e-5)
    vocoder.save_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.allclose(Vocoder.from_pretrained(tmp_path)(mel), wave, atol=1e-6)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("drop", "resblocks.4.convs2.1.weight_v"),
        ("drop", "conv_post.bias"),
        ("reshape", "ups.1.weight_v"),
        ("reshape", "ups.1.weight_g"),
        ("add", "resblocks.0.convs3.0.bias"),
        ("add", "ups.2.weight"),
    ],
)
def test_vocoder_strictness_names_the_key(edit, named):
    state = dict(hifigan("weight_g").state_dict())
    if edit == "drop":
        del state[named]
    elif edit == "reshape":
        state[named] = torch.zeros(state[named].shape[0], 3, state[named].shape[2])
    else:
        state[named] = torch.zeros(2)
    with pytest.raises(CheckpointError, match=re.escape(f"first_stage_model.vocoder.{named}")):
        convert_released_vocoder(state)


def test_vocoder_needs_whole_resblock_groups():
    state = {
        k: v for k, v in hifigan("plain").state_dict().items() if not k.startswith("resblocks.14.")
    }
    with pytest.raises(CheckpointError, match="14 residual blocks"):
        convert_released_vocoder(state)


def test_vocoder_rates_must_fit():
    state = hifigan("plain").state_dict()
    with pytest.raises(ConfigError, match="upsample_rates"):
        convert_released_vocoder(state, upsample_rates=[8, 5, 4])
    with pytest.raises(ConfigError, match="hop=320"):
        convert_released_vocoder(state, upsample_rates=[5, 4, 2, 2, 4])


# -------------------------------------------------------------------------- FLAN-T5


WORDS = "a quiet piano loud drums music high quality low medium with and the".split()


def t5_tokenizer():
    pieces = ["▁" + w for w in WORDS] + [",", "▁"] + list("abcdefghijklmnopqrstuvwxyz")
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(piece, -float(i + 1)) for i, piece in enumerate(pieces)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


TEXTS = ["", "high quality, a quiet piano with loud drums", "low quality music " * 60]


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    tokenizer = t5_tokenizer()
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
    )
    torch.manual_seed(5)
    model = T5EncoderModel(config).eval()
    root = tmp_path_factory.mktemp("t5")
    full, config_and_tokenizer, tokenizer_only = root / "full", root / "cfg", root / "tok"
    model.save_pretrained(full)
    for folder in (full, config_and_tokenizer, tokenizer_only):
        tokenizer.save_pretrained(folder)
    config.save_pretrained(config_and_tokenizer)
    with torch.no_grad():
        # FlanT5HiddenState.encode_text: max_length=128, padding=True, truncation=True.
        tokens = tokenizer(
            TEXTS, max_length=128, padding=True, truncation=True, return_tensors="pt"
        )
        states = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    return {
        "model": model,
        "states": states,
        "mask": tokens.attention_mask.bool(),
        "full": full,
        "cfg": config_and_tokenizer,
        "tok": tokenizer_only,
    }


def _check_encoder(encoder, tiny_t5):
    assert isinstance(encoder, TextEncoder) and encoder.kind == "t5" and encoder.max_length == 128
    states, mask = encoder.encode(TEXTS)
    assert states.shape == (3, 128, 16)
    assert torch.equal(mask, tiny_t5["mask"])
    assert torch.allclose(states, tiny_t5["states"], atol=1e-6)


@pytest.mark.parametrize("folder", ["cfg", "tok", "full"])
def test_t5_from_checkpoint_weights(tiny_t5, folder):
    state = {k: v.clone() for k, v in tiny_t5["model"].state_dict().items()}
    encoder = load_released_text_encoder(state, tiny_t5[folder])
    _check_encoder(encoder, tiny_t5)
    assert encoder.model.shared.weight is encoder.model.encoder.embed_tokens.weight


def test_t5_from_folder_only(tiny_t5, tmp_path):
    encoder = load_released_text_encoder(None, tiny_t5["full"])
    _check_encoder(encoder, tiny_t5)
    encoder.save_pretrained(tmp_path)
    _check_encoder(TextEncoder.from_pretrained(tmp_path), tiny_t5)


def test_t5_embed_tokens_may_be_absent(tiny_t5):
    state = dict(tiny_t5["model"].state_dict())
    del state["encoder.embed_tokens.weight"]
    _check_encoder(load_released_text_encoder(state, tiny_t5["cfg"]), tiny_t5)


def test_t5_needs_a_tokenizer(tiny_t5, tmp_path):
    state = tiny_t5["model"].state_dict()
    with pytest.raises(ConfigError, match="tokenizer"):
        load_released_text_encoder(state, None)
    with pytest.raises(ConfigError, match="no FLAN-T5 weights"):
        load_released_text_encoder({}, None)
    with pytest.raises(ConfigError, match="no tokenizer"):
        load_released_text_encoder(state, tmp_path)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ("drop", "encoder.block.1.layer.0.SelfAttention.k.weight"),
        ("reshape", "encoder.block.0.layer.1.DenseReluDense.wo.weight"),
        ("add", "decoder.block.0.layer.0.SelfAttention.q.weight"),
    ],
)
def test_t5_strictness_names_the_key(tiny_t5, edit, named):
    state = dict(tiny_t5["model"].state_dict())
    if edit == "drop":
        del state[named]
    else:
        state[named] = torch.zeros(3, 3)
    with pytest.raises(CheckpointError, match=re.escape(f"cond_stage_models.0.model.{named}")):
        load_released_text_encoder(state, tiny_t5["cfg"])


# -------------------------------------------------------------------------- splitting


def test_split_released_state(ldm_vae, tiny_t5):
    vae = ldm_vae.state_dict()
    vocoder = hifigan("weight_g").state_dict()
    t5 = tiny_t5["model"].state_dict()
    checkpoint = {f"first_stage_model.{k}": v for k, v in vae.items()}
    checkpoint.update({f"first_stage_model.vocoder.{k}": v for k, v in vocoder.items()})
    checkpoint.update({f"cond_stage_models.0.model.{k}": v for k, v in t5.items()})
    dropped = {
        "first_stage_model.loss.logvar": torch.zeros(()),
        "first_stage_model.loss.discriminator.main.0.weight": torch.zeros(2),
        "clap.model.text_branch.w": torch.zeros(2),
    }
    rest = {"model.diffusion_model.x_embedder.proj.weight": torch.zeros(2), "betas": torch.zeros(4)}
    checkpoint.update(dropped | rest | {"scale_factor": torch.tensor(0.9)})
    parts = split_released_state(checkpoint)
    assert parts.vae.keys() == vae.keys() and parts.vocoder.keys() == vocoder.keys()
    assert parts.text_encoder.keys() == t5.keys()
    assert parts.vae["decoder.conv_in.weight"] is vae["decoder.conv_in.weight"]
    assert parts.scale_factor == pytest.approx(0.9)
    assert set(parts.dropped) == set(dropped) and set(parts.rest) == set(rest)
    assert set(parts.consumed) | set(parts.dropped) | set(parts.rest) == set(checkpoint)
    assert len(parts.consumed) + len(parts.dropped) + len(parts.rest) == len(checkpoint)
    assert all(any(k.startswith(p) for p in DROPPED_PREFIXES) for k in parts.dropped)
    convert_released_vae(parts.vae, parts.scale_factor)
    convert_released_vocoder(parts.vocoder)
    with pytest.raises(CheckpointError, match="scale_factor"):
        split_released_state({"scale_factor": torch.zeros(2)})
