"""How a pipeline runs on its hardware: one dtype, compiled models, CPU offload.

These are load-time choices of :class:`~qamdt.generation.pipeline.QAMDTPipeline`
(``from_pretrained(torch_dtype=)``, ``to(dtype=)``, ``compile()``,
``enable_model_cpu_offload()``), apart from the sampling settings of
:mod:`qamdt.generation.settings`: they change speed and memory, not what is sampled
(beyond the rounding of a lower precision). See docs/speed.md.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from qamdt.errors import ConfigError
from qamdt.models.chunked import VAE_OVERLAP, decode_latents

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes a pipeline runs in, by name (``--torch-dtype``)."""

COMPILE_COMPONENTS = ("transformer", "vae", "vocoder")
"""What :func:`compile_pipeline` may compile: the denoiser, the VAE decoder, the HiFi-GAN."""

MODEL_COMPONENTS = ("text_encoder", "transformer", "vae", "vocoder")


def parse_dtype(
    value: str | torch.dtype | Mapping[str, str | torch.dtype] | None, where: str = "torch_dtype"
) -> dict[str, torch.dtype] | None:
    """The dtype of each model, from one dtype or one per model; None stays None.

    Args:
        value: A dtype or its name, for every model; a mapping of model names
            (:data:`MODEL_COMPONENTS`) and ``"default"`` to dtypes or names, as diffusers'
            pipelines take it; or the command line's comma-separated entries, each a name
            (the default) or ``model=name``: ``"vocoder=bfloat16"``,
            ``"float32,vocoder=bfloat16"``.
        where: The argument's name in errors.

    Returns:
        ``{model: dtype}`` for the models it sets (a default sets every model), or None.

    Raises:
        ConfigError: On an unknown dtype or model, naming ``where`` and the known names.
    """
    if value is None:
        return None
    if isinstance(value, str) and ("=" in value or "," in value):
        entries = [entry.strip() for entry in value.split(",")]
        value = dict(e.split("=", 1) if "=" in e else ("default", e) for e in entries)
    if not isinstance(value, Mapping):
        return dict.fromkeys(MODEL_COMPONENTS, _one_dtype(value, where))
    unknown = sorted(set(value) - {*MODEL_COMPONENTS, "default"})
    if unknown:
        raise ConfigError(
            f"{where}: unknown model(s) {unknown}; known: {[*MODEL_COMPONENTS, 'default']}"
        )
    default = value.get("default")
    return {
        name: _one_dtype(value.get(name, default), where)
        for name in MODEL_COMPONENTS
        if value.get(name, default) is not None
    }


