import json

import numpy as np
import pytest
import safetensors.torch
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import spearmanr

from mos_predictor.base import MosModel, MosOutput
from mos_predictor.config import MosModelConfig
from mos_predictor.embedded import EmbeddedMosModel
from mos_predictor.models import build_mos_model, load_mos_model
from mos_predictor.sinkhorn import cosine_cost, sinkhorn, sinkhorn_distance
from mos_predictor.ssl import SslMosModel
from mos_predictor.text_aware import TextAwareMosModel
from qamdt.errors import AudioError, CheckpointError, ConfigError

TINY_WAV2VEC2 = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": [32, 32],
    "conv_kernel": [10, 3],
    "conv_stride": [5, 2],
    "num_feat_extract_layers": 2,
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 2,
}
# vocab_size matches the bundled MiniLM tokenizer, which the tiny text model reuses.
TINY_BERT = {
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
SMALL_EMBEDDED = {"cnn_channels": [8, 16, 16, 32], "embed_dim": 32}

CONFIGS = {
    "embedded": {"kind": "embedded", "window_seconds": 0.5, **SMALL_EMBEDDED},
    "ssl": {"kind": "ssl", "ssl_config": TINY_WAV2VEC2, "window_seconds": 0.25},
    "text-aware": {
        "kind": "text-aware",
        "text_config": TINY_BERT,
        "window_seconds": 0.5,
        "d_model": 32,
        "max_text_tokens": 16,
        **SMALL_EMBEDDED,
    },
    "text-aware-ssl": {
        "kind": "text-aware",
        "audio_encoder": "ssl",
        "ssl_config": TINY_WAV2VEC2,
        "text_config": TINY_BERT,
        "window_seconds": 0.25,
        "d_model": 32,
        "max_text_tokens": 16,
    },
}
KINDS = list(CONFIGS)
TEXTS = ["a calm piano sonata", None, ""]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The models here are tiny: a second thread gains nothing, and on a busy machine the
    # threads' barrier waits can slow the tests down many times over.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(name, **overrides):
    torch.manual_seed(0)
    return build_mos_model({**CONFIGS[name], **overrides})


def _clips(seed=0):
    """Three clips: shorter than a window, several windows long, about one window long."""
    rng = np.random.default_rng(seed)
    specs = [(0.1, 8000), (1.3, 44100), (0.3, 16000)]
    return [0.1 * rng.standard_normal(int(s * r)).astype(np.float32) for s, r in specs], [
        r for _, r in specs
    ]


def _head_weight(model):
    head = model.head if hasattr(model, "head") else model.omq_head
    return head[-1].weight


@pytest.fixture(scope="module", params=KINDS)
def kind_and_model(request):
    return request.param, _model(request.param)


# --------------------------------------------------------------------------------- config


def test_config_round_trip(tmp_path):
    config = MosModelConfig.from_dict(CONFIGS["text-aware-ssl"])
    assert config.sample_rate == 16000
    path = tmp_path / "config.json"
    config.save(path)
    assert json.loads(path.read_text())["format_version"] == 1
    assert MosModelConfig.load(path) == config
    assert MosModelConfig(kind="embedded").sample_rate == 22050
    assert MosModelConfig(kind="ssl").pooling == "mean"


@pytest.mark.parametrize(
    "values, named",
    [
        ({"kind": "embedded", "windw_seconds": 3.0}, "windw_seconds"),
        ({"kind": "regression"}, "kind"),
        ({"kind": "ssl", "sample_rate": 22050}, "sample_rate"),
        ({"kind": "text-aware", "d_model": 30, "n_heads": 4}, "d_model"),
        ({"kind": "embedded", "ot_weight": -1.0}, "ot_weight"),
        ({"kind": "embedded", "level_norm": "peak"}, "level_norm"),
        ({"kind": "ssl", "level_norm": "rms"}, "level_norm"),
    ],
)
def test_config_errors_name_the_key(values, named):
    with pytest.raises(ConfigError, match=named):
        MosModelConfig.from_dict(values)


def test_config_file_with_unknown_key_names_it(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"format_version": 1, "kind": "embedded", "colour": "red"}))
    with pytest.raises(ConfigError, match="colour"):
        MosModelConfig.load(path)


# -------------------------------------------------------------------------- forward pass


