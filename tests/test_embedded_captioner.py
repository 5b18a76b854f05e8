import json

import numpy as np
import pytest
import safetensors.torch
import soundfile as sf
import torch

from captioning.base import load_captioner
from captioning.embedded_captioner import EmbeddedCaptioner
from captioning.tagger_labels import build_vocab, encode_targets, ensemble_pattern
from captioning.tagger_model import EmbeddedCaptionerConfig
from captioning.tags import ALL_FIELDS, tags_from_text
from captioning.train_captioner import LOG_NAME as LOG
from captioning.train_captioner import THRESHOLDS, train_embedded_captioner
from qamdt.errors import ConfigError, QamdtError

SMALL = {
    "cnn_channels": [4, 8, 8, 16],
    "embed_dim": 16,
    "tempo_dim": 8,
    "window_seconds": 1.0,
    "tempo_lags_seconds": 0.5,
}
RATE = 22050

# (instrument, ensemble, style, tempo class, bpm, mode, metre) of the synthetic clips.
KINDS = [
    (["flute"], "solo flute", "folk", "fast", 130, "major", "6/8"),
    (["violin", "viola", "cello"], "string quartet", "baroque", "medium", 90, "minor", "4/4"),
    (["church organ"], "pipe organ", "renaissance", "slow", 60, "dorian", "4/2"),
    (["flute", "violin"], "flute and violin in unison", "folk", "medium", 100, "major", "2/4"),
]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The test machine is small and shared: one thread avoids oversubscription.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _tone(kind: int, seconds: float, rate: int, seed: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    f0 = (440.0, 220.0, 110.0, 330.0)[kind]
    harmonics = (1, 6, 12, 3)[kind]
    wave = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, harmonics + 1))
    bpm = KINDS[kind][4]
    envelope = 0.5 + 0.5 * (np.sin(2 * np.pi * bpm / 60 * t) > 0)
    noise = np.random.default_rng(seed).normal(0, 0.01, t.shape)
    return (0.3 * wave * envelope + noise).astype(np.float32)


def _meta(kind: int) -> dict:
    instruments, ensemble, style, tempo, bpm, mode, metre = KINDS[kind]
    return {
        "style": style,
        "ensemble": ensemble,
        "instruments": instruments,
        "tempo_class": tempo,
        "bpm": bpm,
        "mode": mode,
        "meter": metre,
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "audio").mkdir()
    rows = []
    for index in range(12):
        kind = index % 4
        split = "train" if index < 8 else "valid" if index < 10 else "test"
        rate = 16000 if index == 3 else RATE
        path = root / "audio" / f"clip{index}.wav"
        sf.write(path, _tone(kind, 2.0, rate, index), rate)
        rows.append(
            {
                "id": f"clip{index}",
                "audio": f"audio/clip{index}.wav",
                "duration": 2.0,
                "sample_rate": rate,
                "split": split,
                "original_caption": None if index == 9 else "speech, car",
                "meta": {"tags": _meta(kind), "true_caption": "A folk piece."},
            }
        )
    rows.append({"id": "untagged", "audio": "audio/clip0.wav", "split": "train", "meta": {}})
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    metrics = train_embedded_captioner(
        corpus, out, epochs=2, batch_size=4, lr=3e-3, seed=3, model_config=SMALL
    )
    return out, metrics


def test_training_writes_model_log_and_metrics(trained):
    out, metrics = trained
    for name in ("config.json", "model.safetensors", "metrics.json", "train_log.jsonl"):
        assert (out / name).is_file(), name
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]
    assert "valid" in log[0] and 0.0 <= log[0]["valid"]["overall"]["f1"] <= 1.0
    assert metrics == json.loads((out / "metrics.json").read_text())
    assert metrics["train_clips"] == 8 and metrics["best_epoch"] in (1, 2)
    test = metrics["test"]
    assert test["true"]["clips"] == 2
    assert test["original"]["overall"]["f1"] == 0.0  # "speech, car" states no true tag
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "embedded"
    assert np.isfinite(config["mel_mean"]) and config["mel_std"] > 0
    assert config["instrument_threshold"] == metrics["instrument_threshold"]
    assert set(metrics["threshold_valid_f1"]) == {str(t) for t in THRESHOLDS}
    assert config["vocab"]["instruments"] == ["flute", "church organ", "violin", "viola", "cello"]
    assert set(config["vocab"]["ensemble"]) == {
        "{} and {} in unison",
        "solo {}",
        "string quartet",
        "pipe organ",
    }
    assert config["vocab"]["mode"] == ["major", "minor", "other"]


def test_training_is_deterministic(corpus, trained, tmp_path):
    out, _ = trained
    train_embedded_captioner(
        corpus, tmp_path, epochs=2, batch_size=4, lr=3e-3, seed=3, model_config=SMALL
    )
    first = safetensors.torch.load_file(str(out / "model.safetensors"))
    second = safetensors.torch.load_file(str(tmp_path / "model.safetensors"))
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_training_in_bfloat16(corpus, trained, tmp_path, monkeypatch):
    _, metrics = trained
    kwargs = dict(epochs=2, batch_size=4, lr=3e-3, seed=3, model_config=SMALL)
    runs = {}
    for precision in ("no", "bf16"):
        runs[precision] = train_embedded_captioner(
            corpus, tmp_path / precision, mixed_precision=precision, **kwargs
        )
        assert runs[precision]["mixed_precision"] == precision
        weights = safetensors.torch.load_file(str(tmp_path / precision / "model.safetensors"))
        assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())
    losses = {
        p: [json.loads(line)["train_loss"] for line in (tmp_path / p / LOG).open()] for p in runs
    }
    assert losses["no"] != losses["bf16"]
    assert losses["bf16"] == pytest.approx(losses["no"], rel=0.05)
    # The default, "auto", follows the CPU: the fixture's run is one of the two.
    assert metrics["mixed_precision"] in ("no", "bf16")
    monkeypatch.setattr("qamdt.training.precision.native_bfloat16", lambda device: False)
    auto = train_embedded_captioner(corpus, tmp_path / "auto", **kwargs)
    assert auto["mixed_precision"] == "no"
    assert auto["test"] == runs["no"]["test"]
    with pytest.raises(ConfigError, match="mixed_precision: unknown 'fp16'"):
        train_embedded_captioner(corpus, tmp_path / "x", mixed_precision="fp16", **kwargs)