def dtype_name(dtype: torch.dtype) -> str:
    """A dtype's name as the command line and the sidecars write it: ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def format_dtype(dtypes: Mapping[str, torch.dtype]) -> str:
    """The command line's form of :func:`parse_dtype`'s mapping: ``"vocoder=bfloat16,..."``."""
    return ",".join(f"{name}={dtype_name(dtype)}" for name, dtype in dtypes.items())


def native_dtypes(
    dtypes: Mapping[str, torch.dtype] | None, device: str | torch.device
) -> dict[str, torch.dtype] | None:
    """``dtypes`` with float32 in place of bfloat16 where ``device`` does not compute it natively.

    A CPU without AVX-512 BF16 or AMX converts every bfloat16 operation in software, which
    makes the demo's generation about three times slower than float32 there (docs/speed.md).

    Args:
        dtypes: :func:`parse_dtype`'s mapping, or None.
        device: Where the models run.
    """
    from qamdt.training.precision import native_bfloat16

    if dtypes is None or native_bfloat16(torch.device(device)):
        return None if dtypes is None else dict(dtypes)
    return {n: torch.float32 if d == torch.bfloat16 else d for n, d in dtypes.items()}


def _one_dtype(value: str | torch.dtype, where: str) -> torch.dtype:
    if isinstance(value, torch.dtype) and value in TORCH_DTYPES.values():
        return value
    if isinstance(value, str) and value.strip() in TORCH_DTYPES:
        return TORCH_DTYPES[value.strip()]
    raise ConfigError(f"{where}: unknown dtype {value!r}; known: {list(TORCH_DTYPES)}")


def cast_components(pipeline, dtypes: Mapping[str, torch.dtype]) -> None:
    """Puts each model of a pipeline in its dtype (:func:`parse_dtype`'s mapping).

    The sampler's latents, its scheduler maths and the returned audio stay float32 (the
    pipeline converts at each model's input and output); PyTorch's layer and group norms
    accumulate their statistics in float32 for 16-bit inputs. A HiFi-GAN vocoder runs only
    its residual blocks in a 16-bit dtype (:meth:`~qamdt.models.vocoder.Vocoder.set_dtype`);
    the Griffin-Lim vocoder's buffers (mel basis and window) stay float32. A model already
    in its dtype is left alone.
    """
    for name, dtype in dtypes.items():
        module = getattr(pipeline, name)
        if module is None:
            continue
        if name == "vocoder":
            module.set_dtype(dtype)
        elif next(module.parameters()).dtype != dtype:
            # Past diffusers' ModelMixin.to, which warns on every dtype cast that some
            # modules should stay float32 while naming none; these models have none.
            torch.nn.Module.to(module, dtype)


def default_compile_mode(device: torch.device) -> str | None:
    """CUDA graphs on CUDA (every step has the same shapes), inductor's default elsewhere."""
    return "reduce-overhead" if device.type == "cuda" else None


def compile_pipeline(
    pipeline,
    mode: str | None = "auto",
    components: Iterable[str] = COMPILE_COMPONENTS,
) -> None:
    """Compiles a pipeline's models in place with ``torch.compile`` (static shapes).

    ``nn.Module.compile`` keeps each module, its parameters and its state-dict names, so a
    compiled pipeline saves and offloads as before. The first call of each new input shape
    compiles (tens of seconds); later calls of that shape run the compiled code.

    Args:
        pipeline: The pipeline, on the device it will run on.
        mode: A ``torch.compile`` mode; "auto" picks :func:`default_compile_mode` of the
            pipeline's device (the VAE decoder and vocoder then use
            "max-autotune-no-cudagraphs" on CUDA: their outputs are kept across calls).
        components: Among :data:`COMPILE_COMPONENTS`.

    Raises:
        ConfigError: On an unknown component.
    """
    components = tuple(components)
    unknown = sorted(set(components) - set(COMPILE_COMPONENTS))
    if unknown:
        raise ConfigError(f"compile: unknown component(s) {unknown}; known: {COMPILE_COMPONENTS}")
    device = pipeline.device
    chosen = default_compile_mode(device) if mode == "auto" else mode
    graph_free = "max-autotune-no-cudagraphs" if chosen == "reduce-overhead" else chosen
    targets = {
        "transformer": (pipeline.transformer, chosen),
        "vae": (pipeline.vae.autoencoder.decoder, graph_free),
        "vocoder": (
            pipeline.vocoder.model if pipeline.vocoder is not None else None,
            graph_free,
        ),
    }
    for name in components:
        module, module_mode = targets[name]
        if module is not None:
            module.compile(mode=module_mode, dynamic=False)


class ModelOffload:
    """Keeps a pipeline's models on the CPU, each on the accelerator only while it runs.

    Args:
        pipeline: The pipeline.
        device: Where each model runs.
    """

    def __init__(self, pipeline, device: torch.device):
        self.pipeline = pipeline
        self.device = device
        for name in MODEL_COMPONENTS:
            module = getattr(pipeline, name)
            if module is not None:
                module.to("cpu")

    @contextlib.contextmanager
    def use(self, *names: str) -> Iterator[None]:
        """Moves the named models to the device for the ``with`` block, then back."""
        modules = [getattr(self.pipeline, name) for name in names]
        modules = [module for module in modules if module is not None]
        for module in modules:
            module.to(self.device)
        try:
            yield
        finally:
            for module in modules:
                module.to("cpu")


class PipelineHardware:
    """The device, dtype, compile and memory methods of ``QAMDTPipeline``.

    Attributes:
        _offload: The active :class:`ModelOffload`, or None.
        vae_chunking: ``(frames, overlap)`` of chunked VAE decoding, or None.
    """

    _offload: ModelOffload | None = None
    vae_chunking: tuple[int, int] | None = None
    transformer: Any
    vae: Any
    components: dict[str, Any]

    def to(
        self,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | Mapping[str, str | torch.dtype] | None = None,
    ) -> PipelineHardware:
        """Moves every model to ``device`` and/or casts it to ``dtype``.

        In bfloat16 or float16 the transformer, VAE, vocoder and text encoder all run in
        that dtype; latents between steps, the scheduler's maths and the returned audio
        stay float32 (:func:`~qamdt.generation.acceleration.cast_components`). ``dtype``
        may also name one per model, ``{"vocoder": torch.bfloat16}`` or with a
        ``"default"`` (:func:`~qamdt.generation.acceleration.parse_dtype`).

        Raises:
            ConfigError: On an unknown dtype or model.
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        dtype = parse_dtype(dtype)
        if device is not None:
            self._offload = None
            for name, module in self.components.items():
                if name != "scheduler" and module is not None:
                    module.to(device)
        if dtype is not None:
            cast_components(self, dtype)
            if native_dtypes(dtype, self.device) != dtype:
                warnings.warn(
                    f"bfloat16 on this {self.device.type}, which has no bfloat16 instructions, "
                    "is emulated and about 3x slower than float32 (docs/speed.md)",
                    stacklevel=2,
                )
        return self

    @property
    def device(self) -> torch.device:
        """Where the models run: the transformer's device, or the offload device."""
        if self._offload is not None:
            return self._offload.device
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's dtype."""
        return next(self.transformer.parameters()).dtype

    @property
    def dtypes(self) -> dict[str, torch.dtype]:
        """Each model's dtype.

        A HiFi-GAN vocoder's is that of its residual blocks; a Griffin-Lim vocoder has no
        weights and is left out.
        """
        found = {}
        for name in MODEL_COMPONENTS:
            module = getattr(self, name)
            if name == "vocoder":
                if module is not None and module.kind == "hifigan":
                    found[name] = module.dtype
            elif module is not None:
                found[name] = next(module.parameters()).dtype
        return found

    def compile(self, mode: str | None = "auto", components=COMPILE_COMPONENTS):
        """Compiles the models with ``torch.compile``; returns the pipeline.

        See :func:`compile_pipeline` for ``mode`` and ``components``.
        """
        compile_pipeline(self, mode, components)
        return self

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> PipelineHardware:
        """Keeps the models on the CPU and moves each to ``device`` only while it runs.

        Peak accelerator memory is then that of the largest model and its activations
        (for the ``paper`` preset the T5 text encoder or the transformer) instead of all
        four models together, at the cost of copying each model in and out per call.
        :meth:`to` with a device turns it off.
        """
        self._offload = ModelOffload(self, torch.device(device))
        return self

    def enable_vae_chunking(self, frames: int = 64, overlap: int = VAE_OVERLAP) -> PipelineHardware:
        """Decodes a clip's latents in windows of ``frames`` latent frames; returns self.

        Peak activation memory of the VAE then follows ``frames`` instead of the clip's
        length. The windows overlap by ``overlap`` frames, crossfaded
        (:func:`~qamdt.models.chunked.decode_latents`, as long-form decoding does); the
        decoder's group norms see one window's statistics, so mels differ slightly from
        a decode in one pass (docs/speed.md gives the measured difference).

        Raises:
            ConfigError: Unless ``frames >= 2`` and ``0 <= overlap``.
        """
        if frames < 2 or overlap < 0:
            raise ConfigError(
                f"VAE chunking needs frames >= 2 and overlap >= 0, got {frames}, {overlap}"
            )
        self.vae_chunking = (int(frames), min(int(overlap), int(frames) // 2))
        return self

    def disable_vae_chunking(self) -> PipelineHardware:
        """Decodes each clip's latents in one pass again (the default); returns self."""
        self.vae_chunking = None
        return self

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents to float32 log-mels, in windows when :meth:`enable_vae_chunking` set them."""
        if self.vae_chunking is None:
            return self.vae.decode(latents).float()
        return decode_latents(self.vae, latents, *self.vae_chunking).float()

    def _on_device(self, *names: str):
        """The ``with`` block in which the named models sit on the device."""
        if self._offload is None:
            return contextlib.nullcontext()
        return self._offload.use(*names)
