"""Training configuration: a typed schema, YAML files and ``key=value`` command-line overrides.

A configuration is a :class:`TrainConfig` of sections (``model``, ``loss``, ``optimizer``, ``data``,
``augmentation``, ``train``, ``log``, ``eval``). Every field has a default reproducing the original KP2D
trainer (Adam 1e-3, lr x 0.5 every 40 epochs, 50 epochs, batch 8, 240x320, seed 42, v4 flags), so a YAML
file only needs the keys it changes. YAML files and overrides are checked against the schema: an unknown
key or a value of the wrong type is a :class:`ConfigError` naming the key, the source and the valid keys.

The released configurations ship as ``config/train/<name>.yaml`` (``v0`` ... ``v4``, ``v2_resnet``);
:func:`resolve_config_path` finds them from a source checkout and from an installed package.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kp2d_model.homography import patch_extent

__all__ = [
    "ConfigError",
    "apply_overrides",
    "TrainConfig",
    "config_search_dirs",
    "config_to_dict",
    "config_from_dict",
    "load_config",
    "parse_override",
    "resolve_config_path",
    "valid_keys",
]


class ConfigError(ValueError):
    """A training configuration that cannot be used: unknown key, wrong type, missing file, bad value."""


@dataclass
class ModelConfig:
    """Network layout and which losses train it (the KP2D versions v0..v4 differ only here)."""

    type: str = "KeypointNet"  # "KeypointNet" | "KeypointResnet"
    use_color: bool = True
    do_upsample: bool = True
    do_cross: bool = True
    with_drop: bool = True  # Dropout2d(0.2) in the trunk and heads, as the original trains
    with_io: bool = True  # train the IO-Net (inlier/outlier classifier) alongside
    descriptor_loss: bool = True


@dataclass
class LossConfig:
    """Loss weights and options passed to :func:`kp2d_model.losses.kp2d_loss`."""

    keypoint_loss_weight: float = 1.0
    descriptor_loss_weight: float = 1.0  # the loss adds the original's x2 itself
    score_loss_weight: float = 1.0
    margin: float = 0.2  # triplet margin (the released models: 1.0)
    relax_field: float = 4.0  # px; hardest negatives are farther than this (the released models: 8)
    io_cells: str = "lowest"  # "lowest" (the original's quirk) | "highest"
    io_top_k: int = 300
    single_pass: bool = False  # both images in one forward (faster; BatchNorm statistics then differ)


@dataclass
class OptimizerConfig:
    """Adam for KeypointNet and IO-Net, step decay per epoch."""

    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    lr_decay: float = 0.5  # lr multiplied by this ...
    lr_decay_epochs: int = 40  # ... every this many epochs


@dataclass
class DataConfig:
    """Where the training images come from and how they are prepared (see :mod:`kp2d_model.data`)."""

    path: str = ""  # an image folder (searched recursively) or a text file listing images
    image_shape: list[int] = field(default_factory=lambda: [240, 320])  # [H, W], multiples of 8
    batch_size: int = 8  # per process (per GPU with torchrun)
    num_workers: int = 2  # DataLoader worker processes (0 = load in the training process)
    limit: int = 0  # use only the first N images (sorted); 0 = all
    repeat: int = 1  # the image list is repeated this many times per epoch
    min_image_side: int = 32  # px; smaller images are skipped
    spatial_augment: bool = True  # the original's random flips + RandomAffine(15 deg, 0.1, 0.9-1.1)
    random_crop: bool = False  # random crops at random scales instead of resizing the whole image
    crop_zoom: list[float] = field(default_factory=lambda: [1.0, 3.0])  # crop magnification range (1 = whole)


@dataclass
class AugmentationConfig:
    """Homography ranges and photometric switches (:class:`kp2d_model.augmentation.AugmentationOptions`).

    The homography defaults are the original's; a wider ``perspective_amplitude`` (with a smaller
    ``patch_ratio`` so the patch still fits: ``(patch_ratio + perspective_amplitude) * (1 + scaling_amplitude)
    < 1``) trains for stronger out-of-plane viewpoint changes.
    """

    patch_ratio: float = 0.7  # side of the warped patch as a fraction of the image (0.7: a ~1.4x zoom)
    perspective_amplitude: float = 0.2  # corner offsets, fraction of the image half-size
    scaling_amplitude: float = 0.1  # scales in [1 - a, 1 + a]
    max_angle_deg: float = 45.0  # rotations in [-max, max] degrees
    rotation_fits: bool = True  # only rotations that keep the patch inside the photo (original); false: any angle
    channel_shuffle_probability: float = 0.5
    grayscale_probability: float = 0.5
    noise_probability: float = 0.5
    color_jitter: float = 0.0  # the original's jitter was a no-op; > 0 enables a working one


@dataclass
class TrainLoopConfig:
    """Length, seeding, device and numerics of the run."""

    epochs: int = 50
    max_steps: int = 0  # stop after this many optimizer steps in total; 0 = run all epochs
    seed: int = 42
    device: str = "auto"  # "auto" (CUDA when available) | "cpu" | "cuda" | "cuda:N"
    amp: str = "auto"  # "auto": bf16 (fp16 on old GPUs) on CUDA, bf16 on CPUs with native bf16, else off | "off" | ...
    channels_last: bool = True  # NHWC memory format for the convolutions (faster with oneDNN and cuDNN)
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    checkpoint_every: int = 500  # steps between checkpoints (0 = only per epoch and at the end)
    keep_epoch_checkpoints: bool = False  # also keep checkpoints/epoch_NNN.pt (about 65 MB each)


@dataclass
class LogConfig:
    """Progress bar, TensorBoard and (optional) Weights & Biases."""

    every: int = 10  # steps between TensorBoard scalar logs
    image_every: int = 200  # steps between keypoint overlay / score heatmap images (0 = never)
    progress: bool = True  # tqdm progress bar (rank 0)
    wandb: bool = False  # also log to wandb (needs `pip install wandb`)
    wandb_project: str = "kp2d"


@dataclass
class EvalConfig:
    """Optional HPatches evaluation after each epoch (needs kp2d_model.evaluation)."""

    hpatches_path: str = ""  # empty = no evaluation
    top_k: int = 300
    every_epochs: int = 1


@dataclass
class TrainConfig:
    """The whole training configuration (the sections above)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def model_config(self) -> dict[str, Any]:
        """The network description :func:`kp2d_model.checkpoint.build_keypoint_net` takes."""
        m = self.model
        return {
            "type": m.type,
            "use_color": m.use_color,
            "do_upsample": m.do_upsample,
            "do_cross": m.do_cross,
            "with_drop": m.with_drop,
        }


