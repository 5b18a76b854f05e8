"""The quality-aware masked diffusion transformer (QA-MDT).

One class, configured by its diffusers config:

* the ``[B, C, T, F]`` VAE latent is cut into (overlapping) patches (:mod:`.patchify`) and
  embedded; positions are 2D sin-cos vectors (the released code) or 2D rotary embeddings
  (the paper);
* a quality token (levels 1..5, index 0 the null level used for condition dropping) is
  prepended, never masked and without position;
* during training a share of the patch tokens is masked (ratio drawn per batch); ``N``
  encoder blocks see only the kept tokens, a side interpolator fills the masked places with
  a learned mask token and predicts them (paper eqs. 4-5), ``M`` decoder blocks run over the
  full sequence. At inference nothing is masked and the side interpolator is skipped;
* text enters through cross-attention in every block; the timestep through adaLN-single
  (one shared projection plus a learned per-block table, as released); U-ViT style long
  skips join the first and second half of the encoder.

The authors' released network (``configs/mdt/released.yaml``) differs from the paper's
design in a few places, each an option here: no norm before cross-attention, one linear
text projection, a skip from the embedded input into every decoder block, a learned
decoder position table, a sin-cos table with the frequency half first and scaled
positions, and the kept-token count rounded down.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import PixArtAlphaTextProjection, TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from qamdt.errors import ConfigError
from qamdt.models.attention import check_backend
from qamdt.models.blocks import CallConditioning, MDTBlock, QualityEmbedding, modulate
from qamdt.models.patchify import Patcher
from qamdt.models.positions import rope_2d, sincos_2d, with_identity_prefix
from qamdt.quality import NULL_LEVEL as NULL_QUALITY

POSITION_ENCODINGS = ("sincos", "rope")
SINCOS_LAYOUTS = ("time_freq", "freq_time_scaled")
TEXT_PROJECTIONS = ("mlp", "linear")
DECODER_POSITIONS = ("fixed", "learned")
KEEP_ROUNDINGS = ("round", "floor")


class QualityMDTTransformer(ModelMixin, ConfigMixin):
    """The QA-MDT denoiser: predicts noise (or v) for a noisy latent.

    Args:
        in_channels: Latent channels ``C``.
        sample_size: Default latent ``(T, F)``; any size works at run time, this one is
            reported by ``qamdt model info``.
        patch_size: ``(p_t, p_f)`` latent cells per patch (the paper's "1x4" is ``(4, 1)``).
        patch_overlap: ``(o_t, o_f)`` cells shared by neighbouring patches.
        hidden_size: Token width.
        num_heads: Attention heads.
        encoder_depth: ``N`` blocks that see only unmasked tokens.
        side_depth: Blocks of the side interpolator.
        decoder_depth: ``M`` blocks over the full sequence.
        mlp_ratio: MLP width over ``hidden_size``.
        text_dim: Width of the text encoder's states.
        num_quality_levels: Quality levels (5); index 0 is the null level.
        position_encoding: "sincos" (the released model) or "rope" (the paper).
        long_skips: U-ViT long skips between the two halves of the encoder.
        mask_ratio_range: ``[low, high)`` of the per-batch mask ratio in training.
        prediction_type: "epsilon" or "v_prediction"; recorded so samplers match training.
        attention_backend: "auto", "sdpa" or "xformers".
        quality_modulation: Also add the quality embedding to the timestep embedding, so
            the level modulates every block through adaLN as DiT's class label does (DiT
            found adaLN conditioning far stronger than in-context tokens). Off in the
            paper's model; on in the small ``embedded`` preset, whose short training
            otherwise barely learns the quality token.
        sincos_layout: Layout of the fixed sin-cos table: "time_freq" (time half first,
            integer grid positions) or "freq_time_scaled" (the released model: frequency
            half first, positions scaled by ``base / grid`` of ``sample_size``, where
            ``base`` is twice the time patches of ``sample_size``).
        text_projection: "mlp" (PixArt's two-layer projection) or "linear" (released).
        cross_attention_norm: Layer norm before each cross-attention (off in the released
            model).
        decoder_input_skip: Every decoder block also takes the embedded input (quality
            token included, before masking) through a linear skip, as released.
        decoder_position: What is added before the side interpolator and the decoder:
            "fixed" (the sin-cos table again; nothing with rope) or "learned" (a table over
            the ``sample_size`` grid, as released; cropped for smaller grids and
            interpolated for larger ones).
        mask_keep_rounding: Kept-token count of a masked pass: "round" or "floor" (the
            released ``int(N * (1 - r))``).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 8,
        sample_size: Sequence[int] = (256, 16),
        patch_size: Sequence[int] = (4, 1),
        patch_overlap: Sequence[int] = (0, 0),
        hidden_size: int = 1152,
        num_heads: int = 16,
        encoder_depth: int = 20,
        side_depth: int = 1,
        decoder_depth: int = 8,
        mlp_ratio: float = 4.0,
        text_dim: int = 1024,
        num_quality_levels: int = 5,
        position_encoding: str = "sincos",
        long_skips: bool = True,
        mask_ratio_range: Sequence[float] = (0.3, 0.5),
        prediction_type: str = "epsilon",
        attention_backend: str = "auto",
        quality_modulation: bool = False,
        sincos_layout: str = "time_freq",
        text_projection: str = "mlp",
        cross_attention_norm: bool = True,
        decoder_input_skip: bool = False,
        decoder_position: str = "fixed",
        mask_keep_rounding: str = "round",
    ):
        super().__init__()
        for name, value, known in (
            ("position_encoding", position_encoding, POSITION_ENCODINGS),
            ("sincos_layout", sincos_layout, SINCOS_LAYOUTS),
            ("text_projection", text_projection, TEXT_PROJECTIONS),
            ("decoder_position", decoder_position, DECODER_POSITIONS),
            ("mask_keep_rounding", mask_keep_rounding, KEEP_ROUNDINGS),
        ):
            if value not in known:
                raise ConfigError(f"{name}: unknown '{value}'; known: {list(known)}")
        if hidden_size % num_heads or (hidden_size // num_heads) % 4 or hidden_size % 4:
            raise ConfigError(
                f"hidden_size {hidden_size} / num_heads {num_heads}: need a head width "
                "divisible by 4 (2D positions)"
            )
        low, high = mask_ratio_range
        if not 0 <= low <= high < 1:
            raise ConfigError(
                f"mask_ratio_range {list(mask_ratio_range)}: need 0 <= low <= high < 1"
            )
        if encoder_depth < 1 or decoder_depth < 0 or side_depth < 1:
            raise ConfigError("need encoder_depth >= 1, side_depth >= 1, decoder_depth >= 0")
        backend = check_backend(attention_backend)
        self.patcher = Patcher(patch_size, patch_overlap)
        self.gradient_checkpointing = False

        self.patch_embed = nn.Linear(self.patcher.patch_dim(in_channels), hidden_size)
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(256, hidden_size)
        self.time_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))
        if text_projection == "mlp":
            self.text_proj = PixArtAlphaTextProjection(text_dim, hidden_size)
        else:
            self.text_proj = nn.Linear(text_dim, hidden_size)
        self.quality_embed = QualityEmbedding(num_quality_levels, hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.decoder_pos_embed = None
        if decoder_position == "learned":
            grid_t, grid_f = self.patcher.grid(*sample_size)
            self.decoder_pos_embed = nn.Parameter(torch.zeros(1, grid_t * grid_f, hidden_size))

        def block(long_skip: bool) -> MDTBlock:
            return MDTBlock(
                hidden_size, num_heads, mlp_ratio, long_skip, backend, cross_attention_norm
            )

        half = encoder_depth // 2
        self.encoder_blocks = nn.ModuleList(
            block(long_skips and i >= encoder_depth - half) for i in range(encoder_depth)
        )
        self.side_blocks = nn.ModuleList(block(False) for _ in range(side_depth))
        self.decoder_blocks = nn.ModuleList(block(decoder_input_skip) for _ in range(decoder_depth))

        self.final_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.final_scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)
        self.final_proj = nn.Linear(hidden_size, self.patcher.patch_dim(in_channels))
        self._initialize()

    def _initialize(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in (*self.encoder_blocks, *self.side_blocks, *self.decoder_blocks):
            nn.init.zeros_(block.cross_attn.proj.weight)
            nn.init.zeros_(block.cross_attn.proj.bias)
        nn.init.normal_(self.time_block[1].weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_2.weight, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.zeros_(self.final_proj.weight)
        nn.init.zeros_(self.final_proj.bias)

    # ------------------------------------------------------------------ shapes

    def grid(self, time: int, freq: int) -> tuple[int, int]:
        """Patch grid of a ``time x freq`` latent."""
        return self.patcher.grid(time, freq)

    def num_tokens(self, time: int, freq: int) -> int:
        """Sequence length for a ``time x freq`` latent, quality token included."""
        return self.patcher.num_tokens(time, freq) + 1

    # ------------------------------------------------------------------ forward

    def _run(self, block: MDTBlock, *args) -> torch.Tensor:
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(block, *args)
        return block(*args)

    def _positions(self, grid: tuple[int, int], device, dtype):
        config = self.config
        if config.position_encoding == "rope":
            return None, rope_2d(config.hidden_size // config.num_heads, grid, device)
        if config.sincos_layout == "time_freq":
            return sincos_2d(config.hidden_size, grid, device, dtype), None
        # The released table's scales come from its training size and stay fixed, so a
        # longer latent continues the same positions.
        base = config.sample_size[0] // config.patch_size[0] * 2
        trained = self.patcher.grid(*config.sample_size)
        scales = (base / trained[0], base / trained[1])
        return sincos_2d(config.hidden_size, grid, device, dtype, scales, freq_first=True), None

    def _decoder_positions(self, grid: tuple[int, int], position: torch.Tensor | None):
        """What is added to the patch tokens before the side interpolator and the decoder."""
        if self.decoder_pos_embed is None:
            return position
        table = self.decoder_pos_embed[0]
        trained = self.patcher.grid(*self.config.sample_size)
        if tuple(grid) == tuple(trained):
            return table
        table = table.reshape(*trained, -1)
        if grid[0] <= trained[0] and grid[1] <= trained[1]:
            return table[: grid[0], : grid[1]].reshape(grid[0] * grid[1], -1)
        resized = F.interpolate(
            table.permute(2, 0, 1)[None].float(), size=grid, mode="bilinear", align_corners=True
        )
        return resized[0].permute(1, 2, 0).reshape(grid[0] * grid[1], -1).to(table.dtype)

    def _all_positions(self, grid: tuple[int, int], device, dtype):
        """``(position, decoder_position, rope, full_rope)`` of a grid on ``device``."""
        position, rope = self._positions(grid, device, dtype)
        full_rope = None if rope is None else with_identity_prefix(*rope)
        return position, self._decoder_positions(grid, position), rope, full_rope

    def _condition(self, text_states, text_mask, quality_level, batch: int, device, dtype):
        """Projected text, its fixed mask and the quality embeddings ``[B, 1, hidden]``."""
        if text_mask is not None:
            text_mask = text_mask.to(device=device, dtype=torch.bool)
            # A row with no real token would give NaN attention; let it see its first token.
            text_mask = text_mask.clone()
            text_mask[:, 0] |= ~text_mask.any(dim=1)
        text = self.text_proj(text_states.to(device=device, dtype=dtype))
        if quality_level is None:
            quality_level = torch.full((batch,), NULL_QUALITY, dtype=torch.long, device=device)
        quality = self.quality_embed(torch.as_tensor(quality_level, device=device))[:, None]
        return text, text_mask, quality

    @torch.no_grad()
    def prepare_conditioning(
        self,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        quality_level: torch.Tensor | None = None,
        latent_size: tuple[int, int] | None = None,
    ) -> CallConditioning:
        """The conditioning a sampling call shares across its steps, computed once.

        The quality levels are checked here, so the steps read no value back from the
        device.

        Args:
            text_states: ``[B, L, text_dim]`` text-encoder states.
            text_mask: ``[B, L]``, True at real tokens (None: all real).
            quality_level: ``[B]`` levels (see :meth:`forward`).
            latent_size: ``(T, F)`` of the latents to be denoised: their position tables
                are made here too (a latent of another size gets its own at each call).

        Returns:
            A :class:`CallConditioning` for ``forward(..., conditioning=)``.

        Raises:
            ConfigError: If a quality level is out of range.
        """
        device, dtype = self.patch_embed.weight.device, self.patch_embed.weight.dtype
        text, mask, quality = self._condition(
            text_states, text_mask, quality_level, len(text_states), device, dtype
        )
        conditioning = CallConditioning(
            text,
            mask,
            quality,
            tuple(block.cross_attn.key_values(text) for block in self.encoder_blocks),
            tuple(block.cross_attn.key_values(text) for block in self.decoder_blocks),
        )
        if latent_size is not None:
            grid = self.grid(*latent_size)
            conditioning.positions[grid] = self._all_positions(grid, device, dtype)
        return conditioning

    def sample_mask_ratio(self, generator: torch.Generator | None = None) -> float:
        """A mask ratio drawn from ``mask_ratio_range`` (one per batch, as released)."""
        low, high = self.config.mask_ratio_range
        return low + (high - low) * float(torch.rand((), generator=generator))

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        quality_level: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        conditioning: CallConditioning | None = None,
    ) -> torch.Tensor:
        """Predicts the model target for noisy ``latents``.

        Args:
            latents: ``[B, C, T, F]`` noisy latents.
            timestep: ``[B]`` (or scalar) diffusion steps.
            text_states: ``[B, L, text_dim]`` text-encoder states.
            text_mask: ``[B, L]``, True at real tokens (None: all real).
            quality_level: ``[B]`` levels 1..L (0: null); float values interpolate.
                None means the null level.
            mask_ratio: Share of patch tokens hidden from the encoder (training); None or 0
                runs unmasked.
            generator: Seeds the choice of masked tokens.
            conditioning: The call's text, mask and levels prepared once by
                :meth:`prepare_conditioning` (``text_states``, ``text_mask`` and
                ``quality_level`` are then not read); None computes them here.

        Returns:
            ``[B, C, T, F]``.
        """
        batch, _, time, freq = latents.shape
        grid = self.grid(time, freq)
        device, dtype = latents.device, self.patch_embed.weight.dtype
        x = self.patch_embed(self.patcher.patchify(latents.to(dtype)))
        num_patches = x.shape[1]
        encoder_kv = decoder_kv = ()
        if conditioning is None:
            text, text_mask, quality = self._condition(
                text_states, text_mask, quality_level, batch, device, dtype
            )
            position, decoder_position, rope, full_rope = self._all_positions(grid, device, dtype)
        else:
            text, text_mask, quality = (
                conditioning.text,
                conditioning.text_mask,
                conditioning.quality,
            )
            encoder_kv, decoder_kv = (
                conditioning.encoder_key_values,
                conditioning.decoder_key_values,
            )
            tables = conditioning.positions.get(grid)
            if tables is None:
                tables = self._all_positions(grid, device, dtype)
            position, decoder_position, rope, full_rope = tables
        if position is not None:
            x = x + position

        timestep = torch.as_tensor(timestep, device=device)
        if timestep.dim() == 0:
            timestep = timestep.expand(batch)

        time_embedding = self.time_embed(self.time_proj(timestep).to(dtype))
        if self.config.quality_modulation:
            time_embedding = time_embedding + quality[:, 0].to(time_embedding.dtype)
        time_mod = self.time_block(time_embedding).view(batch, 6, -1)

        masked = None
        encoder_rope = full_rope
        input_skip = (
            torch.cat([quality.to(x.dtype), x], dim=1) if self.config.decoder_input_skip else None
        )
        kept_ids = None
        if mask_ratio is not None:  # checked here: an unmasked pass stays one graph
            kept_ids = kept_tokens(
                batch, num_patches, mask_ratio, self.config.mask_keep_rounding, generator, device
            )
        if kept_ids is not None:
            masked = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
            masked.scatter_(1, kept_ids, False)
            x = x.gather(1, kept_ids[..., None].expand(-1, -1, x.shape[-1]))
            if rope is not None:
                index = kept_ids[..., None].expand(-1, -1, rope[0].shape[-1])
                encoder_rope = with_identity_prefix(
                    *(table[None].expand(batch, -1, -1).gather(1, index) for table in rope)
                )

        x = torch.cat([quality.to(x.dtype), x], dim=1)
        skips = []
        depth = len(self.encoder_blocks)
        for i, block in enumerate(self.encoder_blocks):
            skip = skips.pop() if block.skip_linear is not None else None
            kv = encoder_kv[i] if encoder_kv else None
            x = self._run(block, x, time_mod, text, text_mask, encoder_rope, skip, kv)
            if self.config.long_skips and i < depth // 2:
                skips.append(x)

        if masked is not None:
            x = self._interpolate_masked(
                x, masked, kept_ids, decoder_position, time_mod, text, text_mask, full_rope
            )
        elif decoder_position is not None:
            x = torch.cat([x[:, :1], x[:, 1:] + decoder_position.to(x.dtype)], dim=1)

        for i, block in enumerate(self.decoder_blocks):
            kv = decoder_kv[i] if decoder_kv else None
            x = self._run(block, x, time_mod, text, text_mask, full_rope, input_skip, kv)

        shift, scale = (self.final_scale_shift_table[None] + time_embedding[:, None]).chunk(
            2, dim=1
        )
        x = self.final_proj(modulate(self.final_norm(x[:, 1:]), shift, scale))
        return self.patcher.unpatchify(x, time, freq)

    def _interpolate_masked(
        self,
        x: torch.Tensor,
        masked: torch.Tensor,
        kept_ids: torch.Tensor,
        position: torch.Tensor | None,
        time_mod: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """Side interpolator: mask tokens in the gaps, a few blocks, encoder output kept.

        ``position`` is the decoder position added to every patch token first.
        """
        batch, num_patches = masked.shape
        quality, kept = x[:, :1], x[:, 1:]
        full = self.mask_token.to(x.dtype).expand(batch, num_patches, -1).clone()
        full = full.scatter(1, kept_ids[..., None].expand(-1, -1, x.shape[-1]), kept)
        if position is not None:
            full = full + position.to(full.dtype)
        y = torch.cat([quality, full], dim=1)
        for block in self.side_blocks:
            y = self._run(block, y, time_mod, text, text_mask, rope)
        # Masked shortcut: the interpolator only fills the gaps; kept tokens pass through.
        patches = torch.where(masked[..., None], y[:, 1:], full)
        return torch.cat([y[:, :1], patches], dim=1)


@torch.compiler.disable
def kept_tokens(
    batch: int,
    num_patches: int,
    mask_ratio: float | None,
    rounding: str,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor | None:
    """The patch indices a masked pass keeps, ``[B, keep]`` in random order, or None.

    Left out of compiled graphs: the ratio changes every training batch and a generator
    cannot be traced, so a compiled forward would specialise on each ratio and recompile;
    the count it gives becomes a dynamic size instead.

    Args:
        batch: Rows.
        num_patches: Patch tokens per row.
        mask_ratio: Share hidden from the encoder; None or 0: no masking.
        rounding: The kept count, ``"round"`` or ``"floor"`` of ``N * (1 - ratio)``.
        generator: Seeds the choice (drawn on the CPU).
        device: Where the indices go.
    """
    if not mask_ratio:
        return None
    kept_share = num_patches * (1 - mask_ratio)
    keep = max(1, int(kept_share) if rounding == "floor" else int(round(kept_share)))
    noise = torch.rand(batch, num_patches, generator=generator, device="cpu")
    return noise.argsort(dim=1)[:, :keep].to(device)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (works on meta-device models)."""
    return sum(p.numel() for p in model.parameters())


def model_config_keys() -> list[str]:
    """Names of the transformer's config fields."""
    parameters = inspect.signature(QualityMDTTransformer.__init__).parameters
    return [name for name in parameters if name != "self"]


def check_model_config(values: dict, where: str = "model") -> None:
    """Raises ``ConfigError`` naming keys that are not transformer config fields."""
    unknown = sorted(set(values) - set(model_config_keys()))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {model_config_keys()}")
