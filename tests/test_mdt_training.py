import json

import numpy as np
import pytest
import soundfile as sf
import torch

from qamdt.cli.main import main
from qamdt.errors import ConfigError
from qamdt.models.transformer import QualityMDTTransformer
from qamdt.models.vae import LatentVAE
from qamdt.training.latent_cache import (
    LatentCacheDataset,
    build_cache,
    cache_is_complete,
    collate_cached,
)
from qamdt.training.mdt_batches import training_loader
from qamdt.training.mdt_config import MdtTrainConfig, load_mdt_config
from qamdt.training.mdt_data import training_clips
from qamdt.training.mdt_train import loss_curve, train_mdt
from qamdt.training.precision import native_bfloat16, use_bfloat16

PREFIXES = ["low quality", "low quality", "medium quality", "high quality", "high quality"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("mdt_data")
    (root / "audio").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        t = np.arange(int(22050 * 0.6)) / 22050
        wave = 0.3 * np.sin(2 * np.pi * 220 * 2 ** (i / 12) * t) + 0.02 * (
            i % 3
        ) * rng.standard_normal(t.size)
        sf.write(root / "audio" / f"c{i}.wav", wave.astype(np.float32), 22050)
        level = 1 + i % 5
        rows.append(
            {
                "id": f"c{i}",
                "audio": f"audio/c{i}.wav",
                "split": "train",
                "final_caption": f"tone {i}",
                "quality_level": level,
                "quality_prefix": PREFIXES[level - 1],
                "pmos": 1.0 + level * 0.5,
            }
        )
    rows.append({"id": "nolabel", "audio": "audio/c0.wav", "split": "train", "final_caption": "x"})
    rows.append(
        {
            "id": "failed",
            "audio": "audio/c0.wav",
            "split": "train",
            "quality_level": 3,
            "quality_prefix": "medium quality",
            "errors": {"mos": "unreadable"},
        }
    )
    rows.append(
        {
            "id": "held",
            "audio": "audio/c1.wav",
            "split": "test",
            "quality_level": 3,
            "quality_prefix": "medium quality",
        }
    )
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    torch.manual_seed(0)
    vae = LatentVAE.from_config(
        {
            "latent_channels": 4,
            "block_out_channels": [4, 4, 4],
            "layers_per_block": 1,
            "norm_num_groups": 2,
        }
    )
    vae.set_scaling_factor(0.5)
    vae.save_pretrained(root / "vae")
    return root


def config(data, **changes) -> MdtTrainConfig:
    values = {
        "manifest": str(data / "manifest.jsonl"),
        "vae": str(data / "vae"),
        "clip_seconds": 0.4,
        "model": {
            "patch_size": [4, 4],
            "hidden_size": 16,
            "num_heads": 2,
            "encoder_depth": 2,
            "decoder_depth": 1,
        },
        "batch_size": 4,
        "max_steps": 4,
        "warmup_steps": 2,
        "learning_rate": 1e-3,
        "checkpoint_every": 2,
        "log_every": 1,
        "vocoder": None,
    }
    values.update(changes)
    return MdtTrainConfig.from_dict(values)


def test_presets_load_and_unknown_keys_are_named(tmp_path):
    for name in ("embedded", "paper"):
        loaded = load_mdt_config(f"configs/mdt/{name}.yaml")
        QualityMDTTransformer.from_config(loaded.model) if name == "embedded" else None
    base = {"manifest": "m.jsonl", "vae": "v"}
    with pytest.raises(ConfigError, match="batchsize"):
        MdtTrainConfig.from_dict({**base, "batchsize": 3})
    with pytest.raises(ConfigError, match="diffusion.*text_dorp"):
        MdtTrainConfig.from_dict({**base, "diffusion": {"text_dorp": 0.1}})
    with pytest.raises(ConfigError, match="conditioning.*token"):
        MdtTrainConfig.from_dict({**base, "conditioning": {"token": True}})
    with pytest.raises(ConfigError, match="model.*depth"):
        MdtTrainConfig.from_dict({**base, "model": {"depth": 3}})
    with pytest.raises(ConfigError, match="'vae' is required"):
        MdtTrainConfig.from_dict({"manifest": "m"})
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_mdt_config(bad)


def test_training_clips_come_from_one_row_and_skip_unusable_rows(data):
    clips, skipped = training_clips(data / "manifest.jsonl")
    assert len(clips) == 10
    assert clips[3].caption == "high quality, tone 3" and clips[3].quality_level == 4
    reasons = {row["id"]: row["reason"] for row in skipped}
    assert "quality_level" in reasons["nolabel"] and "mos" in reasons["failed"]
    plain, _ = training_clips(data / "manifest.jsonl", quality_token=False, quality_prefix=False)
    assert plain[3].caption == "tone 3" and plain[3].quality_level == 0
    assert "nolabel" in {c.id for c in plain}
    with pytest.raises(ConfigError, match="no usable rows in split 'valid'"):
        training_clips(data / "manifest.jsonl", split="valid")


def test_cache_builds_resumes_and_refuses_other_settings(data, tmp_path):
    cfg = config(data)
    summary = build_cache(cfg, tmp_path / "cache", progress=False)
    assert summary["clips"] == 10 and summary["skipped"] == 2
    dataset = LatentCacheDataset(tmp_path / "cache")
    item = dataset[3]
    vae = LatentVAE.from_pretrained(data / "vae")
    # Full clips: 10.03 s of the embedded preset -> 864 frames / 4.
    assert item["latent_mean"].shape == (4, 216, 20)
    assert item["caption"] == "high quality, tone 3" and item["quality_level"] == 4
    assert item["text_mask"].all() and item["text_states"].shape[-1] == 384
    # The trainer's loader: whole batches in the seeded epoch order, the same on a rerun.
    loader = training_loader(dataset, collate_cached, 4, 0, seed=3)
    batches = [batch["id"] for batch in loader]
    assert [len(ids) for ids in batches] == [4, 4]
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3 * 1_000_003)).tolist()
    assert sum(batches, []) == [dataset[i]["id"] for i in order[:8]]
    assert [batch["id"] for batch in training_loader(dataset, collate_cached, 4, 0, 3)] == batches
    with pytest.raises(ConfigError, match="batch_size 11 exceeds the 10 training clips"):
        training_loader(dataset, collate_cached, 11, 0, seed=3)
    shard = tmp_path / "cache" / "shard_00000.json"
    mtime = shard.stat().st_mtime_ns
    assert build_cache(cfg, tmp_path / "cache", vae=vae, progress=False)["clips"] == 10
    assert shard.stat().st_mtime_ns == mtime
    with pytest.raises(ConfigError, match="other settings.*conditioning"):
        build_cache(
            config(data, conditioning={"quality_prefix": False}), tmp_path / "cache", progress=False
        )


