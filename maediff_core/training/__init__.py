"""Training: the settings of a run (``settings``), its slices (``slices``), the loop that trains any
method's stages (``trainer``) and its checkpoints (``checkpoints``)."""

from .settings import TrainConfig
from .trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "train"]
