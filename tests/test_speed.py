"""Speed and memory options: one dtype, cached conditioning, no reads in the loop, offload,
chunked VAE decoding, compiling."""

import os
import time
import traceback
import warnings

import numpy as np
import pytest
import torch
from test_mdt_model import inputs, tiny_model
from test_pipeline import tiny_pipeline

from qamdt.cli.main import main
from qamdt.config import read_yaml
from qamdt.diffusion.sampling import GuidedDenoiser, sample_latents
from qamdt.diffusion.schedule import DiffusionConfig, build_sampler, build_train_scheduler
from qamdt.errors import ConfigError
from qamdt.generation.pipeline import QAMDTPipeline
from qamdt.models.vae import LatentVAE
from qamdt.training.mdt_config import MdtTrainConfig
from qamdt.training.mdt_train import compile_for_training, fused_adamw


def call(pipeline, **options):
    settings = {"num_inference_steps": 3, "audio_length_in_s": 0.3, "generator": 7}
    return pipeline("a calm piano piece", **{**settings, **options})


def model_dtypes(pipeline):
    modules = [pipeline.transformer, pipeline.vae, pipeline.text_encoder]
    return {p.dtype for module in modules for p in module.parameters()}


def test_bfloat16_pipeline_runs_in_one_dtype_and_returns_float32_near_float32(tmp_path):
    pipeline = tiny_pipeline()
    reference = call(pipeline)
    assert pipeline.to(dtype="bfloat16") is pipeline
    assert model_dtypes(pipeline) == {torch.bfloat16} and pipeline.dtype == torch.bfloat16
    # The Griffin-Lim vocoder's buffers stay float32.
    assert pipeline.vocoder.mel_basis.dtype == torch.float32
    half = call(pipeline)
    assert half.audios.dtype == np.float32
    assert half.mels.dtype == torch.float32 and half.latents.dtype == torch.float32
    # Stated tolerance: latents within 5% of their largest magnitude, mels within 0.1
    # (natural-log units); measured 1% and 0.02 on this pipeline.
    scale = reference.latents.abs().max()
    assert (half.latents - reference.latents).abs().max() <= 0.05 * scale
    assert (half.mels - reference.mels).abs().max() <= 0.1
    assert not torch.equal(half.latents, reference.latents)

    pipeline.to(dtype=torch.float32).save_pretrained(tmp_path / "pipe")
    loaded = QAMDTPipeline.from_pretrained(tmp_path / "pipe", torch_dtype="bfloat16")
    assert model_dtypes(loaded) == {torch.bfloat16}
    assert torch.equal(call(loaded).latents, half.latents)
    with pytest.raises(ConfigError, match="torch_dtype: unknown dtype 'half'.*bfloat16"):
        QAMDTPipeline.from_pretrained(tmp_path / "pipe", torch_dtype="half")


def test_casting_to_bfloat16_logs_no_float32_warning(monkeypatch):
    # diffusers' ModelMixin.to warns on every dtype cast that some modules should stay
    # float32, naming none; the pipeline's cast does not go through it.
    from diffusers.models import modeling_utils

    warned = []
    monkeypatch.setattr(modeling_utils.logger, "warning", lambda *a, **k: warned.append(a))
    pipeline = tiny_pipeline()
    pipeline.to(dtype="bfloat16")
    assert model_dtypes(pipeline) == {torch.bfloat16}
    assert warned == []


def test_dtype_per_model_in_diffusers_and_command_line_forms():
    from qamdt.generation.acceleration import MODEL_COMPONENTS, format_dtype, parse_dtype

    bf16, f32 = torch.bfloat16, torch.float32
    assert parse_dtype(None) is None
    assert parse_dtype("bfloat16") == dict.fromkeys(MODEL_COMPONENTS, bf16)
    assert parse_dtype({"vocoder": "bfloat16"}) == {"vocoder": bf16}
    assert parse_dtype("vocoder=bfloat16") == {"vocoder": bf16}
    every = parse_dtype("bfloat16, vocoder=float32")
    assert every == {**dict.fromkeys(MODEL_COMPONENTS, bf16), "vocoder": f32}
    assert parse_dtype({"default": bf16, "vocoder": f32}) == every
    # The command line's form written back (scripts/app.sh) reads as the same mapping.
    assert format_dtype({"vocoder": bf16}) == "vocoder=bfloat16"
    assert parse_dtype(format_dtype(every)) == every
    with pytest.raises(
        ConfigError, match=r"--torch-dtype: unknown model\(s\) \['vocder'\].*vocoder"
    ):
        parse_dtype("vocder=bfloat16", "--torch-dtype")
    with pytest.raises(ConfigError, match="torch_dtype: unknown dtype 'half'"):
        parse_dtype({"vae": "half"})