def test_time_budget_stops_training(corpus, tmp_path):
    metrics = train_embedded_captioner(
        corpus, tmp_path, epochs=5, batch_size=4, max_minutes=0.0, model_config=SMALL
    )
    assert metrics["stopped_by_time"] and metrics["epochs_run"] == 1


def test_loaded_captioner_captions_any_length_and_rate(trained):
    out, _ = trained
    captioner = load_captioner(out)
    assert isinstance(captioner, EmbeddedCaptioner) and captioner.sample_rate == RATE
    audio = [
        _tone(0, 0.3, 16000, 0),  # shorter than a window
        _tone(1, 3.7, 44100, 1),  # several overlapping windows
        _tone(2, 1.0, RATE, 2),
        np.zeros(800, dtype=np.float32),  # silence
    ]
    rates = [16000, 44100, RATE, 8000]
    captions = captioner.caption(audio, rates, batch_size=3)
    assert len(captions) == 4 and all(isinstance(c, str) and c.endswith(".") for c in captions)
    assert captions == load_captioner(out).caption(audio, rates, batch_size=1)
    for pred in captioner.predict(audio, rates):
        sentence = captioner.sentence(pred)
        assert tags_from_text(sentence) == captioner.predicted_tags(pred), sentence
        assert pred["instruments"]  # at least the most probable instrument
        assert "Bach" not in sentence and "chorale" not in sentence
    with pytest.raises(ValueError):
        captioner.caption([], RATE)


def test_strict_loading(trained, tmp_path):
    out, _ = trained
    captioner = load_captioner(out)
    captioner.save_pretrained(tmp_path)
    state = safetensors.torch.load_file(str(tmp_path / "model.safetensors"))
    state.pop(next(iter(state)))
    safetensors.torch.save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(QamdtError, match="missing"):
        load_captioner(tmp_path)
    captioner.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["vocab"]["style"].append("jazz")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(QamdtError, match="shape"):
        load_captioner(tmp_path)
    config["surprise"] = 1
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="surprise"):
        load_captioner(tmp_path)


def test_ensemble_patterns_and_targets():
    assert ensemble_pattern("flute and violin in unison", ["flute", "violin"]) == (
        "{} and {} in unison"
    )
    assert ensemble_pattern("Solo Piano", ["piano"]) == "solo {}"
    assert ensemble_pattern("saxophone quartet", ["alto saxophone"]) == "saxophone quartet"
    vocab = build_vocab([_meta(k) for k in (0, 1, 1, 2)])
    assert vocab["ensemble"][0] == "string quartet"
    config = EmbeddedCaptionerConfig(vocab=vocab, **SMALL)
    targets = encode_targets(_meta(3), config)  # the unison pattern was never seen
    assert targets["ensemble"] == -100
    assert targets["instruments"].tolist() == [1.0, 0.0, 1.0, 0.0, 0.0]
    assert np.isfinite(targets["bpm"])
    with pytest.raises(ConfigError):
        EmbeddedCaptionerConfig(vocab={"colour": []})


VOCAB = {
    "instruments": ["flute", "church organ", "violin", "viola", "cello"],
    "ensemble": ["string quartet", "solo {}", "{} and {} in unison", "pipe organ", "{} consort"],
    "tempo": ["slow", "medium", "fast"],
    "mode": ["major", "minor", "other"],
    "metre": ["4/4", "3/4"],
    "style": ["baroque", "folk"],
}


@pytest.mark.parametrize(
    ("instruments", "ranking", "players"),
    [
        (["violin", "viola", "cello"], ["solo {}", "string quartet"], "a string quartet of violin"),
        (["violin"], ["pipe organ", "solo {}"], "a solo violin"),
        (["church organ"], ["pipe organ", "solo {}"], "a pipe organ"),
        (["flute", "violin"], ["{} and {} in unison"], "a flute and violin in unison"),
        (["church organ", "flute"], ["pipe organ", "solo {}"], "by church organ and flute"),
    ],
)
@pytest.mark.parametrize(
    ("tempo", "bpm", "mode"),
    [("medium", 92, "minor"), ("fast", 80, "other"), ("slow", None, None)],
)
def test_sentences_state_exactly_the_predictions(instruments, ranking, players, tempo, bpm, mode):
    captioner = EmbeddedCaptioner(EmbeddedCaptionerConfig(vocab=VOCAB, **SMALL))
    pred = {
        "instruments": instruments,
        "ensemble_ranking": ranking,
        "tempo": tempo,
        "bpm": bpm,
        "mode": mode,
        "metre": "3/4",
        "style": "baroque",
    }
    sentence = captioner.sentence(pred)
    assert players in sentence
    assert sentence.startswith("A baroque piece played by")
    assert tags_from_text(sentence) == captioner.predicted_tags(pred)
    has_bpm = bpm is not None and tags_from_text(f"{bpm} bpm") == {f"tempo:{tempo}"}
    assert ("BPM" in sentence) == has_bpm
    if has_bpm:
        assert "tempo_word:andante" in tags_from_text(sentence, ALL_FIELDS)
