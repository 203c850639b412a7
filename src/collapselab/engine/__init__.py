"""Training engine pieces. Available now: atomic, verified checkpoints (``checkpoint``)."""

from collapselab.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]
