import json
import sys

import numpy as np
import pytest
import safetensors.torch
import soundfile as sf
import torch
from tiny_clap import TINY_CLAP

from captioning.base import load_clap
from captioning.clap_model import EmbeddedClapConfig
from captioning.embedded_clap import TEXT_ENCODER_PREFIX, EmbeddedClapScorer
from captioning.hf_clap import HfClapScorer, features_tensor
from captioning.laion_clap import LaionClapScorer
from captioning.retrieval import evaluate_retrieval, retrieval_metrics
from captioning.train_clap import tag_caption, train_embedded_clap
from qamdt.errors import CheckpointError, ConfigError, QamdtError
from qamdt.manifest import ClipRecord, write_manifest

SR = 22050


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: a second thread gains nothing and slows a busy machine down.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tone(freq, seconds=1.0, rate=SR, seed=0):
    t = np.arange(int(seconds * rate)) / rate
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (0.5 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32)


def unit_rows(x):
    return np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_embedded():
    torch.manual_seed(0)
    return EmbeddedClapScorer(TINY_CLAP)


# ----------------------------------------------------------------------------- metrics


def test_retrieval_metrics_perfect_and_ties():
    emb = np.eye(4)
    m = retrieval_metrics(emb, emb, ["a", "b", "c", "d"])
    assert m["t2a_r1"] == m["a2t_r1"] == m["caption_t2a_r1"] == m["caption_a2t_r1"] == 1.0
    assert m["count"] == 4 and m["distinct_captions"] == 4
    # All scores tie: index order decides, so only item 0 is ranked first.
    flat = np.ones((4, 2)) / np.sqrt(2)
    m = retrieval_metrics(flat, flat, ["a", "b", "c", "d"])
    assert m["t2a_r1"] == m["a2t_r1"] == 0.25
    assert m["t2a_r5"] == 1.0


def test_retrieval_metrics_caption_level():
    audio = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    text = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    m = retrieval_metrics(audio, text, ["x", "x", "y"])
    # Text 1 ties with audio 0 and 1 and takes 0: an exact miss, a caption-level hit.
    assert m["t2a_r1"] == pytest.approx(2 / 3)
    assert m["caption_t2a_r1"] == 1.0
    assert m["caption_a2t_r1"] == 1.0
    assert m["distinct_captions"] == 2
    with pytest.raises(ValueError):
        retrieval_metrics(audio, text, ["x", "x"])


def test_tag_caption():
    tags = {
        "style": "baroque",
        "form": "fugue",
        "ensemble": "solo organ",
        "instruments": ["church organ"],
        "instrument_families": ["keyboard"],
        "tempo": "allegro",
        "tempo_class": "fast",
        "bpm": 120,
        "key": "C minor",
        "mode": "minor",
        "meter": "4/4",
    }
    assert tag_caption(tags) == (
        "baroque, fugue, solo organ, church organ, allegro, 120 BPM, C minor, 4/4"
    )


# ---------------------------------------------------------------------------- embedded


def test_embedded_shapes_norms_and_determinism(tiny_embedded):
    audio = [tone(220), tone(880, seconds=2.3), tone(440, seconds=0.01)]
    a = tiny_embedded.embed_audio(audio, SR)
    assert a.shape == (3, 8) and a.dtype == np.float32 and unit_rows(a)
    np.testing.assert_allclose(a, tiny_embedded.embed_audio(audio, SR), atol=1e-6)
    # A clip alone embeds as in a batch; other rates are resampled.
    np.testing.assert_allclose(a[1:2], tiny_embedded.embed_audio([audio[1]], SR), atol=1e-5)
    stereo = np.stack([tone(220, rate=44100), tone(220, rate=44100)])
    assert tiny_embedded.embed_audio([stereo], 44100).shape == (1, 8)
    t = tiny_embedded.embed_text(["a slow organ fugue", "", None])
    assert t.shape == (3, 8) and unit_rows(t)
    scores = tiny_embedded.text_text_scores(["a", "b organ"], ["b organ", "a"])
    assert scores[0] == pytest.approx(scores[1], abs=1e-6)
    ta = tiny_embedded.text_audio_scores(audio[:2], SR, ["x", "y"])
    assert ta.shape == (2,) and np.all(np.abs(ta) <= 1 + 1e-6)


