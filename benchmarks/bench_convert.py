"""Memory and time of ``qamdt convert released`` on a full-size random checkpoint.

Usage: python benchmarks/bench_convert.py [--work DIR] [--keep]

Writes a checkpoint with the released layout and full sizes, random values: the
transformer twice (raw and EMA, 676 M parameters each), the AudioLDM VAE, the 16 kHz
HiFi-GAN, the FLAN-T5-large encoder, the schedule buffers, a stand-in for the loss
networks and CLAP, and a pickled configuration object outside torch's allow-list (as a
Lightning checkpoint has). The released file also holds optimizer state; this one does
not, so it is about half the size.

Each row runs in a fresh process (the parent stays small: a child's peak memory starts
from its parent's at the fork) and reports its peak resident memory (ru_maxrss, which
counts the checkpoint's memory-mapped pages that were read) and time. The reference row
is a plain ``torch.load`` (the whole file in memory); the converter memory-maps it
instead. The tokenizer is a small stand-in (the checkpoint holds none; a real run reads
FLAN-T5's from ``--text-encoder``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import time
from pathlib import Path

import torch


class TrainingConfig:
    """Stands for the configuration object a Lightning checkpoint pickles."""

    def __init__(self, values):
        self.values = values


def build_checkpoint(path: Path) -> int:
    from accelerate import init_empty_weights
    from transformers import SpeechT5HifiGanConfig, T5Config, T5EncoderModel

    from qamdt.convert.released_components import AUDIOLDM_HIFIGAN_16K_64, LDM_NORM_GROUPS
    from qamdt.convert.released_layouts import released_vae_key_shapes, released_vocoder_key_shapes
    from qamdt.convert.released_transformer import (
        EMA_PREFIX,
        RAW_PREFIX,
        model_config_from_unet,
        their_parameter_shapes,
    )
    from qamdt.diffusion.schedule import DiffusionConfig, build_train_scheduler
    from qamdt.models.transformer import QualityMDTTransformer

    generator = torch.Generator().manual_seed(0)
    state = {}

    def fill(key, shape):
        state[key] = torch.randn(shape, generator=generator) * 0.02

    with init_empty_weights():
        model = QualityMDTTransformer(**model_config_from_unet(None))
    for name, shape in their_parameter_shapes(model).items():
        fill(RAW_PREFIX + name, shape)
        state[EMA_PREFIX + name.replace(".", "")] = state[RAW_PREFIX + name] + 0.001
    table, _ = model._positions(model.grid(256, 16), "cpu", torch.float32)
    state[RAW_PREFIX + "pos_embed"] = table[None]
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(389999)
    vae = {
        "block_out_channels": [128, 256, 512],
        "layers_per_block": 2,
        "latent_channels": 8,
        "in_channels": 1,
        "out_channels": 1,
        "norm_num_groups": LDM_NORM_GROUPS,
    }
    for key, shape in released_vae_key_shapes(vae).items():
        fill("first_stage_model." + key, shape)
    vocoder = SpeechT5HifiGanConfig(**AUDIOLDM_HIFIGAN_16K_64, normalize_before=False)
    for key, shape in released_vocoder_key_shapes(vocoder).items():
        fill("first_stage_model.vocoder." + key, shape)
    fill("first_stage_model.loss.discriminator.main.0.weight", (64, 1, 4, 4))
    fill("clap.model.text_branch.embeddings.word_embeddings.weight", (50265, 768))
    t5 = T5Config(
        vocab_size=32128,
        d_model=1024,
        d_kv=64,
        d_ff=2816,
        num_layers=24,
        num_heads=16,
        feed_forward_proj="gated-gelu",
    )
    with init_empty_weights():
        encoder = T5EncoderModel(t5)
    for key, tensor in encoder.state_dict().items():
        fill("cond_stage_models.0.model." + key, tuple(tensor.shape))
    # T5 ties its input embeddings to the shared table.
    state["cond_stage_models.0.model.encoder.embed_tokens.weight"] = state[
        "cond_stage_models.0.model.shared.weight"
    ]
    state["scale_factor"] = torch.tensor(0.6)
    scheduler = build_train_scheduler(DiffusionConfig())
    state["betas"] = scheduler.betas.clone()
    state["alphas_cumprod"] = scheduler.alphas_cumprod.clone()
    torch.save({"state_dict": state, "hyper_parameters": TrainingConfig({"lr": 8e-5})}, path)
    return path.stat().st_size


def write_checkpoint(path, queue):
    queue.put(build_checkpoint(path))


def tokenizer_folder(folder: Path) -> Path:
    from transformers import T5Tokenizer

    words = "a calm piano piece with soft strings high quality low medium".split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -float(i + 1)) for i, w in enumerate(words)]
    T5Tokenizer(vocab=vocab, extra_ids=0).save_pretrained(folder)
    return folder


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def plain_load(path, queue):
    start = time.perf_counter()
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    total = sum(t.float().sum().item() for t in checkpoint["state_dict"].values())
    queue.put((time.perf_counter() - start, peak_gib(), total))


def convert(path, out, tokenizer, queue):
    from qamdt.convert.released import convert_released

    start = time.perf_counter()
    summary = convert_released(path, out, text_encoder=tokenizer, log=lambda *_: None)
    queue.put((time.perf_counter() - start, peak_gib(), summary["transformer_parameters"]))


def run(target, *args):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=target, args=(*args, queue))
    process.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Exception:
            if not process.is_alive():
                raise SystemExit(
                    f"{target.__name__} failed (exit code {process.exitcode})"
                ) from None
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-convert"))
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and output")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "checkpoint_random.ckpt"
    start = time.perf_counter()
    # Built in its own process: a child's peak memory starts from its parent's at the fork.
    size = path.stat().st_size if path.is_file() else run(write_checkpoint, path)
    print(f"checkpoint: {size / 2**30:.2f} GiB ({time.perf_counter() - start:.0f} s to write)")
    tokenizer = tokenizer_folder(args.work / "tokenizer")
    rows = [
        ("torch.load, whole file (reference)", run(plain_load, path)),
        ("qamdt convert released", run(convert, path, args.work / "pipeline", tokenizer)),
    ]
    reference = rows[0][1][1]
    print(f"| {'what':<36} | seconds | peak memory GiB | x reference |")
    print(f"|{'-' * 38}|---------|-----------------|-------------|")
    for name, (seconds, peak, _) in rows:
        print(f"| {name:<36} | {seconds:7.1f} | {peak:15.2f} | {peak / reference:11.2f} |")
    if not args.keep:
        shutil.rmtree(args.work)


if __name__ == "__main__":
    main()
