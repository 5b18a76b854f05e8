"""Atomic training checkpoints: a new folder, flushed to disk, then renamed into place.

A trainer's resumable state lives in ``OUT/checkpoint`` (the latest good checkpoint) and
``OUT/checkpoint.prev`` (the one before it). A save writes everything (the trainer's state
and its ``progress.json``) into ``OUT/checkpoint.next``, records each file's size and
SHA-256 in ``files.json`` last, flushes files and folder to disk, and only then renames:
``checkpoint`` becomes ``checkpoint.prev`` and ``checkpoint.next`` becomes ``checkpoint``.
So the weights and the progress in a checkpoint always belong together, and a kill at any
moment leaves a complete checkpoint to resume from:

* killed while writing ``checkpoint.next`` (no ``files.json`` yet): it is discarded;
* killed between the renames: the complete ``checkpoint.next`` is put in place;
* a checkpoint whose files do not match ``files.json`` (a truncated or damaged file) is
  reported and the previous one is used.

Exported models (a pipeline's transformer, a best model) are replaced as whole folders
with :func:`replace_folder`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qamdt.errors import QamdtError
from qamdt.json_files import fsync_path, read_json_object, write_json

PROGRESS_NAME = "progress.json"
FILES_NAME = "files.json"


class CheckpointBrokenError(QamdtError):
    """No checkpoint of a run folder can be used."""


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != FILES_NAME)


def seal_folder(folder: Path) -> None:
    """Flushes every file of ``folder`` to disk and records sizes and hashes in ``files.json``."""
    listing = {}
    for path in _files(folder):
        fsync_path(path)
        listing[path.relative_to(folder).as_posix()] = {
            "size": path.stat().st_size,
            "sha256": _file_hash(path),
        }
    write_json(folder / FILES_NAME, {"files": listing})
    fsync_path(folder / FILES_NAME)
    for sub in {p.parent for p in _files(folder)} | {folder}:
        fsync_path(sub)


def check_folder(folder: Path) -> str | None:
    """Why a sealed folder cannot be used (a missing, resized or changed file), or None."""
    if not folder.is_dir():
        return "missing"
    try:
        listing = read_json_object(folder / FILES_NAME).get("files")
    except QamdtError as error:
        return str(error)
    if not isinstance(listing, dict):
        return f"{folder / FILES_NAME}: missing (the save did not finish)"
    for name, entry in listing.items():
        path = folder / name
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != entry.get("size"):
            return f"{path}: {path.stat().st_size} bytes, {entry.get('size')} written"
        if _file_hash(path) != entry.get("sha256"):
            return f"{path}: its content changed since it was written"
    return None


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class CheckpointFolders:
    """The checkpoints of one run folder (see the module docstring).

    Under several processes every process calls :meth:`recover` and :meth:`save`; only
    the main one moves folders, and all wait for it.

    Args:
        out: The run folder.
        name: The checkpoint folder's name.
        is_main: Whether this is the main process.
        wait: Waits for every process (``accelerator.wait_for_everyone``).
        log: Where messages go.
    """

    def __init__(
        self,
        out: str | os.PathLike,
        name: str = "checkpoint",
        is_main: bool = True,
        wait: Callable[[], None] | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.out = Path(out)
        self.current = self.out / name
        self.previous = self.out / f"{name}.prev"
        self.incoming = self.out / f"{name}.next"
        self.is_main = is_main
        self.wait = wait or (lambda: None)
        self.log = log or _stderr

    def recover(self) -> dict[str, Any] | None:
        """Finishes or discards a save a kill interrupted; the progress to resume from.

        Returns:
            The ``progress.json`` of the checkpoint to load (:attr:`current`), or None
            when the run starts from scratch.

        Raises:
            CheckpointBrokenError: Checkpoints exist but none can be used.
        """
        if self.is_main:
            self._recover()
        self.wait()
        if not self.current.is_dir():
            return None
        return read_json_object(self.current / PROGRESS_NAME)

    def _recover(self) -> None:
        if self.incoming.exists():
            if check_folder(self.incoming) is None:
                self._rotate()
            else:
                shutil.rmtree(self.incoming)
        if not self.current.exists():
            if self.previous.exists() and check_folder(self.previous) is None:
                os.replace(self.previous, self.current)
            return
        problem = check_folder(self.current)
        if problem is None:
            return
        if check_folder(self.previous) is not None:
            # A checkpoint written before sealing existed (an older version): use it as is.
            if (self.current / PROGRESS_NAME).is_file() and not (
                self.current / FILES_NAME
            ).exists():
                self.log(f"{self.current}: no files.json (an older checkpoint); used unchecked")
                return
            raise CheckpointBrokenError(
                f"{self.current}: broken ({problem}) and no usable previous checkpoint "
                f"({self.previous}); delete both to start over"
            )
        broken = self.out / f"{self.current.name}.broken"
        if broken.exists():
            shutil.rmtree(broken)
        os.replace(self.current, broken)
        os.replace(self.previous, self.current)
        self.log(
            f"{broken.with_name(self.current.name)}: broken ({problem}); moved to {broken} "
            f"and resuming from the previous checkpoint"
        )

    def _rotate(self) -> None:
        if self.current.exists():
            if self.previous.exists():
                shutil.rmtree(self.previous)
            os.replace(self.current, self.previous)
        os.replace(self.incoming, self.current)
        fsync_path(self.out)

    def save(self, write: Callable[[Path], None], progress: dict[str, Any]) -> None:
        """Writes a new checkpoint and puts it in place.

        Args:
            write: Writes the trainer's state into the folder it is given (called on
                every process, e.g. ``accelerator.save_state``).
            progress: What the run needs besides the state (step, epoch, best score).
        """
        if self.is_main and self.incoming.exists():
            shutil.rmtree(self.incoming)
        self.wait()
        write(self.incoming)
        self.wait()
        if self.is_main:
            self.incoming.mkdir(parents=True, exist_ok=True)
            write_json(self.incoming / PROGRESS_NAME, progress)
            seal_folder(self.incoming)
            self._rotate()
        self.wait()


def recover_folder(path: str | os.PathLike) -> None:
    """Undoes what a kill inside :func:`replace_folder` left: the old folder comes back."""
    path = Path(path)
    fresh = path.with_name(f".{path.name}.new")
    old = path.with_name(f".{path.name}.old")
    if old.exists() and not path.exists():
        os.replace(old, path)
    for leftover in (fresh, old):
        if leftover.exists():
            shutil.rmtree(leftover)


def replace_folder(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Replaces the folder ``path`` by what ``write`` puts into a fresh folder, atomically.

    A kill leaves the old folder or the new one at ``path``, or the old one beside it as
    ``.NAME.old``, put back by :func:`recover_folder` (the next call does that first).
    """
    path = Path(path)
    fresh = path.with_name(f".{path.name}.new")
    old = path.with_name(f".{path.name}.old")
    recover_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(fresh)
    for sub in [fresh, *(p for p in fresh.rglob("*"))]:
        fsync_path(sub)
    if path.exists():
        os.replace(path, old)
    os.replace(fresh, path)
    fsync_path(path.parent)
    if old.exists():
        shutil.rmtree(old)


class GeneratorState:
    """A ``torch.Generator`` that ``accelerator.register_for_checkpointing`` can save.

    A data loader that shuffles with its own generator draws each epoch's order from the
    state the previous epoch left; saving that state lets a resumed run draw the same
    orders as an uninterrupted one.
    """

    def __init__(self, generator):
        self.generator = generator

    def state_dict(self) -> dict[str, Any]:
        """The generator's state."""
        return {"state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the generator's state."""
        self.generator.set_state(state["state"])
