import numpy as np
import pytest
import torch

from qamdt.diffusion.conditioning import drop_conditions
from qamdt.diffusion.loss import diffusion_loss, min_snr_weights, training_target
from qamdt.diffusion.sampling import concat_text, rescale_guidance, sample_latents
from qamdt.diffusion.schedule import (
    SAMPLERS,
    DiffusionConfig,
    build_sampler,
    build_train_scheduler,
    signal_to_noise,
)
from qamdt.errors import ConfigError


def test_training_schedule_is_the_ldm_linear_schedule():
    scheduler = build_train_scheduler(DiffusionConfig())
    betas = np.linspace(0.0015**0.5, 0.0195**0.5, 1000) ** 2
    assert np.allclose(scheduler.betas.numpy(), betas, atol=1e-9)
    alphas_cumprod = np.cumprod(1 - betas)
    assert np.allclose(scheduler.alphas_cumprod.numpy(), alphas_cumprod, atol=1e-6)
    assert scheduler.config.prediction_type == "epsilon"


def test_min_snr_weights_by_hand():
    snr = torch.tensor([0.5, 5.0, 20.0])
    assert torch.allclose(min_snr_weights(snr, 5.0), torch.tensor([1.0, 1.0, 0.25]))
    assert torch.allclose(
        min_snr_weights(snr, 5.0, "v_prediction"), torch.tensor([0.5 / 1.5, 5 / 6, 5 / 21])
    )
    assert torch.equal(min_snr_weights(snr, None), torch.ones(3))


def test_loss_is_weighted_mse():
    scheduler = build_train_scheduler(DiffusionConfig())
    t = torch.tensor([0, 999])
    prediction, target = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    snr = signal_to_noise(scheduler, t)
    expected = min_snr_weights(snr, 5.0).mean()
    assert torch.isclose(diffusion_loss(prediction, target, t, scheduler, 5.0), expected)
    assert diffusion_loss(prediction, target, t, scheduler, None) == 1.0


