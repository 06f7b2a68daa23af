"""The KP2D trainer: one process or many (``torchrun``), CPU or GPU, resumable.

One training step: a batch of images (``(B, 3, H, W)`` uint8 from :class:`kp2d_model.data.ImageFolderDataset`)
-> :func:`kp2d_model.augmentation.make_training_batch` on the device (homography + photometric) ->
:func:`kp2d_model.losses.kp2d_loss` -> backward -> Adam step. The learning rate is multiplied by
``optimizer.lr_decay`` every ``optimizer.lr_decay_epochs`` epochs.

Multi-process: under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised (NCCL on CUDA, gloo
on CPU), the loss module (KeypointNet + IO-Net) is wrapped in DistributedDataParallel so gradients are
averaged across ranks before every optimizer step, and each rank reads its own shard of every epoch's
shuffle. Rank 0 alone logs and writes checkpoints.

Reproducibility: the global torch RNG (dropout) and the augmentation generator are re-seeded at every step
from ``(seed, rank, step)``, and sample augmentation depends on ``(seed, epoch, index)`` only, so a run
resumed from a checkpoint continues exactly as the uninterrupted run would (on CPU, bit for bit).

Output folder::

    config.yaml                the resolved configuration
    metrics.jsonl              one JSON line per step: step, epoch, lr, loss terms, recall, seconds
    checkpoints/last.pt        trainer checkpoint (every train.checkpoint_every steps, each epoch, at the end)
    keypoint_net.safetensors   the trained KeypointNet in the project format (at the end)
    tensorboard/               scalars, keypoint overlay and score heatmap images
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from kp2d_model.augmentation import AugmentationOptions, make_training_batch
from kp2d_model.checkpoint import (
    TRAINER_FORMAT,
    CheckpointError,
    build_keypoint_net,
    normalize_model_config,
    read_checkpoint,
)
from kp2d_model.data import EpochSampler, ImageFolderDataset
from kp2d_model.losses import kp2d_loss
from kp2d_model.networks import InlierNet
from kp2d_model.torch_compat import OutOfMemoryError, grad_scaler
from kp2d_model.training.checkpointing import (
    atomic_save,
    capture_rng_state,
    read_training_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
)
from kp2d_model.training.config import ConfigError, TrainConfig, config_from_dict, config_to_dict
from kp2d_model.training.visualize import keypoint_overlay, score_heatmap

__all__ = ["DistributedContext", "KP2DLossModule", "TrainResult", "Trainer", "TrainingError", "setup_distributed"]

LOGGER = logging.getLogger(__name__)

LOSS_LOG_TERMS = ("total", "location", "descriptor", "score", "io", "recall")
CHECKPOINT_NAME = "last.pt"
EXPORT_NAME = "keypoint_net.safetensors"


class TrainingError(RuntimeError):
    """Training cannot go on (out of memory, non-finite loss, ...); the message says what to do."""


# --- distributed set-up ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs: rank among ``world_size`` processes, and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _select_device(setting: str, local_rank: int) -> torch.device:
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda":
        setting = f"cuda:{local_rank}"
    try:
        device = torch.device(setting)
    except RuntimeError as error:
        raise ConfigError(f"train.device {setting!r} is not a device ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device is {setting!r} but CUDA is not available here; use train.device=cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {setting!r}")
    return device


def setup_distributed(device_setting: str = "auto") -> DistributedContext:
    """Join the ``torchrun`` process group when ``WORLD_SIZE`` > 1 (NCCL for CUDA, gloo for CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _select_device(device_setting, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, local_rank, world_size, device)


# --- the loss as one module --------------------------------------------------------------------------


class KP2DLossModule(nn.Module):
    """KeypointNet + IO-Net whose ``forward(batch)`` is the whole KP2D loss (a dict of 0-d tensors).

    One forward per backward is what DistributedDataParallel expects, although the loss runs KeypointNet
    twice (source and target).
    """

    def __init__(self, keypoint_net: nn.Module, io_net: nn.Module | None, loss_options: dict[str, Any]):
        super().__init__()
        self.keypoint_net = keypoint_net
        self.io_net = io_net
        self.loss_options = dict(loss_options)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return kp2d_loss(self.keypoint_net, self.io_net, batch, **self.loss_options)


# The last convolution of each head; their outputs are cast to float32 under mixed precision.
HEAD_OUTPUT_LAYERS = {
    "KeypointNet": ("convDb", "convPb", "convFbb"),
    "KeypointResnet": ("decoderK.scoreconv", "decoderK.locconv", "decoderK.featconv"),
}


def _to_float32(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
    return output.float()


class MixedPrecisionNet(nn.Module):
    """A keypoint network run under ``torch.autocast(dtype)`` that returns float32 ``(score, coord, desc)``.

    The heads' last convolutions are cast to float32 before sigmoid / tanh, so keypoint coordinates (hundreds of
    pixels) are not rounded to bfloat16's 8 significant bits; the loss then runs in float32 outside autocast.
    """

    def __init__(self, net: nn.Module, model_type: str, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.net = net
        self.device_type = device_type
        self.dtype = dtype
        for name in HEAD_OUTPUT_LAYERS[model_type]:
            net.get_submodule(name).register_forward_hook(_to_float32)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            outputs = self.net(x)
        return tuple(output.float() for output in outputs)


def loss_options(config: TrainConfig) -> dict[str, Any]:
    """Keyword arguments of :func:`kp2d_loss` from the configuration."""
    loss = config.loss
    return {
        "keypoint_loss_weight": loss.keypoint_loss_weight,
        "descriptor_loss_weight": loss.descriptor_loss_weight,
        "score_loss_weight": loss.score_loss_weight,
        "descriptor_loss": config.model.descriptor_loss,
        "with_io": config.model.with_io,
        "margin": loss.margin,
        "relax_field": loss.relax_field,
        "io_cells": loss.io_cells,
        "io_top_k": loss.io_top_k,
        "single_pass": loss.single_pass,
    }


def augmentation_options(config: TrainConfig) -> AugmentationOptions:
    a = config.augmentation
    return AugmentationOptions(
        patch_ratio=a.patch_ratio,
        perspective_amplitude=a.perspective_amplitude,
        scaling_amplitude=a.scaling_amplitude,
        max_angle=math.radians(a.max_angle_deg),
        rotation_fits=a.rotation_fits,
        channel_shuffle_probability=a.channel_shuffle_probability,
        grayscale_probability=a.grayscale_probability,
        noise_probability=a.noise_probability,
        color_jitter=a.color_jitter,
    )


def _has_unused_parameters(config: TrainConfig) -> bool:
    """Whether some parameters get no gradient (DDP must then look for them every step)."""
    m = config.model
    if m.type == "KeypointResnet":
        return True  # the encoder's unused classification layer
    return not m.do_upsample or not (m.descriptor_loss or m.with_io)  # convFb / the whole descriptor head


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512_BF16 or AMX; Linux /proc/cpuinfo), so bf16 autocast pays."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _resolve_amp(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None = float32)."""
    if setting == "off":
        return None
    if setting == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else None
    if setting == "fp16":
        if device.type != "cuda":
            raise TrainingError("train.amp=fp16 needs a CUDA device; on the CPU use train.amp=bf16 or off")
        return torch.float16
    return torch.bfloat16


def step_seeds(seed: int, rank: int, step: int) -> tuple[int, int]:
    """Two independent 32-bit seeds (global torch RNG, augmentation generator) for one step of one rank."""
    first, second = np.random.SeedSequence((seed, rank, step)).generate_state(2)
    return int(first), int(second)


# --- results ---------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a :meth:`Trainer.fit` call did."""

    steps: int  # optimizer steps done in total (including before a resume)
    epochs_completed: int
    history: list[dict[str, float]] = field(default_factory=list)  # this call's steps (rank 0's loss terms)
    checkpoint: Path | None = None
    exported_model: Path | None = None
    interrupted: bool = False
    skipped_images: int = 0


def _ignore_interrupts(_worker_id: int) -> None:
    """DataLoader workers ignore Ctrl-C and SIGTERM (a terminal, ``timeout``, ``docker stop`` or a job
    scheduler signal the whole process group): the main process finishes its step, saves, then stops them,
    instead of a worker's death ending the run with a DataLoader error. Workers still exit on their own when
    the main process dies (PyTorch's parent watchdog)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class _StopFlag:
    """Set by SIGINT / SIGTERM; a second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        LOGGER.warning(
            "%s received: finishing the current step and saving a checkpoint (Ctrl-C again aborts without saving)",
            signal.Signals(signum).name,
        )

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        try:
            yield
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)


def _without_dropout(model_config: dict[str, Any]) -> dict[str, Any]:
    """A model config without ``with_drop``: dropout changes training, not the weights."""
    return {key: value for key, value in model_config.items() if key != "with_drop"}


# --- the trainer -----------------------------------------------------------------------------------


class Trainer:
    """Train KeypointNet (+ IO-Net) as configured; :meth:`fit` runs until ``train.epochs`` / ``train.max_steps``.

    ``out_dir``: the run folder (module docstring). ``resume``: a trainer checkpoint to continue from; its
    model section must match ``config``'s. ``init``: instead, a new run that starts from the KeypointNet weights
    of a model file (fine-tuning; :meth:`_init_weights`). ``context``: the distributed context (default: from
    the environment).
    """

    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | os.PathLike,
        resume: str | os.PathLike | None = None,
        context: DistributedContext | None = None,
        init: str | os.PathLike | None = None,
    ) -> None:
        if resume is not None and init is not None:
            raise ConfigError("give --resume (continue a run) or --init (start a new run from a model), not both")
        self.config = config
        self.out_dir = Path(out_dir)
        self.context = context if context is not None else setup_distributed(config.train.device)
        self.device = self.context.device
        self.model_config = normalize_model_config(config.model_config())
        if config.train.num_threads:
            torch.set_num_threads(config.train.num_threads)
        self.amp_dtype = _resolve_amp(config.train.amp, self.device)

        # Identical initial weights on every rank (DDP also broadcasts rank 0's).
        torch.manual_seed(config.train.seed)
        self.keypoint_net = build_keypoint_net(self.model_config).to(self.device).train()
        if init is not None:  # before DDP and channels-last wrap it: every rank loads the same file
            self._init_weights(Path(init))
        self.io_net = InlierNet(blocks=4).to(self.device).train() if config.model.with_io else None
        if config.train.channels_last:
            self.keypoint_net = self.keypoint_net.to(memory_format=torch.channels_last)
        network: nn.Module = self.keypoint_net
        if self.amp_dtype is not None:
            network = MixedPrecisionNet(self.keypoint_net, self.model_config["type"], self.device.type, self.amp_dtype)
        self.loss_module = KP2DLossModule(network, self.io_net, loss_options(config))
        self.model: nn.Module = self.loss_module
        if self.context.distributed:
            self.model = DistributedDataParallel(
                self.loss_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=_has_unused_parameters(config),
            )

        groups = [{"params": list(self.keypoint_net.parameters()), "name": "keypoint_net"}]
        if self.io_net is not None:
            groups.append({"params": list(self.io_net.parameters()), "name": "io_net"})
        self.optimizer = torch.optim.Adam(
            groups, lr=config.optimizer.learning_rate, weight_decay=config.optimizer.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=config.optimizer.lr_decay_epochs, gamma=config.optimizer.lr_decay
        )
        self.scaler = grad_scaler(enabled=self.amp_dtype == torch.float16)
        self.augmentation = augmentation_options(config)
        self.generator = torch.Generator(device=self.device)

        data = config.data
        self.dataset = ImageFolderDataset(
            data.path,
            data.image_shape,
            spatial_augment=data.spatial_augment,
            random_crop=data.random_crop,
            crop_zoom=data.crop_zoom,
            limit=data.limit,
            repeat=data.repeat,
            min_image_side=data.min_image_side,
            seed=config.train.seed,
            progress=self.context.is_main and config.log.progress,
        )
        self.sampler = EpochSampler(
            len(self.dataset),
            num_replicas=self.context.world_size,
            rank=self.context.rank,
            seed=config.train.seed,
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=data.batch_size,
            sampler=self.sampler,
            num_workers=data.num_workers,
            persistent_workers=data.num_workers > 0,
            pin_memory=self.device.type == "cuda",
            drop_last=False,
            worker_init_fn=_ignore_interrupts,
        )

        self.step = 0
        self.epoch = 0
        self.samples_in_epoch = 0  # this rank's samples of the current epoch already trained on
        self.skipped_at_load = 0
        self.checkpoint_path = self.out_dir / "checkpoints" / CHECKPOINT_NAME
        self._stop = _StopFlag()
        self._writer: Any = None
        self._wandb: Any = None
        self._metrics_file: Any = None
        self._window: list[dict[str, float]] = []
        if resume is not None:
            self._load(Path(resume))
        elif self.checkpoint_path.is_file():
            raise TrainingError(
                f"{self.out_dir} already holds a training run ({self.checkpoint_path}); continue it with "
                f"--resume {self.checkpoint_path}, or choose another --out"
            )

    # --- checkpoints ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The trainer checkpoint (plain containers and tensors; see :mod:`.checkpointing`)."""
        return {
            "format": TRAINER_FORMAT,
            "keypoint_net": {k: v.detach().cpu() for k, v in self.keypoint_net.state_dict().items()},
            "io_net": None
            if self.io_net is None
            else {k: v.detach().cpu() for k, v in self.io_net.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "step": self.step,
            "epoch": self.epoch,
            "samples_in_epoch": self.samples_in_epoch,
            "world_size": self.context.world_size,
            "config": config_to_dict(self.config),
            "model_config": dict(self.model_config),
            "rng": capture_rng_state(),
        }

    def save_checkpoint(self, path: Path | None = None) -> Path | None:
        """Write the checkpoint atomically (rank 0 only); returns its path (None on other ranks)."""
        if not self.context.is_main:
            return None
        return atomic_save(self.state_dict(), path or self.checkpoint_path)

    def _save_epoch_checkpoints(self, keep_epoch_file: bool) -> None:
        """At the end of an epoch: ``epoch_NNN.pt`` (if kept) *before* ``last.pt`` moves past it, so a kill between
        the two writes never loses the epoch's file (resuming from the older ``last.pt`` redoes the epoch)."""
        if not self.context.is_main:
            return
        state = self.state_dict()
        if keep_epoch_file:
            atomic_save(state, self.checkpoint_path.with_name(f"epoch_{self.epoch:03d}.pt"))
        atomic_save(state, self.checkpoint_path)

    def _check_parameters_finite(self) -> None:
        """Raise TrainingError when an optimizer step left a NaN/inf parameter (nothing is saved after this)."""
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        if bool(torch.stack([torch.isfinite(p).all() for p in parameters]).all()):
            return
        raise TrainingError(
            f"a network parameter became NaN or infinite in optimizer step {self.step + 1} (learning rate "
            f"{self._learning_rates()}); the run stops without saving these weights. Try a smaller "
            f"optimizer.learning_rate; the last good checkpoint is {self._last_checkpoint_text()}"
        )

    def _init_weights(self, path: Path) -> None:
        """Start from the KeypointNet weights in ``path`` (a released KP2D ``.ckpt``, a project ``.safetensors`` such
        as the bundled default model, or a trainer ``.pt``): fine-tuning. Step, optimizer and schedule start fresh,
        and so does the IO-Net (the released files have none). The network must be the configuration's (dropout
        aside, which has no weights). Raises ConfigError (a usage error) for an unreadable file or another network."""
        try:
            checkpoint = read_checkpoint(path)
        except CheckpointError as error:
            raise ConfigError(f"--init: {error}") from None
        source = normalize_model_config(checkpoint.model_config)
        if _without_dropout(source) != _without_dropout(self.model_config):
            raise ConfigError(
                f"--init {path}: its network {source} differs from the configuration's {self.model_config}; "
                "train it with the config of the same version (the bundled default model: default_model)"
            )
        self.keypoint_net.load_state_dict(checkpoint.state_dict, strict=True)
        if self.context.is_main:
            LOGGER.info("starting from the weights of %s", path)

    def _load(self, path: Path) -> None:
        state = read_training_checkpoint(path)
        saved_model = normalize_model_config(dict(state["model_config"]))
        if saved_model != self.model_config:
            raise CheckpointError(
                f"{path}: the checkpoint's network {saved_model} differs from the configuration's "
                f"{self.model_config}; resume with the checkpoint's config (omit CONFIG) or start a new run"
            )
        self.keypoint_net.load_state_dict(state["keypoint_net"])
        if self.io_net is not None:
            if state.get("io_net") is None:
                raise CheckpointError(f"{path}: the checkpoint has no IO-Net but model.with_io is true")
            self.io_net.load_state_dict(state["io_net"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as error:
            raise CheckpointError(f"{path}: optimizer state does not fit this model ({error})") from None
        self.scheduler.load_state_dict(state["scheduler"])
        saved_optimizer = dict(state["config"]).get("optimizer")
        if saved_optimizer != config_to_dict(self.config)["optimizer"]:
            self._apply_optimizer_settings(saved_optimizer)
        if state.get("grad_scaler") is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["grad_scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.samples_in_epoch = int(state.get("samples_in_epoch", 0))
        if int(state.get("world_size", 1)) != self.context.world_size:
            LOGGER.warning(
                "%s was written by %s process(es), resuming with %s: the rest of epoch %d is re-sharded",
                path,
                state.get("world_size", 1),
                self.context.world_size,
                self.epoch + 1,
            )
        if "rng" in state:
            restore_rng_state(state["rng"])
        if self.context.is_main:
            LOGGER.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch + 1)

    def _apply_optimizer_settings(self, saved: dict[str, Any] | None) -> None:
        """Make ``optimizer.*`` given for a resumed run take effect.

        The restored optimizer and scheduler state carry the old run's learning rate, decay and period, which
        would otherwise silently win over the configuration. The learning rate continues from where the new
        schedule stands after the epochs already done: ``learning_rate * lr_decay ** (epochs // lr_decay_epochs)``.
        """
        options = self.config.optimizer
        self.scheduler.step_size = options.lr_decay_epochs
        self.scheduler.gamma = options.lr_decay
        self.scheduler.base_lrs = [options.learning_rate] * len(self.optimizer.param_groups)
        decays_done = self.scheduler.last_epoch // options.lr_decay_epochs
        learning_rate = options.learning_rate * options.lr_decay**decays_done
        for group in self.optimizer.param_groups:
            group["initial_lr"] = options.learning_rate
            group["lr"] = learning_rate
            group["weight_decay"] = options.weight_decay
        self.scheduler._last_lr = [learning_rate] * len(self.optimizer.param_groups)
        if self.context.is_main:
            LOGGER.info("optimizer settings changed on resume (was %s): learning rate now %g", saved, learning_rate)

    def export_model(self, path: Path | None = None) -> Path | None:
        """Write the KeypointNet in the project format (.safetensors) for inference (rank 0 only)."""
        if not self.context.is_main:
            return None
        from kp2d_model.checkpoint import save_keypoint_net

        path = path or self.out_dir / EXPORT_NAME
        provenance = {
            "trained_with": "kp2d-train",
            "step": self.step,
            "epoch": self.epoch,
            "data": str(self.config.data.path),
            "config": config_to_dict(self.config),
        }
        save_keypoint_net(path, self.keypoint_net, self.model_config, provenance)
        return path

    # --- one step ------------------------------------------------------------------------------------

    def train_step(self, images: torch.Tensor) -> dict[str, float]:
        """One optimizer step on ``images`` ``(B, 3, H, W)`` (uint8, or float in [0, 1]); returns the loss terms.

        Raises :class:`TrainingError` (on every rank) when the loss is not finite; the weights are then unchanged.
        """
        seed_torch, seed_augmentation = step_seeds(self.config.train.seed, self.context.rank, self.step)
        torch.manual_seed(seed_torch)
        self.generator.manual_seed(seed_augmentation)
        images = images.to(self.device, non_blocking=True)
        if not images.is_floating_point():
            images = images.float().div_(255.0)
        with torch.no_grad():
            batch = make_training_batch(images, self.augmentation, self.generator)
        if self.config.train.channels_last:
            batch = {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in batch.items()}
        terms = self.model(batch)  # (mixed precision, if on, is inside: MixedPrecisionNet)
        total = terms["total"]
        values = torch.stack([terms[name].detach().float() for name in LOSS_LOG_TERMS])
        finite = torch.isfinite(values[:1]).float()
        if self.context.distributed:
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        terms_now = dict(zip(LOSS_LOG_TERMS, values.tolist(), strict=True))
        if finite.item() < 1.0:
            raise TrainingError(
                f"the loss is not finite at step {self.step + 1} (terms {terms_now}); "
                "the weights were not updated. Try a smaller optimizer.learning_rate or train.amp=off; "
                f"the last good checkpoint is {self._last_checkpoint_text()}"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        try:
            self.scaler.step(self.optimizer)
        except RuntimeError as error:
            if "overflow" not in str(error):
                raise
            raise TrainingError(
                f"optimizer step {self.step + 1} overflowed float32 ({str(error).splitlines()[0]}; learning rate "
                f"{self._learning_rates()}); nothing saved from it. Try a smaller optimizer.learning_rate; the last "
                f"good checkpoint is {self._last_checkpoint_text()}"
            ) from None
        self.scaler.update()
        self._check_parameters_finite()
        self.step += 1
        return terms_now

    def _last_checkpoint_text(self) -> str:
        return str(self.checkpoint_path) if self.checkpoint_path.is_file() else "none (no checkpoint written yet)"

    # --- logging -------------------------------------------------------------------------------------

    def _open_logs(self) -> None:
        if not self.context.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.checkpoint_path.parent)
        (self.out_dir / "config.yaml").write_text(
            yaml.safe_dump(config_to_dict(self.config), sort_keys=False), encoding="utf-8"
        )
        metrics = self.out_dir / "metrics.jsonl"
        if metrics.is_file():  # resuming: drop steps logged after the checkpoint (they will be redone)
            kept = []
            for number, line in enumerate(metrics.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
                try:
                    record = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:  # a line torn by a kill mid-write: the checkpoint is still good
                    LOGGER.warning("%s line %d is incomplete (torn by an interrupted write); dropped", metrics, number)
                    continue
                if isinstance(record, dict) and record.get("step", 0) <= self.step:
                    kept.append(line)
            metrics.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self._metrics_file = open(metrics, "a", encoding="utf-8")  # noqa: SIM115
        from torch.utils.tensorboard import SummaryWriter

        # On resume, events after the checkpoint's step (from the interrupted run) are purged.
        self._writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self.step + 1 if self.step else None)
        if self.config.log.wandb:
            try:
                import wandb
            except ImportError:
                LOGGER.warning("log.wandb is true but wandb is not installed (pip install wandb); not logging to it")
            else:
                self._wandb = wandb.init(
                    project=self.config.log.wandb_project,
                    config=config_to_dict(self.config),
                    dir=str(self.out_dir),
                    resume="allow",
                )

    def _close_logs(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def _learning_rates(self) -> dict[str, float]:
        return {group.get("name", str(i)): group["lr"] for i, group in enumerate(self.optimizer.param_groups)}

    def _log_step(self, terms: dict[str, float], seconds: float, images: torch.Tensor) -> None:
        if not self.context.is_main:
            return
        record = {"step": self.step, "epoch": self.epoch + 1, "seconds": round(seconds, 4), **terms}
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()
        self._window.append({**terms, "seconds": seconds})
        if self.step % self.config.log.every == 0:
            means = {key: sum(r[key] for r in self._window) / len(self._window) for key in self._window[0]}
            scalars = {f"loss/{name}": means[name] for name in LOSS_LOG_TERMS if name != "recall"}
            scalars["train/recall"] = means["recall"]
            scalars["train/seconds_per_step"] = means["seconds"]
            scalars["train/images_per_second"] = images.shape[0] * self.context.world_size / max(means["seconds"], 1e-9)
            scalars["data/skipped_images"] = len(self.dataset.skipped) + self.skipped_at_load
            scalars.update({f"lr/{name}": lr for name, lr in self._learning_rates().items()})
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, self.step)
            if self._wandb is not None:
                self._wandb.log(scalars, step=self.step)
            self._window = []
        image_every = self.config.log.image_every
        if image_every and self.step % image_every == 0:
            self._log_images(images)

    @torch.no_grad()
    def _log_images(self, images: torch.Tensor) -> None:
        """Keypoints of the first image of the batch drawn on it, and its score heatmap (eval-mode network)."""
        image = images[:1].to(self.device)
        image = image.float() / 255.0 if not image.is_floating_point() else image
        from kp2d_model.image import normalize_image

        self.keypoint_net.eval()
        try:
            score, coord, _ = self.keypoint_net(normalize_image(image))
        finally:
            self.keypoint_net.train()
        height, width = image.shape[2:]
        overlay = keypoint_overlay(image[0], score[0], coord[0])
        heatmap = score_heatmap(score[0], height, width)
        self._writer.add_image("keypoints", overlay, self.step, dataformats="HWC")
        self._writer.add_image("score_heatmap", heatmap, self.step, dataformats="HWC")

    # --- evaluation ----------------------------------------------------------------------------------

    def _evaluate(self) -> None:
        """HPatches metrics of the epoch's checkpoint when eval.hpatches_path is set (rank 0; the others wait).

        A failing evaluation is logged and training goes on: it is an optional report, not part of training.
        """
        path = self.config.eval.hpatches_path
        if not path or (self.epoch % self.config.eval.every_epochs):
            return
        if self.context.is_main:
            try:
                from kp2d_model.evaluation.evaluate import evaluate_method
                from kp2d_model.evaluation.hpatches import find_sequences
                from kp2d_model.evaluation.methods import KeyPointNetMethod
            except ImportError as error:
                LOGGER.warning("eval.hpatches_path is set but kp2d_model.evaluation is unavailable (%s)", error)
            else:
                height, width = self.config.data.image_shape
                try:
                    method = KeyPointNetMethod(self.checkpoint_path, device=self.device)
                    run = evaluate_method(method, find_sequences(path), (width, height), self.config.eval.top_k)
                    summary = run.summary()["all"]
                except Exception as error:  # noqa: BLE001 - report and keep training
                    LOGGER.warning("HPatches evaluation after epoch %d failed: %s", self.epoch, error)
                else:
                    for name, value in summary.items():
                        if isinstance(value, int | float) and math.isfinite(value) and name != "pairs":
                            self._writer.add_scalar(f"hpatches/{name}", value, self.step)
                    LOGGER.info("HPatches after epoch %d: %s", self.epoch, summary)
        if self.context.distributed:
            dist.barrier()

    # --- the loop ------------------------------------------------------------------------------------

    def _stop_agreed(self) -> bool:
        """Whether any rank got a stop signal (all ranks must leave the loop together)."""
        if not self.context.distributed:
            return self._stop.requested
        flag = torch.tensor([float(self._stop.requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _out_of_memory(self, error: BaseException) -> TrainingError:
        data = self.config.data
        smaller = max(1, data.batch_size // 2)
        return TrainingError(
            f"out of memory at step {self.step + 1} on {self.device} with data.batch_size={data.batch_size} and "
            f"data.image_shape={data.image_shape} ({str(error).splitlines()[0]}). Try data.batch_size={smaller}"
            + (", train.amp=bf16" if self.device.type == "cuda" and self.amp_dtype is None else "")
            + f" or a smaller data.image_shape. The last good checkpoint is {self._last_checkpoint_text()}; "
            "continue with --resume."
        )

    def fit(self) -> TrainResult:
        """Train until the configured end, a stop signal, or an error; always closes the logs."""
        config = self.config
        result = TrainResult(steps=self.step, epochs_completed=self.epoch)
        self._open_logs()
        if self.context.is_main:
            LOGGER.info(
                "training %s on %s: %s, batch %d x %d process(es), %s",
                self.model_config["type"],
                self.device,
                self.dataset.describe(),
                config.data.batch_size,
                self.context.world_size,
                f"resuming at step {self.step}" if self.step else "from step 0",
            )
        max_steps = config.train.max_steps
        try:
            with self._stop.installed():
                while self.epoch < config.train.epochs and not (max_steps and self.step >= max_steps):
                    finished_epoch = self._run_epoch(result, max_steps)
                    if result.interrupted:
                        break
                    if finished_epoch:
                        self.epoch += 1
                        self.samples_in_epoch = 0
                        self._step_scheduler()
                        result.epochs_completed = self.epoch
                        self._save_epoch_checkpoints(config.train.keep_epoch_checkpoints)
                        self._evaluate()
                if not result.interrupted:
                    result.exported_model = self.export_model()
                result.checkpoint = self.save_checkpoint()
        finally:
            self._close_logs()
        result.steps = self.step
        result.skipped_images = len(self.dataset.skipped) + self.skipped_at_load
        if self.context.is_main:
            LOGGER.info(
                "%s at step %d; checkpoint %s",
                "stopped" if result.interrupted else "finished",
                self.step,
                result.checkpoint,
            )
        return result

    def _step_scheduler(self) -> None:
        """Advance the learning-rate schedule by one epoch.

        A run resumed after a stop on an epoch's last batch closes that epoch before its own first optimizer step;
        PyTorch's scheduler takes that for the wrong call order and warns, wrongly here (its state was restored)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()

    def _run_epoch(self, result: TrainResult, max_steps: int) -> bool:
        """Train on the rest of the current epoch; returns whether the epoch was completed."""
        config = self.config
        self.sampler.set_epoch(self.epoch, self.samples_in_epoch)
        epoch_samples = len(self.sampler) + self.samples_in_epoch  # this process's share of the epoch
        batches_total = math.ceil(epoch_samples / config.data.batch_size)
        progress = tqdm(
            total=batches_total,
            initial=math.ceil(self.samples_in_epoch / config.data.batch_size),
            desc=f"epoch {self.epoch + 1}/{config.train.epochs}",
            unit="step",
            dynamic_ncols=True,
            disable=not (self.context.is_main and config.log.progress),
        )
        iterator = iter(self.loader)
        try:
            while True:
                started = time.perf_counter()
                try:
                    batch = next(iterator)
                except StopIteration:
                    return True
                except RuntimeError:
                    if self._stop.requested:  # DataLoader workers died of the same Ctrl-C
                        result.interrupted = True
                        return False
                    raise
                images = batch["image"]
                self.skipped_at_load += int(batch["skipped"].sum())
                try:
                    terms = self.train_step(images)
                except OutOfMemoryError as error:
                    raise self._out_of_memory(error) from None
                except RuntimeError as error:
                    if "can't allocate memory" in str(error) or "out of memory" in str(error):
                        raise self._out_of_memory(error) from None
                    raise
                self.samples_in_epoch += images.shape[0]
                seconds = time.perf_counter() - started
                result.history.append(terms)
                self._log_step(terms, seconds, images)
                progress.update(1)
                progress.set_postfix(
                    loss=f"{terms['total']:.3f}",
                    loc=f"{terms['location']:.3f}",
                    desc=f"{terms['descriptor']:.3f}",
                    score=f"{terms['score']:.3f}",
                    io=f"{terms['io']:.3f}",
                    recall=f"{terms['recall']:.2f}",
                    refresh=False,
                )
                if config.train.checkpoint_every and self.step % config.train.checkpoint_every == 0:
                    self.save_checkpoint()
                if self._stop_agreed():
                    result.interrupted = True
                    return False
                if max_steps and self.step >= max_steps:
                    # On the epoch's last batch the epoch is complete: closed here (decay, epoch checkpoint,
                    # evaluation), not by a resumed run with no step of its own.
                    return self.samples_in_epoch >= epoch_samples
        finally:
            progress.close()
            del iterator


def load_config_from_checkpoint(path: str | os.PathLike) -> TrainConfig:
    """The :class:`TrainConfig` a trainer checkpoint was written with."""
    state = read_training_checkpoint(path)
    return config_from_dict(dict(state["config"]), f"{path} (config)")
