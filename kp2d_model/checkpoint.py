"""Read and write KeyPointNet checkpoints safely.

Three formats are read by :func:`load_keypoint_net` / :func:`read_checkpoint`:

1. **released KP2D** ``.ckpt`` (``v0.ckpt`` ... ``v4.ckpt``): a torch file holding
   ``{'state_dict', 'config'}`` where ``config`` is a pickled yacs ``CfgNode``. It is read *without yacs*
   and without torch's loader, by :mod:`kp2d_model.torch_file` (a strict pickle grammar: only tensors, plain
   containers and the yacs node type can be built; nothing in the file can call or modify anything); anything
   else is refused with :class:`CheckpointError` before any of it runs.
2. **project** ``.safetensors``: weights + JSON metadata (``format``, ``model_config``, ``provenance``) in
   the safetensors header; one file, no pickle at all. Written by :func:`save_keypoint_net`.
3. **trainer** ``.pt``: ``torch.save({"format": "kp2d-train-v1", "keypoint_net": ..., "io_net": ...,
   "model_config": ..., "config": ..., ...})`` with plain containers only, read by the same strict reader.

Every file is bounded before anything is allocated (:data:`kp2d_model.torch_file.MAX_FILE_BYTES`), and the
weights must be finite floating-point tensors (int64 only for BatchNorm counters) of the network's shapes.

``model_config`` is a plain dict ``{"type": "KeypointNet" | "KeypointResnet", "use_color", "do_upsample",
"do_cross", "with_drop"}`` (missing keys take the original KeypointNet defaults, all ``True``).
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from kp2d_model.networks import KeypointNet, KeypointResnet
from kp2d_model.torch_file import MAX_FILE_BYTES, TorchFileError, read_torch_file

__all__ = [
    "CheckpointError",
    "LoadedCheckpoint",
    "PROJECT_FORMAT",
    "TRAINER_FORMAT",
    "build_keypoint_net",
    "default_checkpoint_path",
    "load_keypoint_net",
    "normalize_model_config",
    "read_checkpoint",
    "save_keypoint_net",
]

PROJECT_FORMAT = "kp2d-keypoint-net-v1"
TRAINER_FORMAT = "kp2d-train-v1"
RELEASED_FORMAT = "kp2d-released"

NETWORK_TYPES = ("KeypointNet", "KeypointResnet")
MODEL_CONFIG_DEFAULTS: dict[str, Any] = {
    "type": "KeypointNet",
    "use_color": True,
    "do_upsample": True,
    "do_cross": True,
    "with_drop": True,
}

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: missing, corrupt, unsafe, or not matching the network."""


@dataclass
class LoadedCheckpoint:
    """Everything read from a checkpoint file (tensors on the CPU).

    ``format``: one of ``kp2d-released``, ``kp2d-keypoint-net-v1``, ``kp2d-train-v1``.
    ``config``: the training configuration as plain containers (released: the yacs config; trainer: its
    config; project: ``{}``). ``extra``: the trainer's other entries (io_net, optimizer, step, ...).
    """

    path: Path
    format: str
    state_dict: dict[str, torch.Tensor]
    model_config: dict[str, Any]
    provenance: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def default_checkpoint_path() -> Path:
    """Where the bundled default model lives: ``kp2d_model/weights/kp2d_default.safetensors``."""
    return Path(__file__).resolve().parent / "weights" / "kp2d_default.safetensors"


# --- model configuration ---------------------------------------------------------------------------


