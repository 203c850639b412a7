"""Evaluation protocols on frozen features (docs/evaluation.md).

- :func:`knn_accuracy`: weighted kNN (cosine, k = 200, exp(s/τ) votes, τ = 0.1), top-1/top-5.
- :func:`linear_probe`: ℓ2-regularised logistic regression by full-batch L-BFGS on standardised features.
- :func:`kmeans_clustering` / :func:`code_clustering`: NMI, ARI and Hungarian ACC.
- :func:`evaluate`: all of them on an ``nn.Module`` or precomputed features, with raw-pixel and
  random-init baselines.

Accuracies and scores are fractions in [0, 1].

The protocol modules are pure functions of features; ``api`` (``evaluate``) also opens run
folders (``collapselab.runs``, which reads configs and so the method registry). Methods import
protocol functions (FALCON's code clustering), so ``api``'s names are loaded on first use
(PEP 562) and importing a protocol module never pulls the run-folder layer in.
"""

from typing import Any

from collapselab.evaluation.clustering import (
    adjusted_rand_index,
    cluster_scores,
    code_clustering,
    contingency_table,
    hungarian_accuracy,
    kmeans_clustering,
    normalized_mutual_info,
)
from collapselab.evaluation.features import (
    FeatureSplits,
    extract_features,
    load_features,
    random_init_copy,
)
from collapselab.evaluation.knn import (
    accuracy_from_scores,
    hits_from_scores,
    knn_accuracy,
    knn_hits,
    knn_scores,
)
from collapselab.evaluation.linear import (
    ConvergenceWarning,
    LinearProbe,
    fit_linear_probe,
    linear_probe,
)

__all__ = [
    "BASELINES",
    "PROTOCOLS",
    "CheckpointSource",
    "ConvergenceWarning",
    "FeatureSplits",
    "LinearProbe",
    "SummaryNotWrittenWarning",
    "accuracy_from_scores",
    "adjusted_rand_index",
    "append_to_summary",
    "cluster_scores",
    "code_clustering",
    "contingency_table",
    "evaluate",
    "extract_features",
    "fit_linear_probe",
    "hits_from_scores",
    "hungarian_accuracy",
    "kmeans_clustering",
    "knn_accuracy",
    "knn_hits",
    "knn_scores",
    "linear_probe",
    "load_features",
    "normalized_mutual_info",
    "pixel_splits",
    "random_init_copy",
    "run_protocols",
]

_API_NAMES = ("BASELINES", "PROTOCOLS", "CheckpointSource", "SummaryNotWrittenWarning",
              "append_to_summary", "evaluate", "pixel_splits", "run_protocols")


def __getattr__(name: str) -> Any:
    if name in _API_NAMES:
        from collapselab.evaluation import api

        return getattr(api, name)
    raise AttributeError(f"module 'collapselab.evaluation' has no attribute {name!r}")
