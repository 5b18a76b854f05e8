"""LP-MusicCaps and MusiLingo captioners, exercised on tiny random models built offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tokenizers.pre_tokenizers import ByteLevel

from captioning.base import IMPLEMENTATION_MODULES, load_captioner
from captioning.lp_musiccaps import (
    LpMusicCapsCaptioner,
    join_captions,
    select_chunks,
    split_chunks,
)
from captioning.lp_musiccaps_model import BartCaptionModel, melscale_fbanks
from captioning.musilingo import MusiLingoCaptioner
from captioning.musilingo_model import pool_time
from captioning.train_musilingo import train_projection
from qamdt.errors import CheckpointError, ConfigError

MERGES = ["Ġ p", "i a", "Ġ t", "h e", "i n", "Ġ v", "o l", "Ġ s", "Ġ a", "Ġp ia", "n o"]


def write_bpe(folder, specials):
    """A byte-level BPE vocabulary: the special tokens first, then the 256 bytes, then merges."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(specials)}
    for char in sorted(ByteLevel.alphabet()):
        vocab.setdefault(char, len(vocab))
    for merge in MERGES:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return vocab


def clips(rate=8000, seconds=(1.0, 1.5), seed=0):
    rng = np.random.default_rng(seed)
    t = [np.arange(int(rate * s)) / rate for s in seconds]
    return [
        (0.3 * np.sin(2 * np.pi * (220 + 110 * i) * x) + 0.05 * rng.standard_normal(len(x))).astype(
            np.float32
        )
        for i, x in enumerate(t)
    ]


# --------------------------------------------------------------------------- LP-MusicCaps


@pytest.fixture(scope="module")
def bart_dir(tmp_path_factory):
    from transformers import BartConfig

    folder = tmp_path_factory.mktemp("bart-tiny")
    vocab = write_bpe(folder, ["<s>", "<pad>", "</s>", "<unk>"])
    vocab["<mask>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    BartConfig(
        vocab_size=len(vocab),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
    ).save_pretrained(folder)
    raw = json.loads((folder / "config.json").read_text())
    # What bart-base's config.json sets and the released model inherited at generation time.
    raw.update(no_repeat_ngram_size=3, early_stopping=True, forced_bos_token_id=0)
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


def tiny_bart_model(bart_dir, duration=2, seed=0):
    from transformers import BartConfig

    torch.manual_seed(seed)
    config = BartConfig.from_pretrained(bart_dir, local_files_only=True)
    return BartCaptionModel(config, duration=duration)


@pytest.fixture(scope="module")
def transfer_pth(bart_dir, tmp_path_factory):
    model = tiny_bart_model(bart_dir)
    path = tmp_path_factory.mktemp("ckpt") / "transfer.pth"
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, path)
    return path


def build_lp(transfer_pth, bart_dir, **settings):
    settings.setdefault("duration", 2)
    settings.setdefault("max_length", 12)
    settings.setdefault("num_beams", 2)
    return LpMusicCapsCaptioner.from_checkpoint(transfer_pth, bart_dir, **settings)


def test_lp_state_dict_has_the_released_names_and_shapes(bart_dir):
    from transformers import BartConfig

    config = BartConfig.from_pretrained(bart_dir, local_files_only=True)
    model = BartCaptionModel(config)  # the released settings: 10 s, 6 convs, 128 mels
    state = model.state_dict()
    audio_keys = sorted(k for k in state if k.startswith("audio_encoder."))
    expected = [
        "audio_encoder.conv1.bias",
        "audio_encoder.conv1.weight",
        *[f"audio_encoder.conv_stack.{i}.{p}" for i in range(5) for p in ("bias", "weight")],
        "audio_encoder.mel_encoder.mel_scale.fb",
        "audio_encoder.mel_encoder.spec_fn.window",
        "audio_encoder.positional_embedding",
    ]
    assert audio_keys == sorted(expected)
    assert all(k.startswith(("audio_encoder.", "bart.")) for k in state)
    for key in ("bart.final_logits_bias", "bart.model.shared.weight", "bart.lm_head.weight"):
        assert key in state
    assert tuple(state["audio_encoder.mel_encoder.mel_scale.fb"].shape) == (513, 128)
    assert tuple(state["audio_encoder.mel_encoder.spec_fn.window"].shape) == (1024,)
    assert tuple(state["audio_encoder.positional_embedding"].shape) == (32, 32)
    assert tuple(state["audio_encoder.conv1.weight"].shape) == (32, 128, 3)
    with torch.no_grad():
        frames = model.audio_encoder.mel_encoder(torch.zeros(1, 160000))
        embeds = model.audio_encoder(torch.zeros(1, 160000))
    assert frames.shape == (1, 128, 1001)
    assert embeds.shape == (1, 32, 32)  # 1001 frames -> 32 after five stride-2 convs


