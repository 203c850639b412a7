"""Training engine pieces. Available now: atomic, verified checkpoints (``checkpoint``) and
step schedules (``schedules``: warm-up cosine, BYOL momentum, DINO temperature warm-up)."""

from collapselab.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]
