"""Train -> evaluate -> label -> predict -> stats on a tiny synthetic rated set."""

import json

import numpy as np
import pytest
import soundfile as sf

from qamdt.cli.main import main
from qamdt.manifest import ClipRecord, read_manifest, write_manifest

SR = 22050


def tone_with_noise(snr_db, seconds, rng):
    t = np.arange(int(seconds * SR)) / SR
    clean = 0.4 * sum(np.sin(2 * np.pi * f * t) / k for k, f in enumerate([220, 440, 660], 1))
    noise = rng.standard_normal(t.size)
    noise *= np.sqrt(np.mean(clean**2) / np.mean(noise**2)) / 10 ** (snr_db / 20)
    return (clean + noise).astype(np.float32)


@pytest.fixture(scope="module")
def rated_set(tmp_path_factory):
    """24 clips whose reference quality falls with their noise level."""
    root = tmp_path_factory.mktemp("rated")
    rng = np.random.default_rng(0)
    records = []
    for i in range(24):
        snr = 40.0 - 40.0 * (i % 8) / 7
        quality = 5.0 - 4.0 * (i % 8) / 7
        seconds = 3.0 if i % 3 else 5.0
        audio = root / "audio" / f"clip{i}.wav"
        audio.parent.mkdir(exist_ok=True)
        sf.write(audio, tone_with_noise(snr, seconds, rng), SR)
        split = "train" if i < 16 else "valid" if i < 20 else "test"
        records.append(
            ClipRecord(
                id=f"clip{i}",
                audio=f"audio/clip{i}.wav",
                duration=seconds,
                sample_rate=SR,
                split=split,
                original_caption="a tone",
                meta={
                    "reference_quality": quality,
                    "degradations": [] if snr >= 40 else [{"type": "noise", "severity": 1.0}],
                    "caption_kind": "sentence",
                    "source": "synthetic",
                },
            )
        )
    write_manifest(root / "manifest.jsonl", records)
    return root


@pytest.fixture(scope="module")
def trained(rated_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("mos-run")
    config = out / "tiny.yaml"
    config.write_text(
        "model:\n  kind: embedded\n  window_seconds: 2.0\n"
        "epochs: 3\nbatch_size: 8\nlearning_rate: 0.003\nwarmup_steps: 1\n"
    )
    data = f"corpus:{rated_set / 'manifest.jsonl'}"
    args = ["mos", "train", "--config", str(config), "--data", data, "--out", str(out)]
    assert main([*args, "--quiet"]) == 0
    return out


def test_training_writes_a_loadable_model_and_a_log(trained):
    from mos_predictor.models import load_mos_model

    model = load_mos_model(trained / "model")
    assert model.config.kind == "embedded"
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2, 3]
    assert "srcc" in log[0]["valid"]["omq"]["utterance"]
    assert json.loads((trained / "metrics.json").read_text())["best_epoch"] in (1, 2, 3)


def test_training_resumes_and_finishes_at_once(trained, rated_set, capsys):
    data = f"corpus:{rated_set / 'manifest.jsonl'}"
    config = trained / "tiny.yaml"
    args = ["mos", "train", "--config", str(config), "--data", data, "--out", str(trained)]
    assert main([*args, "--quiet"]) == 0
    lines = (trained / "train_log.jsonl").read_text().splitlines()
    assert len(lines) == 3  # nothing retrained
    assert "resuming at epoch 4" in capsys.readouterr().out


def test_patience_stops_when_validation_stops_improving(rated_set, tmp_path, capsys):
    """With a zero learning rate no epoch beats the first, so patience 2 stops after 3."""
    data = f"corpus:{rated_set / 'manifest.jsonl'}"
    config = tmp_path / "flat.yaml"
    config.write_text(
        "model:\n  kind: embedded\n  window_seconds: 2.0\n"
        "epochs: 10\nbatch_size: 8\nlearning_rate: 0.0\nwarmup_steps: 1\n"
    )
    out = tmp_path / "run"
    args = ["mos", "train", "--config", str(config), "--data", data, "--out", str(out)]
    assert main([*args, "--patience", "2", "--quiet"]) == 0
    assert "resuming" not in capsys.readouterr().out  # a fresh run folder
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2, 3]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["best_epoch"], metrics["epochs_run"], metrics["stopped_by"]) == (
        1,
        3,
        "patience",
    )
    # Resuming a run that ran out of patience trains nothing more.
    assert main([*args, "--patience", "2", "--quiet"]) == 0
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 3


def test_patience_must_be_positive():
    from mos_predictor.train_config import MosTrainConfig
    from qamdt.errors import ConfigError

    with pytest.raises(ConfigError, match="patience must be > 0"):
        MosTrainConfig.from_dict({"data": "csv:x.csv", "patience": 0})