def test_lp_mel_filter_bank_matches_librosa_htk():
    import librosa

    ours = melscale_fbanks(513, 0.0, 8000.0, 128, 16000).numpy()
    ref = librosa.filters.mel(
        sr=16000, n_fft=1024, n_mels=128, fmin=0, fmax=8000, htk=True, norm=None
    )
    np.testing.assert_allclose(ours, ref.T, atol=1e-4)


def test_lp_chunking_helpers():
    assert [len(c) for c in split_chunks(np.ones(5), 10)] == [10]
    assert [len(c) for c in split_chunks(np.ones(25), 10)] == [10, 10]
    assert select_chunks(3, "center") == [1]
    assert select_chunks(2, "center") == [0]
    assert select_chunks(3, "first") == [0]
    assert select_chunks(3, "join") == [0, 1, 2]
    assert join_captions(["a b", "a b", " c "]) == "a b c"


def test_lp_from_checkpoint_is_strict_and_deterministic(transfer_pth, bart_dir):
    captioner = build_lp(transfer_pth, bart_dir)
    assert captioner.config.generation_defaults["no_repeat_ngram_size"] == 3
    assert captioner.config.generation_defaults["forced_bos_token_id"] == 0
    audio = clips()
    first = captioner.caption(audio, 8000, batch_size=1)
    assert len(first) == 2 and all(isinstance(text, str) for text in first)
    assert captioner.caption(audio, 8000) == first
    reference = tiny_bart_model(bart_dir).eval()
    for name, tensor in reference.state_dict().items():
        assert torch.equal(captioner.model.state_dict()[name], tensor), name


def test_lp_generates_tokens_from_audio(transfer_pth, bart_dir):
    captioner = build_lp(transfer_pth, bart_dir, min_length=6)
    chunks = np.stack(split_chunks(clips(rate=16000, seconds=(2.0,))[0], 32000))
    ids = captioner.model.generate(torch.from_numpy(chunks), captioner.generation_config())
    assert ids.shape[0] == 1 and ids.shape[1] >= 6
    assert ids[0, 0].item() == 2 and ids[0, 1].item() == 0  # decoder start, forced BOS


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.pop("audio_encoder.conv1.bias"), "audio_encoder.conv1.bias"),
        (lambda s: s.__setitem__("extra.weight", torch.zeros(1)), "extra.weight"),
        (
            lambda s: s.__setitem__("audio_encoder.conv1.bias", torch.zeros(3)),
            "audio_encoder.conv1.bias",
        ),
    ],
)
def test_lp_checkpoint_mismatch_names_the_key(bart_dir, tmp_path, edit, message):
    state = tiny_bart_model(bart_dir).state_dict()
    edit(state)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match=message.replace(".", r"\.")):
        build_lp(path, bart_dir)


def test_lp_strips_ddp_prefix_and_rejects_pickled_objects(bart_dir, tmp_path):
    state = {f"module.{k}": v for k, v in tiny_bart_model(bart_dir).state_dict().items()}
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": state, "epoch": 1}, path)
    build_lp(path, bart_dir)
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": state, "args": ConfigError("x")}, unsafe)
    with pytest.raises(CheckpointError, match="weights_only"):
        build_lp(unsafe, bart_dir)


def test_lp_long_audio_modes(transfer_pth, bart_dir):
    long_clip = clips(rate=16000, seconds=(5.0,))
    joined = build_lp(transfer_pth, bart_dir, long_audio="join")
    first = build_lp(transfer_pth, bart_dir, long_audio="first")
    per_chunk = joined.caption_chunks(np.stack(split_chunks(long_clip[0], 32000)))
    assert len(per_chunk) == 2
    assert joined.caption(long_clip, 16000) == [join_captions(per_chunk)]
    assert first.caption(long_clip, 16000) == [per_chunk[0]]
    with pytest.raises(ConfigError, match="long_audio"):
        build_lp(transfer_pth, bart_dir, long_audio="middle")