def test_cache_parts_fill_one_folder_as_one_run_does(data, tmp_path, monkeypatch):
    import qamdt.training.latent_cache as latent_cache

    monkeypatch.setattr(latent_cache, "SHARD_SIZE", 3)  # 10 clips: blocks 0-3
    cfg = config(data)
    whole = build_cache(cfg, tmp_path / "whole", progress=False)
    first = build_cache(cfg, tmp_path / "parts", progress=False, part=(1, 2))
    assert not first["complete"] and not cache_is_complete(tmp_path / "parts")
    assert first["clips"] == 3 + 1  # blocks 1 and 3
    last = build_cache(cfg, tmp_path / "parts", progress=False, part=(0, 2))
    assert last["complete"] and last["clips"] == whole["clips"] == 10
    names = sorted(p.name for p in (tmp_path / "whole").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "parts").iterdir())
    for name in names:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "parts" / name).read_bytes()


def test_cache_borrows_the_latents_of_the_same_clips(data, tmp_path):
    build_cache(config(data), tmp_path / "quality", progress=False)
    no_prefix = config(data, conditioning={"quality_prefix": False})
    borrowed = build_cache(
        no_prefix, tmp_path / "borrowed", progress=False, latents_from=tmp_path / "quality"
    )
    fresh = build_cache(no_prefix, tmp_path / "fresh", progress=False)
    assert borrowed["borrowed_shards"] == 1 and fresh["borrowed_shards"] == 0
    a, b = LatentCacheDataset(tmp_path / "borrowed"), LatentCacheDataset(tmp_path / "fresh")
    assert len(a) == len(b) == 10
    for i in range(len(a)):
        assert a[i]["caption"] == b[i]["caption"] == f"tone {i}"
        assert a[i]["quality_level"] == b[i]["quality_level"] == 1 + i % 5
        torch.testing.assert_close(a[i]["latent_mean"], b[i]["latent_mean"])
        torch.testing.assert_close(a[i]["latent_std"], b[i]["latent_std"])
        torch.testing.assert_close(a[i]["text_states"], b[i]["text_states"])
    # The plain baseline also keeps the unlabelled row: other clips, so the VAE runs.
    plain = config(data, conditioning={"quality_token": False, "quality_prefix": False})
    summary = build_cache(
        plain, tmp_path / "plain", progress=False, latents_from=tmp_path / "quality"
    )
    assert summary["clips"] == 11 and summary["borrowed_shards"] == 0
    # An unfinished source lends nothing.
    (tmp_path / "quality" / "cache_info.json").unlink()
    summary = build_cache(
        no_prefix, tmp_path / "again", progress=False, latents_from=tmp_path / "quality"
    )
    assert summary["borrowed_shards"] == 0


