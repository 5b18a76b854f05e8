"""Job-array parts of a manifest stage: ``--shard I/N`` runs, and merging them.

Part ``I`` of ``N`` holds the rows whose position in the manifest (0-based, blank lines
not counted) is ``I`` modulo ``N``: every part is known from the manifest alone, parts
differ in size by at most one row, and each part keeps the manifest's order, so the merge
is one streaming pass.

A part run copies its rows into ``NAME.STAGE-partIofN.jsonl`` beside the manifest (a
state file ``NAME.STAGE-partIofN.state.json`` records the stage, model, settings, owned
fields, the part and whether it is complete) and then runs the stage on that file as on
any manifest, inside a :class:`~qamdt.manifest.stage_state.StageRun`: its own lock,
resume from a kill, local processes under ``accelerate launch``. The manifest itself is
not touched, so any number of parts run at once. :func:`merge_parts` (``qamdt manifest
merge``) checks that the parts are complete, of one stage, model and settings and cover
``0..N-1``, then copies their owned fields into the manifest.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from qamdt.errors import ConfigError, QamdtError
from qamdt.json_files import atomic_path, read_json_object, write_json
from qamdt.manifest.reading import _scan
from qamdt.manifest.shards import merge_manifests
from qamdt.manifest.stage_state import (
    _stderr,
    manifest_lock,
    real_manifest,
    shard_state_path,
)

_PART = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


def parse_part(text: str, name: str = "--shard") -> tuple[int, int]:
    """``(I, N)`` from ``"I/N"`` (0 <= I < N).

    Raises:
        ConfigError: Naming the argument, for anything else.
    """
    match = _PART.fullmatch(str(text))
    if match:
        index, count = int(match.group(1)), int(match.group(2))
        if count >= 1 and 0 <= index < count:
            return index, count
    raise ConfigError(
        f"{name}: expected I/N with 0 <= I < N (part I of N, counted from 0), got {text!r}"
    )


def in_part(position: int, part: tuple[int, int] | None) -> bool:
    """Whether the row at ``position`` (0-based) belongs to ``part`` (None: every row)."""
    return part is None or position % part[1] == part[0]


def part_path(manifest: Path, stage: str, part: tuple[int, int]) -> Path:
    """The part file of ``stage`` beside the manifest."""
    return manifest.with_name(f"{manifest.stem}.{stage}-part{part[0]}of{part[1]}.jsonl")


def prepare_part(
    manifest: str | os.PathLike,
    identity: dict[str, Any],
    part: tuple[int, int],
    resume_anyway: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The part file of a ``--shard I/N`` run, written from the manifest when needed.

    A part file whose state matches ``identity`` is kept (a resumed part); one of another
    model or settings is written again, unless ``resume_anyway``.

    Args:
        manifest: The manifest (a link is followed).
        identity: The stage's identity (``StageRun.identity``: stage, model, settings,
            fields).
        part: ``(I, N)``.
        resume_anyway: Keep a part file of another model or settings.
        log: Where messages go.

    Returns:
        The part file.
    """
    log = log or _stderr
    manifest = real_manifest(manifest)
    path = part_path(manifest, identity["stage"], part)
    wanted = {**identity, "part": list(part), "base": manifest.name}
    state = shard_state_path(path)
    with manifest_lock(path, log):
        found = read_json_object(state) if state.is_file() else {}
        found = {k: v for k, v in found.items() if k != "complete"}
        if path.is_file() and found == wanted:
            return path
        if path.is_file():
            keys = [k for k in wanted if found.get(k) != wanted[k]] or ["state file"]
            if resume_anyway:
                log(f"{path.name}: a different {' and '.join(keys)}; kept (resume anyway)")
                write_json(state, {**wanted, "complete": False})
                return path
            log(f"{path.name}: a different {' and '.join(keys)}; written again")
        _write_part(manifest, path, part)
        write_json(state, {**wanted, "complete": False})
    return path


def stage_target(
    manifest: str | os.PathLike,
    identity: dict[str, Any],
    part: tuple[int, int] | None,
    state=None,
    resume_anyway: bool = False,
) -> Path:
    """The file a stage runs on: the manifest, or (``part`` given) its part file.

    The main process writes the part file; the others wait for it.
    """
    if part is None:
        return real_manifest(manifest)
    path = part_path(real_manifest(manifest), identity["stage"], part)
    if state is None or state.is_main_process:
        path = prepare_part(manifest, identity, part, resume_anyway)
    if state is not None:
        state.wait_for_everyone()
    return path


