"""The stage runner: runs named stages in order, skipping those already done.

``OUT/stages.json`` records the settings of the run and, per stage, ``done``, ``seconds``
(spent on it, interrupted attempts included) and ``result`` (what the stage returned, or
the error that stopped it). A stage that is done is skipped unless it is redone; a stage
that starts running marks every stage that depends on it, directly or not, as ``stale``:
not done, and started from scratch (its outputs removed, its manifest fields cleared)
when it runs next. A stage that was stopped part-way resumes where it stopped, as the
training functions do.

Neighbouring stages marked ``concurrent`` that do not depend on each other run side by side,
each in its own process with an equal share of the CPU threads (``processes`` at a time):
small models use two cores poorly, so two of them with one core each finish sooner than
one after the other. ``stages.json`` also keeps the run's wall-clock seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
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
        wall_seconds: Wall-clock seconds of the run so far (less than the sum of
            ``seconds`` where stages ran side by side).
    """

    out: Path
    settings: DemoSettings
    results: dict[str, Any]
    seconds: dict[str, float]
    log: Callable[[str], None]
    wall_seconds: float = 0.0


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
        concurrent: May run in its own process beside neighbouring concurrent stages
            (``run`` must then be a module-level function).
    """

    name: str
    run: Callable[[StageContext], dict[str, Any]]
    needs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    reset: Callable[[Path], None] | None = None
    concurrent: bool = False


class StageState:
    """The contents of ``OUT/stages.json``, saved after every change."""

    def __init__(self, out: Path):
        self.path = out / STATE_NAME
        self.settings: dict[str, Any] | None = None
        self.stages: dict[str, dict[str, Any]] = {}
        self.wall_seconds = 0.0
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as error:
                raise QamdtError(f"{self.path}: not valid JSON ({error})") from None
            self.settings = saved.get("settings")
            self.stages = saved.get("stages") or {}
            self.wall_seconds = float(saved.get("wall_seconds") or 0.0)

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
        write_json(
            self.path,
            {"settings": self.settings, "wall_seconds": self.wall_seconds, "stages": self.stages},
        )


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
    processes: int = 1,
) -> StageState:
    """Runs the stages in order, skipping finished ones.

    A stage runs once its ``needs`` are done. With ``processes`` above 1, concurrent
    stages run side by side, each in its own process with a share of the CPU threads, up
    to ``processes`` at once, taken in pipeline order; any other stage, and a concurrent
    one with nothing to run beside it, runs here, alone, with every thread.

    Args:
        stages: The pipeline, in order (a stage's ``needs`` come before it).
        out: The run folder (created if missing).
        settings: Settings of the run; recorded, and compared with a previous run's.
        only: Run only these stages (default: all). Their ``needs`` must be done.
        redo: Run these stages again even when done (from scratch).
        log: Where progress messages go (stages in their own processes print).
        processes: How many concurrent stages run at once (1: one after the other).

    Returns:
        The state after the run.

    Raises:
        ConfigError: On an unknown stage name.
        QamdtError: If the folder holds a run with other settings (and nothing is redone),
            a selected stage needs one that is not done, or a stage in its own process
            failed (raised once the stages running beside it have finished).
    """
    _check_names(stages, only, "--stage")
    _check_names(stages, redo, "--redo")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = StageState(out)
    _check_settings(state, settings, redo)
    state.save()
    pending = _due_stages(stages, only, redo, state, log)
    children = _Children(state, processes, log)
    clock = time.monotonic()

    def add_wall_time() -> None:
        nonlocal clock
        now = time.monotonic()
        state.wall_seconds = round(state.wall_seconds + now - clock, 2)
        clock = now

    try:
        while (pending and not children.failures) or children.running:
            stage = None if children.failures else _next_ready(pending, children, processes)
            if stage is None:
                if children.running:
                    children.wait()
                    continue
                stage = pending[0]  # its needs are not done: _prepare names them
            pending.remove(stage)
            add_wall_time()
            try:
                context = _prepare(stages, stage, state, out, settings, redo, log)
            except QamdtError as error:
                children.failures.append(str(error))
                continue
            if stage.concurrent and _has_company(stages, stage, pending, children, processes):
                children.start(stage, context)
            else:
                _run_here(stage, context, state, log)
        if children.failures:
            raise QamdtError("; ".join(children.failures))
    except BaseException:
        children.stop()
        raise
    finally:
        add_wall_time()
        state.save()
    return state


def _due_stages(stages, only, redo, state: StageState, log) -> list[Stage]:
    """The selected stages to run: not done, redone, or depending on one of those."""
    selected = [s for s in stages if not only or s.name in only]
    due = {s.name for s in selected if not state.done(s.name) or s.name in redo}
    for name in list(due):
        due.update(dependents(stages, name))
    for stage in selected:
        if stage.name not in due:
            log(f"demo: {stage.name}: done ({state.record(stage.name).get('seconds')} s), skipped")
    return [s for s in selected if s.name in due]


def _has_company(stages, stage, pending, children: _Children, processes: int) -> bool:
    """Whether another stage runs or may run beside this one (else it runs here, alone)."""
    if processes < 2:
        return False
    after = set(dependents(stages, stage.name))
    return bool(children.running) or any(
        other.concurrent and other.name not in after for other in pending
    )


def _next_ready(pending: list[Stage], children: _Children, processes: int) -> Stage | None:
    """The first pending stage that can start now, if any.

    A stage waits for the pending or running stages it needs; one that runs here waits
    until no process runs, and holds back the stages after it.
    """
    waiting = {s.name for s in pending} | set(children.running_names())
    for stage in pending:
        if waiting.intersection(stage.needs):
            continue
        if processes > 1 and stage.concurrent:
            if len(children.running) < processes:
                return stage
        elif not children.running:
            return stage
        else:
            return None
    return None


def _prepare(stages, stage, state, out, settings, redo, log) -> StageContext:
    """Checks a stage's needs, marks its dependents stale, clears a fresh start."""
    missing = [n for n in stage.needs if not state.done(n)]
    if missing:
        raise QamdtError(
            f"stage '{stage.name}' needs {missing}, not done in {out}; "
            "run those first (or run the demo without --stage)"
        )
    entry = state.record(stage.name)
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
    return StageContext(
        out=out,
        settings=settings,
        results={n: e.get("result") for n, e in state.stages.items()},
        seconds={n: e["seconds"] for n, e in state.stages.items() if e.get("seconds")},
        log=log,
        wall_seconds=state.wall_seconds,
    )


def _record(state: StageState, stage: Stage, started: float, outcome: Any, log) -> None:
    """Adds the time spent to the stage's entry, with its result or error."""
    spent = float(state.record(stage.name).get("seconds") or 0.0)
    seconds = round(spent + time.monotonic() - started, 2)
    if isinstance(outcome, BaseException):
        reason = f"{type(outcome).__name__}: {outcome}"
        state.update(stage.name, done=False, seconds=seconds, result={"error": reason})
        return
    state.update(stage.name, done=True, stale=False, seconds=seconds, result=outcome)
    log(f"demo: {stage.name}: done in {seconds:.1f} s")


def _run_here(stage: Stage, context: StageContext, state: StageState, log) -> None:
    started = time.monotonic()
    try:
        result = stage.run(context)
    except BaseException as error:
        _record(state, stage, started, error, log)
        raise
    _record(state, stage, started, result, log)


class _Children:
    """The stages running in processes of their own, ``processes`` at most."""

    def __init__(self, state: StageState, processes: int, log):
        self.state = state
        self.processes = processes
        self.log = log
        self.running: dict[Any, tuple[Stage, Any, float]] = {}
        self.failures: list[str] = []

    def running_names(self) -> list[str]:
        return [stage.name for stage, _, _ in self.running.values()]

    def start(self, stage: Stage, context: StageContext) -> None:
        """Starts the stage in a new process with its share of the CPU threads."""
        import multiprocessing

        import torch

        spawn = multiprocessing.get_context("spawn")
        threads = max(1, torch.get_num_threads() // self.processes)
        if not _picklable(context.log):
            context = dataclasses.replace(context, log=print)
        receive, send = spawn.Pipe(duplex=False)
        process = spawn.Process(
            target=_stage_process,
            args=(stage.run, context, threads, os.getpid(), send),
            name=f"demo-{stage.name}",
        )
        process.start()
        send.close()
        self.log(f"demo: {stage.name}: in process {process.pid} ({threads} thread(s))")
        self.running[receive] = (stage, process, time.monotonic())

    def wait(self) -> None:
        """Waits for at least one stage to end and records it (a failure in ``failures``)."""
        from multiprocessing.connection import wait

        for receive in wait(list(self.running)):
            stage, process, started = self.running.pop(receive)
            try:
                kind, value = receive.recv()
            except EOFError:
                kind, value = "error", f"its process ended with code {process.exitcode}"
            receive.close()
            process.join()
            if kind == "done":
                _record(self.state, stage, started, value, self.log)
            else:
                _record(self.state, stage, started, QamdtError(value), self.log)
                self.failures.append(f"stage '{stage.name}' failed: {value}")

    def stop(self) -> None:
        """Kills the running stages (each resumes on the next run) and records their time."""
        for receive, (stage, process, started) in list(self.running.items()):
            process.kill()
            process.join()
            receive.close()
            _record(self.state, stage, started, QamdtError("stopped"), self.log)
        self.running.clear()


def _picklable(value: Any) -> bool:
    try:
        pickle.dumps(value)
    except Exception:
        return False
    return True


def _stage_process(run, context: StageContext, threads: int, parent: int, send) -> None:
    """Runs one stage in a process of its own and sends back its result or error."""
    import traceback

    _die_with_parent(parent)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    try:
        result = run(context)
    except BaseException as error:
        traceback.print_exc()
        send.send(("error", f"{type(error).__name__}: {error}"))
        return
    send.send(("done", result))


def _die_with_parent(parent: int) -> None:
    """Asks Linux to kill this process when the demo's process dies (no orphan writers)."""
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
