"""The reverse diffusion loop with classifier-free guidance, both branches in one batch."""

from __future__ import annotations

import dataclasses
import inspect

import torch
import torch.nn.functional as F
from tqdm import tqdm


def pad_text(
    states: torch.Tensor, mask: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pads text states ``[B, L, D]`` and their mask ``[B, L]`` to ``length`` tokens."""
    extra = length - states.shape[1]
    if extra <= 0:
        return states, mask
    return F.pad(states, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


def rescale_guidance(
    guided: torch.Tensor,
    positive: torch.Tensor,
    sample: torch.Tensor,
    alpha_bar: torch.Tensor | float,
    rescale: float,
    prediction_type: str = "epsilon",
) -> torch.Tensor:
    """Pulls the guided prediction's clean latent back to the positive branch's spread.

    Large guidance scales inflate the spread of the predicted clean latent, and with it
    the sampled latents' (over-saturated, off-distribution output; here mels far darker
    and sparser than the training data's). Following Lin et al. 2023 ("Common diffusion
    noise schedules and sample steps are flawed", sec. 3.4), each sample's guided clean
    latent ``x0`` is rescaled to the standard deviation of the positive branch's ``x0``
    and mixed with the unrescaled one by ``rescale``. diffusers' ``rescale_noise_cfg``
    does the same on the noise prediction, which leaves ``x0``'s spread nearly unchanged
    for epsilon-prediction models at high noise, so it is done on ``x0`` here.

    Args:
        guided: ``neg + s * (pos - neg)``, ``[B, ...]``.
        positive: The positive branch's prediction, ``[B, ...]``.
        sample: The noisy latent the predictions were made from (variance-preserving
            scale, i.e. after ``scale_model_input``).
        alpha_bar: Cumulative alpha of the step's timestep.
        rescale: Mixing factor in [0, 1]; 0 returns ``guided`` unchanged.
        prediction_type: "epsilon" or "v_prediction".

    Returns:
        The rescaled prediction, of the same type.
    """
    if rescale == 0.0:
        return guided
    a = torch.as_tensor(alpha_bar, dtype=guided.dtype, device=guided.device).sqrt()
    b = (1.0 - a**2).sqrt()
    if prediction_type == "epsilon":
        to_clean = lambda p: (sample - b * p) / a  # noqa: E731
        from_clean = lambda x0: (sample - a * x0) / b  # noqa: E731
    elif prediction_type == "v_prediction":
        to_clean = lambda p: a * sample - b * p  # noqa: E731
        from_clean = lambda x0: (a * sample - x0) / b  # noqa: E731
    else:
        raise ValueError(f"prediction_type: unknown '{prediction_type}'")
    clean, clean_positive = to_clean(guided), to_clean(positive)
    dims = list(range(1, guided.ndim))
    spread = clean_positive.std(dim=dims, keepdim=True) / clean.std(dim=dims, keepdim=True)
    matched = clean * spread
    return from_clean(rescale * matched + (1.0 - rescale) * clean)


def check_guidance_rescale(rescale: float) -> None:
    """Refuses a guidance rescale outside [0, 1].

    Raises:
        ValueError: Naming the bad value.
    """
    if not 0.0 <= rescale <= 1.0:
        raise ValueError(f"guidance_rescale must lie in [0, 1], got {rescale}")


def check_guidance_interval(interval: tuple[float, float] | None) -> None:
    """Refuses a guidance interval that is not ``(low, high)`` with ``0 <= low <= high``.

    Raises:
        ValueError: Naming the bad interval.
    """
    if interval is None:
        return
    if len(interval) != 2 or not 0 <= interval[0] <= interval[1]:
        raise ValueError(f"guidance_interval must be (low, high) with 0 <= low <= high: {interval}")


def _inside(t: float, interval: tuple[float, float] | None) -> bool:
    return interval is None or interval[0] <= t <= interval[1]


def concat_text(
    first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacks two batches of ``(states, mask)`` along the batch axis, padding as needed."""
    length = max(first[0].shape[1], second[0].shape[1])
    a, b = pad_text(*first, length), pad_text(*second, length)
    return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])


