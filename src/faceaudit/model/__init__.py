"""The Massive Attribute Classifier: a face-recognition backbone and the MAC head (torch only)."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .mac import MAC, MACConfig

__all__ = ["MAC", "MACConfig", "CheckpointError", "load_checkpoint", "save_checkpoint"]
