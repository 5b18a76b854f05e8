"""The state of a resumable manifest stage: who wrote a shard, which fields it owns, one run.

Every stage that labels manifest rows (p-MOS labelling, caption scoring, curation) runs
inside a :class:`StageRun`:

* the manifest is the real file (a symbolic link is followed), and relative audio paths
  are resolved against the real file's folder;
* a lock file beside the manifest (``.NAME.lock``) holds the process id, host, start time
  and command line of the run; a second run stops with an error naming the first, and a
  lock left by a killed run on this host is taken over with a message;
* temporary files left by a killed write of the manifest or of a shard are removed;
* each process appends finished rows to its shard (``NAME.STAGE-shardR.jsonl``) beside a
  state file (``NAME.STAGE-shardR.state.json``) that records the stage, the content hash
  of the model(s), the settings that change results and the fields the stage owns;
* on the next start, leftover shards whose state matches are merged into the manifest
  first (only the owned fields go in; every other field keeps the manifest's current
  value, so work another stage did meanwhile is never undone), and their rows are not
  done again; a shard written by another model or other settings is discarded with a
  message, or kept with ``resume_anyway``;
* at the end the main process merges every shard the same way and removes them.

The job-array mode (``--shard I/N``, :mod:`qamdt.manifest.parts`) runs a stage on a part
file as on a manifest: the part has its own lock, shards and resume, and ``qamdt manifest
merge`` merges complete parts with the fields their state files name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from qamdt.errors import ManifestError, QamdtError
from qamdt.json_files import read_json_object, write_json
from qamdt.manifest.appender import ManifestAppender
from qamdt.manifest.reading import _scan
from qamdt.manifest.shards import merge_manifests

STATE_FORMAT = 1


class StageBusyError(QamdtError):
    """Another run holds the manifest's lock."""


def real_manifest(path: str | os.PathLike) -> Path:
    """The manifest file itself, symbolic links followed.

    Raises:
        QamdtError: If there is no such file (naming the path given and, for a link,
            where it points).
    """
    given = Path(path)
    real = Path(os.path.realpath(given))
    if not real.is_file():
        where = f" (a link to {real})" if given.is_symlink() else ""
        kind = "is a folder, not a manifest" if real.is_dir() else "manifest not found"
        raise QamdtError(f"{given}{where}: {kind}")
    return real


def content_hash(*objects: Any) -> str:
    """A hash of the weights and plain settings of models (or any objects).

    Modules contribute every tensor of their state dict (names, dtypes, shapes, bytes);
    other objects their class and their attributes, two levels deep; plain values their
    ``repr``. Two models with the same weights get the same hash wherever they were loaded
    from.
    """
    digest = hashlib.sha256()
    seen: set[int] = set()
    for obj in objects:
        _hash_into(digest, obj, 0, seen)
    return digest.hexdigest()[:32]


def _hash_into(digest, obj: Any, depth: int, seen: set[int]) -> None:
    import numpy as np
    import torch

    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        digest.update(repr(obj).encode())
        return
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.nn.Module):
        digest.update(type(obj).__qualname__.encode())
        for name, tensor in obj.state_dict().items():
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
        return
    if isinstance(obj, np.ndarray):
        digest.update(f"{obj.dtype}|{obj.shape}".encode())
        digest.update(np.ascontiguousarray(obj).tobytes())
        return
    if isinstance(obj, (list, tuple)):
        digest.update(b"[")
        for item in obj:
            _hash_into(digest, item, depth, seen)
        digest.update(b"]")
        return
    if isinstance(obj, dict):
        for key in sorted(obj, key=str):
            digest.update(str(key).encode())
            _hash_into(digest, obj[key], depth, seen)
        return
    digest.update(type(obj).__qualname__.encode())
    if depth < 2 and hasattr(obj, "__dict__"):
        for key in sorted(vars(obj)):
            digest.update(key.encode())
            _hash_into(digest, vars(obj)[key], depth + 1, seen)