def _write_part(manifest: Path, path: Path, part: tuple[int, int]) -> None:
    """Copies the part's lines as they are (same folder: paths keep their meaning)."""
    with (
        atomic_path(path, durable=True) as temporary,
        open(temporary, "wb") as out,
        open(manifest, "rb") as source,
    ):
        # Every row is validated (ids unique over the whole manifest); the part's rows are
        # then copied byte for byte.
        scan = _scan(manifest, validate=True, on_truncated=None)
        for position, (_, _, offset) in enumerate(scan):
            if in_part(position, part):
                source.seek(offset)
                line = source.readline()
                out.write(line if line.endswith(b"\n") else line + b"\n")


def finish_part(path: Path, state=None) -> None:
    """Marks a part file complete (its stage ran to the end); the main process writes."""
    if state is None or state.is_main_process:
        file = shard_state_path(path)
        write_json(file, {**read_json_object(file), "complete": True})


def read_part_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """A part file's state, or None when the file is not a part (no part state file)."""
    state = shard_state_path(Path(path))
    if not state.is_file():
        return None
    values = read_json_object(state)
    return values if "part" in values else None


def merge_parts(
    parts: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    base: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Copies the owned fields of complete ``--shard`` parts into the manifest.

    Parts of several stages may be given together: each stage's parts are merged in turn.

    Args:
        parts: Part files (``NAME.STAGE-partIofN.jsonl``).
        out: The merged manifest (may be the base: then it is updated under its lock).
        base: The manifest the parts came from (default: the one their state names,
            beside them).
        log: Where messages go.

    Returns:
        Per stage: the parts merged and the merge counts.

    Raises:
        QamdtError: A part without a state, unfinished, of another model or settings than
            its siblings, a part missing or given twice, or parts of several manifests.
    """
    groups: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path in map(Path, parts):
        state = read_part_state(path)
        if state is None:
            raise QamdtError(f"{path}: not a --shard part (no part state file beside it)")
        if not state.get("complete"):
            i, n = state["part"]
            raise QamdtError(f"{path}: part {i}/{n} is not finished; run it again to complete it")
        groups.setdefault(state["stage"], []).append((path, state))
    if not groups:
        raise QamdtError("no part files given")
    bases = {str(path.parent / state["base"]) for g in groups.values() for path, state in g}
    if base is None:
        if len(bases) > 1:
            raise QamdtError(f"the parts come from several manifests: {sorted(bases)}")
        base = bases.pop()
    base = real_manifest(base)
    out = Path(out)
    in_place = out.exists() and os.path.realpath(out) == str(base)
    summary = {}
    with manifest_lock(base, log) if in_place else contextlib.nullcontext():
        current = base
        for stage, group in groups.items():
            fields = _check_group(stage, group)
            stats = merge_manifests(
                out, [p for p, _ in sorted(group, key=lambda g: g[1]["part"][0])],
                base_path=current, fields=fields,
            )  # fmt: skip
            current = out
            summary[stage] = {"parts": len(group), **vars(stats)}
    return summary


def _check_group(stage: str, group: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    first_path, first = group[0]
    keys = ("model", "settings", "fields")
    for path, state in group[1:]:
        differs = [k for k in keys if state.get(k) != first.get(k)]
        if differs or state["part"][1] != first["part"][1]:
            what = " and ".join(differs) or "part count"
            raise QamdtError(f"{path}: a different {what} than {first_path} (stage {stage})")
    count = first["part"][1]
    seen = [state["part"][0] for _, state in group]
    missing = sorted(set(range(count)) - set(seen))
    twice = sorted({i for i in seen if seen.count(i) > 1})
    if missing or twice:
        raise QamdtError(
            f"stage {stage}: parts of {count}: "
            + "; ".join(
                x
                for x in (
                    f"missing {', '.join(f'{i}/{count}' for i in missing)}" if missing else "",
                    f"given twice: {twice}" if twice else "",
                )
                if x
            )
        )
    return list(first["fields"])


__all__ = [
    "stage_target",
    "finish_part",
    "in_part",
    "merge_parts",
    "parse_part",
    "part_path",
    "prepare_part",
    "read_part_state",
]
