"""Frozen features: extraction from an ``nn.Module``, the random-init twin, files and caches."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from collapselab._validation import ArrayLike, InputError, as_tensor
from collapselab.evaluation._inputs import categorical_codes, check_features, check_labels

FEATURE_KEYS = ("train_features", "train_labels", "test_features", "test_labels")
OPTIONAL_KEYS = ("test_codes",)
DEFAULT_BATCH_SIZE = 256
DEFAULT_OUTPUT_KEY = "repr"

log = logging.getLogger(__name__)


@dataclass
class FeatureSplits:
    """Train/test features and labels of one representation (the input of every protocol).

    ``test_codes``: optional (M,) code indices or (M, c) code probabilities of the test samples.
    Labels are integers (or whole-valued floats); text labels (class names, e.g. ``str`` arrays)
    become the indices of the sorted class names of both splits together, so a name gets the same
    index in train and test.
    """

    train_features: torch.Tensor
    train_labels: torch.Tensor
    test_features: torch.Tensor
    test_labels: torch.Tensor
    test_codes: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.train_features = check_features(self.train_features, "train_features")
        self.test_features = check_features(self.test_features, "test_features")
        if self.train_features.shape[1] != self.test_features.shape[1]:
            raise InputError(
                f"train_features have {self.train_features.shape[1]} dimensions but test_features have "
                f"{self.test_features.shape[1]}; both splits must come from the same feature extractor"
            )
        self.train_labels, self.test_labels = categorical_codes(
            [self.train_labels, self.test_labels], ["train_labels", "test_labels"]
        )
        self.train_labels = check_labels(
            self.train_labels, len(self.train_features), "train_labels", "train_features"
        )
        self.test_labels = check_labels(
            self.test_labels, len(self.test_features), "test_labels", "test_features"
        )
        if self.test_codes is not None:
            self.test_codes = as_tensor(self.test_codes, "test_codes")
            if len(self.test_codes) != len(self.test_features):
                raise InputError(
                    f"test_codes has {len(self.test_codes)} rows but test_features has {len(self.test_features)}"
                )

    @classmethod
    def from_mapping(
        cls, arrays: Mapping[str, ArrayLike], where: str = "features"
    ) -> FeatureSplits:
        """Build from a dict with keys train_features, train_labels, test_features, test_labels [, test_codes]."""
        missing = [key for key in FEATURE_KEYS if key not in arrays]
        if missing:
            raise InputError(
                f"{where}: missing {', '.join(missing)}; expected keys {', '.join(FEATURE_KEYS)} "
                f"(and optionally {', '.join(OPTIONAL_KEYS)}), found {sorted(arrays)}"
            )
        return cls(*(arrays[key] for key in FEATURE_KEYS), test_codes=arrays.get("test_codes"))

    def save(self, path: str | Path, **extra: np.ndarray) -> None:
        """Write an .npz that :func:`load_features` (and ``collapselab eval --features``) reads."""
        arrays = {key: getattr(self, key).cpu().numpy() for key in FEATURE_KEYS}
        if self.test_codes is not None:
            arrays["test_codes"] = self.test_codes.cpu().numpy()
        np.savez(Path(path), **arrays, **extra)


def load_features(path: str | Path) -> FeatureSplits:
    """Read train/test features and labels from an .npz or a .pt dict (never unpickles).

    Keys: ``train_features`` (N, D), ``train_labels`` (N,), ``test_features`` (M, D),
    ``test_labels`` (M,), optionally ``test_codes`` (M,) or (M, c).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory; pass an .npz or .pt file of features")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                arrays = {key: archive[key] for key in archive.files}
        elif suffix in (".pt", ".pth"):
            arrays = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(arrays, Mapping):
                raise InputError(
                    f"{path}: expected a dict of tensors, found {type(arrays).__name__}"
                )
        else:
            raise InputError(
                f"{path}: unsupported format {suffix!r}; save features with numpy.savez (.npz) or torch.save (.pt)"
            )
    except InputError:
        raise
    except Exception as err:  # corrupt archive, pickle refused by weights_only
        raise InputError(f"{path}: cannot read as {suffix} ({type(err).__name__}: {err})") from err
    return FeatureSplits.from_mapping(arrays, where=str(path))