def test_embedded_windows_cover_long_clips(tiny_embedded):
    mel = tiny_embedded.log_mel(tone(220, seconds=1.2))
    windows = tiny_embedded.mel_windows(mel)
    assert len(windows) == 3
    assert all(w.shape[1] == tiny_embedded.window_frames for w in windows)


def test_embedded_save_load_roundtrip(tmp_path, tiny_embedded):
    tiny_embedded.save_pretrained(tmp_path / "clap")
    config = json.loads((tmp_path / "clap" / "config.json").read_text())
    assert config["kind"] == "embedded" and config["embed_dim"] == 8
    loaded = load_clap(tmp_path / "clap")
    assert isinstance(loaded, EmbeddedClapScorer)
    audio = [tone(330, seconds=1.3)]
    np.testing.assert_allclose(
        loaded.embed_audio(audio, SR), tiny_embedded.embed_audio(audio, SR), atol=1e-6
    )
    texts = ["a choir", ""]
    np.testing.assert_allclose(loaded.embed_text(texts), tiny_embedded.embed_text(texts), atol=1e-6)


def test_embedded_strict_loading(tmp_path, tiny_embedded):
    import safetensors.torch

    tiny_embedded.save_pretrained(tmp_path)
    state = safetensors.torch.load_file(tmp_path / "model.safetensors")
    state["extra.weight"] = torch.zeros(1)
    safetensors.torch.save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected key"):
        load_clap(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "bogus": 1}))
    with pytest.raises(ConfigError, match="bogus"):
        load_clap(tmp_path)


def test_embedded_config_errors():
    with pytest.raises(ConfigError, match="pooling"):
        EmbeddedClapConfig(pooling="max")
    with pytest.raises(ConfigError, match="cnn_channels"):
        EmbeddedClapConfig(cnn_channels=(4,), cnn_strides=((2, 2), (2, 2)))
    with pytest.raises(ConfigError, match="unknown"):
        EmbeddedClapConfig.from_dict({"nope": 1})


def test_embedded_default_minilm_tower(tmp_path):
    # The one check of the real bundled MiniLM: it loads, embeds, and is not saved.
    scorer = EmbeddedClapScorer({"cnn_channels": [4], "cnn_strides": [[4, 4]], "embed_dim": 8})
    features = scorer.text_features(["a string quartet", "a string quartet plays", "tuba"])
    assert features.shape == (3, 384)
    cos = features @ features.T
    assert cos[0, 1] > cos[0, 2]
    t = scorer.embed_text(["a string quartet", ""])
    assert t.shape == (2, 8) and unit_rows(t)
    scorer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["text_config"] is None
    import safetensors.torch

    keys = safetensors.torch.load_file(tmp_path / "model.safetensors").keys()
    assert not any(k.startswith(TEXT_ENCODER_PREFIX) for k in keys)


# ---------------------------------------------------------------------------- training


def _corpus(tmp_path):
    # Two "pieces" per split: a low-tone and a high-tone clip, each with its own caption.
    rows = []
    for split, count in (("train", 8), ("valid", 4), ("test", 4)):
        for i in range(count):
            high = i % 2
            freq = 1760 if high else 110
            name = f"{split}{i}"
            path = tmp_path / "audio" / f"{name}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, tone(freq * (1 + 0.01 * i), seconds=0.7, seed=i), SR)
            caption = "a high whistle" if high else "a low drone"
            rows.append(
                ClipRecord(
                    id=name,
                    audio=f"audio/{name}.wav",
                    duration=0.7,
                    sample_rate=SR,
                    split=split,
                    meta={
                        "true_caption": caption,
                        "tags": {
                            "style": "folk",
                            "instruments": ["tin whistle" if high else "tuba"],
                        },
                    },
                )
            )
    write_manifest(tmp_path / "manifest.jsonl", rows)
    return tmp_path / "manifest.jsonl"