def test_cache_records_unreadable_audio(data, tmp_path):
    root = tmp_path / "d"
    (root / "audio").mkdir(parents=True)
    rows = [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()][:5]
    for row in rows:
        (root / row["audio"]).write_bytes((data / row["audio"]).read_bytes())
    (root / "audio" / "c2.wav").write_bytes(b"not audio")
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = build_cache(
        config(data, manifest=str(root / "manifest.jsonl")), tmp_path / "c", progress=False
    )
    assert summary["clips"] == 4 and summary["failed"] == 1
    failure = json.loads((tmp_path / "c" / "failures.jsonl").read_text())
    assert failure["id"] == "c2" and "c2.wav" in failure["reason"]


def test_resumed_training_continues_the_same_loss_curve(data, tmp_path):
    cache = str(tmp_path / "cache")
    straight = train_mdt(
        config(data, cache=cache, max_steps=4), tmp_path / "straight", progress=False
    )
    assert straight["steps"] == 4
    train_mdt(config(data, cache=cache, max_steps=2), tmp_path / "resumed", progress=False)
    assert [r["step"] for r in loss_curve(tmp_path / "resumed")] == [1, 2]
    train_mdt(config(data, cache=cache, max_steps=4), tmp_path / "resumed", progress=False)
    a = [r["loss"] for r in loss_curve(tmp_path / "straight")]
    b = [r["loss"] for r in loss_curve(tmp_path / "resumed")]
    assert len(a) == len(b) == 4
    assert np.allclose(a, b, rtol=1e-4)
    model = QualityMDTTransformer.from_pretrained(tmp_path / "resumed" / "pipeline" / "transformer")
    assert model.config.in_channels == 4 and model.config.text_dim == 384
    # 0.4 s -> 34 mel frames -> 32 (a multiple of the VAE factor 4) -> 8 latent frames.
    assert model.config.sample_size == [8, 20]


def test_precision_names_and_auto(monkeypatch):
    cpu = torch.device("cpu")
    assert use_bfloat16("bf16", cpu) and not use_bfloat16("no", cpu)
    assert not use_bfloat16("fp16", cpu)
    assert use_bfloat16("auto", cpu) == native_bfloat16(cpu)
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda n=native: n)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert use_bfloat16("auto", cpu) is native
    with pytest.raises(ConfigError, match="mixed_precision: unknown 'bf32'.*'auto'"):
        MdtTrainConfig.from_dict({"manifest": "m", "vae": "v", "mixed_precision": "bf32"})


