"""Stage 2: student training with Ray Train and DeepSpeed."""

from dsbs.train.trainer import TrainingError, TrainSummary, train_student

__all__ = ["TrainSummary", "TrainingError", "train_student"]