def test_forward_shapes_and_gradients(kind_and_model):
    name, model = kind_and_model
    model.train()
    model.zero_grad()
    size = model.config.window_samples
    out = model(0.1 * torch.randn(3, size), texts=TEXTS)
    assert isinstance(out, MosOutput)
    assert out.omq.shape == (3,)
    if name.startswith("text-aware"):
        assert out.ta.shape == (3,)
        assert out.aux_loss.ndim == 0 and out.aux_loss.item() > 0
        loss = out.omq.sum() + out.ta.sum() + out.aux_loss
    else:
        assert out.ta is None and out.aux_loss is None
        loss = out.omq.sum()
    loss.backward()
    grad = _head_weight(model).grad
    assert grad is not None and grad.abs().sum() > 0
    if name.startswith("text-aware"):
        assert model.ta_head[-1].weight.grad.abs().sum() > 0
        # The text encoder is frozen by default.
        assert all(p.grad is None for p in model.text_encoder.parameters())


def test_embedded_encode_sequence():
    model = _model("embedded")
    seq = model.encode(torch.zeros(2, model.config.window_samples))
    assert seq.ndim == 3 and seq.shape[0] == 2 and seq.shape[2] == 32


def test_rms_level_norm_makes_the_encoding_independent_of_the_window_level():
    model = _model("embedded", level_norm="rms").eval()
    size = model.config.window_samples
    torch.manual_seed(1)
    x = 0.3 * torch.randn(2, size)
    x[1, size // 2 :] = 0  # padding: the RMS is taken over the valid half only
    lengths = torch.tensor([size, size // 2])
    with torch.no_grad():
        base = model.encoder(x, lengths)[0]
        for gain in (0.05, 0.3, 3.0):
            torch.testing.assert_close(model.encoder(gain * x, lengths)[0], base,
                                       atol=1e-4, rtol=1e-3)  # fmt: skip
        levelled = model.encoder.normalise_level(x, lengths)
        plain = _model("embedded").eval()
        assert plain.encoder.normalise_level(x, lengths) is x
        quiet, loud = plain.encoder(0.05 * x, lengths)[0], plain.encoder(x, lengths)[0]
        assert not torch.allclose(quiet, loud, atol=1e-4, rtol=1e-3)
    rms = levelled[0].square().mean().sqrt(), levelled[1, : size // 2].square().mean().sqrt()
    torch.testing.assert_close(torch.stack(rms), torch.tensor([0.1, 0.1]))
    # One gain per window: levels inside it (a quiet noise floor under music) are kept.
    torch.testing.assert_close(levelled[0] / x[0], torch.full((size,), levelled[0, 0] / x[0, 0]))


def test_score_scaling_uses_config():
    model = _model("embedded").eval()
    x = 0.1 * torch.randn(2, model.config.window_samples)
    with torch.no_grad():
        base = model(x).omq
        model.config.score_offset, model.config.score_scale = 10.0, 2.0
        scaled = model(x).omq
    torch.testing.assert_close(scaled, 10.0 + 2.0 * (base - 3.0))


# ------------------------------------------------------------------------------- predict


def test_predict_clips_of_any_length_and_rate(kind_and_model):
    name, model = kind_and_model
    clips, rates = _clips()
    model.train()
    first = model.predict(clips, rates, texts=TEXTS, batch_size=2)
    assert model.training  # mode restored
    second = model.predict(clips, rates, texts=TEXTS, batch_size=2)
    assert first == second
    assert len(first) == 3
    keys = {"omq", "ta"} if name.startswith("text-aware") else {"omq"}
    for entry in first:
        assert set(entry) == keys
        assert all(np.isfinite(v) for v in entry.values())


def test_predict_windows_cover_the_clip():
    model = _model("embedded")
    size = model.config.window_samples
    windows, lengths = model._windows(np.ones(int(2.6 * size), dtype=np.float32))
    assert windows.shape == (3, size) and lengths == [size] * 3
    short, lengths = model._windows(np.ones(size // 3, dtype=np.float32))
    assert short.shape == (1, size) and lengths == [size // 3]
    assert short[0, size // 3 :].sum() == 0


def test_predict_rejects_bad_input():
    model = _model("embedded")
    with pytest.raises(ValueError, match="empty"):
        model.predict([], 16000)
    bad = np.ones(1000, dtype=np.float32)
    bad[10] = np.nan
    with pytest.raises(AudioError, match=r"<audio\[1\]>.*NaN"):
        model.predict([np.ones(1000, dtype=np.float32), bad], 16000)
    with pytest.raises(ValueError, match="sample rates"):
        model.predict([bad], [16000, 16000])
    with pytest.raises(ValueError, match="list"):
        model.predict(np.ones(1000, dtype=np.float32), 16000)


def test_text_aware_none_text_is_empty_string():
    model = _model("text-aware").eval()
    x = 0.1 * torch.randn(2, model.config.window_samples)
    with torch.no_grad():
        a = model(x, texts=[None, None])
        b = model(x, texts=["", ""])
        c = model(x)
    torch.testing.assert_close(a.ta, b.ta)
    torch.testing.assert_close(a.ta, c.ta)


# ------------------------------------------------------------------------- save and load


def test_save_load_round_trip(kind_and_model, tmp_path):
    name, model = kind_and_model
    clips, rates = _clips(1)
    before = model.predict(clips, rates, texts=TEXTS)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["kind"] == model.config.kind and saved["format_version"] == 1
    loaded = load_mos_model(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.predict(clips, rates, texts=TEXTS) == before
    if model.config.uses_ssl:
        assert saved["ssl_config"]["hidden_size"] == 32


def test_from_pretrained_on_a_subclass_checks_the_kind(tmp_path):
    _model("embedded").save_pretrained(tmp_path)
    assert isinstance(EmbeddedMosModel.from_pretrained(tmp_path), EmbeddedMosModel)
    with pytest.raises(ConfigError, match="embedded"):
        SslMosModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("tamper", ["missing", "shape", "unexpected"])
def test_tampered_weights_name_the_key(tmp_path, tamper):
    _model("embedded").save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = safetensors.torch.load_file(str(path))
    key = "head.3.weight"
    if tamper == "missing":
        del state[key]
    elif tamper == "shape":
        state[key] = torch.zeros(1, 5)
    else:
        key = "head.9.bias"
        state[key] = torch.zeros(1)
    safetensors.torch.save_file(state, str(path))
    with pytest.raises(CheckpointError, match=key.replace(".", r"\.")):
        MosModel.from_pretrained(tmp_path)


def test_load_by_name(tmp_path, monkeypatch):
    _model("embedded").save_pretrained(tmp_path / "models" / "tiny")
    monkeypatch.setenv("QAMDT_MODELS", str(tmp_path / "models"))
    assert isinstance(load_mos_model("tiny"), EmbeddedMosModel)
    with pytest.raises(CheckpointError, match="models"):
        load_mos_model("nonexistent")


# ------------------------------------------------------------------------------ training


@pytest.mark.parametrize("name", ["ssl", "text-aware"])
def test_freeze_encoder_keeps_weights(name):
    model = _model(name, freeze_encoder=True)
    encoder = model.encoder if name == "ssl" else model.audio_encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    head_before = _head_weight(model).clone()
    model.train()
    assert not encoder.training and model.training
    assert all(not p.requires_grad for p in encoder.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.Adam(trainable, lr=1e-2)
    out = model(0.1 * torch.randn(4, model.config.window_samples), texts=["a"] * 4)
    out.omq.square().mean().backward()
    optimiser.step()
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    assert not torch.equal(_head_weight(model), head_before)


def test_ot_term_switches_off():
    x = 0.1 * torch.randn(2, 11025)
    off = _model("text-aware", ot_weight=0.0)(x, texts=["a", "b"])
    on = _model("text-aware", ot_weight=0.5)(x, texts=["a", "b"])
    assert off.aux_loss is None
    assert on.aux_loss.item() > 0 and on.aux_loss.requires_grad


def test_ssl_layer_choice():
    model = _model("ssl", ssl_layer=1)
    assert model(0.1 * torch.randn(2, 4000)).omq.shape == (2,)
    with pytest.raises(ConfigError, match="ssl_layer"):
        _model("ssl", ssl_layer=5)


def _noisy_tones(n_clips=8, seconds=0.5, sr=22050, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    tone = sum(np.sin(2 * np.pi * 220.0 * k * t) / k for k in range(1, 6))
    clips = []
    for snr_db in np.linspace(40.0, 0.0, n_clips):
        noise = rng.standard_normal(t.size)
        noise *= np.sqrt(np.mean(tone**2) / np.mean(noise**2)) / 10 ** (snr_db / 20)
        clips.append((tone + noise).astype(np.float32))
    return clips, np.linspace(5.0, 1.0, n_clips).astype(np.float32)


def test_embedded_model_learns_noise_ranking():
    torch.manual_seed(0)
    clips, targets = _noisy_tones()
    config = MosModelConfig(
        kind="embedded", window_seconds=0.5, score_offset=3.0, score_scale=1.4, **SMALL_EMBEDDED
    )
    model = build_mos_model(config)
    from qamdt.audio_io import normalize_waveform

    x = torch.from_numpy(np.stack([normalize_waveform(c) for c in clips]))
    y = torch.from_numpy(targets)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(100):
        loss = (model(x).omq - y).square().mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    scores = [p["omq"] for p in model.predict(clips, 22050)]
    assert spearmanr(scores, targets)[0] > 0.9


# ------------------------------------------------------------------------------ sinkhorn


def test_sinkhorn_identical_sets_cost_vanishes():
    torch.manual_seed(0)
    x = torch.randn(1, 5, 8)
    costs = [sinkhorn_distance(x, x, epsilon=eps, n_iters=300).item() for eps in (0.1, 0.03, 0.01)]
    assert costs[0] > costs[1] > costs[2] >= 0
    assert costs[2] < 1e-3


def test_sinkhorn_matches_exact_assignment_and_marginals():
    cost = torch.tensor([[[0.2, 0.9], [0.4, 1.5]]])
    rows, cols = linear_sum_assignment(cost[0].numpy())
    exact = cost[0].numpy()[rows, cols].sum() / 2  # uniform weights 1/2
    value, _ = sinkhorn(cost, epsilon=0.005, n_iters=500)
    assert value.item() == pytest.approx(exact, abs=1e-3)
    _, plan = sinkhorn(cost, epsilon=0.05, n_iters=200)
    torch.testing.assert_close(plan.sum(dim=2), torch.full((1, 2), 0.5), atol=1e-4, rtol=0)
    torch.testing.assert_close(plan.sum(dim=1), torch.full((1, 2), 0.5), atol=1e-4, rtol=0)


def test_sinkhorn_masks_and_gradients():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, requires_grad=True)
    y = torch.randn(2, 3, 6)
    x_mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    y_mask = torch.tensor([[True, True, True], [True, False, False]])
    value, plan = sinkhorn(cosine_cost(x, y), x_mask, y_mask, epsilon=0.1, n_iters=100)
    assert plan[0, 2:].sum() < 1e-6 and plan[1, :, 1:].sum() < 1e-6
    torch.testing.assert_close(plan.sum(dim=(1, 2)), torch.ones(2), atol=1e-4, rtol=0)
    # Masked rows give the same cost as cutting them off.
    alone = sinkhorn_distance(x[:1, :2], y[:1], epsilon=0.1, n_iters=100)
    torch.testing.assert_close(value[:1], alone, atol=1e-5, rtol=0)
    value.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad[1].abs().sum() > 0
    assert x.grad[0, 2:].abs().sum() == 0


def test_model_classes_are_registered():
    assert isinstance(_model("ssl"), SslMosModel)
    assert isinstance(_model("text-aware"), TextAwareMosModel)


# -------------------------------------------------------------------------- distillation


def test_distillation_targets_and_loss(tmp_path):
    from mos_predictor.distill import fit_distillation_targets

    model = _model("ssl", distill_layers=[1, 2], distill_clusters=4)
    x = 0.1 * torch.randn(2, model.config.window_samples)
    model.train()
    with pytest.raises(RuntimeError, match="fit_distillation_targets"):
        model(x)
    clips, rates = _clips(2)
    inertia = fit_distillation_targets(model, clips[1:], sample_rate=rates[1])
    assert set(inertia) == {1, 2}
    teacher_before = {k: v.clone() for k, v in model.distill.teacher.state_dict().items()}
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(x)
    assert out.aux_loss.item() > 0
    (out.omq.square().mean() + out.aux_loss).backward()
    assert model.distill.heads[0].weight.grad.abs().sum() > 0
    assert model.encoder.model.encoder.layers[0].attention.q_proj.weight.grad is not None
    optimiser.step()
    for key, value in model.distill.teacher.state_dict().items():
        torch.testing.assert_close(value, teacher_before[key], rtol=0, atol=0, msg=key)
    model.eval()
    assert model(x).aux_loss is None
    model.save_pretrained(tmp_path)
    loaded = load_mos_model(tmp_path)
    torch.testing.assert_close(loaded.distill.centroids, model.distill.centroids)
    assert bool(loaded.distill.fitted)
    with pytest.raises(ConfigError, match="distill_layers"):
        _model("ssl", distill_layers=[7])


def test_ssl_encoder_from_a_local_folder(tmp_path):
    from transformers import AutoModel, Wav2Vec2Config

    torch.manual_seed(1)
    pretrained = AutoModel.from_config(Wav2Vec2Config(**TINY_WAV2VEC2))
    pretrained.save_pretrained(tmp_path / "w2v")
    model = build_mos_model({"kind": "ssl", "ssl_model": str(tmp_path / "w2v")})
    name = "encoder.layers.0.attention.q_proj.weight"
    torch.testing.assert_close(
        model.encoder.model.state_dict()[name], pretrained.state_dict()[name]
    )
    with pytest.raises(ConfigError, match="ssl_model"):
        build_mos_model({"kind": "ssl", "ssl_model": str(tmp_path / "missing")})