CHOICES: dict[str, tuple[str, ...]] = {
    "model.type": ("KeypointNet", "KeypointResnet"),
    "loss.io_cells": ("lowest", "highest"),
    "train.amp": ("auto", "off", "bf16", "fp16"),
}


class _ConfigLoader(yaml.SafeLoader):
    """Safe YAML with YAML 1.2 booleans: only true / false, so ``amp: off`` stays the string "off"."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


# --- schema walking ---------------------------------------------------------------------------------


def _field_types(section_type: type) -> dict[str, Any]:
    hints = typing.get_type_hints(section_type)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_type)}


def valid_keys() -> list[str]:
    """All dotted keys of the schema, e.g. ``data.batch_size``."""
    keys = []
    for section, section_type in _field_types(TrainConfig).items():
        keys.extend(f"{section}.{name}" for name in _field_types(section_type))
    return keys


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is list:
        return f"list of {typing.get_args(kind)[0].__name__}"
    return kind.__name__


_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, kind: Any, key: str, source: str) -> Any:
    """Check ``value`` against the schema type ``kind``; ints are accepted for floats. Returns the value."""
    problem = f"{source}: {key} must be {_type_name(kind)}, got {value!r} ({type(value).__name__})"
    if typing.get_origin(kind) is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(problem)
        item_kind = typing.get_args(kind)[0]
        return [_coerce(item, item_kind, f"{key}[{i}]", source) for i, item in enumerate(value)]
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(problem)
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(problem)
        return value
    if kind is float:
        # PyYAML (YAML 1.1) reads exponents without a dot, such as 5e-4, as strings: accept those.
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(problem)
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(problem)
        return value
    raise ConfigError(f"{source}: {key} has an unsupported schema type {kind!r}")  # pragma: no cover


def _unknown_key_error(key: str, source: str) -> ConfigError:
    keys = valid_keys()
    return ConfigError(f"{source}: unknown key {key!r}. Valid keys:\n  " + "\n  ".join(keys))


def _set(config: TrainConfig, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    if len(parts) != 2 or parts[0] not in _field_types(TrainConfig):
        raise _unknown_key_error(key, source)
    section = getattr(config, parts[0])
    kinds = _field_types(type(section))
    if parts[1] not in kinds:
        raise _unknown_key_error(key, source)
    setattr(section, parts[1], _coerce(value, kinds[parts[1]], key, source))


def _flatten(tree: Any, source: str, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of sections at {prefix or 'the top level'}, got {tree!r}")
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(_flatten(value, source, key + "."))
        else:
            flat[key] = value
    return flat


def validate(config: TrainConfig, source: str = "config") -> TrainConfig:
    """Check value ranges the types cannot express; returns ``config``."""
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise ConfigError(f"{source}: {key} must be one of {list(allowed)}, got {value!r}")
    shape = config.data.image_shape
    multiple = 32 if config.model.type == "KeypointResnet" else 8
    if len(shape) != 2 or any(s <= 0 or s % multiple for s in shape):
        raise ConfigError(
            f"{source}: data.image_shape must be [H, W], both positive multiples of {multiple} for "
            f"{config.model.type}, got {shape}"
        )
    if len(config.data.crop_zoom) != 2 or not 1.0 <= config.data.crop_zoom[0] <= config.data.crop_zoom[1]:
        raise ConfigError(
            f"{source}: data.crop_zoom must be [min, max] with 1 <= min <= max, got {config.data.crop_zoom}"
        )
    positive = ("data.batch_size", "data.repeat", "train.epochs", "optimizer.lr_decay_epochs", "log.every")
    for key in positive:
        section, name = key.split(".")
        if getattr(getattr(config, section), name) < 1:
            raise ConfigError(f"{source}: {key} must be >= 1, got {getattr(getattr(config, section), name)}")
    non_negative = (
        "data.num_workers", "data.limit", "data.min_image_side", "train.max_steps", "train.num_threads",
        "train.checkpoint_every", "log.image_every", "eval.every_epochs",
    )  # fmt: skip
    for key in non_negative:
        section, name = key.split(".")
        if getattr(getattr(config, section), name) < 0:
            raise ConfigError(f"{source}: {key} must be >= 0, got {getattr(getattr(config, section), name)}")
    _check_finite(config, source)
    if max(shape) > MAX_IMAGE_SIDE:
        raise ConfigError(f"{source}: data.image_shape sides must be <= {MAX_IMAGE_SIDE} px, got {shape}")
    if not 0 <= config.train.seed < 2**63:
        raise ConfigError(f"{source}: train.seed must be in [0, 2^63), got {config.train.seed}")
    _check_homography_ranges(config.augmentation, source)
    if config.optimizer.learning_rate <= 0:
        raise ConfigError(f"{source}: optimizer.learning_rate must be > 0, got {config.optimizer.learning_rate}")
    if config.optimizer.weight_decay < 0:
        raise ConfigError(f"{source}: optimizer.weight_decay must be >= 0, got {config.optimizer.weight_decay}")
    if not 0 < config.optimizer.lr_decay <= 1:
        raise ConfigError(f"{source}: optimizer.lr_decay must be in (0, 1], got {config.optimizer.lr_decay}")
    if config.model.type == "KeypointResnet" and not config.model.use_color:
        raise ConfigError(f"{source}: model.use_color must be true for KeypointResnet")
    if not config.model.use_color:
        raise ConfigError(f"{source}: model.use_color=false (grey input) is not supported by the trainer")
    return config


# Training images larger than this per side are refused (the released models train at 240x320 / 256x320).
MAX_IMAGE_SIDE = 4096


def _check_finite(config: TrainConfig, source: str) -> None:
    """Refuse NaN / infinite values in any float setting (``optimizer.learning_rate=.inf`` and the like)."""
    for section_name in _field_types(TrainConfig):
        section = getattr(config, section_name)
        for name in _field_types(type(section)):
            value = getattr(section, name)
            values = value if isinstance(value, list) else [value]
            if any(isinstance(item, float) and not math.isfinite(item) for item in values):
                raise ConfigError(f"{source}: {section_name}.{name} must be a finite number, got {value}")


def _check_homography_ranges(a: AugmentationConfig, source: str) -> None:
    """The homography sampler's constraints, reported with the config keys that break them."""
    if not 0.0 < a.patch_ratio <= 1.0:
        raise ConfigError(f"{source}: augmentation.patch_ratio must be in (0, 1], got {a.patch_ratio}")
    if a.perspective_amplitude < 0.0:
        raise ConfigError(f"{source}: augmentation.perspective_amplitude must be >= 0, got {a.perspective_amplitude}")
    if not 0.0 <= a.scaling_amplitude < 1.0:
        raise ConfigError(f"{source}: augmentation.scaling_amplitude must be in [0, 1), got {a.scaling_amplitude}")
    if not 0.0 <= a.max_angle_deg <= 180.0:
        raise ConfigError(f"{source}: augmentation.max_angle_deg must be in [0, 180], got {a.max_angle_deg}")
    widest = patch_extent(a.patch_ratio, a.perspective_amplitude, a.scaling_amplitude)
    if widest >= 1.0:
        raise ConfigError(
            f"{source}: the warped patch does not fit in the image: (augmentation.patch_ratio + "
            f"augmentation.perspective_amplitude) * (1 + augmentation.scaling_amplitude) = ({a.patch_ratio} + "
            f"{a.perspective_amplitude}) * (1 + {a.scaling_amplitude}) = {widest:.3f} must be < 1"
        )


