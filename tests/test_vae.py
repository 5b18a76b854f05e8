"""The mel VAE wrapper, its training loop and the ``train-vae`` command, on tiny models."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from diffusers import AutoencoderKL

from qamdt.audio_spec import get_audio_spec
from qamdt.checkpoints import CheckpointError
from qamdt.cli.main import main
from qamdt.errors import ConfigError
from qamdt.manifest import ClipRecord, write_manifest
from qamdt.models.vae import LatentVAE
from qamdt.training import vae_train
from qamdt.training.vae_train import VaeTrainConfig, load_mels, load_vae_config, train_vae

# AudioLDM2's VAE layout (three blocks, 8 latent channels, attention in the mid block) at a
# width that runs in milliseconds.
TINY_AUDIOLDM2 = {
    "latent_channels": 8,
    "block_out_channels": [8, 16, 16],
    "layers_per_block": 2,
    "norm_num_groups": 4,
    "scaling_factor": 0.4123,
}
TINY_TRAINING_MODEL = {
    "latent_channels": 8,
    "block_out_channels": [4, 8, 8],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "mid_block_add_attention": False,
}
SPEC = get_audio_spec("embedded")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and it spares cores other workers use."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return LatentVAE.from_config(TINY_AUDIOLDM2).eval()


def test_encode_decode_shapes(vae):
    mel = torch.randn(2, 32, 16) - 4
    with torch.no_grad():
        latents = vae.encode(mel)
        assert latents.shape == (2, 8, 8, 4)
        assert vae.decode(latents).shape == (2, 32, 16)
    assert vae.downsample_factor == 4
    assert vae.latent_channels == 8
    assert vae.latent_shape(864, 80) == (8, 216, 20)


def test_scaling_factor_is_applied(vae):
    mel = torch.randn(1, 16, 8) - 4
    with torch.no_grad():
        posterior = vae.autoencoder.encode(mel.unsqueeze(1)).latent_dist
        latents = vae.encode(mel)
        assert torch.allclose(latents, 0.4123 * posterior.mean, atol=1e-6)
        expected = vae.autoencoder.decode(posterior.mean).sample.squeeze(1)
        assert torch.allclose(vae.decode(latents), expected, atol=1e-5)
        first = vae.encode(mel, sample=True, generator=torch.Generator().manual_seed(1))
        again = vae.encode(mel, sample=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first, again)
    assert not torch.allclose(first, latents)


def test_clip_by_clip_inference_matches_one_batched_call(vae, monkeypatch):
    mel = torch.randn(3, 32, 16, generator=torch.Generator().manual_seed(2)) - 4
    with torch.no_grad():
        batched = vae.autoencoder.encode(mel.unsqueeze(1)).latent_dist
        posterior = vae.posterior(mel)
        # Kernels may differ with the batch size, so rounding may too.
        assert torch.allclose(posterior.mean, batched.mean, atol=1e-6)
        assert torch.allclose(posterior.std, batched.std, atol=1e-6)
        expected = vae.autoencoder.decode(batched.mean).sample.squeeze(1)
        assert torch.allclose(vae.decode(0.4123 * batched.mean), expected, atol=1e-5)
    # Inference runs one clip per call; under autograd the batch stays whole.
    sizes = []
    encode, decode = vae.autoencoder.encode, vae.autoencoder.decode
    monkeypatch.setattr(vae.autoencoder, "encode", lambda x: sizes.append(len(x)) or encode(x))
    monkeypatch.setattr(vae.autoencoder, "decode", lambda z: sizes.append(len(z)) or decode(z))
    with torch.no_grad():
        vae.decode(vae.encode(mel))
    assert sizes == [1, 1, 1, 1, 1, 1]
    sizes.clear()
    vae.decode(vae.encode(mel)).sum().backward()
    assert sizes == [3, 3]


def test_sizes_must_divide_by_the_downsampling(vae):
    with pytest.raises(ConfigError, match="num_frames=30"):
        vae.latent_shape(30, 16)
    with pytest.raises(ConfigError, match="n_mels=18"):
        vae.encode(torch.zeros(1, 32, 18))
    with pytest.raises(ValueError, match="batch, frames, n_mels"):
        vae.encode(torch.zeros(32, 16))


def test_save_and_load_round_trip(vae, tmp_path):
    torch.manual_seed(1)
    model = LatentVAE.from_config(TINY_AUDIOLDM2).eval()
    model.set_scaling_factor(0.75)
    model.save_pretrained(tmp_path / "vae")
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == [
        "config.json",
        "diffusion_pytorch_model.safetensors",
    ]
    loaded = LatentVAE.from_pretrained(tmp_path / "vae").eval()
    assert loaded.scaling_factor == 0.75
    mel = torch.randn(2, 32, 16) - 4
    with torch.no_grad():
        assert torch.equal(loaded.encode(mel), model.encode(mel))
        assert torch.equal(loaded.decode(model.encode(mel)), model.decode(model.encode(mel)))
    # A pipeline folder holding the VAE as vae/ (the AudioLDM2 layout) loads the same.
    parent = LatentVAE.from_pretrained(tmp_path)
    assert parent.scaling_factor == 0.75
    assert parent.config.block_out_channels == [8, 16, 16]


def test_loading_errors_name_the_folder(tmp_path):
    with pytest.raises(ConfigError, match="nowhere"):
        LatentVAE.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="config.json"):
        LatentVAE.from_pretrained(tmp_path)
    AutoencoderKL(**TINY_AUDIOLDM2, in_channels=1, out_channels=1).save_config(tmp_path / "vae")
    with pytest.raises(CheckpointError, match="safetensors"):
        LatentVAE.from_pretrained(tmp_path)


def test_model_config_errors():
    with pytest.raises(ConfigError, match="latent_chanels"):
        LatentVAE.from_config({"latent_chanels": 8})
    with pytest.raises(ConfigError, match="in_channels"):
        LatentVAE.from_config({"in_channels": 3})
    with pytest.raises(ConfigError, match="one-channel"):
        LatentVAE(AutoencoderKL())
    with pytest.raises(ConfigError, match="scaling_factor"):
        LatentVAE.from_config(TINY_AUDIOLDM2).set_scaling_factor(0.0)


def test_train_config_names_unknown_keys(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("steps: 3\nlerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="lerning_rate"):
        load_vae_config(path)
    with pytest.raises(ConfigError, match="blocks_out"):
        VaeTrainConfig.from_dict({"model": {"blocks_out": [1]}})
    with pytest.raises(ConfigError, match="segment_frames"):
        VaeTrainConfig.from_dict({"segment_frames": 130})


def test_embedded_yaml_equals_the_defaults():
    path = Path(__file__).resolve().parents[1] / "configs/vae/embedded.yaml"
    with open(path, encoding="utf-8") as handle:
        values = yaml.safe_load(handle)
    fields = {f for f in VaeTrainConfig.__dataclass_fields__ if f != "manifest"}
    assert set(values) == fields
    assert load_vae_config(path) == VaeTrainConfig()


def write_tone(path, seconds, rng, rate=SPEC.sample_rate):
    t = np.arange(int(seconds * rate)) / rate
    freq = rng.uniform(200, 1000)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t)
    wave = 0.3 * envelope * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), rate)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """Six training clips, two validation clips, a broken file and a row with errors."""
    root = tmp_path_factory.mktemp("vae-data")
    rng = np.random.default_rng(0)
    records = []
    for i in range(8):
        # Lengths around the preset's 10.03 s: shorter clips are padded, longer cut.
        seconds = 8.0 if i % 2 else 11.0
        rate = 16000 if i == 3 else SPEC.sample_rate
        write_tone(root / f"audio/tone{i}.wav", seconds, rng, rate)
        split = "train" if i < 6 else "valid"
        records.append(ClipRecord(id=f"tone{i}", audio=f"audio/tone{i}.wav", split=split))
    (root / "audio/broken.wav").write_bytes(b"not audio")
    records.append(ClipRecord(id="broken", audio="audio/broken.wav", split="train"))
    records.append(
        ClipRecord(id="flagged", audio="audio/tone0.wav", errors={"corpus": "render failed"})
    )
    write_manifest(root / "manifest.jsonl", records)
    return root / "manifest.jsonl"


def tiny_config(manifest, **changes):
    values = {
        "manifest": str(manifest),
        "model": TINY_TRAINING_MODEL,
        "segment_frames": 32,
        "steps": 12,
        "batch_size": 4,
        "learning_rate": 0.01,
        "warmup_steps": 0,
        "checkpoint_every": 4,
        "log_every": 2,
        "eval_batch_size": 4,
        "scale_clips": None,
        "max_minutes": None,
        "mixed_precision": "no",
        **changes,
    }
    return VaeTrainConfig.from_dict(values)


def read_log(run):
    lines = (run / "train_log.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


@pytest.fixture(scope="module")
def trained(manifest, tmp_path_factory):
    run = tmp_path_factory.mktemp("vae-run")
    summary = train_vae(tiny_config(manifest), run, progress=False)
    return run, summary


def test_training_lowers_the_loss_and_writes_the_model(trained):
    run, summary = trained
    log = read_log(run)
    assert [entry["step"] for entry in log] == [2, 4, 6, 8, 10, 12]
    assert log[-1]["l1"] < log[0]["l1"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 12
    assert metrics["train_clips"] == 6 and metrics["valid_clips"] == 2
    assert metrics["recon_l1_valid"] > 0
    assert [f["id"] for f in metrics["failures"]] == ["broken"]
    assert metrics["skipped_rows"] == 1
    assert LatentVAE.from_pretrained(run / "model").latent_shape(864, 80) == (8, 216, 20)


def test_scaling_factor_is_one_over_the_latent_std(trained, manifest):
    run, summary = trained
    model = LatentVAE.from_pretrained(run / "model").eval()
    mels = load_mels(manifest, "train", SPEC).mels
    with torch.no_grad():
        means = model.autoencoder.encode(mels.unsqueeze(1)).latent_dist.mean
    assert model.scaling_factor == pytest.approx(1 / means.double().std().item(), rel=1e-4)
    assert summary["scaling_factor"] == pytest.approx(model.scaling_factor)
    with torch.no_grad():
        assert model.encode(mels).std().item() == pytest.approx(1.0, rel=1e-4)


def test_a_killed_run_resumes_where_it_stopped(trained, manifest, tmp_path, monkeypatch):
    run, _ = trained
    crop = vae_train.crop_batch
    calls = []

    def killed_at_step_7(*args):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return crop(*args)

    monkeypatch.setattr(vae_train, "crop_batch", killed_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        train_vae(tiny_config(manifest), tmp_path, progress=False)
    monkeypatch.setattr(vae_train, "crop_batch", crop)
    assert json.loads((tmp_path / "checkpoint/progress.json").read_text())["next_step"] == 4
    assert [entry["step"] for entry in read_log(tmp_path)] == [2, 4, 6]
    train_vae(tiny_config(manifest), tmp_path, progress=False)
    assert read_log(tmp_path) == read_log(run)
    straight = LatentVAE.from_pretrained(run / "model").state_dict()
    resumed = LatentVAE.from_pretrained(tmp_path / "model").state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_time_budget_stops_training(manifest, tmp_path):
    summary = train_vae(tiny_config(manifest, max_minutes=1e-9), tmp_path, progress=False)
    assert summary["steps"] == 0 and summary["stopped_early"]
    assert (tmp_path / "model/config.json").is_file()


def test_cli_help_and_a_tiny_run(manifest, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train-vae", "--help"])
    assert exit_info.value.code == 0
    assert "--max-minutes" in capsys.readouterr().out
    config = tmp_path / "tiny.yaml"
    values = tiny_config(manifest).to_dict()
    del values["manifest"]
    config.write_text(yaml.safe_dump(values))
    out = tmp_path / "run"
    args = ["train-vae", "--manifest", str(manifest), "--config", str(config), "--out", str(out)]
    assert main([*args, "--steps", "3", "--batch-size", "2", "--quiet"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "3 steps" in line and str(out / "metrics.json") in line
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["steps"] == 3 and saved["batch_size"] == 2
    # One pass over the six usable training clips in batches of four is two steps.
    epochs = tmp_path / "epochs"
    args = ["train-vae", "--manifest", str(manifest), "--config", str(config), "--out", str(epochs)]
    assert main([*args, "--epochs", "1", "--quiet"]) == 0
    assert json.loads((epochs / "metrics.json").read_text())["steps"] == 2


def test_cli_reports_a_missing_manifest(tmp_path, capsys):
    assert main(["train-vae", "--out", str(tmp_path)]) == 2
    assert "manifest" in capsys.readouterr().err
