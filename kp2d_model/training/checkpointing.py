"""Trainer checkpoints: written atomically, read back by the strict reader of :mod:`kp2d_model.torch_file`.

File layout (``format`` ``kp2d-train-v1``, read by :func:`kp2d_model.checkpoint.load_keypoint_net` too)::

    {"format": "kp2d-train-v1", "keypoint_net": state_dict, "io_net": state_dict | None,
     "optimizer": ..., "scheduler": ..., "grad_scaler": ... | None, "step": int, "epoch": int,
     "batch_in_epoch": int, "config": nested dict, "model_config": dict, "rng": {...}}

Only tensors and plain containers, so ``torch.load(weights_only=True)`` reads it too. :func:`atomic_save`
writes to a temporary file in the same folder, fsyncs it and renames it over the target: a crash or kill at
any moment leaves either the previous complete file or the new complete file, never a partial one.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kp2d_model.checkpoint import TRAINER_FORMAT, CheckpointError
from kp2d_model.torch_file import MAX_FILE_BYTES, TorchFileError, read_torch_file

__all__ = [
    "TEMPORARY_MARKER",
    "atomic_save",
    "capture_rng_state",
    "read_training_checkpoint",
    "remove_stale_temporaries",
    "restore_rng_state",
]

TEMPORARY_MARKER = ".tmp-"  # temporary files are ".<name>.tmp-<pid>" next to the target


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); a no-op where folders cannot be opened (Windows)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` via a temporary file + fsync + ``os.replace``; returns ``path``.

    If anything fails (serialisation error, full disk, KeyboardInterrupt), the temporary file is removed,
    the previous ``path`` is untouched, and the exception propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}{TEMPORARY_MARKER}{os.getpid()}")
    try:
        with open(temporary, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)
    return path


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files left by a killed :func:`atomic_save` in ``folder``; returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for candidate in folder.glob(f".*{TEMPORARY_MARKER}*"):
        if candidate.is_file():
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU/CUDA, NumPy, Python) as tensors and ints only."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_position": int(numpy_state[2]),
        "python": torch.tensor(python_state[1], dtype=torch.int64),
        "python_version": int(python_state[0]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state` (CUDA states only where the same number of devices is present)."""
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_position"], 0, 0.0))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()), None))
    cuda_states = state.get("cuda")
    if cuda_states is not None and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


REQUIRED_KEYS = ("keypoint_net", "optimizer", "scheduler", "step", "epoch", "config", "model_config")


def read_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a trainer checkpoint for resuming (CPU tensors); :class:`CheckpointError` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint to resume from not found")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CheckpointError(f"{path}: not a readable trainer checkpoint ({size} bytes, over {MAX_FILE_BYTES})")
    try:  # the strict reader of kp2d_model.torch_file: nothing in the file can act, sizes bounded
        state = read_torch_file(path.read_bytes())
    except (TorchFileError, OSError) as error:
        raise CheckpointError(f"{path}: not a readable trainer checkpoint ({error})") from None
    if not isinstance(state, dict) or state.get("format") != TRAINER_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a trainer checkpoint (format {found!r}, expected {TRAINER_FORMAT!r}); "
            "--resume needs a checkpoint written by kp2d-train (e.g. <out>/checkpoints/last.pt)"
        )
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{path}: trainer checkpoint lacks {missing}")
    return state