def default_transform(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → float32 in [0, 1]; float inputs pass through as float32."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).div_(255.0)
    return images.to(torch.float32)


def _module_device(model: nn.Module) -> torch.device:
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def extract_features(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    output_key: str = DEFAULT_OUTPUT_KEY,
) -> torch.Tensor:
    """Frozen features of ``images`` (N, C, H, W): eval mode, no gradients, batched; (N, D) float32 on CPU.

    The model runs on ``device`` (default: where its parameters are); each batch goes through
    ``transform`` (default :func:`default_transform`) on that device. An output dict (e.g. a
    method's named tensors) is read at ``output_key``; outputs with more than 2 dimensions are
    flattened. The model's train/eval mode is restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device) if device is not None else _module_device(model)
    transform = transform or default_transform
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for start in range(0, images.shape[0], batch_size):
            out = model(transform(images[start : start + batch_size].to(dev)))
            if isinstance(out, Mapping):
                if output_key not in out:
                    raise InputError(
                        f"model returned a dict without {output_key!r} (keys {sorted(out)}); pass output_key="
                    )
                out = out[output_key]
            if not isinstance(out, torch.Tensor):
                raise InputError(
                    f"model returned {type(out).__name__}; expected a tensor or a dict of tensors"
                )
            chunks.append(out.reshape(out.shape[0], -1).to(device="cpu", dtype=torch.float32))
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def random_init_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with every submodule's ``reset_parameters()`` called under ``seed``,
    children before their parent (as in a constructor, a parent's own init has the last word).

    The "same architecture, random weights" baseline; the built-in backbones reproduce their
    construction (a ViT re-draws its position table too). Parameters of a submodule without
    ``reset_parameters`` (e.g. a third-party module's position embedding) keep their trained
    values; a one-line notice (logger ``collapselab.evaluation.features``) names those modules.
    """
    twin = copy.deepcopy(model)
    kept: list[str] = []
    seen: set[int] = set()

    def reset(module: nn.Module, name: str) -> None:
        if id(module) in seen:
            return
        seen.add(id(module))
        for child_name, child in module.named_children():
            reset(child, f"{name}.{child_name}" if name else child_name)
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
        elif any(p is not None for p in module._parameters.values()):
            kept.append(name or type(module).__name__)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reset(twin, "")
    if kept:
        log.warning("note: random-init baseline: %s kept trained values (no reset_parameters()); "
                    "that baseline is only partly random", ", ".join(kept))
    return twin


def model_fingerprint(model: nn.Module, *parts: object) -> str:
    """SHA-256 of the model's state (names, shapes, values) and ``parts`` (dataset, sizes): a cache key."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(str((tuple(tensor.shape), tensor.dtype)).encode())
        digest.update(
            tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    digest.update(repr(parts).encode())
    return digest.hexdigest()


def cached_features(
    cache: str | Path | None, fingerprint: str, compute: Callable[[], FeatureSplits]
) -> FeatureSplits:
    """Load ``cache`` (.npz) when its fingerprint matches, else ``compute()`` and write it there."""
    if cache is None:
        return compute()
    path = Path(cache)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as archive:
                if "fingerprint" in archive.files and str(archive["fingerprint"]) == fingerprint:
                    return FeatureSplits.from_mapping(
                        {k: archive[k] for k in archive.files}, where=str(path)
                    )
        except (OSError, ValueError) as err:
            warnings.warn(
                f"feature cache {path} unreadable ({err}); recomputing", UserWarning, stacklevel=3
            )
    splits = compute()
    tmp = path.with_name(path.name + ".tmp.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        splits.save(tmp, fingerprint=np.array(fingerprint))
        tmp.replace(path)
    except OSError as err:  # a read-only run folder: the features are computed, keep going
        with contextlib.suppress(OSError):  # a partial temporary file, if one was made
            tmp.unlink(missing_ok=True)
        warnings.warn(
            f"feature cache {path} not written ({err.strerror or err}); the features are "
            "recomputed next time",
            UserWarning,
            stacklevel=3,
        )
    return splits
