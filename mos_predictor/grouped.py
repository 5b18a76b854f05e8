"""Training on groups of versions of one excerpt: batches and the ranking term.

A group is ``group_size`` versions of the same real-music excerpt (the clean recording
and degraded ones). Within a group nothing but quality differs, so the pairwise ranking
term (RankNet's logistic loss on every pair whose reference qualities differ) teaches the
model to order quality rather than to recognise sources; the regression term keeps the
scores on the MOS scale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from scipy import stats

from mos_predictor.real_music import check_source_allowed, is_validation_file, plan_excerpts
from mos_predictor.versions import ContentSettings, VersionPool, build_version_pool
from qamdt.degradations import ChainSettings, check_kinds
from qamdt.errors import ConfigError, QamdtError


class GroupBatches:
    """Endless seeded batches of groups drawn from a :class:`VersionPool`.

    Excerpts are visited in a fresh seeded order each pass; each group takes the clean
    version with probability ``clean_share`` and fills up with distinct degraded ones.

    Args:
        pool: The versions.
        groups_per_batch: Excerpts per batch.
        group_size: Versions per excerpt (at most the pool's versions).
        seed: Seed of the order and the choice of versions.
        clean_share: Odds that a group contains the clean version.
        kinds: Degradation kinds whose severity each version's ``"kinds"`` row holds.
        rank_only: Degradation kinds whose versions are marked ``"regress"`` False.
    """

    def __init__(
        self,
        pool: VersionPool,
        groups_per_batch: int,
        group_size: int,
        seed: int,
        clean_share: float = 0.5,
        kinds: tuple[str, ...] = (),
        rank_only: tuple[str, ...] = (),
    ):
        versions = pool.waves.shape[1]
        if not 2 <= group_size <= versions:
            raise ValueError(f"group_size must be in [2, {versions}] (the pool's versions)")
        self.pool = pool
        self.groups_per_batch = groups_per_batch
        self.group_size = group_size
        self.clean_share = clean_share
        self.seed = seed
        self.kinds = {kind: i for i, kind in enumerate(kinds)}
        self.rank_only = set(rank_only)
        self.set_epoch(0)

    @classmethod
    def for_config(cls, pool: VersionPool, config) -> GroupBatches:
        """The batches a ``MosTrainConfig`` asks for: its group counts, seed and clean share."""
        kinds = config.training_kinds() if config.kind_weight > 0 else ()
        return cls(
            pool,
            config.groups_per_batch,
            config.group_size,
            config.seed,
            config.real_clean_share,
            kinds,
            config.rank_only_kinds,
        )

    def set_epoch(self, epoch: int) -> None:
        """Restarts the draws from a state set by the seed and ``epoch`` alone.

        A resumed run then draws what an uninterrupted one would.
        """
        self.rng = np.random.default_rng([self.seed, 7, epoch])
        self.order: list[int] = []

    def _draw_group(self) -> tuple[int, list[int]]:
        versions = self.pool.waves.shape[1]
        if not self.order:
            self.order = self.rng.permutation(len(self.pool)).tolist()
        n = self.order.pop()
        if self.rng.random() < self.clean_share:
            chosen = [0, *self.rng.choice(np.arange(1, versions), self.group_size - 1, False)]
        else:
            chosen = self.rng.choice(np.arange(1, versions), self.group_size, False).tolist()
        return n, chosen

    def excerpts_for_epochs(self, epochs: Iterable[int], batches: int) -> list[int]:
        """The excerpts that ``batches`` batches of each of ``epochs`` draw from.

        They depend only on the seed, the epochs and the pool's size, so they hold for a
        fresh draw of versions of the same excerpts. Leaves the draws at the start of the
        first of ``epochs``.

        Args:
            epochs: The epochs (0-based).
            batches: Batches an epoch takes.

        Returns:
            Sorted excerpt indices.
        """
        epochs, used = list(epochs), set()
        for epoch in epochs:
            self.set_epoch(epoch)
            used |= {self._draw_group()[0] for _ in range(batches * self.groups_per_batch)}
        if epochs:
            self.set_epoch(epochs[0])
        return sorted(used)

    def next(self) -> dict[str, torch.Tensor]:
        """The next batch.

        Returns:
            ``{"wave": (G*K, S) float32, "mos": (G*K,) float32, "group": (G*K,) int64,
            "kinds": (G*K, len(kinds)) float32, "regress": (G*K,) bool}``: the severity
            of each kind in each version (0 where absent), and whether the version
            trains the regression term (no ``rank_only`` kind in its chain).
        """
        waves, targets, groups, kinds, regress = [], [], [], [], []
        for g in range(self.groups_per_batch):
            n, chosen = self._draw_group()
            if self.pool.made is not None and not self.pool.made[n]:
                raise RuntimeError(f"excerpt {n} has no versions in this pool")
            waves.append(self.pool.waves[n, chosen].astype(np.float32))
            targets.append(self.pool.targets[n, chosen])
            groups += [g] * len(chosen)
            for v in chosen:
                chain = self.pool.chains[n][v]
                regress.append(not any(step["type"] in self.rank_only for step in chain))
                row = np.zeros(len(self.kinds), dtype=np.float32)
                for step in chain:
                    if step["type"] in self.kinds:
                        i = self.kinds[step["type"]]
                        row[i] = max(row[i], float(step["severity"]))
                kinds.append(row)
        return {
            "wave": torch.from_numpy(np.concatenate(waves)),
            "mos": torch.from_numpy(np.concatenate(targets).astype(np.float32)),
            "group": torch.tensor(groups, dtype=torch.int64),
            "kinds": torch.from_numpy(np.stack(kinds)),
            "regress": torch.tensor(regress, dtype=torch.bool),
        }


def pairwise_rank_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    groups: torch.Tensor,
    sharpness: float = 2.0,
    min_gap: float = 0.1,
    across: bool = False,
) -> torch.Tensor:
    """RankNet's logistic loss over pairs inside each group (or across groups).

    For every pair ``(i, j)`` of one group with ``target_i - target_j > min_gap`` the loss
    is ``softplus(-sharpness * (pred_i - pred_j))``; the mean is returned (0 with no pair).

    Args:
        pred: ``(B,)`` predicted scores.
        target: ``(B,)`` reference qualities.
        groups: ``(B,)`` group ids.
        sharpness: Scale of score differences, per MOS point.
        min_gap: Pairs closer than this in reference quality are not ranked.
        across: Rank the pairs of different groups instead (other music).

    Returns:
        A scalar.
    """
    ordered = (target[:, None] - target[None, :]) > min_gap
    same = groups[:, None] == groups[None, :]
    pairs = ordered & (~same if across else same)
    if not bool(pairs.any()):
        return pred.sum() * 0.0
    gaps = pred[:, None] - pred[None, :]
    return torch.nn.functional.softplus(-sharpness * gaps[pairs]).mean()


def centred_difference_loss(
    pred: torch.Tensor, target: torch.Tensor, groups: torch.Tensor
) -> torch.Tensor:
    """Squared error of scores and targets taken from their own group's mean.

    ``mean_i ((p_i - mean_g(p)) - (t_i - mean_g(t)))^2`` over every row, ``g`` its group:
    the size of each step between versions of one excerpt, apart from where the excerpt's
    music puts its mean (which the ranking term, rewarding order only, leaves free).

    Args:
        pred: ``(B,)`` predicted scores.
        target: ``(B,)`` reference qualities.
        groups: ``(B,)`` group ids.

    Returns:
        A scalar.
    """
    same = (groups[:, None] == groups[None, :]).to(pred.dtype)
    share = same / same.sum(dim=1, keepdim=True)
    return ((pred - share @ pred) - (target - share @ target)).square().mean()


def score_pool(model, pool: VersionPool, batch_size: int = 16) -> np.ndarray:
    """p-MOS of every version in a pool, ``(N, V)``."""
    flat = pool.waves.reshape(-1, pool.waves.shape[-1]).astype(np.float32)
    scores = model.predict(list(flat), model.config.sample_rate, batch_size=batch_size)
    return np.array([s["omq"] for s in scores]).reshape(pool.targets.shape)


def pool_metrics(pred: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """SRCC over all versions, the mean SRCC within excerpts, and the clean versions' mean.

    Args:
        pred: ``(N, V)`` predicted scores.
        targets: ``(N, V)`` reference qualities (version 0 clean).

    Returns:
        ``{"srcc", "within_srcc", "lcc", "clean_mean", "count"}``.
    """
    flat_p, flat_t = pred.ravel(), targets.ravel()
    within = [stats.spearmanr(p, t)[0] for p, t in zip(pred, targets, strict=True) if np.ptp(t) > 0]
    within = [w for w in within if np.isfinite(w)]
    return {
        "srcc": float(stats.spearmanr(flat_p, flat_t)[0]),
        "within_srcc": float(np.mean(within)) if within else float("nan"),
        "lcc": float(stats.pearsonr(flat_p, flat_t)[0]),
        "clean_mean": float(pred[:, 0].mean()),
        "count": int(flat_p.size),
    }


def check_real_settings(config, where: str | None = None) -> None:
    """Checks the real-music settings of a ``MosTrainConfig``.

    Raises:
        ConfigError: On a reserved or doubly used source, an unknown kind, or a bad count,
            naming the setting and ``where`` (when given).
    """
    at = f"{where}: " if where else ""
    try:
        check_kinds(config.holdout_families, "holdout_families")
        check_kinds(config.rank_only_kinds, "rank_only_kinds")
        for source in config.real_sources + config.holdout_sources:
            check_source_allowed(source)
    except (ValueError, ConfigError) as error:
        raise ConfigError(f"{at}{error}") from None
    both = sorted(set(config.real_sources) & set(config.holdout_sources))
    if both:
        raise ConfigError(f"{at}source(s) {both} are both trained on and held out")
    if config.real_sources and not config.training_kinds():
        raise ConfigError(f"{at}holdout_families leaves no degradation kind to train on")
    for name in ("real_excerpts_per_file", "groups_per_batch", "real_workers"):
        if getattr(config, name) < 1:
            raise ConfigError(f"{at}{name} must be >= 1, got {getattr(config, name)}")
    if not 2 <= config.group_size <= config.real_versions:
        raise ConfigError(
            f"{at}need 2 <= group_size <= real_versions, got {config.group_size} and "
            f"{config.real_versions}"
        )
    if config.real_files_per_source is not None and config.real_files_per_source < 1:
        raise ConfigError(f"{at}real_files_per_source must be >= 1 (or null)")
    if not 0 <= config.real_mix_share <= 1:
        raise ConfigError(f"{at}real_mix_share must be in [0, 1], got {config.real_mix_share}")
    if not 0 <= config.real_speed_range < 0.5:
        raise ConfigError(
            f"{at}real_speed_range must be in [0, 0.5), got {config.real_speed_range}"
        )
    if not 0 <= config.real_tilt_range <= 6:
        raise ConfigError(f"{at}real_tilt_range must be in [0, 6], got {config.real_tilt_range}")
    if not 0 <= config.real_clean_share <= 1:
        raise ConfigError(f"{at}real_clean_share must be in [0, 1], got {config.real_clean_share}")
    if config.real_min_kbps_per_channel is not None and config.real_min_kbps_per_channel < 0:
        raise ConfigError(f"{at}real_min_kbps_per_channel must be >= 0 (or null)")
    for name in ("rank_weight", "cross_rank_weight", "cross_rank_gap", "centred_weight",
                 "kind_weight", "real_valid_every", "real_refresh_epochs"):  # fmt: skip
        if getattr(config, name) < 0:
            raise ConfigError(f"{at}{name} must be >= 0, got {getattr(config, name)}")


def _plan(config, model_config, draw: int, unreadable=None, skipped=None) -> list:
    return plan_excerpts(
        config.real_sources,
        config.real_excerpts_per_file,
        model_config.window_seconds,
        config.seed,
        config.real_files_per_source,
        failures=unreadable,
        min_kbps_per_channel=config.real_min_kbps_per_channel,
        skipped=skipped,
        draw=draw,
    )


def content_settings(config) -> ContentSettings:
    """The content changes of a ``MosTrainConfig``'s training excerpts."""
    return ContentSettings(config.real_mix_share, config.real_speed_range, config.real_tilt_range)


def build_real_pools(config, model_config, progress: bool, skipped: list[str] | None = None):
    """Degraded versions of the real-music excerpts: a training pool and a validation pool.

    Files go to validation by name hash (one in ``real_valid_every``); both pools draw
    chains from the training kinds only.

    Args:
        config: A ``MosTrainConfig`` with ``real_sources``.
        model_config: The model's ``MosModelConfig`` (rate and window length).
        progress: Show a progress bar.
        skipped: When given, the files below ``real_min_kbps_per_channel`` are appended.

    Returns:
        ``(train_pool, valid_pool)``; the validation pool is None without validation files.

    Raises:
        QamdtError: If every file went to validation.
    """
    unreadable: list[str] = []
    excerpts = _plan(config, model_config, 0, unreadable, skipped)
    settings = ChainSettings(kinds=config.training_kinds())
    rate = model_config.sample_rate
    pools = []
    for valid in (False, True):
        chosen = [e for e in excerpts
                  if is_validation_file(e.path, config.real_valid_every) == valid]  # fmt: skip
        pools.append(
            build_version_pool(
                chosen,
                rate,
                config.real_versions,
                settings,
                config.seed + int(valid),
                config.real_workers,
                progress,
                content=ContentSettings() if valid else content_settings(config),
            )  # fmt: skip
            if chosen
            else None
        )
    if pools[0] is not None:
        pools[0].failures[:0] = unreadable
    if pools[0] is None:
        raise QamdtError(f"real_sources {list(config.real_sources)}: every file went to "
                         "validation; lower real_valid_every")  # fmt: skip
    return pools[0], pools[1]


def draw_epochs(config, epoch: int) -> range:
    """``epoch`` and the later epochs that train on the same draw of versions.

    Empty when versions are never drawn afresh (``real_refresh_epochs`` 0).
    """
    every = config.real_refresh_epochs
    end = epoch if every <= 0 else (epoch // every + 1) * every
    return range(epoch, min(end, config.epochs))


def refresh_train_pool(
    pool: VersionPool,
    config,
    model_config,
    epoch: int,
    progress: bool,
    plan: Callable[[range], Sequence[int]] | None = None,
):
    """The training pool for ``epoch``: its excerpts with the versions of their draw.

    With ``real_refresh_epochs`` ``R > 0``, epochs ``[kR, (k + 1)R)`` train on draw ``k``
    of degraded versions; draw 0 is the pool :func:`build_real_pools` made.

    Args:
        pool: The current training pool.
        config: The ``MosTrainConfig``.
        model_config: The model's ``MosModelConfig``.
        epoch: The epoch about to start (0-based).
        progress: Show a progress bar.
        plan: Given the epochs that train on a fresh draw (:func:`draw_epochs`), the
            excerpts they use (:meth:`GroupBatches.excerpts_for_epochs`): only their
            versions are made, and only when a draw is due (ignored with
            ``real_fresh_positions``, whose excerpts change); None: all.

    Returns:
        ``pool`` itself when its draw is the epoch's, else a new pool of the same excerpts
        (with ``real_fresh_positions``, of excerpts at the draw's positions in the same
        files).
    """
    if config.real_refresh_epochs <= 0:
        return pool
    draw = epoch // config.real_refresh_epochs
    if draw == pool.draw:
        return pool
    excerpts, epochs = pool.excerpts, draw_epochs(config, epoch)
    if config.real_fresh_positions:
        excerpts = [e for e in _plan(config, model_config, draw, [])
                    if not is_validation_file(e.path, config.real_valid_every)]  # fmt: skip
    fresh = build_version_pool(
        excerpts,
        model_config.sample_rate,
        config.real_versions,
        ChainSettings(kinds=config.training_kinds()),
        config.seed,
        config.real_workers,
        progress,
        draw=draw,
        content=content_settings(config),
        only=None if config.real_fresh_positions or plan is None else plan(epochs) or None,
    )
    fresh.failures[:0] = pool.failures
    return fresh