def _process_start(pid: int) -> str | None:
    """The start time of a process (Linux), to tell a live run from a reused process id."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = _process_start(pid)
    return started is None or now is None or now == started


class ManifestLock:
    """An exclusive lock on a manifest: a file created atomically, naming the run.

    Args:
        path: The lock file.
        log: Where messages go (a function of one string).
    """

    def __init__(self, path: str | os.PathLike, log: Callable[[str], None]):
        self.path = Path(path)
        self.log = log
        self.held = False

    def acquire(self) -> None:
        """Takes the lock, or takes over one left by a killed run on this host.

        Raises:
            StageBusyError: Naming the run that holds it.
        """
        info = {
            "pid": os.getpid(),
            "pid_start": _process_start(os.getpid()),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join(sys.argv),
        }
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(info) + "\n")
        try:
            for _ in range(3):
                try:
                    os.link(temporary, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    self._check_holder()
            raise StageBusyError(f"{self.path}: cannot take the lock")
        finally:
            temporary.unlink(missing_ok=True)

    def _check_holder(self) -> None:
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError):
            holder, pid, host = {}, -1, socket.gethostname()
        who = (
            f"process {holder.get('pid')} on {holder.get('host')}, started "
            f"{holder.get('started')}: {holder.get('command')}"
        )
        if host != socket.gethostname():
            raise StageBusyError(
                f"{self.path}: the manifest is in use by {who}; if that run is gone, "
                "delete the lock file"
            )
        if pid > 0 and _alive(pid, holder.get("pid_start")):
            raise StageBusyError(f"{self.path}: the manifest is in use by {who}")
        self.log(f"{self.path}: taking over the lock of a run that ended without it ({who})")
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        """Removes the lock file if this run holds it."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


