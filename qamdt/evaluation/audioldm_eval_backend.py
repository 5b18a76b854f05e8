"""Optional FAD (VGGish) and KL/IS (PANNs Cnn14) through the ``audioldm_eval`` package.

These are the numbers papers report. ``audioldm_eval`` needs torchaudio (no CPU build
here) and downloads its checkpoints on first use; this wrapper never lets it download:

* The checkpoints must already be on disk, in one folder given as ``ckpt_dir`` or by
  ``$QAMDT_AUDIOLDM_EVAL_CKPT``::

      DIR/Cnn14_16k_mAP=0.438.pth              PANNs Cnn14, 16 kHz (KL, IS)
      DIR/Cnn14_mAP=0.431.pth                  PANNs Cnn14, 32 kHz (only for 32 kHz)
      DIR/hub/harritaylor_torchvggish_master/  the torchvggish hub repo (FAD)
      DIR/hub/checkpoints/vggish-10086976.pth
      DIR/hub/checkpoints/vggish_pca_params-970ea276.pth

  ``DIR/hub`` may be left out when the torch hub folder (``torch.hub.get_dir()``) holds
  the VGGish files. Every file is checked before the package is touched.
* While it runs, downloads (``torch.hub`` URL fetches, ``os.system`` for wget) raise,
  ``torch.hub.load("harritaylor/torchvggish", ...)`` is served from the local repo folder
  (a GitHub lookup of the default branch is skipped), and its error handler's debugger
  (``ipdb.set_trace``, ``pdb.set_trace``, ``breakpoint``) raises instead of waiting for
  a keyboard.
* Each call scores fresh temporary folders: feature caches are written beside the
  folders by some versions and reused silently when stale.
* ``backbone="cnn14"`` is passed explicitly: recent versions default to MERT.

audioldm_eval 0.0.3 loads PANNs from ``./ckpt`` (the working folder), later versions from
``~/.cache/audioldm_eval/ckpt``; both are pointed at the given folder for the run (the
working folder and ``$HOME`` are switched to a temporary folder and restored).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import importlib
import importlib.util
import math
import os
import pdb
import sys
import tempfile
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from qamdt.errors import ConfigError, QamdtError

ENV_VAR = "QAMDT_AUDIOLDM_EVAL_CKPT"
PANNS_FILES = {16000: "Cnn14_16k_mAP=0.438.pth", 32000: "Cnn14_mAP=0.431.pth"}
VGGISH_REPO = "harritaylor/torchvggish"
VGGISH_REPO_DIR = "harritaylor_torchvggish_master"
VGGISH_FILES = ("vggish-10086976.pth", "vggish_pca_params-970ea276.pth")
BACKEND_NAME = "audioldm_eval (VGGish FAD; PANNs Cnn14 KL and IS)"


class DebuggerDropError(QamdtError):
    """audioldm_eval hit an error and tried to open an interactive debugger."""


@dataclasses.dataclass(frozen=True)
class AudioldmEvalCheckpoints:
    """Where the checked checkpoint files are.

    Attributes:
        panns_dir: Folder holding the PANNs Cnn14 checkpoint(s).
        hub_dir: Torch hub folder holding the torchvggish repo and its checkpoints.
        sample_rate: 16000 or 32000, the PANNs model to use.
    """

    panns_dir: Path
    hub_dir: Path
    sample_rate: int


def find_checkpoints(
    ckpt_dir: str | os.PathLike | None = None, sample_rate: int = 16000
) -> AudioldmEvalCheckpoints:
    """Checks that every file audioldm_eval would download is already on disk.

    Args:
        ckpt_dir: The checkpoint folder (layout in the module docstring); ``None`` reads
            ``$QAMDT_AUDIOLDM_EVAL_CKPT``.
        sample_rate: 16000 (as the paper's evaluation) or 32000.

    Returns:
        The checked locations.

    Raises:
        ConfigError: If no folder is given, or files are missing (all of them are named).
    """
    if sample_rate not in PANNS_FILES:
        raise ConfigError(f"audioldm_eval supports 16000 or 32000 Hz, got {sample_rate}")
    if ckpt_dir is None:
        ckpt_dir = os.environ.get(ENV_VAR) or None
    if ckpt_dir is None:
        raise ConfigError(
            f"the audioldm-eval backend needs its checkpoints on disk: pass "
            f"--audioldm-eval-ckpt DIR or set ${ENV_VAR} (it is never allowed to download)"
        )
    panns_dir = Path(ckpt_dir).expanduser()
    hub_dir = panns_dir / "hub"
    if not hub_dir.is_dir():
        import torch.hub

        hub_dir = Path(torch.hub.get_dir())
    needed = [panns_dir / PANNS_FILES[sample_rate]]
    needed += [hub_dir / VGGISH_REPO_DIR / "hubconf.py"]
    needed += [hub_dir / "checkpoints" / name for name in VGGISH_FILES]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise ConfigError(
            "audioldm_eval checkpoint file(s) missing (it would try to download them; "
            f"copy them there first): {', '.join(missing)}"
        )
    return AudioldmEvalCheckpoints(panns_dir, hub_dir, sample_rate)


def import_audioldm_eval() -> types.ModuleType:
    """Imports ``audioldm_eval``.

    Raises:
        ConfigError: If it is not installed or cannot be imported (it needs torchaudio,
            ssr-eval and torchlibrosa; torchaudio has no CPU build on these machines).
    """
    if importlib.util.find_spec("audioldm_eval") is None:
        raise ConfigError(
            "the audioldm-eval backend needs the 'audioldm_eval' package, which is not "
            "installed; install it (with torchaudio, ssr-eval, torchlibrosa) on a machine "
            "that has torchaudio, or use --backend embedded"
        )
    try:
        return importlib.import_module("audioldm_eval")
    except Exception as exc:  # noqa: BLE001 - any import failure gets the same advice
        raise ConfigError(
            f"audioldm_eval is installed but cannot be imported ({type(exc).__name__}: {exc}); "
            "it needs torchaudio, ssr-eval and torchlibrosa, or use --backend embedded"
        ) from exc


class AudioldmEvalBackend:
    """Scores folders of audio with audioldm_eval, offline and non-interactively.

    Args:
        ckpt_dir: Checkpoint folder (see the module docstring), or ``None`` for
            ``$QAMDT_AUDIOLDM_EVAL_CKPT``.
        sample_rate: 16000 or 32000.
        device: Torch device; ``None`` takes CUDA when available.

    Raises:
        ConfigError: If checkpoints are missing or the package cannot be imported.
    """

    name = BACKEND_NAME

    def __init__(
        self,
        ckpt_dir: str | os.PathLike | None = None,
        sample_rate: int = 16000,
        device: str | None = None,
    ):
        self.checkpoints = find_checkpoints(ckpt_dir, sample_rate)
        self.module = import_audioldm_eval()
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self._helper = None

    def _build_helper(self):
        import torch

        helper_cls = self.module.EvaluationHelper
        device = torch.device(self.device)
        try:
            return helper_cls(self.checkpoints.sample_rate, device, backbone="cnn14")
        except TypeError:
            return helper_cls(self.checkpoints.sample_rate, device)

    def score(
        self,
        generated: Sequence[tuple[str, str | os.PathLike]],
        reference: Sequence[tuple[str, str | os.PathLike, float, float | None]],
    ) -> dict[str, float | None]:
        """FAD, KL (paired by key) and IS of one set of generated clips.

        Args:
            generated: ``(key, path)`` per generated clip; keys equal to a reference key
                pair the clips for KL (audioldm_eval pairs by file name, and only when
                more than 99 % of both folders' names match).
            reference: ``(key, path, offset_seconds, duration_seconds_or_None)`` per
                reference clip.

        Returns:
            ``frechet`` (FAD on VGGish), ``kl`` (softmax form), ``kl_sigmoid``, ``is``,
            ``is_std``; ``None`` where audioldm_eval gave -1 or NaN (KL when unpaired).

        Raises:
            QamdtError: If fewer than two clips are on either side (audioldm_eval needs
                two), it fails, or it tries to download or open a debugger.
        """
        if len(generated) < 2 or len(reference) < 2:
            raise QamdtError("audioldm_eval needs at least two clips on each side")
        with tempfile.TemporaryDirectory(prefix="qamdt-aeval-") as tmp:
            root = Path(tmp)
            gen_dir, ref_dir = root / "generated", root / "reference"
            _link_clips([(k, p, 0.0, None) for k, p in generated], gen_dir)
            _link_clips(reference, ref_dir)
            with _offline_guards(self.checkpoints, root):
                try:
                    if self._helper is None:
                        self._helper = self._build_helper()
                    raw = self._helper.main(str(gen_dir), str(ref_dir))
                except QamdtError:
                    raise
                except Exception as exc:
                    raise QamdtError(f"audioldm_eval failed ({type(exc).__name__}: {exc})") from exc
        raw = raw if isinstance(raw, dict) else {}
        return {
            "frechet": _number(raw.get("frechet_audio_distance")),
            "kl": _number(raw.get("kullback_leibler_divergence_softmax")),
            "kl_sigmoid": _number(raw.get("kullback_leibler_divergence_sigmoid")),
            "is": _number(raw.get("inception_score_mean")),
            "is_std": _number(raw.get("inception_score_std")),
        }


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if not math.isfinite(value) or value == -1 else value


def _link_clips(
    clips: Sequence[tuple[str, str | os.PathLike, float, float | None]], folder: Path
) -> None:
    """Puts each clip in ``folder`` as ``KEY.wav``: a link to the file, or a cut-out copy."""
    from qamdt.audio_io import load_audio, save_audio

    folder.mkdir(parents=True)
    used: set[str] = set()
    for key, path, offset, duration in clips:
        name, n = _safe_name(key), 1
        while name in used:
            n += 1
            name = f"{_safe_name(key)}__{n}"
        used.add(name)
        target = folder / f"{name}.wav"
        path = Path(path).resolve()
        if offset == 0 and duration is None and path.suffix.lower() == ".wav":
            target.symlink_to(path)
        else:
            wave, rate = load_audio(path, offset=offset, duration=duration, allow_silent=True)
            save_audio(target, wave, rate)


def _safe_name(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(key)) or "clip"


def _refuse_download(*args: Any, **kwargs: Any):
    raise ConfigError(
        "audioldm_eval tried to download or run a shell command during an offline run "
        f"(arguments {args[:2]}); put the checkpoint files in place first"
    )


def _refuse_debugger(*args: Any, **kwargs: Any):
    raise DebuggerDropError(
        "audioldm_eval hit an error and tried to open a debugger; the original error is "
        "chained below"
    )


@contextlib.contextmanager
def _offline_guards(checkpoints: AudioldmEvalCheckpoints, workdir: Path) -> Iterator[None]:
    """Runs audioldm_eval offline, against the given checkpoints, with no debugger."""
    import torch.hub

    ckpt_links = [workdir / "ckpt", workdir / ".cache" / "audioldm_eval" / "ckpt"]
    for folder in ckpt_links:
        folder.mkdir(parents=True, exist_ok=True)
        for name in PANNS_FILES.values():
            source = checkpoints.panns_dir / name
            if not source.is_file():
                # Only the file of the rate in use is loaded; the other is merely tested
                # for existence (missing, the package would fetch both with wget).
                source = checkpoints.panns_dir / PANNS_FILES[checkpoints.sample_rate]
            (folder / name).symlink_to(source.resolve())

    real_load = torch.hub.load
    hub_dir = str(checkpoints.hub_dir)

    def local_hub_load(repo_or_dir, model, *args, **kwargs):
        if repo_or_dir == VGGISH_REPO and kwargs.get("source", "github") == "github":
            kwargs["source"] = "local"
            repo_or_dir = str(checkpoints.hub_dir / VGGISH_REPO_DIR)
        return real_load(repo_or_dir, model, *args, **kwargs)

    stub_ipdb = types.ModuleType("ipdb")
    stub_ipdb.set_trace = _refuse_debugger
    saved_hub_dir = torch.hub.get_dir()
    saved_cwd = os.getcwd()
    saved_home = os.environ.get("HOME")
    patches = [
        (torch.hub, "load", local_hub_load),
        (torch.hub, "download_url_to_file", _refuse_download),
        (os, "system", _refuse_download),
        (pdb, "set_trace", _refuse_debugger),
        (builtins, "breakpoint", _refuse_debugger),
    ]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    saved_ipdb = sys.modules.get("ipdb")
    try:
        for obj, attr, value in patches:
            setattr(obj, attr, value)
        sys.modules["ipdb"] = stub_ipdb
        torch.hub.set_dir(hub_dir)
        os.environ["HOME"] = str(workdir)
        os.chdir(workdir)
        yield
    finally:
        os.chdir(saved_cwd)
        if saved_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = saved_home
        torch.hub.set_dir(saved_hub_dir)
        if saved_ipdb is None:
            sys.modules.pop("ipdb", None)
        else:
            sys.modules["ipdb"] = saved_ipdb
        for obj, attr, value in saved:
            setattr(obj, attr, value)
