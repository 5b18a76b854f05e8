"""The stage runner: runs named stages in order, skipping those already done.

``OUT/stages.json`` records the settings of the run and, per stage, ``done``, ``seconds``
(spent on it, interrupted attempts included) and ``result`` (what the stage returned, or
the error that stopped it). A stage that is done is skipped unless it is redone; a stage
that starts running marks every stage that depends on it, directly or not, as ``stale``:
not done, and started from scratch (its outputs removed, its manifest fields cleared)
when it runs next. A stage that was stopped part-way resumes where it stopped, as the
training functions do.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from qamdt.demo.settings import DemoSettings
from qamdt.errors import ConfigError, QamdtError
from qamdt.json_files import write_json

STATE_NAME = "stages.json"


@dataclasses.dataclass
class StageContext:
    """What a stage function gets.

    Attributes:
        out: The run folder.
        settings: The run's settings.
        results: Results of the stages recorded so far (name -> result).
        seconds: Seconds recorded so far per stage.
        log: Where progress messages go.
    """

    out: Path
    settings: DemoSettings
    results: dict[str, Any]
    seconds: dict[str, float]
    log: Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Stage:
    """One step of the pipeline.

    Attributes:
        name: Its name on the command line and in ``stages.json``.
        run: The function doing the work; returns a JSON-ready summary.
        needs: Stages whose outputs it reads.
        outputs: Paths under the run folder removed before it starts from scratch.
        reset: Called with the run folder before it starts from scratch, to clear what
            it wrote into shared files (manifest fields).
    """

    name: str
    run: Callable[[StageContext], dict[str, Any]]
    needs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    reset: Callable[[Path], None] | None = None


class StageState:
    """The contents of ``OUT/stages.json``, saved after every change."""

    def __init__(self, out: Path):
        self.path = out / STATE_NAME
        self.settings: dict[str, Any] | None = None
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise QamdtError(f"{self.path}: not valid JSON ({error})") from None
            self.settings = saved.get("settings")
            self.stages = saved.get("stages") or {}

    def record(self, name: str) -> dict[str, Any]:
        """The stage's entry (empty for a stage never run)."""
        return self.stages.get(name, {})

    def done(self, name: str) -> bool:
        """Whether the stage finished and nothing it depends on ran since."""
        return bool(self.record(name).get("done"))

    def update(self, name: str, **values: Any) -> None:
        """Changes fields of a stage's entry and saves."""
        entry = {"done": False, "seconds": None, "result": None, **self.record(name)}
        entry.update(values)
        self.stages[name] = entry
        self.save()

    def save(self) -> None:
        """Writes ``stages.json`` (atomically)."""
        write_json(self.path, {"settings": self.settings, "stages": self.stages})


def recorded_settings(out: str | os.PathLike) -> dict[str, Any] | None:
    """The settings a run folder was made with, or None for a new folder."""
    path = Path(out) / STATE_NAME
    return StageState(Path(out)).settings if path.is_file() else None


def dependents(stages: Sequence[Stage], name: str) -> list[str]:
    """Every stage that needs ``name``, directly or through other stages, in order."""
    found: set[str] = {name}
    for stage in stages:
        if found.intersection(stage.needs):
            found.add(stage.name)
    return [s.name for s in stages if s.name in found and s.name != name]


def _check_names(stages: Sequence[Stage], names: Sequence[str], option: str) -> None:
    known = [s.name for s in stages]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"{option}: unknown stage(s) {unknown}; known: {known}")


def _check_settings(state: StageState, settings: DemoSettings, redo: Sequence[str]) -> None:
    """Refuses to mix settings in one folder unless stages are redone on purpose."""
    current = settings.to_dict()
    if state.settings is None or state.settings == current or redo:
        state.settings = current
        return
    changed = sorted(k for k in current.keys() | state.settings.keys()
                     if current.get(k) != state.settings.get(k))  # fmt: skip
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    raise QamdtError(
        f"{state.path.parent} holds a run with other settings (differs in {shown}); "
        "choose another --out, or --redo the stages those settings affect"
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def run_stages(
    stages: Sequence[Stage],
    out: str | os.PathLike,
    settings: DemoSettings,
    only: Sequence[str] = (),
    redo: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> StageState:
    """Runs the stages in order, skipping finished ones.

    Args:
        stages: The pipeline, in order (a stage's ``needs`` come before it).
        out: The run folder (created if missing).
        settings: Settings of the run; recorded, and compared with a previous run's.
        only: Run only these stages (default: all). Their ``needs`` must be done.
        redo: Run these stages again even when done (from scratch).
        log: Where progress messages go.

    Returns:
        The state after the run.

    Raises:
        ConfigError: On an unknown stage name.
        QamdtError: If the folder holds a run with other settings (and nothing is redone),
            or a selected stage needs one that is not done.
    """
    _check_names(stages, only, "--stage")
    _check_names(stages, redo, "--redo")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = StageState(out)
    _check_settings(state, settings, redo)
    state.save()
    selected = set(only) if only else {s.name for s in stages}
    for stage in stages:
        if stage.name not in selected:
            continue
        entry = state.record(stage.name)
        if entry.get("done") and stage.name not in redo:
            log(f"demo: {stage.name}: done ({entry.get('seconds')} s), skipped")
            continue
        missing = [n for n in stage.needs if not state.done(n)]
        if missing:
            raise QamdtError(
                f"stage '{stage.name}' needs {missing}, not done in {out}; "
                "run those first (or run the demo without --stage)"
            )
        fresh = stage.name in redo or bool(entry.get("stale"))
        for name in dependents(stages, stage.name):
            if state.done(name) or name in state.stages:
                state.update(name, done=False, stale=True)
        if fresh:
            for path in stage.outputs:
                _remove(out / path)
            if stage.reset is not None:
                stage.reset(out)
            # Cleared: from here on an interrupted attempt resumes.
            state.update(stage.name, done=False, stale=False, seconds=None, result=None)
        spent = float(state.record(stage.name).get("seconds") or 0.0)
        log(f"demo: {stage.name}: {'resuming' if spent else 'running'}")
        context = StageContext(
            out=out,
            settings=settings,
            results={n: e.get("result") for n, e in state.stages.items()},
            seconds={n: e["seconds"] for n, e in state.stages.items() if e.get("seconds")},
            log=log,
        )
        started = time.monotonic()
        try:
            result = stage.run(context)
        except BaseException as error:
            seconds = round(spent + time.monotonic() - started, 2)
            reason = f"{type(error).__name__}: {error}"
            state.update(stage.name, done=False, seconds=seconds, result={"error": reason})
            raise
        seconds = round(spent + time.monotonic() - started, 2)
        state.update(stage.name, done=True, stale=False, seconds=seconds, result=result)
        log(f"demo: {stage.name}: done in {seconds:.1f} s")
    return state
