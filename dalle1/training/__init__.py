"""Training machinery shared by every stage: the loop, checkpoints, metrics, many processes."""

from dalle1.training.checkpoint import RunExistsError
from dalle1.training.optim import OptimConfig
from dalle1.training.trainer import TrainConfig, Trainer, TrainingDiverged

__all__ = ["OptimConfig", "RunExistsError", "TrainConfig", "Trainer", "TrainingDiverged"]
