import pytest
import torch
from transformers import AutoTokenizer, T5Config, T5EncoderModel

from qamdt.errors import ConfigError
from qamdt.models.text_encoder import TextEncoder, embedded_text_model_path

TEXTS = ["a calm piano melody with soft strings", "drums", ""]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder.from_pretrained("embedded")


@pytest.fixture(scope="module")
def tiny_t5_folder(tmp_path_factory):
    # No T5 tokenizer ships offline: pair a tiny random T5 with the MiniLM tokenizer (same
    # 30522-token vocabulary), which is enough to exercise the loading code.
    folder = tmp_path_factory.mktemp("tiny_t5")
    torch.manual_seed(0)
    config = T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=30522)
    model = T5EncoderModel(config).eval()
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(embedded_text_model_path()).save_pretrained(folder)
    return folder, model


def test_embedded_shapes_and_mask(encoder):
    assert encoder.kind == "bert-like"
    assert encoder.hidden_size == 384 and encoder.max_length == 64
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    states, mask = encoder.encode(TEXTS)
    tokens = encoder.tokenizer(TEXTS, padding="longest", return_tensors="pt")
    assert states.shape == (3, tokens["input_ids"].shape[1], 384)
    assert states.dtype == torch.float32 and mask.dtype == torch.bool
    assert torch.equal(mask, tokens["attention_mask"].bool())
    assert mask[2].sum() == 2  # the empty text keeps [CLS] [SEP]
    assert torch.isfinite(states).all()


def test_padding_does_not_change_real_tokens(encoder):
    alone, alone_mask = encoder.encode(TEXTS[1])
    batch, batch_mask = encoder.encode(TEXTS)
    n = int(alone_mask.sum())
    assert alone.shape[1] == n and batch_mask[1].sum() == n
    torch.testing.assert_close(batch[1, :n], alone[0], atol=1e-5, rtol=0)
    empty, _ = encoder.encode("")
    torch.testing.assert_close(batch[2, :2], empty[0], atol=1e-5, rtol=0)


def test_truncation_and_outputs(encoder):
    short = TextEncoder(encoder.model, encoder.tokenizer, max_length=6, kind="bert-like")
    states, mask = short.encode(["one two three four five six seven eight nine", "one"])
    assert states.shape == (2, 6, 384) and mask[0].all() and mask[1].sum() == 3
    states, _ = encoder.encode("jazz", dtype=torch.float64, device="cpu")
    assert states.dtype == torch.float64


def test_train_keeps_eval_mode(encoder):
    parent = torch.nn.Sequential(encoder)
    parent.train()
    assert not encoder.training and not encoder.model.training


def test_bad_texts(encoder):
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        encoder.encode(["fine", None])
    with pytest.raises(ValueError, match="empty"):
        encoder.encode([])


def test_tiny_t5_loads_as_t5(tiny_t5_folder):
    folder, model = tiny_t5_folder
    encoder = TextEncoder.from_pretrained(str(folder))
    assert encoder.kind == "t5" and isinstance(encoder.model, T5EncoderModel)
    assert encoder.hidden_size == 32 and encoder.max_length == 128
    states, mask = encoder.encode(TEXTS)
    tokens = encoder.tokenizer(TEXTS, padding="longest", return_tensors="pt")
    with torch.no_grad():
        expected = model(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).last_hidden_state
    assert torch.equal(mask, tokens["attention_mask"].bool())
    torch.testing.assert_close(states, expected)


def test_pipeline_layout(tiny_t5_folder, tmp_path):
    folder, model = tiny_t5_folder
    model.save_pretrained(tmp_path / "text_encoder")
    AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "tokenizer")
    encoder = TextEncoder.from_pretrained(tmp_path, max_length=16)
    assert encoder.kind == "t5" and encoder.max_length == 16
    direct = TextEncoder.from_pretrained(folder)
    torch.testing.assert_close(encoder.encode("piano")[0], direct.encode("piano")[0])


def test_save_load_round_trip(encoder, tmp_path):
    short = TextEncoder(encoder.model, encoder.tokenizer, max_length=5, kind="bert-like")
    short.save_pretrained(tmp_path)
    loaded = TextEncoder.from_pretrained(tmp_path)
    assert loaded.kind == "bert-like" and loaded.max_length == 5
    long_text = "a fast rock song with distorted guitars and loud drums"
    got_states, got_mask = loaded.encode(TEXTS + [long_text])
    want_states, want_mask = short.encode(TEXTS + [long_text])
    assert torch.equal(got_states, want_states) and torch.equal(got_mask, want_mask)


def test_bad_paths(tmp_path):
    with pytest.raises(ConfigError, match="nowhere"):
        TextEncoder.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="holds neither config.json"):
        TextEncoder.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="not in the local hub cache"):
        TextEncoder.from_pretrained("no-such-org/no-such-model")
    with pytest.raises(ConfigError, match="max_length"):
        TextEncoder.from_pretrained("embedded", max_length=10_000)