def test_demo_keeps_bfloat16_only_where_the_cpu_computes_it(monkeypatch):
    from qamdt.demo.settings import DemoSettings
    from qamdt.generation import acceleration
    from qamdt.training import precision

    bf16, f32 = torch.bfloat16, torch.float32
    asked = {"transformer": bf16, "vocoder": bf16, "vae": f32}
    settings = DemoSettings.quick().replace(torch_dtype="vocoder=bfloat16,transformer=bfloat16")
    assert acceleration.native_dtypes(None, "cpu") is None
    monkeypatch.setattr(precision, "native_bfloat16", lambda device: True)
    assert acceleration.native_dtypes(asked, "cpu") == asked
    assert settings.pipeline_dtypes() == {"transformer": bf16, "vocoder": bf16}
    monkeypatch.setattr(precision, "native_bfloat16", lambda device: False)
    assert acceleration.native_dtypes(asked, "cpu") == dict.fromkeys(asked, f32)
    assert settings.pipeline_dtypes() == {"transformer": f32, "vocoder": f32}
    # Asked for explicitly, bfloat16 is kept there, with a warning.
    pipeline = tiny_pipeline()
    with pytest.warns(UserWarning, match="emulated and about 3x slower"):
        pipeline.to(dtype="transformer=bfloat16")
    assert pipeline.dtypes["transformer"] == bf16
    monkeypatch.setattr(precision, "native_bfloat16", lambda device: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline.to(dtype="vae=bfloat16")


def test_one_model_in_bfloat16_is_recorded_in_the_sidecar(tmp_path):
    import json

    pipeline = tiny_pipeline()
    reference = call(pipeline)
    pipeline.save_pretrained(tmp_path / "pipe")
    loaded = QAMDTPipeline.from_pretrained(tmp_path / "pipe", torch_dtype={"vae": "bfloat16"})
    assert loaded.dtypes["vae"] == torch.bfloat16 and loaded.dtype == torch.float32
    assert {d for name, d in loaded.dtypes.items() if name != "vae"} == {torch.float32}
    half = call(loaded)
    assert torch.equal(half.latents, reference.latents)
    assert not torch.equal(half.mels, reference.mels)
    assert (half.mels - reference.mels).abs().max() <= 0.1
    argv = ["generate", "x", "--model", str(tmp_path / "pipe"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--torch-dtype", "vae=bfloat16", "--steps", "1", "--quiet"]) == 0
    sidecar = json.loads(next((tmp_path / "o").glob("*.json")).read_text())
    # The Griffin-Lim vocoder has no weights and no dtype.
    assert sidecar["torch_dtype"] == {
        "text_encoder": "float32", "transformer": "float32", "vae": "bfloat16"
    }  # fmt: skip


def test_bad_torch_dtype_flag_is_named_before_loading(tmp_path, capsys):
    tiny_pipeline().save_pretrained(tmp_path / "pipe")
    argv = ["generate", "x", "--model", str(tmp_path / "pipe"), "--out", str(tmp_path / "o")]
    assert main([*argv, "--torch-dtype", "float8"]) == 2
    error = capsys.readouterr().err
    assert "--torch-dtype: unknown dtype 'float8'" in error and "bfloat16" in error
    assert not (tmp_path / "o").exists()
    assert main([*argv, "--torch-dtype", "bfloat16", "--steps", "1", "--quiet"]) == 0
    assert len(list((tmp_path / "o").glob("*.wav"))) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"position_encoding": "rope", "quality_modulation": True},
        {"decoder_position": "learned", "decoder_input_skip": True, "text_projection": "linear"},
    ],
)
def test_cached_conditioning_gives_the_uncached_outputs(changes):
    model = tiny_model(**changes)
    latents, t, text, mask = inputs()
    mask[1, :] = False  # a row without a real token
    levels = torch.tensor([4.5, 0.0])
    with torch.no_grad():
        plain = model(latents, t, text, mask, levels)
        cached = model.prepare_conditioning(text, mask, levels, latent_size=(24, 8))
        assert torch.equal(model(latents, t, None, conditioning=cached), plain)
        # Positions made inside the call when the latent size was not given.
        lazy = model.prepare_conditioning(text, mask, levels)
        assert torch.equal(model(latents, t, None, conditioning=lazy), plain)
    with pytest.raises(ConfigError, match="quality level out of range"):
        model.prepare_conditioning(text, mask, torch.tensor([6.0, 1.0]))


