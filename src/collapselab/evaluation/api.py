"""``evaluate``: every protocol on one representation, with its floors (raw pixels, random init) beside it."""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from collapselab._device import resolve_device
from collapselab._validation import ArrayLike, InputError, check_number
from collapselab.engine.checkpoint import CheckpointError, load_checkpoint
from collapselab.evaluation._inputs import check_count, check_l2, check_seed
from collapselab.evaluation.clustering import DEFAULT_N_INIT, code_clustering, kmeans_clustering
from collapselab.evaluation.features import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_OUTPUT_KEY,
    FEATURE_KEYS,
    FeatureSplits,
    cached_features,
    extract_features,
    load_features,
    model_fingerprint,
    random_init_copy,
)
from collapselab.evaluation.knn import DEFAULT_K, DEFAULT_TEMPERATURE, knn_accuracy
from collapselab.evaluation.linear import DEFAULT_L2, linear_probe
from collapselab.runs import Normalizer, RunFolder, backbone_from_state

PROTOCOLS = ("knn", "linear", "clustering")
BASELINES = ("pixels", "random")
RUN_CHECKPOINT = Path("checkpoints") / "last.pt"
FEATURE_CACHE = "features.npz"


def _check_names(given: Sequence[str] | str, valid: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = (given,) if isinstance(given, str) else tuple(given)
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise InputError(f"unknown {what} {name!r}{hint} (choose from {', '.join(valid)})")
    return names


@dataclass
class CheckpointSource:
    """What a run directory or checkpoint provides to :func:`evaluate`.

    ``model``: the backbone (frozen feature extractor); ``dataset``: the run's dataset, used when
    the caller names none; ``transform``: the run's input normalisation for uint8 batches, used
    when the caller passes none; ``run_dir``: where ``summary.json`` receives the scores
    (None for a bare checkpoint file); ``output_key``: the model output to read when it returns
    a dict; ``cache``: default feature-cache path (e.g. ``run_dir/features.npz``); ``step``: the
    training step of the weights; ``checkpoint``: the kept checkpoint's name (``epoch_0003``) when
    it is not the run's last, whose scores then go to ``summary["eval_checkpoints"][name]``
    instead of ``summary["eval"]`` (the final scores stay the final model's).
    """

    model: nn.Module
    dataset: str | None = None
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    run_dir: Path | None = None
    output_key: str | None = None
    cache: Path | None = None
    knn_k: int | None = None
    knn_temperature: float | None = None
    step: int | None = None
    checkpoint: str | None = None

    @property
    def summary_section(self) -> str:
        """Where :func:`evaluate` records the scores in ``summary.json``."""
        return "eval" if self.checkpoint is None else "eval_checkpoints"


Source = nn.Module | CheckpointSource | FeatureSplits | Mapping | tuple | str | os.PathLike


def load_checkpoint_source(path: str | os.PathLike) -> CheckpointSource:
    """Open a run folder or a trainer checkpoint for :func:`evaluate`.

    ``path``: a run folder (``runs/<name>``, read from ``checkpoints/last.pt``) or a ``.pt``
    checkpoint file. The backbone is rebuilt from the checkpoint's saved config and input shape,
    loaded (strict) from the ``backbone.``-prefixed weights, and put in eval mode on the CPU; the
    transform is the run's input normalisation. Scores go to the run folder's ``summary.json``
    (for a file, the run folder around ``checkpoints/`` when there is one) and features are
    cached there (``features.npz`` for ``last.pt``, ``features_<stem>.npz`` for other files).

    Raises:
        InputError: ``path`` does not exist, or a folder holds no ``checkpoints/last.pt``;
            :class:`FeaturesFileError` when it is a features file (an ``.npz``, or a ``.pt``
            dict with ``train_features``), which :func:`evaluate` reads as features instead.
        CheckpointError: the file is corrupt or was not written by the trainer.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(
            f"{path}: no such run folder or checkpoint file (pass runs/<name> or a .pt checkpoint)"
        )
    run_dir: Path | None
    if path.is_dir():
        folder = RunFolder(path)
        if not folder.has_checkpoint():
            raise InputError(
                f"{path}: expected a checkpoint at {folder.last_checkpoint}; is this a run folder? "
                "(the run may not have finished an epoch yet: the trainer writes "
                "checkpoints/last.pt after each epoch)"
            )
        checkpoint, run_dir, cache = folder.last_checkpoint, path, path / FEATURE_CACHE
    else:
        checkpoint = path
        parent = path.parent.parent
        in_run = path.parent.name == RUN_CHECKPOINT.parent.name and any(
            (parent / name).is_file() for name in ("summary.json", "config.yaml")
        )
        run_dir = parent if in_run else None
        cache_name = (
            FEATURE_CACHE if path.name == RUN_CHECKPOINT.name else f"features_{path.stem}.npz"
        )
        cache = parent / cache_name if in_run else None

    if checkpoint.suffix.lower() == ".npz":  # NumPy archives are features, never checkpoints
        raise FeaturesFileError(_features_file_message(checkpoint))
    try:
        state = load_checkpoint(checkpoint, map_location="cpu")
    except CheckpointError as err:
        if _holds_features(checkpoint):
            raise FeaturesFileError(_features_file_message(checkpoint)) from err
        raise CheckpointError(f"loading the backbone for evaluation: {err}") from err
    backbone = backbone_from_state(state, where=str(checkpoint))
    normalization = state.get("normalization") or {}
    transform = Normalizer(normalization.get("mean"), normalization.get("std"))
    return CheckpointSource(
        model=backbone,
        dataset=str(state["config"].get("data", {}).get("dataset")),
        transform=transform,
        run_dir=run_dir,
        output_key=None,
        cache=cache,
        knn_k=(state["config"].get("eval") or {}).get("knn_k"),
        knn_temperature=(state["config"].get("eval") or {}).get("knn_temperature"),
        step=int(state["global_step"]) if "global_step" in state else None,
        checkpoint=None if run_dir is None or checkpoint.name == RUN_CHECKPOINT.name else checkpoint.stem,
    )


class FeaturesFileError(InputError):
    """A features file (.npz, or a .pt dict of train/test features) given where a run folder or
    checkpoint was expected; :func:`evaluate` reads such a path as features instead."""


def _features_file_message(path: Path) -> str:
    return (
        f"{path}: this is a features file ({', '.join(FEATURE_KEYS)}), not a run folder or "
        f"checkpoint; pass it with --features: collapselab eval --features {path} "
        "(Python: evaluate(path) or load_features(path))"
    )


def _holds_features(path: Path) -> bool:
    """Whether ``path`` (a file that is not a trainer checkpoint) is a dict of train/test features."""
    try:
        arrays = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file either: the checkpoint error stands
        return False
    return isinstance(arrays, Mapping) and "train_features" in arrays and "format" not in arrays


def _as_splits(source: Any) -> FeatureSplits:
    if isinstance(source, FeatureSplits):
        return source
    if isinstance(source, Mapping):
        return FeatureSplits.from_mapping(source)
    if (
        isinstance(source, (tuple, list))
        and len(source) == 2
        and all(isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in source)
    ):
        (train_features, train_labels), (test_features, test_labels) = source
        return FeatureSplits(train_features, train_labels, test_features, test_labels)
    raise InputError(
        f"cannot evaluate a {type(source).__name__}: pass an nn.Module, a FeatureSplits, a dict with "
        "train_features/train_labels/test_features/test_labels, or ((train_features, train_labels), "
        "(test_features, test_labels))"
    )


def _load_dataset(
    dataset: str, data_dir: str | os.PathLike | None, download: bool
) -> tuple[Any, Any]:
    from collapselab.data import get_dataset

    return (
        get_dataset(dataset, "train", data_dir=data_dir, download=download),
        get_dataset(dataset, "test", data_dir=data_dir, download=download),
    )


def pixel_splits(train: Any, test: Any) -> FeatureSplits:
    """Raw-pixel features: images flattened to (N, C·H·W) and scaled to [0, 1]."""

    def flat(images: torch.Tensor) -> torch.Tensor:
        return images.reshape(images.shape[0], -1).to(torch.float32).div_(255.0)

    return FeatureSplits(flat(train.images), train.labels, flat(test.images), test.labels)


def run_protocols(
    splits: FeatureSplits,
    protocols: Sequence[str] = PROTOCOLS,
    *,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    l2: float | Sequence[float] = DEFAULT_L2,
    n_init: int = DEFAULT_N_INIT,
    seed: int = 0,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """The chosen protocols on one :class:`FeatureSplits`; clustering runs on the test split."""
    protocols = _check_names(protocols, PROTOCOLS, "protocol")
    s = splits
    results: dict[str, float] = {}
    if "knn" in protocols:
        results.update(
            knn_accuracy(
                s.train_features,
                s.train_labels,
                s.test_features,
                s.test_labels,
                k=k,
                temperature=temperature,
                device=device,
            )
        )
    if "linear" in protocols:
        results.update(
            linear_probe(
                s.train_features,
                s.train_labels,
                s.test_features,
                s.test_labels,
                l2=l2,
                seed=seed,
                device=device,
            )
        )
    if "clustering" in protocols:
        results.update(kmeans_clustering(s.test_features, s.test_labels, n_init=n_init, seed=seed))
        if s.test_codes is not None:
            results.update(code_clustering(s.test_codes, s.test_labels))
    return results


def evaluate(
    source: Source,
    dataset: str | None = None,
    *,
    protocols: Sequence[str] = PROTOCOLS,
    baselines: Sequence[str] = BASELINES,
    codes: ArrayLike | None = None,
    k: int | None = None,
    temperature: float | None = None,
    l2: float | Sequence[float] = DEFAULT_L2,
    n_init: int = DEFAULT_N_INIT,
    seed: int = 0,
    device: str | torch.device | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    output_key: str = DEFAULT_OUTPUT_KEY,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    cache: str | os.PathLike | None = None,
) -> dict[str, float]:
    """kNN, linear probe and clustering scores of a frozen representation, with baselines.

    Args:
        source: a feature extractor ``nn.Module`` (frozen: run in eval mode without gradients on
            ``dataset``'s train and test images), or precomputed features (see
            :class:`FeatureSplits`), or a run folder / checkpoint path (``str`` or
            ``PathLike``): :func:`load_checkpoint_source` rebuilds the backbone, the run's
            dataset, normalisation and feature cache serve as defaults, and the scores are
            merged into the run's ``summary.json`` under ``"eval"`` (when that fails, e.g. in a
            read-only folder, a :class:`SummaryNotWrittenWarning` says so and the scores are
            still returned). A path to a features file (.npz, or a .pt dict of features) is
            read with :func:`load_features`. Labels may be integers or text (class names,
            mapped to indices over both splits together).
        dataset: registered dataset name (``collapselab datasets``). For a module, the images to
            embed (required); for a checkpoint, default the run's dataset; for features, the
            source of the raw-pixel baseline (its splits must match the features' labels), and
            None (the default) skips it.
        protocols: any of ``"knn"``, ``"linear"``, ``"clustering"``.
        baselines: any of ``"pixels"`` (raw pixels in [0, 1]) and ``"random"`` (the same
            architecture re-initialised under ``seed``; modules only); () for none.
        codes: (M,) code indices or (M, c) code probabilities of the test samples, for the
            argmax-code NMI/ARI/ACC (overrides ``test_codes`` in features).
        k, temperature: kNN neighbours and vote temperature τ (None: the run's ``eval.knn_k``
            and ``eval.knn_temperature`` for a run or checkpoint, so its scores compare with
            the trainer's; else 200 and 0.1; both are recorded in the run's summary); a k
            larger than the training split is lowered to its size, with a warning; l2: probe λ (or candidates);
            n_init: k-means restarts; seed: k-means, probe validation split and random init.
            All are checked before any work (:class:`InputError`): k, n_init, batch_size whole
            numbers >= 1; seed a whole number, in [0, 2**32 − 1] with the clustering protocol
            (scikit-learn's k-means); temperature finite > 0; l2 finite >= 0.
        device: where to embed and compute (default: the module's device / the features').
        batch_size, transform, output_key: feature extraction (see :func:`extract_features`).
        data_dir, download: where the dataset lives / fetch it if missing.
        cache: .npz path caching the module's features, keyed by weights and dataset.

    Returns:
        Flat dict of floats (accuracies and scores as fractions in [0, 1]): ``knn_top1``,
        ``knn_top5``, ``linear_top1``, ``linear_train_top1``, ``nmi``, ``ari``, ``acc``
        [``codes_nmi``, ``codes_ari``, ``codes_acc``], and the same keys prefixed with
        ``baseline_pixels_`` and ``baseline_random_``; with the kNN also the settings it used,
        ``knn_k`` (after any cap) and ``knn_temperature``.
    """
    where: CheckpointSource | None = None  # the run (folder, step, checkpoint) the scores are recorded for
    # Settings first: a bad number is a one-line error before any checkpoint is read or work done.
    if k is not None:
        k = check_count(k, "k", what=" of neighbours")
    if temperature is not None:
        temperature = check_number(temperature, "temperature", positive=True, what=" (kNN vote temperature)")
    l2 = check_l2(l2)
    n_init = check_count(n_init, "n_init", what=" (k-means restarts)")
    protocols = _check_names(protocols, PROTOCOLS, "protocol")
    seed = check_seed(seed, kmeans="clustering" in protocols)
    batch_size = check_count(batch_size, "batch_size")
    if device is not None:  # a device this machine lacks is a one-line error, before any work
        device = resolve_device(device, "device")
    if isinstance(source, (str, os.PathLike)):
        try:
            source = load_checkpoint_source(source)
        except FeaturesFileError:  # an .npz (or .pt dict) of features: score those
            source = load_features(source)
    if isinstance(source, CheckpointSource):
        where = source
        dataset = dataset if dataset is not None else source.dataset
        transform = transform if transform is not None else source.transform
        output_key = source.output_key or output_key
        cache = cache if cache is not None else source.cache
        k = k if k is not None else source.knn_k
        temperature = temperature if temperature is not None else source.knn_temperature
        source = source.model
    k = DEFAULT_K if k is None else int(k)  # checked above, or the run's own (validated) config
    temperature = DEFAULT_TEMPERATURE if temperature is None else float(temperature)
    baselines = _check_names(baselines, BASELINES, "baseline")
    data = _load_dataset(dataset, data_dir, download) if dataset is not None else None

    if isinstance(source, nn.Module):
        if data is None:
            raise InputError(
                "evaluating an nn.Module needs images: pass dataset=<name> (see `collapselab datasets`)"
            )
        train, test = data

        def embed(model: nn.Module) -> FeatureSplits:
            def extract(images: torch.Tensor) -> torch.Tensor:
                return extract_features(
                    model,
                    images,
                    batch_size=batch_size,
                    device=device,
                    transform=transform,
                    output_key=output_key,
                )

            return FeatureSplits(
                extract(train.images), train.labels, extract(test.images), test.labels
            )

        fingerprint = model_fingerprint(source, dataset, len(train), len(test), output_key)
        splits = cached_features(cache, fingerprint, lambda: embed(source))
    else:
        splits = _as_splits(source)
        if data is not None:
            _check_matches_dataset(splits, data, dataset)
    if codes is not None:
        splits = FeatureSplits(
            splits.train_features,
            splits.train_labels,
            splits.test_features,
            splits.test_labels,
            test_codes=codes,
        )

    bank = len(splits.train_features)
    if "knn" in protocols and k > bank:
        warnings.warn(f"kNN: k={k} is larger than the {bank} training features; using k={bank}",
                      stacklevel=2)
        k = bank
    settings = dict(k=k, temperature=temperature, l2=l2, n_init=n_init, seed=seed, device=device)
    results = run_protocols(splits, protocols, **settings)
    if "pixels" in baselines and data is not None:
        pixels = run_protocols(pixel_splits(*data), protocols, **settings)
        results.update({f"baseline_pixels_{key}": value for key, value in pixels.items()})
    if "random" in baselines and isinstance(source, nn.Module):
        random_features = embed(random_init_copy(source, seed=seed))
        random = run_protocols(random_features, protocols, **settings)
        results.update({f"baseline_random_{key}": value for key, value in random.items()})
    if "knn" in protocols:  # the settings used (k capped at the bank's size)
        results.update(knn_k=k, knn_temperature=temperature)
    if where is not None and where.run_dir is not None:
        _record(where, results)
    return results


class SummaryNotWrittenWarning(UserWarning):
    """The scores were computed but could not be merged into the run's ``summary.json``
    (a read-only run folder, a full disk, a corrupt summary): :func:`evaluate` still returns them."""


def _record(where: CheckpointSource, results: Mapping[str, float]) -> None:
    """Merge ``results`` into the run's summary; a failure is a warning, the scores are kept."""
    assert where.run_dir is not None
    scores = {**results, **({"step": where.step} if where.step is not None else {})}
    summary_path = RunFolder(where.run_dir).summary_path
    try:
        if where.checkpoint is not None:  # a kept earlier checkpoint: its own entry, merged with what it had
            kept = RunFolder(where.run_dir).summary().get(where.summary_section) or {}
            scores = {where.checkpoint: {**(kept.get(where.checkpoint) or {}), **scores}}
        append_to_summary(where.run_dir, scores, key=where.summary_section)
    except (OSError, InputError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        warnings.warn(
            f"the scores could not be merged into {summary_path} ({reason}); they were computed "
            "but are not recorded there",
            SummaryNotWrittenWarning,
            stacklevel=3,
        )


def _check_matches_dataset(splits: FeatureSplits, data: tuple[Any, Any], dataset: str) -> None:
    for split, features, labels, part in (
        ("train", splits.train_features, splits.train_labels, data[0]),
        ("test", splits.test_features, splits.test_labels, data[1]),
    ):
        if len(features) != len(part) or not torch.equal(labels.cpu(), part.labels.cpu()):
            raise InputError(
                f"{split} features ({len(features)} rows) do not match dataset {dataset!r} "
                f"({len(part)} {split} samples, labels in the same order); give the dataset the "
                "features were computed on, or none to skip the raw-pixel baseline (Python: "
                "dataset=None; command line: leave out --dataset)"
            )


def append_to_summary(
    run_dir: str | os.PathLike, results: Mapping[str, float], key: str = "eval"
) -> Path:
    """Merge ``results`` into ``run_dir/summary.json`` under ``key`` (atomic; the rest of the
    summary is kept, :meth:`collapselab.runs.RunFolder.update_summary`); returns the path."""
    folder = RunFolder(run_dir)
    folder.update_summary(key, results)
    return folder.summary_path