@torch.no_grad()
def sample_latents(
    model,
    scheduler,
    latents: torch.Tensor,
    text: tuple[torch.Tensor, torch.Tensor],
    quality: torch.Tensor,
    negative_text: tuple[torch.Tensor, torch.Tensor] | None = None,
    negative_quality: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    num_inference_steps: int = 200,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    progress: bool = False,
    guidance_rescale: float = 0.0,
    guidance_interval: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Runs the sampler from pure noise to a clean latent.

    With guidance the prediction is ``neg + s * (pos - neg)`` (the paper's eq. 7 when the
    negative branch is the empty text with the low quality level; the released variant
    uses level 3; eq. 11 uses a negative prompt with the null level).

    Args:
        model: A :class:`~qamdt.models.transformer.QualityMDTTransformer`.
        scheduler: A diffusers sampling scheduler (DDIM, DPM-Solver++, ...).
        latents: ``[B, C, T, F]`` starting noise (already scaled to unit variance).
        text: Positive ``(states [B, L, D], mask [B, L])``.
        quality: ``[B]`` positive quality levels (0 = null; floats interpolate).
        negative_text: Negative branch text; None disables guidance.
        negative_quality: ``[B]`` negative branch levels.
        guidance_scale: ``s``; 1 (the default here) also disables the negative branch.
            Generation's scale comes from its settings
            (:data:`qamdt.generation.settings.DEFAULT_GUIDANCE_SCALE` by default).
        num_inference_steps: Sampler steps.
        generator: For the stochastic part of samplers (DDIM eta > 0, DDPM).
        eta: DDIM eta (the released code samples with 1.0).
        progress: Show a progress bar.
        guidance_rescale: See :func:`rescale_guidance` (0 turns it off).
        guidance_interval: ``(low, high)`` training timesteps: guidance is applied only at
            steps with ``low <= t <= high``; the others take the positive branch alone
            and skip the negative one (Kynkaeaenniemi et al. 2024, "Applying guidance in
            a limited interval improves sample and distribution quality"). None guides
            every step.

    Returns:
        ``[B, C, T, F]`` clean latents.
    """
    check_guidance_rescale(guidance_rescale)
    check_guidance_interval(guidance_interval)
    denoiser = GuidedDenoiser(
        model,
        scheduler,
        text,
        quality,
        negative_text,
        negative_quality,
        guidance_scale,
        guidance_rescale,
        guidance_interval,
    )
    # Timesteps stay on the CPU: the scheduler's lookups and the per-step facts of the
    # denoiser then never read a value back from the accelerator inside the loop.
    scheduler.set_timesteps(num_inference_steps)
    values = denoiser.prepare(scheduler.timesteps, latents)
    latents = latents * scheduler.init_noise_sigma
    step_kwargs = scheduler_step_kwargs(scheduler, generator, eta)
    steps = zip(scheduler.timesteps, values, strict=True)
    for t, value in tqdm(
        steps, total=len(values), disable=not progress, desc="sampling", leave=False
    ):
        prediction = denoiser(latents, t, value)
        latents = scheduler.step(prediction, t, latents, **step_kwargs).prev_sample
    return latents


def scheduler_step_kwargs(scheduler, generator: torch.Generator | None, eta: float) -> dict:
    """The keyword arguments of ``scheduler.step`` it accepts among ``generator`` and ``eta``."""
    step_kwargs = {}
    accepted = set(inspect.signature(scheduler.step).parameters)
    if "generator" in accepted:
        step_kwargs["generator"] = generator
    if "eta" in accepted:
        step_kwargs["eta"] = eta
    return step_kwargs


@dataclasses.dataclass(frozen=True)
class _Step:
    """What one sampling step needs besides the latents, made before the loop."""

    guide: bool
    timestep: torch.Tensor
    alpha_bar: torch.Tensor | None


class GuidedDenoiser:
    """One guided prediction per call: both branches in one batch, then eq. 7 / eq. 11.

    A model with ``prepare_conditioning`` (the QA-MDT transformer) gets the text
    projection, the cross-attention keys and values and the quality embeddings computed
    once, at the first :meth:`prepare` or call, instead of at every step.

    Args:
        model: The transformer.
        scheduler: The sampling scheduler (for ``scale_model_input`` and the rescale).
        text: Positive ``(states, mask)``.
        quality: ``[B]`` positive levels.
        negative_text: Negative branch text; None disables guidance.
        negative_quality: ``[B]`` negative levels.
        guidance_scale: ``s``; 1 also disables the negative branch.
        guidance_rescale: See :func:`rescale_guidance`.
        guidance_interval: See :func:`sample_latents`.
    """

    def __init__(
        self,
        model,
        scheduler,
        text: tuple[torch.Tensor, torch.Tensor],
        quality: torch.Tensor,
        negative_text: tuple[torch.Tensor, torch.Tensor] | None,
        negative_quality: torch.Tensor | None,
        guidance_scale: float,
        guidance_rescale: float = 0.0,
        guidance_interval: tuple[float, float] | None = None,
    ):
        self.model = model
        self.scheduler = scheduler
        self.guided = negative_text is not None and guidance_scale != 1.0
        self.states, self.mask = text
        self.quality = quality
        if self.guided:
            self.states, self.mask = concat_text(text, negative_text)
            self.quality = torch.cat([quality, negative_quality.to(quality.dtype)])
        self.guidance_scale = guidance_scale
        self.guidance_rescale = guidance_rescale
        self.guidance_interval = guidance_interval
        self._conditioning: dict[int, object] = {}
        self._steps: dict[float, _Step] = {}

    def prepare(self, timesteps: torch.Tensor, latents: torch.Tensor) -> list[float]:
        """Reads the timesteps once and makes every step's facts before the loop.

        Per step: whether it is guided (the guidance interval), the model's timestep
        batch on the latents' device, the cumulative alpha of the rescale; and once the
        model's shared conditioning (:meth:`QualityMDTTransformer.prepare_conditioning`,
        which also checks the levels).

        Args:
            timesteps: The scheduler's timesteps.
            latents: ``[B, C, T, F]`` latents of the shape the loop denoises.

        Returns:
            The timesteps as Python numbers, to pass to :meth:`__call__` with each step.
        """
        values = timesteps.tolist()
        for value in values:
            step = self._step(value, latents)
            self._prepared(len(step.timestep), latents)
        return values

    def _step(self, value: float, latents: torch.Tensor) -> _Step:
        step = self._steps.get(value)
        if step is None:
            guide = self.guided and _inside(value, self.guidance_interval)
            rows = 2 * len(latents) if guide else len(latents)
            alpha_bar = None
            if guide and self.guidance_rescale:
                alpha_bar = self.scheduler.alphas_cumprod[int(value)].to(latents.device)
            timestep = torch.full((rows,), value, device=latents.device)
            step = self._steps[value] = _Step(guide, timestep, alpha_bar)
        return step

    def _prepared(self, rows: int, latents: torch.Tensor):
        """The model's conditioning of the first ``rows`` rows, made at its first use.

        Made from those rows alone (not sliced from the guided batch's), so that every
        product has the batch size of the uncached model's and rounds as it does.
        """
        if not hasattr(self.model, "prepare_conditioning"):
            return None
        if rows not in self._conditioning:
            self._conditioning[rows] = self.model.prepare_conditioning(
                self.states[:rows],
                self.mask[:rows],
                self.quality[:rows],
                latent_size=tuple(latents.shape[2:]),
            )
        return self._conditioning[rows]

    def __call__(
        self, latents: torch.Tensor, t: torch.Tensor, value: float | None = None
    ) -> torch.Tensor:
        """The guided prediction for ``latents`` at timestep ``t``.

        ``value`` is ``t`` as a Python number (from :meth:`prepare`); without it ``t`` is
        read here, which waits for the device when ``t`` lives there.
        """
        scheduler, batch = self.scheduler, len(latents)
        step = self._step(float(t) if value is None else value, latents)
        guide = step.guide
        model_input = torch.cat([latents, latents]) if guide else latents
        model_input = scheduler.scale_model_input(model_input, t)
        rows = slice(None) if guide else slice(0, batch)
        conditioning = self._prepared(len(model_input), latents)
        if conditioning is not None:
            raw = self.model(model_input, step.timestep, None, conditioning=conditioning)
        else:
            raw = self.model(
                model_input, step.timestep, self.states[rows], self.mask[rows], self.quality[rows]
            )
        # A copy: a model compiled with CUDA graphs reuses its output memory at the next call.
        prediction = raw.to(torch.float32, copy=True)
        if guide:
            positive, negative = prediction.chunk(2)
            prediction = negative + self.guidance_scale * (positive - negative)
            if self.guidance_rescale:
                prediction = rescale_guidance(
                    prediction,
                    positive,
                    model_input[:batch].float(),
                    step.alpha_bar,
                    self.guidance_rescale,
                    scheduler.config.prediction_type,
                )
        return prediction