@pytest.mark.parametrize("interval", [None, (0, 600)])
def test_sampling_with_prepared_conditioning_equals_the_uncached_model(interval):
    model = tiny_model()

    class Uncached(torch.nn.Module):
        """The same model without ``prepare_conditioning``: every step computes it all."""

        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, *args):
            return self.inner(*args)

    latents, _, text, mask = inputs()
    negative = (torch.zeros(2, 3, 12), torch.ones(2, 3, dtype=torch.bool))
    runs = []
    for denoiser in (model, Uncached()):
        sampler = build_sampler("ddim", build_train_scheduler(DiffusionConfig()).config)
        runs.append(
            sample_latents(
                denoiser, sampler, latents, (text, mask), torch.tensor([5.0, 3.5]), negative,
                torch.tensor([1.0, 1.0]), guidance_scale=3.0, num_inference_steps=4,
                guidance_rescale=0.5, guidance_interval=interval,
            )
        )  # fmt: skip
    assert torch.equal(runs[0], runs[1])


def test_sampling_loop_reads_no_value_back(monkeypatch):
    """Inside the loop the project's code reads no tensor value on the host.

    Counted from the first model call on, in the project's own frames: the checks of
    levels and masks run before the loop; the scheduler reads only its CPU timesteps.
    """
    model = tiny_model()
    latents, _, text, mask = inputs()
    negative = (torch.zeros_like(text), torch.ones_like(mask))
    levels, low = torch.tensor([5.0, 4.0]), torch.tensor([1.0, 1.0])
    looping, reads = [], []
    model.register_forward_pre_hook(lambda module, args: looping.append(len(args[0])))
    for name in ("item", "__float__", "__int__", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name):
            caller = traceback.extract_stack(limit=2)[0].filename
            if looping and f"{os.sep}qamdt{os.sep}" in caller:
                reads.append((_name, caller))
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    sampler = build_sampler("ddim", build_train_scheduler(DiffusionConfig()).config)
    options = {"guidance_scale": 3.0, "guidance_rescale": 0.5, "guidance_interval": (0, 600)}
    out = sample_latents(
        model, sampler, latents, (text, mask), levels, negative, low,
        num_inference_steps=4, eta=1.0, generator=torch.Generator().manual_seed(0), **options,
    )  # fmt: skip
    assert looping == [2, 4, 4, 4]  # timestep 751 lies outside the guidance interval
    assert reads == [] and torch.isfinite(out).all()
    # The check can fail: a step called without its timestep value reads it back, and
    # so does the model's level check when the conditioning is not prepared.
    denoiser = GuidedDenoiser(model, sampler, (text, mask), levels, negative, low, 3.0)
    denoiser(latents, sampler.timesteps[0])
    model(latents, sampler.timesteps[:2], text, mask, levels)
    assert {name for name, _ in reads} == {"__float__", "__bool__"}


def test_model_offload_moves_each_model_in_for_its_stage_and_back():
    pipeline = tiny_pipeline()
    reference = call(pipeline)
    moves = []
    for name in ("text_encoder", "transformer", "vae", "vocoder"):
        module = getattr(pipeline, name)

        def to(*args, _module=module, _name=name, _to=module.to, **kwargs):
            moves.append((_name, str(args[0] if args else kwargs.get("device"))))
            return _to(*args, **kwargs)

        module.to = to
    pipeline.enable_model_cpu_offload("cpu")
    assert pipeline.device == torch.device("cpu")
    moves.clear()
    out = call(pipeline)
    stages = [name for name, _ in moves[::2]]
    assert stages == ["vae", "text_encoder", "transformer", "vae", "vocoder"]
    assert all(device == "cpu" for _, device in moves)
    assert [name for name, _ in moves[1::2]] == stages  # each moved back after its stage
    assert torch.equal(out.latents, reference.latents)
    pipeline.to("cpu")
    assert pipeline._offload is None