def test_eval_prints_utterance_and_system_metrics(trained, rated_set, capsys):
    data = f"corpus:{rated_set / 'manifest.jsonl'}"
    args = ["mos", "eval", "--model", str(trained / "model"), "--data", data, "--split", "test"]
    assert main([*args, "--json", "--system-rule", "none"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["omq"]["count"] == 4
    assert set(result["omq"]["utterance"]) >= {"mse", "lcc", "srcc", "ktau"}


def test_label_scores_every_row_resumes_and_records_failures(trained, rated_set, tmp_path):
    records = read_manifest(rated_set / "manifest.jsonl")
    (tmp_path / "audio").symlink_to(rated_set / "audio")
    (tmp_path / "broken.wav").write_bytes(b"not audio at all")
    records.append(records[0].replace(id="broken", audio="broken.wav"))
    records[1] = records[1].replace(pmos=4.25)  # already scored: must be kept
    manifest = tmp_path / "manifest.jsonl"
    write_manifest(manifest, records)
    model = str(trained / "model")
    assert main(["mos", "label", str(manifest), "--model", model, "--quiet"]) == 0
    labelled = {r.id: r for r in read_manifest(manifest)}
    assert labelled["clip1"].pmos == 4.25
    assert all(r.pmos is not None for k, r in labelled.items() if k != "broken")
    assert labelled["broken"].pmos is None and "broken.wav" in labelled["broken"].errors["mos"]
    assert not list(tmp_path.glob("*shard*"))
    before = manifest.read_text()
    assert main(["mos", "label", str(manifest), "--model", model, "--quiet"]) == 0
    assert manifest.read_text() == before


def test_predict_prints_one_json_object(trained, rated_set, tmp_path, capsys):
    bad = tmp_path / "silent.wav"
    sf.write(bad, np.zeros(SR, dtype=np.float32), SR)
    good = [str(rated_set / "audio" / f"clip{i}.wav") for i in (0, 7)]
    code = main(["mos", "predict", *good, str(bad), "--model", str(trained / "model")])
    result = json.loads(capsys.readouterr().out)
    assert code == 1
    assert list(result) == [*good, str(bad)]
    assert all(isinstance(result[g], float) for g in good)
    assert "silent" in result[str(bad)]["error"]


def test_stats_writes_levels_prefixes_and_a_stats_file(trained, rated_set, tmp_path, capsys):
    records = read_manifest(rated_set / "manifest.jsonl")
    rng = np.random.default_rng(1)
    records = [r.replace(pmos=float(np.clip(rng.normal(3.8, 0.4), 1, 5))) for r in records]
    manifest = tmp_path / "manifest.jsonl"
    write_manifest(manifest, records, source_dir=rated_set)
    assert main(["mos", "stats", str(manifest)]) == 0
    labelled = read_manifest(manifest)
    assert all(1 <= r.quality_level <= 5 and r.quality_prefix for r in labelled)
    assert (tmp_path / "quality_stats.json").is_file()
    assert (tmp_path / "quality_distribution.png").is_file()


@pytest.mark.parametrize(
    "model",
    [
        {"kind": "ssl", "window_seconds": 0.5, "distill_layers": [1], "distill_clusters": 4},
        {"kind": "text-aware", "window_seconds": 1.0, "ot_weight": 0.1},
    ],
    ids=["ssl-distilled", "text-aware"],
)
def test_other_model_kinds_train_through_the_same_loop(model, rated_set, tmp_path):
    from test_mos_models import TINY_BERT, TINY_WAV2VEC2

    from mos_predictor.models import load_mos_model
    from mos_predictor.train import evaluate_model, train_mos_model
    from mos_predictor.train_config import MosTrainConfig

    model = dict(model, ssl_config=TINY_WAV2VEC2)
    if model["kind"] == "text-aware":
        model.update(audio_encoder="embedded", text_config=TINY_BERT)
        model.pop("ssl_config")
    config = MosTrainConfig.from_dict(
        {
            "data": f"corpus:{rated_set / 'manifest.jsonl'}",
            "model": model,
            "epochs": 1,
            "batch_size": 8,
            "warmup_steps": 1,
        }
    )
    summary = train_mos_model(config, tmp_path, progress=False)
    loaded = load_mos_model(summary["model"])
    from mos_predictor.data import load_corpus_ratings

    clips = load_corpus_ratings(rated_set / "manifest.jsonl", splits="test")
    result = evaluate_model(loaded, clips, system_rule="none")
    assert result["omq"]["count"] == 4
    if model["kind"] == "text-aware":
        assert result["ta"]["count"] == 4


def test_bfloat16_training_autocasts_all_but_the_log_mel(rated_set, tmp_path, monkeypatch):
    import torch

    from mos_predictor.embedded import MelCnnEncoder
    from mos_predictor.train import train_mos_model
    from mos_predictor.train_config import MosTrainConfig
    from qamdt.errors import ConfigError

    seen, mels = [], []
    forward = MelCnnEncoder.forward

    def recording(self, waveforms, lengths=None):
        mels.clear()
        hook = self.mel.register_forward_hook(lambda module, args, out: mels.append(out.dtype))
        sequence, mask = forward(self, waveforms, lengths)
        hook.remove()
        seen.append((torch.is_autocast_enabled("cpu"), *mels, sequence.dtype))
        return sequence, mask

    monkeypatch.setattr(MelCnnEncoder, "forward", recording)
    values = {
        "data": f"corpus:{rated_set / 'manifest.jsonl'}",
        "model": {"kind": "embedded", "window_seconds": 2.0},
        "epochs": 1,
        "batch_size": 8,
        "warmup_steps": 1,
    }
    runs = {}
    for precision in ("bf16", "no"):
        seen.clear()
        config = MosTrainConfig.from_dict({**values, "mixed_precision": precision})
        runs[precision] = (train_mos_model(config, tmp_path / precision, progress=False), seen[:])
    summary, calls = runs["bf16"]
    assert summary["mixed_precision"] == "bf16"
    training = [call for call in calls if call[0]]
    # Training steps compute in bfloat16 from a float32 log-mel; validation runs float32.
    assert training and all(call == (True, torch.float32, torch.bfloat16) for call in training)
    assert all(call == (False, torch.float32, torch.float32) for call in runs["no"][1])
    assert runs["no"][0]["mixed_precision"] == "no"
    with pytest.raises(ConfigError, match="mixed_precision: unknown 'False'"):
        MosTrainConfig.from_dict({**values, "mixed_precision": False})


def test_shipped_mos_configs_are_valid():
    from pathlib import Path

    from mos_predictor.train_config import load_train_config

    configs = sorted((Path(__file__).parent.parent / "configs" / "mos").glob("*.yaml"))
    assert len(configs) >= 3
    for path in configs:
        load_train_config(path)


def test_unknown_training_key_is_named(tmp_path):
    from mos_predictor.train_config import load_train_config
    from qamdt.errors import ConfigError

    path = tmp_path / "bad.yaml"
    path.write_text("data: csv:x.csv\nepoch: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown key.*epoch"):
        load_train_config(path)
    path.write_text("data: csv:x.csv\nmodel:\n  kind: embedded\n  channels: 3\n")
    with pytest.raises(ConfigError, match="channels"):
        load_train_config(path)


def test_weight_average_is_validated_saved_and_resumed(rated_set, tmp_path):
    """EMA weights are what is validated and saved, and an interrupted run resumes them."""
    from safetensors.numpy import load_file

    from mos_predictor.train_config import MosTrainConfig
    from qamdt.errors import ConfigError

    data = f"corpus:{rated_set / 'manifest.jsonl'}"
    base = (
        "model:\n  kind: embedded\n  window_seconds: 2.0\n  cnn_channels: [8, 8]\n"
        "  cnn_strides: [[4, 4], [4, 4]]\n  embed_dim: 16\n"
        "epochs: 3\nbatch_size: 8\nlearning_rate: 0.003\nwarmup_steps: 1\n"
    )

    def train(name, extra):
        config = tmp_path / f"{name}.yaml"
        config.write_text(base + extra)
        out = tmp_path / name
        args = ["mos", "train", "--config", str(config), "--data", data, "--out", str(out)]
        assert main([*args, "--quiet"]) == 0
        return out

    def results(out):
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        weights = load_file(out / "model" / "model.safetensors")
        return [entry["valid"] for entry in log], weights

    raw_log, raw = results(train("raw", ""))
    # A decay this small copies the live weights (to rounding): the run without EMA.
    tiny_log, tiny = results(train("tiny", "ema_decay: 1.0e-9\n"))
    assert all(np.allclose(tiny[k], raw[k], rtol=0, atol=1e-6) for k in raw)
    lcc = [[entry["omq"]["utterance"]["lcc"] for entry in log] for log in (tiny_log, raw_log)]
    np.testing.assert_allclose(lcc[0], lcc[1], atol=1e-5)
    ema_log, ema = results(train("ema", "ema_decay: 0.9\n"))
    assert ema_log != raw_log and any(not np.array_equal(ema[k], raw[k]) for k in raw)

    cut = train("cut", "ema_decay: 0.9\nmax_minutes: 1.0e-9\n")
    assert len((cut / "train_log.jsonl").read_text().splitlines()) == 1
    assert train("cut", "ema_decay: 0.9\n") == cut  # resumes at epoch 2
    cut_log, resumed = results(cut)
    assert cut_log == ema_log and all(np.array_equal(resumed[k], ema[k]) for k in ema)
    with pytest.raises(ConfigError, match="ema_decay"):
        MosTrainConfig.from_dict({"data": "csv:x.csv", "ema_decay": 1.0})
