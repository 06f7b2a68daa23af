"""Training KeyPointNet: configuration (:mod:`.config`), the trainer (:mod:`.trainer`), checkpoints
(:mod:`.checkpointing`) and the ``kp2d-train`` command (:mod:`.cli`).

The trainer (and with it kornia, tensorboard) is imported on first use, so ``kp2d-train --help`` and the
configuration code do not need the training-only dependencies.
"""

from typing import Any

from kp2d_model.training.config import ConfigError, TrainConfig, load_config

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "Trainer", "TrainingError", "load_config"]
_FROM_TRAINER = ("Trainer", "TrainingError", "TrainResult")


def __getattr__(name: str) -> Any:
    if name in _FROM_TRAINER:
        from kp2d_model.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