def normalize_model_config(model_config: dict[str, Any]) -> dict[str, Any]:
    """Validate ``model_config`` and fill in defaults; returns a new dict with exactly the known keys."""
    if not isinstance(model_config, dict):
        raise CheckpointError(f"model_config must be a dict, got {type(model_config).__name__}")
    unknown = sorted(set(model_config) - set(MODEL_CONFIG_DEFAULTS))
    if unknown:
        raise CheckpointError(f"model_config has unknown key(s) {unknown}; allowed: {sorted(MODEL_CONFIG_DEFAULTS)}")
    config = {**MODEL_CONFIG_DEFAULTS, **model_config}
    if config["type"] not in NETWORK_TYPES:
        raise CheckpointError(f"model_config['type'] must be one of {NETWORK_TYPES}, got {config['type']!r}")
    for key in ("use_color", "do_upsample", "do_cross", "with_drop"):
        if not isinstance(config[key], bool):
            raise CheckpointError(f"model_config[{key!r}] must be a bool, got {config[key]!r}")
    if config["type"] == "KeypointResnet" and not config["use_color"]:
        raise CheckpointError("model_config: KeypointResnet takes 3-channel input; use_color=False is not supported")
    return config


def build_keypoint_net(model_config: dict[str, Any]) -> nn.Module:
    """A freshly initialised KeypointNet / KeypointResnet (train mode) for ``model_config``.

    KeypointResnet ignores ``do_upsample`` and ``do_cross`` (its layout is fixed, as in the original).
    """
    config = normalize_model_config(model_config)
    if config["type"] == "KeypointResnet":
        return KeypointResnet(with_drop=config["with_drop"])
    return KeypointNet(
        use_color=config["use_color"],
        do_upsample=config["do_upsample"],
        with_drop=config["with_drop"],
        do_cross=config["do_cross"],
    )


def model_config_from_released(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """``model_config`` from a released checkpoint's ``config.model.params``.

    Unlike the original eval script (which builds *any* checkpoint whose params merely contain
    ``keypoint_net_type`` as a ResNet), the type is KeypointResnet only when that key says so.
    """
    try:
        params = config["model"]["params"]
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"{path}: released checkpoint has no config.model.params") from error
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: config.model.params must be a mapping, got {type(params).__name__}")
    net_type = params.get("keypoint_net_type", "KeypointNet") or "KeypointNet"
    if net_type not in NETWORK_TYPES:
        raise CheckpointError(
            f"{path}: config.model.params.keypoint_net_type {net_type!r} is not one of {NETWORK_TYPES}"
        )
    model_config: dict[str, Any] = {"type": net_type}
    if net_type == "KeypointNet":
        for key in ("use_color", "do_upsample", "do_cross"):
            if key in params:
                model_config[key] = bool(params[key])
    return normalize_model_config(model_config)


# --- weights: what a state_dict may hold ----------------------------------------------------------

# Floating weights in any of these dtypes are accepted (load_state_dict casts them to the network's float32);
# integer buffers (BatchNorm's num_batches_tracked) must be int64.
FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _all_finite(value: torch.Tensor) -> bool:
    """Whether every element is finite: a float64 sum (cannot overflow for float32/16 values) is finite exactly
    then; one reduction instead of a boolean tensor the size of the weights. float64 tensors are checked directly."""
    if value.dtype == torch.float64:
        return bool(torch.isfinite(value).all())
    return bool(torch.isfinite(value.sum(dtype=torch.float64)))


def check_weights(state_dict: Any, path: PathLike, what: str = "state_dict") -> dict[str, torch.Tensor]:
    """``state_dict`` as a plain dict after checking every entry is a finite floating tensor or an int64 counter.

    Raises CheckpointError naming the first offending entries (bool/int weights, NaN/inf values, non-tensors).
    """
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: {what} must be a dict of tensors, got {type(state_dict).__name__}")
    problems = []
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            problems.append(f"{key!r}: {type(value).__name__}, not a tensor")
        elif value.dtype in FLOATING_DTYPES:
            if not _all_finite(value):
                bad = int((~torch.isfinite(value)).sum())
                problems.append(f"{key}: {bad} of {value.numel()} values are NaN or infinite")
        elif value.dtype != torch.int64 or not key.endswith("num_batches_tracked"):
            problems.append(f"{key}: dtype {value.dtype} (weights must be floating point)")
        if len(problems) >= 3:
            break
    if problems:
        raise CheckpointError(f"{path}: {what} refused: " + "; ".join(str(problem)[:200] for problem in problems))
    return dict(state_dict)