@contextlib.contextmanager
def manifest_lock(manifest: Path, log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Holds a manifest's lock for a block (for a step that rewrites the whole manifest)."""
    lock = ManifestLock(lock_path(manifest), log or _stderr)
    lock.acquire()
    try:
        clean_temporaries(manifest, lock.log)
        yield
    finally:
        lock.release()


def lock_path(manifest: Path) -> Path:
    """The lock file of a manifest."""
    return manifest.with_name(f".{manifest.name}.lock")


def shard_path(manifest: Path, stage: str, rank: int) -> Path:
    """Shard file of process ``rank`` for ``stage``, beside the manifest."""
    return manifest.with_name(f"{manifest.stem}.{stage}-shard{rank}.jsonl")


def shard_state_path(shard: Path) -> Path:
    """The state file beside a shard."""
    return shard.with_name(shard.name[: -len(".jsonl")] + ".state.json")


def stage_shards(manifest: Path, stage: str) -> list[Path]:
    """Every shard of ``stage`` beside the manifest, whatever the process count was."""
    pattern = re.compile(re.escape(f"{manifest.stem}.{stage}-shard") + r"\d+\.jsonl")
    return sorted(p for p in manifest.parent.iterdir() if pattern.fullmatch(p.name))


def clean_temporaries(manifest: Path, log: Callable[[str], None]) -> int:
    """Removes temporary files a killed write of the manifest or its shards left behind."""
    names = (re.escape(manifest.name), re.escape(manifest.stem) + r"\.[\w-]+-shard\d+\.[\w.]+")
    pattern = re.compile(r"\.(" + "|".join(names) + r")\.[0-9a-f]{8}\.tmp")
    removed = 0
    for path in manifest.parent.iterdir():
        if pattern.fullmatch(path.name):
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            log(f"removed {path.name} ({size} bytes), left by an interrupted write")
            removed += 1
    return removed


def _shard_ids(shard: Path) -> list[str]:
    """The ids in a shard (rows validated; a truncated last line is left out)."""
    return [r.id for r, _, _ in _scan(shard, validate=True, on_truncated=lambda *_: None)]


def stage_identity(
    stage: str, fields: Iterable[str], model: str, settings: dict[str, Any] | None
) -> dict[str, Any]:
    """What a shard's state file records: the stage, model, settings and owned fields."""
    return {
        "format": STATE_FORMAT,
        "stage": stage,
        "model": model,
        "settings": json.loads(json.dumps(settings or {}, sort_keys=True)),
        "fields": list(fields),
    }


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class StageRun:
    """One run of a manifest stage (see the module docstring).

    Args:
        manifest: The manifest (a link is followed).
        stage: Stage name, used in the shard file names (``pmos``, ``captions``).
        fields: The fields the stage writes (``"pmos"``, ``"errors.mos"``, ``"meta.x"``).
        model: Content hash of the model(s) (:func:`content_hash`).
        settings: The settings that change the stage's results (JSON values).
        state: The Accelerate ``PartialState`` (None: one process).
        resume_anyway: Keep a shard written by another model or other settings.
        log: Where messages go (default: stderr).
    """

    def __init__(
        self,
        manifest: str | os.PathLike,
        stage: str,
        fields: Iterable[str],
        model: str,
        settings: dict[str, Any] | None = None,
        state=None,
        resume_anyway: bool = False,
        log: Callable[[str], None] | None = None,
    ):
        self.manifest = real_manifest(manifest)
        self.folder = self.manifest.parent
        self.stage = stage
        self.fields = tuple(fields)
        self.identity = stage_identity(stage, self.fields, model, settings)
        self.state = state
        self.resume_anyway = resume_anyway
        self.log = log or _stderr
        self.rank = 0 if state is None else state.process_index
        self.is_main = state is None or state.is_main_process
        self.lock = ManifestLock(lock_path(self.manifest), self.log)
        self.resumed_ids: set[str] = set()

    def _wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def __enter__(self) -> StageRun:
        if self.is_main:
            self.lock.acquire()
            try:
                clean_temporaries(self.manifest, self.log)
                self.resumed_ids = self._merge(resuming=True)
            except BaseException:
                self.lock.release()
                raise
        self._wait()
        if not self.is_main:
            self.resumed_ids = self._resumed_ids()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.is_main:
            self.lock.release()

    @property
    def shard(self) -> Path:
        """This process's shard file."""
        return shard_path(self.manifest, self.stage, self.rank)

    def appender(self) -> ManifestAppender:
        """Opens this process's shard for appending, its state file written first."""
        write_json(shard_state_path(self.shard), self.identity)
        return ManifestAppender(self.shard, source_dir=self.folder, track_ids=False)

    def merge(self) -> None:
        """Waits for every process; the main one merges the shards into the manifest."""
        self._wait()
        if self.is_main:
            self._merge(resuming=False)
        self._wait()

    def _matching(self, shard: Path) -> bool:
        """Whether a shard was written by this stage, model and settings (else it goes)."""
        try:
            found = read_json_object(shard_state_path(shard))
        except QamdtError:
            found = {}
        if found == self.identity:
            return True
        if not found:
            why = "no readable state file (written by an older version or another tool)"
        else:
            keys = [k for k in self.identity if found.get(k) != self.identity[k]]
            why = "a different " + " and ".join(keys)
        if self.resume_anyway:
            self.log(f"{shard.name}: {why}; its rows are kept (resume anyway)")
            return True
        self.log(f"{shard.name}: {why}; its rows are discarded and done again")
        return False

    def _resumed_ids(self) -> set[str]:
        path = self.manifest.with_name(f".{self.manifest.name}.{self.stage}-resumed.json")
        return set(json.loads(path.read_text())) if path.is_file() else set()

    def _merge(self, resuming: bool) -> set[str]:
        shards = []
        ids: set[str] = set()
        for shard in stage_shards(self.manifest, self.stage):
            keep = shard.stat().st_size > 0 and (not resuming or self._matching(shard))
            # Only a resume needs the ids (rows not to do again); the final merge validates
            # the shards itself and must not hold every id of a long run.
            if keep and resuming:
                try:
                    ids.update(_shard_ids(shard))
                except ManifestError as error:
                    self.log(f"{shard.name}: unreadable ({error}); discarded")
                    keep = False
            if not keep:
                shard.unlink()
                shard_state_path(shard).unlink(missing_ok=True)
                continue
            shards.append(shard)
        resumed = self.manifest.with_name(f".{self.manifest.name}.{self.stage}-resumed.json")
        if shards:
            stats = merge_manifests(
                self.manifest,
                shards,
                base_path=self.manifest,
                on_conflict="last",
                allow_truncated_tail=True,
                fields=self.fields,
            )
            if resuming:
                done = stats.replaced
                self.log(f"{self.manifest.name}: resuming {self.stage}, {done} rows done before")
        if resuming and self.state is not None and self.state.num_processes > 1:
            write_json(resumed, sorted(ids))
        else:
            resumed.unlink(missing_ok=True)
        for shard in shards:
            shard.unlink()
            shard_state_path(shard).unlink(missing_ok=True)
        return ids if resuming else set()