def test_lp_save_load_round_trip(transfer_pth, bart_dir, tmp_path):
    captioner = build_lp(transfer_pth, bart_dir, do_sample=True, seed=3)
    audio = clips()
    expected = captioner.caption(audio, 8000)
    assert captioner.caption(audio, 8000) == expected  # seeded sampling repeats
    captioner.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["kind"] == "lp-musiccaps"
    assert (tmp_path / "saved" / "model.safetensors").is_file()
    reloaded = LpMusicCapsCaptioner.from_pretrained(tmp_path / "saved")
    assert reloaded.config == captioner.config
    assert reloaded.caption(audio, 8000) == expected
    for name, tensor in captioner.model.state_dict().items():
        assert torch.equal(reloaded.model.state_dict()[name], tensor), name


# --------------------------------------------------------------------------- MusiLingo

ENCODER_CONFIG = {
    "model_type": "hubert",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "conv_dim": [8, 8],
    "conv_kernel": [10, 8],
    "conv_stride": [10, 8],
    "num_conv_pos_embeddings": 8,
    "num_conv_pos_embedding_groups": 2,
}


@pytest.fixture(scope="module")
def gpt2_tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2-tok")
    write_bpe(folder, ["<|endoftext|>"])
    return folder


def build_musilingo(tokenizer_dir, seed=0, **settings):
    from transformers import GPT2TokenizerFast

    tokenizer = GPT2TokenizerFast.from_pretrained(tokenizer_dir, local_files_only=True)
    lm_config = {
        "model_type": "gpt2",
        "vocab_size": len(tokenizer),
        "n_embd": 32,
        "n_layer": 1,
        "n_head": 2,
        "n_positions": 256,
        # A wide init makes the tiny LM's output depend on its input, so training can show.
        "initializer_range": 0.5,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    settings.setdefault("pool_frames", 50)
    settings.setdefault("max_new_tokens", 8)
    torch.manual_seed(seed)
    return MusiLingoCaptioner.build(
        tokenizer=tokenizer, encoder_config=ENCODER_CONFIG, lm_config=lm_config, **settings
    )


def test_pool_time_averages_windows_and_the_remainder():
    x = torch.arange(7.0).reshape(1, 7, 1)
    pooled = pool_time(x, 3)
    assert pooled.flatten().tolist() == [1.0, 4.0, 6.0]
    assert pool_time(x, 7).flatten().tolist() == [3.0]


def test_musilingo_shapes_and_frozen_parts(gpt2_tokenizer_dir):
    captioner = build_musilingo(gpt2_tokenizer_dir)
    assert captioner.sample_rate == 16000 and captioner.config.do_normalize is True
    features = captioner.encode(clips(rate=22050, seconds=(1.0, 2.5)), 22050)
    # 16 kHz -> 200 encoder frames a second (stride 80), pooled by 50 -> 4 tokens a second,
    # the 49 frames left at the end of 2.5 s making a 10th.
    assert [tuple(f.shape) for f in features] == [(4, 16), (10, 16)]
    inputs = captioner._inputs(features)
    before, after = captioner._prompt_embeddings()
    assert inputs[1].shape == (before.shape[0] + 10 + after.shape[0], 32)
    trainable = {n for n, p in captioner.model.named_parameters() if p.requires_grad}
    assert trainable == {"llama_proj.weight", "llama_proj.bias"}


def test_musilingo_training_lowers_the_loss_and_touches_only_the_projection(gpt2_tokenizer_dir):
    captioner = build_musilingo(gpt2_tokenizer_dir)
    audio = clips(rate=16000, seconds=(1.0, 1.0))
    texts = ["a slow piano piece", "a fast violin tune"]
    frozen = {
        n: p.detach().clone()
        for n, p in captioner.model.named_parameters()
        if not n.startswith("llama_proj")
    }
    with torch.no_grad():
        before = captioner.caption_loss(captioner.encode(audio, 16000), texts).item()
    losses = train_projection(captioner, audio, texts, epochs=12, lr=2e-2, sample_rates=16000)
    assert len(losses) == 12
    with torch.no_grad():
        after = captioner.caption_loss(captioner.encode(audio, 16000), texts).item()
    assert after < before - 0.1
    for name, param in captioner.model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
    assert not captioner.model.training


def test_musilingo_caption_is_deterministic(gpt2_tokenizer_dir):
    captioner = build_musilingo(gpt2_tokenizer_dir)
    audio = clips(rate=8000, seconds=(1.0, 2.0, 1.0))
    first = captioner.caption(audio, 8000, batch_size=2)
    assert len(first) == 3 and all(isinstance(text, str) for text in first)
    assert captioner.caption(audio, 8000) == first
    sampler = build_musilingo(gpt2_tokenizer_dir, do_sample=True, temperature=0.7, seed=5)
    assert sampler.caption(audio[:1], 8000) == sampler.caption(audio[:1], 8000)


def test_musilingo_stops_and_cuts_at_end_sym(gpt2_tokenizer_dir):
    captioner = build_musilingo(gpt2_tokenizer_dir)
    assert captioner.generation_config().stop_strings == ["###"]
    assert captioner._clean(" a slow piano###Human: more") == "a slow piano"
    assert captioner._clean("Assistant: a violin") == "a violin"


def test_musilingo_save_load_round_trip(gpt2_tokenizer_dir, tmp_path):
    captioner = build_musilingo(gpt2_tokenizer_dir, instruction="Describe the music.")
    audio = clips(rate=16000, seconds=(1.0, 1.0))
    train_projection(captioner, audio, ["a slow piano piece"] * 2, epochs=2, sample_rates=16000)
    expected = captioner.caption(audio, 16000)
    captioner.save_pretrained(tmp_path / "saved")
    for name in ("config.json", "projection.safetensors", "encoder.safetensors", "lm.safetensors"):
        assert (tmp_path / "saved" / name).is_file(), name
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["kind"] == "musilingo" and saved["encoder_config"]["model_type"] == "hubert"
    reloaded = MusiLingoCaptioner.from_pretrained(tmp_path / "saved")
    assert reloaded.caption(audio, 16000) == expected
    for name, tensor in captioner.model.state_dict().items():
        assert torch.equal(reloaded.model.state_dict()[name], tensor), name


def test_musilingo_loads_a_released_style_projection(gpt2_tokenizer_dir, tmp_path):
    captioner = build_musilingo(gpt2_tokenizer_dir)
    weight, bias = torch.randn(32, 16), torch.randn(32)
    path = tmp_path / "checkpoint_5.pth"
    torch.save(
        {"model": {"llama_proj.weight": weight, "llama_proj.bias": bias}, "config": {"a": 1}},
        path,
    )
    captioner.load_projection(path)
    assert torch.equal(captioner.model.llama_proj.weight, weight)
    assert captioner.config.projection_checkpoint == str(path)
    torch.save({"model": {"llama_proj.weight": weight}}, path)
    with pytest.raises(CheckpointError, match=r"llama_proj\.bias"):
        captioner.load_projection(path)


def test_musilingo_config_is_validated(gpt2_tokenizer_dir):
    with pytest.raises(ConfigError, match="AudioHere"):
        build_musilingo(gpt2_tokenizer_dir, prompt_template="no audio here")
    with pytest.raises(ConfigError, match="unknown musilingo setting"):
        build_musilingo(gpt2_tokenizer_dir, n_beams=2)


def test_load_captioner_dispatches_on_kind(transfer_pth, bart_dir, gpt2_tokenizer_dir, tmp_path):
    for module in IMPLEMENTATION_MODULES:  # load_captioner imports every implementation
        pytest.importorskip(module)
    build_lp(transfer_pth, bart_dir).save_pretrained(tmp_path / "lp")
    build_musilingo(gpt2_tokenizer_dir).save_pretrained(tmp_path / "ml")
    assert isinstance(load_captioner(tmp_path / "lp"), LpMusicCapsCaptioner)
    assert isinstance(load_captioner(tmp_path / "ml"), MusiLingoCaptioner)