def test_train_embedded_clap(tmp_path):
    manifest = _corpus(tmp_path)
    kwargs = dict(epochs=2, batch_size=4, lr=1e-2, seed=3, config=TINY_CLAP, log=None)
    metrics = train_embedded_clap(manifest, tmp_path / "out", tag_caption_prob=0.5, **kwargs)
    out = tmp_path / "out"
    assert {"config.json", "model.safetensors", "metrics.json", "train_log.jsonl"} <= {
        p.name for p in out.iterdir()
    }
    assert not (out / "checkpoint.pt").exists()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1]
    assert metrics["test"]["count"] == 4 and metrics["best_epoch"] in (0, 1)
    assert json.loads((out / "metrics.json").read_text())["best_epoch"] == metrics["best_epoch"]
    scorer = load_clap(out)
    assert scorer.embed_audio([tone(110)], SR).shape == (1, 8)

    again = train_embedded_clap(manifest, tmp_path / "again", tag_caption_prob=0.5, **kwargs)
    assert again["valid"] == metrics["valid"]
    a = (out / "model.safetensors").read_bytes()
    assert a == (tmp_path / "again" / "model.safetensors").read_bytes()


def test_train_embedded_clap_resume_matches_uninterrupted(tmp_path):
    manifest = _corpus(tmp_path)
    kwargs = dict(epochs=2, batch_size=4, lr=1e-2, seed=1, config=TINY_CLAP)

    class Interrupted(Exception):
        pass

    def stop_after_first_epoch(message):
        if message.startswith("epoch 0"):
            raise Interrupted

    with pytest.raises(Interrupted):
        train_embedded_clap(manifest, tmp_path / "run", log=stop_after_first_epoch, **kwargs)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    messages = []
    resumed = train_embedded_clap(
        manifest, tmp_path / "run", resume=True, log=messages.append, **kwargs
    )
    assert "resumed after epoch 0" in messages
    straight = train_embedded_clap(manifest, tmp_path / "straight", log=None, **kwargs)
    assert resumed["valid"] == straight["valid"]
    log = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [0, 1]
    run_state = (tmp_path / "run" / "model.safetensors").read_bytes()
    assert run_state == (tmp_path / "straight" / "model.safetensors").read_bytes()


def test_a_kill_while_saving_the_best_model_keeps_the_previous_one(tmp_path):
    from captioning.train_clap import save_best_model

    manifest = _corpus(tmp_path)
    out = tmp_path / "out"
    train_embedded_clap(manifest, out, epochs=1, batch_size=4, seed=3, config=TINY_CLAP, log=None)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    class Killed(Exception):
        pass

    class DiesHalfWay:
        def save_pretrained(self, folder):
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(b"torn")
            raise Killed

    with pytest.raises(Killed):
        save_best_model(DiesHalfWay(), out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert load_clap(out).embed_audio([tone(110)], SR).shape == (1, 8)
    save_best_model(load_clap(out), out)  # the next save clears the staging folder
    assert not (out / ".best-model.new").exists()


def test_train_embedded_clap_errors(tmp_path):
    manifest = _corpus(tmp_path)
    with pytest.raises(ConfigError):
        train_embedded_clap(manifest, tmp_path / "o", epochs=0, log=None)
    with pytest.raises(ConfigError, match="select_metric"):
        train_embedded_clap(manifest, tmp_path / "o", select_metric="auc", log=None)
    with pytest.raises(ConfigError, match="mixed_precision: unknown 'fp16'.*'bf16'"):
        train_embedded_clap(manifest, tmp_path / "o", mixed_precision="fp16", log=None)


def test_train_embedded_clap_in_bfloat16(tmp_path, monkeypatch):
    manifest = _corpus(tmp_path)
    kwargs = dict(epochs=2, batch_size=4, lr=1e-2, seed=3, config=TINY_CLAP, log=None)
    runs = {}
    for precision in ("no", "bf16"):
        out = tmp_path / precision
        runs[precision] = train_embedded_clap(manifest, out, mixed_precision=precision, **kwargs)
        assert runs[precision]["settings"]["mixed_precision"] == precision
        weights = safetensors.torch.load_file(str(out / "model.safetensors"))
        assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())
    losses = {
        p: [json.loads(line)["loss"] for line in (tmp_path / p / "train_log.jsonl").open()]
        for p in runs
    }
    # The same run, rounded differently: the losses part, but only in bfloat16's digits.
    assert losses["no"] != losses["bf16"]
    assert losses["bf16"] == pytest.approx(losses["no"], rel=0.05)

    # "auto" is float32 where the CPU has no bfloat16 arithmetic: exactly the float32 run.
    monkeypatch.setattr("qamdt.training.precision.native_bfloat16", lambda device: False)
    auto = train_embedded_clap(manifest, tmp_path / "auto", mixed_precision="auto", **kwargs)
    assert auto["settings"]["mixed_precision"] == "no"
    assert auto["valid"] == runs["no"]["valid"]


