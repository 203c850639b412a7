"""collapselab: self-supervised representation learning with collapse made visible.

The public API is re-exported here; see ``docs/`` for the user guide.
"""

from __future__ import annotations

__version__ = "0.1.0.dev0"

from collapselab.diagnostics import CollapseMonitor, Diagnosis, diagnose
from collapselab.engine.trainer import Run, train
from collapselab.evaluation import evaluate
from collapselab.theory import simulate

__all__ = ["CollapseMonitor", "Diagnosis", "Run", "__version__", "diagnose", "evaluate", "simulate", "train"]
