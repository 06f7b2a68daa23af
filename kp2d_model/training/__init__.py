"""Training KeyPointNet: configuration (:mod:`.config`), the trainer (:mod:`.trainer`), checkpoints
(:mod:`.checkpointing`) and the ``kp2d-train`` command (:mod:`.cli`)."""

from kp2d_model.training.config import ConfigError, TrainConfig, load_config
from kp2d_model.training.trainer import Trainer, TrainingError, TrainResult

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "Trainer", "TrainingError", "load_config"]