def test_v_prediction_target():
    scheduler = build_train_scheduler(DiffusionConfig(prediction_type="v_prediction"))
    x0, noise, t = torch.randn(2, 1, 2, 2), torch.randn(2, 1, 2, 2), torch.tensor([10, 500])
    a = scheduler.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1)
    s = (1 - scheduler.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(training_target(scheduler, x0, noise, t), a * noise - s * x0, atol=1e-6)


def test_unknown_diffusion_settings_are_named():
    with pytest.raises(ConfigError, match="beta_strat"):
        DiffusionConfig.from_dict({"beta_strat": 0.1})
    with pytest.raises(ConfigError, match="loss_mode"):
        DiffusionConfig(loss_mode="both")
    with pytest.raises(ConfigError, match="scheduler"):
        build_sampler("heun2", build_train_scheduler(DiffusionConfig()).config)


def test_condition_drop_is_per_sample_and_seeded():
    captions = [f"c{i}" for i in range(4000)]
    levels = torch.full((4000,), 4)
    g = torch.Generator().manual_seed(0)
    out, new_levels, text_dropped, quality_dropped = drop_conditions(captions, levels, 0.1, 0.2, g)
    assert abs(text_dropped.float().mean() - 0.1) < 0.02
    assert abs(quality_dropped.float().mean() - 0.2) < 0.02
    assert [c == "" for c in out] == text_dropped.tolist()
    assert torch.equal(new_levels == 0, quality_dropped)
    # Independent draws: some samples lose only one of the two conditions.
    assert (text_dropped & ~quality_dropped).any() and (quality_dropped & ~text_dropped).any()
    again = drop_conditions(captions, levels, 0.1, 0.2, torch.Generator().manual_seed(0))
    assert again[0] == out
    assert levels.eq(4).all()


class Linear(torch.nn.Module):
    """A toy denoiser whose output depends on every conditioning input."""

    def forward(self, x, t, states, mask, quality):
        text = (states * mask[..., None]).sum((1, 2))
        return 0.1 * x + (text + quality.float())[:, None, None, None] * 0.01


def test_guidance_combines_both_branches_in_one_batch():
    calls = []

    class Recording(Linear):
        def forward(self, x, t, states, mask, quality):
            calls.append(x.shape[0])
            return super().forward(x, t, states, mask, quality)

    text = (torch.ones(1, 3, 2), torch.ones(1, 3, dtype=torch.bool))
    negative = (torch.zeros(1, 2, 2), torch.ones(1, 2, dtype=torch.bool))
    noise = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    sampler = build_sampler("ddim", build_train_scheduler(DiffusionConfig()).config)
    guided = sample_latents(
        Recording(),
        sampler,
        noise,
        text,
        torch.tensor([5]),
        negative,
        torch.tensor([1]),
        guidance_scale=3.0,
        num_inference_steps=4,
    )
    assert calls == [2, 2, 2, 2]
    # By hand: eps = neg + s (pos - neg) with this linear toy model.
    sampler2 = build_sampler("ddim", build_train_scheduler(DiffusionConfig()).config)
    sampler2.set_timesteps(4)
    x = noise.clone()
    for t in sampler2.timesteps:
        pos = 0.1 * x + (6 + 5) * 0.01
        neg = 0.1 * x + (0 + 1) * 0.01
        x = sampler2.step(neg + 3.0 * (pos - neg), t, x).prev_sample
    assert torch.allclose(guided, x, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_guidance_rescale_matches_the_clean_latent_spread(prediction_type):
    g = torch.Generator().manual_seed(0)
    sample, positive, negative = (torch.randn(3, 2, 4, 4, generator=g) for _ in range(3))
    guided = negative + 7.0 * (positive - negative)
    alpha_bar = torch.tensor(0.3)
    a, b = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()

    def clean(p):
        return (sample - b * p) / a if prediction_type == "epsilon" else a * sample - b * p

    full = rescale_guidance(guided, positive, sample, alpha_bar, 1.0, prediction_type)
    dims = (1, 2, 3)
    assert torch.allclose(clean(full).std(dim=dims), clean(positive).std(dim=dims), atol=1e-5)
    # The rescaled clean latent points the guided one's way.
    cosine = torch.nn.functional.cosine_similarity(clean(full).flatten(1), clean(guided).flatten(1))
    assert torch.allclose(cosine, torch.ones(3), atol=1e-5)
    half = rescale_guidance(guided, positive, sample, alpha_bar, 0.5, prediction_type)
    assert torch.allclose(clean(half), 0.5 * clean(full) + 0.5 * clean(guided), atol=1e-5)
    assert rescale_guidance(guided, positive, sample, alpha_bar, 0.0) is guided


def test_guidance_rescale_out_of_range_is_refused():
    text = (torch.ones(1, 3, 2), torch.ones(1, 3, dtype=torch.bool))
    sampler = build_sampler("ddim", build_train_scheduler(DiffusionConfig()).config)
    with pytest.raises(ValueError, match="guidance_rescale"):
        sample_latents(
            Linear(), sampler, torch.zeros(1, 1, 4, 4), text, torch.tensor([5]),
            text, torch.tensor([1]), guidance_rescale=1.5,
        )  # fmt: skip


def test_guidance_interval_guides_only_the_steps_inside_it():
    text = (torch.ones(1, 3, 2), torch.ones(1, 3, dtype=torch.bool))
    negative = (torch.zeros(1, 2, 2), torch.ones(1, 2, dtype=torch.bool))
    noise = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    config = build_train_scheduler(DiffusionConfig()).config
    calls = []

    class Recording(Linear):
        def forward(self, x, t, states, mask, quality):
            calls.append((int(t[0]), x.shape[0], states.shape[0], quality.shape[0]))
            return super().forward(x, t, states, mask, quality)

    def run(interval, model=None):
        return sample_latents(
            model or Linear(), build_sampler("ddim", config), noise, text, torch.tensor([5]),
            negative, torch.tensor([1]), guidance_scale=3.0, num_inference_steps=4,
            guidance_interval=interval,
        )  # fmt: skip

    guided = run(None, Recording())
    steps = [t for t, *_ in calls]
    assert steps == [750, 500, 250, 0]
    calls.clear()
    inside = run((0, 600), Recording())
    # Steps above 600 run the positive branch alone: one row, not two.
    assert [rows for _, *rows in calls] == [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert torch.allclose(run((0, 1000)), guided)
    assert not torch.allclose(inside, guided)
    # An interval holding no step is sampling without guidance.
    unguided = sample_latents(
        Linear(), build_sampler("ddim", config), noise, text, torch.tensor([5]),
        num_inference_steps=4,
    )  # fmt: skip
    assert torch.allclose(run((900, 1000)), unguided)
    # By hand: the first step takes the positive prediction, the rest the guided one.
    sampler = build_sampler("ddim", config)
    sampler.set_timesteps(4)
    x = noise.clone()
    for t in sampler.timesteps:
        pos = 0.1 * x + (6 + 5) * 0.01
        neg = 0.1 * x + (0 + 1) * 0.01
        x = sampler.step(pos if t > 600 else neg + 3.0 * (pos - neg), t, x).prev_sample
    assert torch.allclose(inside, x, atol=1e-6)


@pytest.mark.parametrize("interval", [(800, 0), (-1, 500), (100,)])
def test_bad_guidance_interval_is_refused(interval):
    text = (torch.ones(1, 3, 2), torch.ones(1, 3, dtype=torch.bool))
    sampler = build_sampler("ddim", build_train_scheduler(DiffusionConfig()).config)
    with pytest.raises(ValueError, match="guidance_interval"):
        sample_latents(
            Linear(), sampler, torch.zeros(1, 1, 4, 4), text, torch.tensor([5]),
            text, torch.tensor([1]), guidance_interval=interval,
        )  # fmt: skip


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_runs_and_is_seeded(name):
    text = (torch.ones(2, 3, 2), torch.ones(2, 3, dtype=torch.bool))
    sampler = build_sampler(name, build_train_scheduler(DiffusionConfig()).config)

    def run():
        noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(3))
        return sample_latents(
            Linear(),
            sampler,
            noise,
            text,
            torch.tensor([1, 5]),
            text,
            torch.tensor([0, 0]),
            guidance_scale=2.0,
            num_inference_steps=5,
            generator=torch.Generator().manual_seed(1),
            eta=1.0,
        )

    first = run()
    assert torch.isfinite(first).all()
    assert torch.equal(first, run())


def test_concat_text_pads_the_shorter_batch():
    a = (torch.ones(1, 2, 3), torch.ones(1, 2, dtype=torch.bool))
    b = (torch.ones(2, 4, 3), torch.ones(2, 4, dtype=torch.bool))
    states, mask = concat_text(a, b)
    assert states.shape == (3, 4, 3) and mask[0].tolist() == [True, True, False, False]