def test_bfloat16_training_autocasts_the_model_only(data, tmp_path, monkeypatch):
    from accelerate import Accelerator

    # A float32 Accelerator in the same process (as a MOS training before it) is no obstacle.
    Accelerator(cpu=True)
    seen = []
    forward = QualityMDTTransformer.forward

    def recording(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out

    monkeypatch.setattr(QualityMDTTransformer, "forward", recording)
    cache = str(tmp_path / "cache")
    runs = {}
    for precision in ("bf16", "no", "auto"):
        if precision == "auto":
            monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
            monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        seen.clear()
        summary = train_mdt(
            config(data, cache=cache, max_steps=4, mixed_precision=precision),
            tmp_path / precision,
            progress=False,
        )
        runs[precision] = (summary, [r["loss"] for r in loss_curve(tmp_path / precision)], seen[:])
    summary, losses, calls = runs["bf16"]
    assert summary["mixed_precision"] == "bf16"
    assert calls and all(calls_ == (True, torch.bfloat16) for calls_ in calls)
    assert np.isfinite(losses).all()
    saved = QualityMDTTransformer.from_pretrained(tmp_path / "bf16" / "pipeline" / "transformer")
    assert all(p.dtype == torch.float32 for p in saved.parameters())
    assert all(call == (False, torch.float32) for call in runs["no"][2])
    # The output layer starts at zero and the first step has a learning rate of 0: the
    # curves part from the third step on.
    assert losses[:2] == runs["no"][1][:2] and losses[2:] != runs["no"][1][2:]
    # "auto" without native bfloat16 is float32, step for step.
    assert runs["auto"][0]["mixed_precision"] == "no"
    assert runs["auto"][1] == runs["no"][1]


def test_on_the_fly_encoding_two_pass_loss_and_preview(data, tmp_path):
    cfg = config(
        data,
        cache=None,
        max_steps=2,
        diffusion={"loss_mode": "two_pass", "prediction_type": "v_prediction"},
        sample_every=2,
        sample_steps=2,
        vocoder="griffin-lim",
        ema_decay=None,
    )
    summary = train_mdt(cfg, tmp_path / "run", progress=False)
    assert summary["steps"] == 2
    assert (tmp_path / "run" / "samples" / "step_0000002.png").is_file()
    assert (tmp_path / "run" / "samples" / "step_0000002.wav").is_file()
    assert (
        QualityMDTTransformer.from_pretrained(
            tmp_path / "run" / "pipeline" / "transformer"
        ).config.prediction_type
        == "v_prediction"
    )


def test_plain_mdt_baseline_never_sees_quality(data, tmp_path, monkeypatch):
    seen = []
    original = QualityMDTTransformer.forward

    def spy(self, latents, timestep, text_states, text_mask=None, quality_level=None, **kw):
        seen.append(quality_level.clone())
        return original(self, latents, timestep, text_states, text_mask, quality_level, **kw)

    monkeypatch.setattr(QualityMDTTransformer, "forward", spy)
    cfg = config(
        data,
        cache=str(tmp_path / "c"),
        max_steps=2,
        conditioning={"quality_token": False, "quality_prefix": False},
    )
    train_mdt(cfg, tmp_path / "run", progress=False)
    assert seen and all(bool((levels == 0).all()) for levels in seen)


def test_model_and_train_commands(data, tmp_path, capsys):
    assert main(["model", "info", "--config", "configs/mdt/embedded.yaml"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tokens"] == 271 and info["latent_shape"] == [8, 216, 20]
    cfg = tmp_path / "train.yaml"
    cfg.write_text(json.dumps(config(data, cache=str(tmp_path / "cache")).to_dict()))
    assert (
        main(
            [
                "train",
                "--config",
                str(cfg),
                "--out",
                str(tmp_path / "run"),
                "--max-steps",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 1
    assert (
        main(["train", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "r")])
        == 2
    )
    assert "missing.yaml" in capsys.readouterr().err