def test_evaluate_retrieval_with_any_scorer(tiny_embedded):
    audio = [tone(110), tone(1760)]
    m = evaluate_retrieval(tiny_embedded, audio, ["low", "high"])
    assert m["count"] == 2 and 0 <= m["t2a_r1"] <= 1
    with pytest.raises(ValueError):
        evaluate_retrieval(tiny_embedded, audio, ["only one"])


# ---------------------------------------------------------------------------------- hf


def _tiny_roberta_tokenizer(folder):
    from transformers import RobertaTokenizer

    # GPT-2 byte-to-unicode table, no merges: a character-level byte BPE.
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = [chr(c) for c in printable] + [chr(256 + i) for i in range(256 - len(printable))]
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for c in chars:
        vocab[c] = len(vocab)
    vocab["<mask>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return RobertaTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    root = tmp_path_factory.mktemp("hf")
    tokenizer = _tiny_roberta_tokenizer(root / "tok")
    config = ClapConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 40,
            "projection_dim": 8,
        },
        audio_config={
            "depths": [1, 1],
            "num_attention_heads": [2, 2],
            "patch_embeds_hidden_size": 8,
            "hidden_size": 16,
            "window_size": 4,
            "spec_size": 128,
            "projection_dim": 8,
        },
        projection_dim=8,
        # GELU, not ReLU: with 8 random units ReLU can zero a whole embedding.
        projection_hidden_act="gelu",
    )
    torch.manual_seed(0)
    model = ClapModel(config)
    folder = root / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # Random truncation on purpose: the scorer must never let it apply.
    ClapFeatureExtractor(max_length_s=1, truncation="rand_trunc").save_pretrained(folder)
    return folder


def test_hf_clap_roundtrip_and_determinism(hf_folder, tmp_path):
    scorer = HfClapScorer(hf_folder)
    assert scorer.sample_rate == 48000 and scorer.window_seconds == 1.0
    assert scorer.max_text_tokens == 38
    scorer.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["kind"] == "hf"
    loaded = load_clap(tmp_path / "saved")
    assert isinstance(loaded, HfClapScorer)

    audio = [tone(440, seconds=2.6, rate=16000), tone(220, seconds=0.3, rate=16000)]
    a = loaded.embed_audio(audio, 16000)
    assert a.shape == (2, 8) and unit_rows(a)
    np.testing.assert_allclose(a, loaded.embed_audio(audio, 16000), atol=1e-6)
    np.testing.assert_allclose(a, scorer.embed_audio(audio, 16000, batch_size=1), atol=1e-5)
    t = loaded.embed_text(["a violin", "", "x" * 200])
    assert t.shape == (3, 8) and unit_rows(t)
    s = loaded.text_text_scores(["a violin", "drums"], ["drums", "a violin"])
    assert s[0] == pytest.approx(s[1], abs=1e-6)


def test_hf_clap_settings_and_errors(hf_folder, tmp_path):
    with pytest.raises(ConfigError, match="window_seconds"):
        HfClapScorer(hf_folder, window_seconds=2.0)
    with pytest.raises(QamdtError, match="no CLAP model folder"):
        HfClapScorer(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"kind": "hf", "model_dir": str(hf_folder)}))
    assert load_clap(tmp_path).window_seconds == 1.0
    (tmp_path / "config.json").write_text(json.dumps({"kind": "hf", "oops": 1}))
    with pytest.raises(ConfigError, match="oops"):
        load_clap(tmp_path)


def test_features_tensor_accepts_both_forms():
    x = torch.ones(2, 3)

    class Output:
        pooler_output = x

    assert features_tensor(x) is x
    assert features_tensor(Output()) is x


# ------------------------------------------------------------------------------- laion


def test_laion_clap_missing_package(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "laion_clap", None)  # import now raises ImportError
    with pytest.raises(QamdtError, match="pip install laion-clap --no-deps"):
        LaionClapScorer(tmp_path / "630k-audioset-best.pt")
    (tmp_path / "config.json").write_text(
        json.dumps({"kind": "laion", "ckpt": "630k-best.pt", "enable_fusion": False})
    )
    with pytest.raises(QamdtError, match="torchvision"):
        load_clap(tmp_path)
    with pytest.raises(ConfigError, match="window_seconds"):
        LaionClapScorer(tmp_path / "x.pt", window_seconds=12)
