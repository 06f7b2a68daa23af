"""Names that moved between the torch releases this package runs on (2.1 and newer; a distribution's python3-torch
may be old): one place.

``OutOfMemoryError``: ``torch.OutOfMemoryError`` since 2.5, ``torch.cuda.OutOfMemoryError`` before (the same
class where both exist). ``grad_scaler(enabled)``: a CUDA gradient scaler, ``torch.amp.GradScaler("cuda")`` since
2.3, ``torch.cuda.amp.GradScaler`` before.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["OutOfMemoryError", "grad_scaler"]

OutOfMemoryError: type[Exception] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def grad_scaler(enabled: bool) -> Any:
    """A CUDA ``GradScaler`` (loss scaling for float16 training), disabled unless ``enabled``."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)