def _to_plain(value: Any) -> Any:
    """yacs nodes / OrderedDicts / sets / tuples -> dicts and lists (YAML/JSON friendly); tensors kept."""
    if isinstance(value, dict):
        return {key: _to_plain(item) for key, item in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_to_plain(item) for item in value)
    if isinstance(value, (list, tuple)):
        return [_to_plain(item) for item in value]
    return value


# --- reading ---------------------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    """``"zip"``, ``"safetensors"``, ``"legacy-torch"`` or raise CheckpointError."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(16)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{":
        (header_size,) = struct.unpack("<Q", head[:8])
        if header_size + 8 > size:
            raise CheckpointError(
                f"{path}: truncated safetensors file (header says {header_size} bytes, file is {size})"
            )
        return "safetensors"
    if head[:2] == b"\x80\x02":
        return "legacy-torch"
    raise CheckpointError(
        f"{path}: not a checkpoint (neither a torch file nor safetensors; first bytes {head[:8]!r}, size {size} bytes)"
    )


def _read_torch_file(path: Path) -> Any:
    """The object in a ``torch.save`` file (zip or legacy), read by :mod:`kp2d_model.torch_file`'s strict grammar.

    No torch loader runs: only tensors, plain containers and the yacs node type can be built, nothing in the
    file can call or modify anything, and declared sizes are checked against the file before allocating.
    """
    try:
        return read_torch_file(path.read_bytes())
    except TorchFileError as error:
        raise CheckpointError(f"{path}: {error}") from None