# --- public API -------------------------------------------------------------------------------------


def config_from_dict(tree: dict[str, Any], source: str = "config", base: TrainConfig | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from nested plain dicts (defaults for what is missing), type-checked."""
    config = base if base is not None else TrainConfig()
    for key, value in _flatten(tree, source).items():
        _set(config, key, value, source)
    return validate(config, source)


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Nested plain dicts (YAML- and ``torch.load(weights_only=True)``-safe)."""
    return dataclasses.asdict(config)


def parse_override(text: str) -> tuple[str, Any]:
    """``"data.batch_size=4"`` -> ``("data.batch_size", 4)``; the value is parsed as YAML (``[240, 320]``, ``true``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. data.batch_size=4")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({error})") from None
    return key, value


def config_search_dirs() -> list[Path]:
    """Folders searched for ``<name>.yaml``: the source checkout, then the installed ROS/pip share folder."""
    dirs = [Path(__file__).resolve().parents[2] / "config" / "train"]
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            dirs.append(Path(get_package_share_directory("kp2d_ros")) / "config" / "train")
        except (PackageNotFoundError, LookupError, ValueError, OSError):
            pass  # not in a sourced ROS workspace (AMENT_PREFIX_PATH unset) or kp2d_ros not installed there
    except ImportError:
        pass
    dirs.append(Path(sys.prefix) / "share" / "kp2d_ros" / "config" / "train")
    return dirs


def resolve_config_path(name_or_path: str | os.PathLike) -> Path:
    """A YAML path as given, or a name like ``v4`` looked up in :func:`config_search_dirs`."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists() or os.sep in str(name_or_path):
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        return path
    searched = config_search_dirs()
    for folder in searched:
        candidate = folder / f"{name_or_path}.yaml"
        if candidate.is_file():
            return candidate
    available = sorted({p.stem for folder in searched if folder.is_dir() for p in folder.glob("*.yaml")})
    raise ConfigError(
        f"no training config named {str(name_or_path)!r}; searched "
        + ", ".join(str(d) for d in searched)
        + (f"; available: {', '.join(available)}" if available else "; none of these folders holds configs")
        + ". Give a path to a .yaml file or one of the names."
    )


def load_config(name_or_path: str | os.PathLike | None, overrides: typing.Sequence[str] = ()) -> TrainConfig:
    """Load a YAML config (path or packaged name; None = defaults) and apply ``key=value`` overrides."""
    config = TrainConfig()
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        try:
            tree = _load_yaml(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read the YAML ({error})") from None
        config = config_from_dict(tree, str(path), config)
    return apply_overrides(config, overrides)


def apply_overrides(config: TrainConfig, overrides: typing.Sequence[str]) -> TrainConfig:
    """Apply ``key=value`` overrides to ``config`` in place (type-checked), validate, return it."""
    for text in overrides:
        key, value = parse_override(text)
        _set(config, key, value, f"override {text!r}")
    return validate(config, "config after overrides" if overrides else "config")
