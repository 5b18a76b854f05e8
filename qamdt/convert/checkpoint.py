"""Reading published PyTorch checkpoints safely and without a second copy in memory.

A Lightning ``.ckpt`` is a ``torch.save`` zip archive. It is memory-mapped
(``torch.load(mmap=True)``), so tensors are read from disk when they are used and a
13.5 GB checkpoint costs no more memory than the tensors a conversion keeps. Loading is
``weights_only=True``; when the archive also pickles objects outside PyTorch's allow-list
(a training configuration, a logger), it is read again with an unpickler that builds only
tensors and plain containers and turns every other global into an inert placeholder,
never importing or calling it.

A checkpoint published as byte-split pieces (``NAME_part_0``, ``NAME_part_1``, ...) is
joined into one temporary file beside the output first, since a memory map needs a file.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import shutil
import sys
import tempfile
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from qamdt.checkpoints import CheckpointError

PART_PATTERN = re.compile(r"^(?P<stem>.+)_part_(?P<index>\d+)$")


def checkpoint_parts(path: str | os.PathLike) -> list[Path]:
    """The files that make up a checkpoint.

    Args:
        path: The checkpoint file, one of its ``_part_N`` pieces, or the name the pieces
            share (``checkpoint_389999.ckpt`` when only ``checkpoint_389999.ckpt_part_N``
            exist).

    Returns:
        ``[path]`` for a whole file, else every piece in order.

    Raises:
        CheckpointError: If nothing is found or a piece is missing from the sequence.
    """
    path = Path(path)
    match = PART_PATTERN.match(path.name)
    stem = path.with_name(match["stem"]) if match else path
    if path.is_file() and not match:
        return [path]
    pieces = {}
    if stem.parent.is_dir():
        for candidate in stem.parent.iterdir():
            found = PART_PATTERN.match(candidate.name)
            if found and found["stem"] == stem.name and candidate.is_file():
                pieces[int(found["index"])] = candidate
    if not pieces:
        raise CheckpointError(f"{path}: checkpoint not found (no file and no {stem.name}_part_N)")
    first = min(pieces)
    missing = [i for i in range(first, max(pieces) + 1) if i not in pieces]
    if first not in (0, 1) or missing:
        gap = missing[0] if missing else 0
        raise CheckpointError(f"{stem}_part_{gap}: piece missing (found {sorted(pieces)})")
    return [pieces[i] for i in sorted(pieces)]


@contextlib.contextmanager
def joined_file(parts: list[Path], work_dir: str | os.PathLike | None = None) -> Iterator[Path]:
    """One file for a checkpoint: the file itself, or its pieces joined in ``work_dir``.

    The joined copy is deleted on exit.

    Raises:
        CheckpointError: If ``work_dir`` has too little free space for the joined file.
    """
    if len(parts) == 1:
        yield parts[0]
        return
    folder = Path(work_dir) if work_dir is not None else parts[0].parent
    folder.mkdir(parents=True, exist_ok=True)
    size = sum(part.stat().st_size for part in parts)
    free = shutil.disk_usage(folder).free
    if free < size:
        raise CheckpointError(
            f"{folder}: joining {len(parts)} pieces needs {size / 2**30:.1f} GiB free, "
            f"{free / 2**30:.1f} GiB left (choose another --work-dir)"
        )
    handle, name = tempfile.mkstemp(prefix=".joined-", suffix=".ckpt", dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            for part in parts:
                with open(part, "rb") as piece:
                    shutil.copyfileobj(piece, out, length=16 * 2**20)
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


class _Placeholder:
    """Stands for a pickled object of a class outside the allow-list; holds its state."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any):
        self.args = args

    def __call__(self, *args: Any, **kwargs: Any) -> _Placeholder:
        # A pickled call on a placeholder (``getattr(cls, name)(...)``) stays inert too.
        return type(self)(*args)

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("values", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("values", []).extend(values)

    def __repr__(self) -> str:
        return f"<not loaded: {self.qualified_name}>"


_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[module, name]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return type(name, (_Placeholder,), {"qualified_name": f"{module}.{name}"})


_restricted_pickle = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler, load=pickle.load, __name__="restricted_pickle"
)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Loads a ``torch.save`` archive memory-mapped, without running pickled code.

    Args:
        path: One file (see :func:`joined_file` for pieces).

    Returns:
        What was saved; objects of classes outside the allow-list are placeholders.

    Raises:
        CheckpointError: If the file is not a readable PyTorch zip archive (truncated,
            corrupt, or the legacy format).
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a PyTorch zip checkpoint (truncated, corrupt, or the legacy format)"
        )
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        name = f" such as {found[1]}" if found else ""
        print(
            f"{path}: holds objects outside torch's weights-only allow-list{name}; "
            "reading tensors only, the rest as inert placeholders",
            file=sys.stderr,
        )
    except (RuntimeError, EOFError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({error})") from None
    try:
        return torch.load(
            path,
            map_location="cpu",
            mmap=True,
            weights_only=False,
            pickle_module=_restricted_pickle,
        )
    except (RuntimeError, EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as error:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({error})") from None


def state_dict_of(checkpoint: Any, where: str) -> Mapping[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or the mapping itself).

    Raises:
        CheckpointError: If there is no mapping of tensors.
    """
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping) or not any(
        isinstance(value, torch.Tensor) for value in state.values()
    ):
        raise CheckpointError(f"{where}: no state_dict of tensors in the checkpoint")
    return state