def _read_safetensors(path: Path) -> LoadedCheckpoint:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: corrupt safetensors file ({error})") from error
    if metadata.get("format") != PROJECT_FORMAT:
        raise CheckpointError(
            f"{path}: safetensors metadata 'format' is {metadata.get('format')!r}, not {PROJECT_FORMAT!r}"
        )
    try:
        model_config = json.loads(metadata["model_config"])
        provenance = json.loads(metadata.get("provenance", "{}"))
    except (KeyError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: safetensors metadata lacks valid JSON 'model_config' ({error})") from error
    state_dict = check_weights(state_dict, path)
    return LoadedCheckpoint(path, PROJECT_FORMAT, state_dict, normalize_model_config(model_config), provenance)


def _from_torch_object(path: Path, obj: Any) -> LoadedCheckpoint:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict at the top level, got {type(obj).__name__}")
    if obj.get("format") == TRAINER_FORMAT:
        for key in ("keypoint_net", "model_config"):
            if key not in obj:
                raise CheckpointError(f"{path}: trainer checkpoint lacks {key!r}")
        extra = {key: value for key, value in obj.items() if key not in ("keypoint_net", "model_config", "config")}
        provenance = {"format": TRAINER_FORMAT, "step": obj.get("step"), "epoch": obj.get("epoch")}
        return LoadedCheckpoint(
            path,
            TRAINER_FORMAT,
            check_weights(obj["keypoint_net"], path, "keypoint_net"),
            normalize_model_config(dict(obj["model_config"])),
            provenance,
            _to_plain(obj.get("config") or {}),
            extra,
        )
    if "state_dict" in obj and "config" in obj:
        config = _to_plain(obj["config"])
        model_config = model_config_from_released(config, path)
        provenance = {"format": RELEASED_FORMAT, "source": str(path)}
        state_dict = check_weights(obj["state_dict"], path)
        return LoadedCheckpoint(path, RELEASED_FORMAT, state_dict, model_config, provenance, config)
    raise CheckpointError(
        f"{path}: unrecognised checkpoint layout (top-level keys {sorted(map(str, obj))}); expected a released "
        f"KP2D checkpoint ('state_dict', 'config') or a trainer checkpoint (format {TRAINER_FORMAT!r})"
    )


def read_checkpoint(path: PathLike) -> LoadedCheckpoint:
    """Read any of the three formats into a :class:`LoadedCheckpoint` (CPU tensors); no network built."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CheckpointError(
            f"{path}: file of {size} bytes is larger than any checkpoint of these networks ({MAX_FILE_BYTES} bytes)"
        )
    try:
        kind = _sniff(path)
        if kind == "safetensors":
            return _read_safetensors(path)
        return _from_torch_object(path, _read_torch_file(path))
    except CheckpointError:
        raise
    except (OSError, RecursionError, MemoryError, TypeError, ValueError, AttributeError, KeyError) as error:
        # a malformed file never escapes as another exception type: callers (the node, the CLIs) rely on it
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(error).__name__}: {str(error)[:200]})") from None


def check_state_dict(net: nn.Module, state_dict: dict[str, torch.Tensor], path: PathLike) -> None:
    """Raise CheckpointError naming missing, unexpected and wrong-shape keys of ``state_dict`` for ``net``."""
    expected = net.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    wrong_shape = [
        f"{key}: checkpoint {tuple(state_dict[key].shape)} vs network {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)
    ]
    wrong_dtype = [
        f"{key}: checkpoint {state_dict[key].dtype} vs network {value.dtype}"
        for key, value in expected.items()
        if key in state_dict
        and not (
            value.dtype == state_dict[key].dtype
            or (value.is_floating_point() and state_dict[key].dtype in FLOATING_DTYPES)
        )
    ]
    problems = []
    if wrong_dtype:
        problems.append("wrong dtype: " + "; ".join(wrong_dtype[:5]))
    if wrong_shape:
        problems.append("wrong shape: " + "; ".join(wrong_shape[:5]))
    if missing:
        problems.append(f"missing keys: {missing[:5]}" + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""))
    if unexpected:
        problems.append(
            f"unexpected keys: {unexpected[:5]}" + (f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else "")
        )
    if problems:
        raise CheckpointError(f"{path}: state_dict does not match {type(net).__name__}: " + " | ".join(problems))


def load_keypoint_net(path: PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint (any of the three formats) into an eval-mode KeypointNet / KeypointResnet.

    ``forward(x)`` on a normalised ``(B, 3, H, W)`` tensor returns ``(score, coord, desc)`` with the
    original's eval-mode semantics. The network gets ``kp2d_model_config`` and ``kp2d_provenance``
    attributes (plain dicts) describing what was loaded.
    """
    checkpoint = read_checkpoint(path)
    net = build_keypoint_net(checkpoint.model_config)
    check_state_dict(net, checkpoint.state_dict, checkpoint.path)
    net.load_state_dict(checkpoint.state_dict, strict=True)
    net.kp2d_model_config = checkpoint.model_config
    net.kp2d_provenance = checkpoint.provenance
    return net.to(device).eval()


# --- writing ---------------------------------------------------------------------------------------


def save_keypoint_net(path: PathLike, net: nn.Module, model_config: dict[str, Any], provenance: dict[str, Any]) -> None:
    """Write ``net``'s weights + ``model_config`` + ``provenance`` (JSON-serialisable) as one .safetensors file.

    The file is written next to ``path`` and renamed into place, so a crash never leaves half a file.
    """
    path = Path(path)
    config = normalize_model_config(model_config)
    check_state_dict(build_keypoint_net(config), net.state_dict(), f"save_keypoint_net({path})")
    try:
        metadata = {
            "format": PROJECT_FORMAT,
            "model_config": json.dumps(config, sort_keys=True),
            "provenance": json.dumps(provenance, sort_keys=True),
        }
    except TypeError as error:
        raise CheckpointError(f"save_keypoint_net({path}): provenance is not JSON-serialisable ({error})") from error
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    save_file(tensors, str(temporary), metadata=metadata)
    os.replace(temporary, path)
