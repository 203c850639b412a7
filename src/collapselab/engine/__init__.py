"""Training engine: the loop (``trainer``), optimisers (``optim``), run logging (``logging``),
atomic verified checkpoints (``checkpoint``) and step schedules (``schedules``)."""

from collapselab.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from collapselab.engine.logging import RunLogger, format_epoch_line, progress_bar, read_metrics
from collapselab.engine.optim import LARS, OPTIMIZERS, build_optimizer, parameter_groups

__all__ = [
    "LARS",
    "OPTIMIZERS",
    "CheckpointError",
    "RunLogger",
    "build_optimizer",
    "format_epoch_line",
    "load_checkpoint",
    "parameter_groups",
    "progress_bar",
    "read_metrics",
    "save_checkpoint",
]