def test_chunked_vae_decoding_is_close_to_one_pass():
    pipeline = tiny_pipeline()
    torch.manual_seed(0)
    pipeline.vae = LatentVAE.from_config(read_yaml("configs/vae/embedded.yaml")["model"]).eval()
    latents = torch.randn(1, 8, 128, 20, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = pipeline.decode(latents)
        pipeline.enable_vae_chunking(frames=128)
        assert torch.equal(pipeline.decode(latents), whole)
        pipeline.enable_vae_chunking(frames=64, overlap=16)
        chunked = pipeline.decode(latents)
        pipeline.enable_vae_chunking(frames=64, overlap=0)
        seams = pipeline.decode(latents)
    assert chunked.shape == whole.shape and chunked.dtype == torch.float32
    # Documented in docs/speed.md (216 frames, windows of 64 overlapping by 16): mean
    # |difference| 0.011, max 0.14 in log-mel units; the group norms see one window's
    # statistics. Without overlap the seams differ more.
    difference = (chunked - whole).abs()
    assert difference.mean() < 0.03 and difference.max() < 0.3
    assert (seams - whole).abs().max() > difference.max()
    assert pipeline.disable_vae_chunking().vae_chunking is None
    with pytest.raises(ConfigError, match="frames >= 2"):
        pipeline.enable_vae_chunking(frames=1)


@pytest.mark.skipif(
    not os.environ.get("QAMDT_COMPILE_TESTS"),
    reason="torch.compile of even a tiny transformer takes about 80 s on 2 CPU cores; "
    "run with QAMDT_COMPILE_TESTS=1",
)
def test_compiled_transformer_matches_eager():
    model = tiny_model()
    latents, t, text, mask = inputs()
    with torch.no_grad():
        eager = model(latents, t, text, mask, torch.tensor([5, 1]))
        model.compile(dynamic=False)
        start = time.perf_counter()
        compiled = model(latents, t, text, mask, torch.tensor([5, 1]))
    assert time.perf_counter() - start < 300
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-4)
    # State-dict names are unchanged by compiling in place.
    assert not any(key.startswith("_orig_mod") for key in model.state_dict())


def test_unmasked_forward_traces_as_one_graph():
    # CUDA graphs capture one graph per sampling step; a break would split every step.
    model = tiny_model()
    latents, t, text, mask = inputs()
    levels = torch.tensor([5, 1])
    prepared = model.prepare_conditioning(text, mask, levels, latent_size=(24, 8))
    with torch.no_grad():
        for call in (
            lambda: torch._dynamo.explain(model)(latents, t, text, mask, levels),
            lambda: torch._dynamo.explain(model)(latents, t, None, None, conditioning=prepared),
        ):
            explained = call()
            assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_compiled_training_does_not_recompile_for_each_mask_ratio():
    torch._dynamo.reset()  # no compiled entries of other tests' calls
    model = tiny_model().train()
    compile_for_training(model)
    latents, t, text, mask = inputs()
    levels = torch.tensor([1, 4])

    def step(ratio, tokens):
        # A batch's captions as the collate function pads them: contiguous, of one length.
        generator = torch.Generator().manual_seed(0)
        out = model(
            latents,
            t,
            text[:, :tokens].contiguous(),
            mask[:, :tokens].contiguous(),
            levels,
            mask_ratio=ratio,
            generator=generator,
        )
        out.square().mean().backward()

    # The first two batches compile the static and then the dynamic sizes; later mask
    # ratios and caption lengths reuse them.
    step(0.3, 5)
    step(0.45, 4)
    torch._dynamo.config.error_on_recompile = True
    try:
        step(0.37, 3)
        step(0.5, 5)
    finally:
        torch._dynamo.config.error_on_recompile = False


def test_fused_adamw_steps_like_the_default_one():
    model = tiny_model()
    twin = tiny_model()
    fused = fused_adamw(model.parameters(), lr=1e-2, weight_decay=0.01)
    default = torch.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.01)
    assert fused.defaults["fused"] is True
    latents, t, text, mask = inputs()
    for net, optimizer in ((model, fused), (twin, default)):
        for _ in range(3):
            net(latents, t, text, mask).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        # Within 1% of one step (lr 1e-2): the kernels round differently.
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert not torch.equal(model.final_proj.weight, tiny_model().final_proj.weight)


def test_training_compile_switch_is_off_by_default():
    values = {"manifest": "m.jsonl", "vae": "vae"}
    assert MdtTrainConfig.from_dict(values).compile is False
    assert MdtTrainConfig.from_dict({**values, "compile": True}).compile is True
    with pytest.raises(ConfigError, match="compiled"):
        MdtTrainConfig.from_dict({**values, "compiled": True})


def test_sidecars_record_a_lower_precision_and_chunked_decoding(tmp_path):
    import json

    from qamdt.generation.settings import GenerationSettings
    from qamdt.generation.writer import generate_to_folder

    pipeline = tiny_pipeline()
    settings = GenerationSettings(num_inference_steps=2, audio_length_in_s=0.3)
    plain = generate_to_folder(pipeline, ["a piano"], settings, tmp_path / "plain")
    assert not {"torch_dtype", "vae_chunking"} & set(
        json.loads(plain[0].with_suffix(".json").read_text())
    )
    pipeline.to(dtype="bfloat16").enable_vae_chunking(frames=8, overlap=2)
    half = generate_to_folder(pipeline, ["a piano"], settings, tmp_path / "half")
    sidecar = json.loads(half[0].with_suffix(".json").read_text())
    assert sidecar["torch_dtype"] == "bfloat16" and sidecar["vae_chunking"] == [8, 2]
