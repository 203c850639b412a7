"""Run configuration: one typed dataclass per section, YAML recipes, dotted overrides, validation.

Layers, later wins: the schema defaults (with the method's own ``method`` section) → the shipped
recipe ``configs/<method>_<dataset>.yaml`` if there is one → a user YAML file → overrides
(``optim.lr=0.1`` strings, or keyword arguments). Every layer is checked key by key before it is
merged: an unknown key is an error that names the closest valid key. Values are then checked
(:func:`validate`) before anything is built or trained.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from collapselab._validation import InputError, check_number, plain_values
from collapselab.methods import MethodConfig, method_class

DEFAULT_METHOD = "byol"
DEFAULT_DATASET = "digits"
AMP_MODES = ("auto", "bf16", "fp16", "off")
SWITCHES = ("auto", "on", "off")
LR_SCALINGS = ("linear", "sqrt", "none")
PREDICTOR_LR_SCHEDULES = ("cosine", "constant")
MONITOR_POLICIES = ("warn", "stop")


@dataclass
class ModelConfig:
    """``backbone``: a registered name (``collapselab.models.available_backbones()``) or
    ``torchvision:NAME`` / ``timm:NAME``; ``backbone_args``: its keyword arguments (e.g.
    ``{stem: cifar, width: 0.25}``; ``in_channels`` is set from the data)."""

    backbone: str = "small_cnn"
    backbone_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """``dataset``: a registered name (``collapselab datasets``). ``batch_size``: per process.
    ``augment``: a recipe name (simclr | byol | multicrop | swav | ijepa) or a dict for ``build_augment``; null
    = the method's default recipe. ``normalize``: standardise views with the training split's
    per-channel mean and std. ``knn_split``: held-out split for the online kNN (null = none; the
    final evaluation always scores the ``test`` split, as :func:`collapselab.evaluate`).
    ``augment_backend``: ``auto`` (the fused native C kernel for CPU batches when a C compiler is
    available, else torch ops), ``torch`` or ``native``; the views are the same either way
    (:mod:`collapselab.data.native`)."""

    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    download: bool = False
    batch_size: int = 256
    augment: Any = None
    normalize: bool = True
    knn_split: str | None = "test"
    augment_backend: str = "auto"


@dataclass
class OptimConfig:
    """``lr`` is the base rate for a global batch of 256: the rate used is lr × global_batch / 256
    with ``lr_scaling=linear`` (Goyal et al. 2017), lr × √(global_batch / 256) with ``sqrt``
    (Krizhevsky 2014; SimCLR's LARS rate 0.075·√B, Chen et al. 2020, App. B.1), lr with ``none``.
    Warm-up then cosine decay to ``min_lr_ratio``
    × lr. BN and bias parameters get no weight decay (and no LARS adaptation) when
    ``exclude_bias_and_norm``. ``grad_clip``: max global gradient norm (null = off). ``eta``:
    LARS trust coefficient; 0.02 as solo-learn's CIFAR recipes (the 0.001 of You et al. 2017 and
    BYOL is for batch 4096 on ImageNet and barely moves the weights in a short small-data run).
    ``predictor_lr_ratio``: the predictor's rate as a multiple of the scheduled one;
    ``predictor_lr_schedule``: ``cosine`` (the warm-up and decay of the rest) or ``constant`` (the
    base rate × ratio throughout: SimSiam's fixed predictor rate, Chen & He 2021, Sec. 4.2, Table 1).
    They act on methods with a trained predictor (BYOL, SimSiam, the composite, I-JEPA)."""

    name: str = "lars"
    lr: float = 0.3
    lr_scaling: str = "linear"
    weight_decay: float = 1e-6
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eta: float = 0.02
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.0
    exclude_bias_and_norm: bool = True
    grad_clip: float | None = None
    predictor_lr_ratio: float = 1.0
    predictor_lr_schedule: str = "cosine"


@dataclass
class TrainConfig:
    """``device``: auto (CUDA if available) | cpu | cuda | cuda:N. ``amp``: auto (bf16 on CUDA,
    off on CPU) | bf16 | fp16 (CUDA only) | off.

    The fast path (docs/performance.md): ``channels_last``: auto (on for CUDA and the CPU) | on | off —
    NHWC memory layout for the backbone and the views (faster convolutions on tensor cores).
    ``compile``: auto | on | off — ``torch.compile`` the backbone(s); auto compiles on CUDA when
    the run has at least 5,000 steps (compiling takes about a minute, the gain is a few percent)
    and falls back to eager with a warning if compiling fails; the compile time is reported.

    ``threads``: the most torch intra-op threads on the CPU (null = all the CPUs this process
    may use). ``adapt_threads``: on the CPU, use fewer threads while other processes keep
    cores busy and return to ``threads`` when they stop (a run on a quiet machine never changes
    its thread count; see :mod:`collapselab.engine.threads`); false keeps ``threads`` fixed.
    ``max_steps_per_epoch``: cut epochs short (smoke tests). ``deterministic``: deterministic
    kernels (slower on GPU) and a fixed thread count.

    Length: ``epochs`` passes over the data, unless ``steps`` (total optimiser steps; the last
    epoch may be partial) is set. ``time_budget`` (``90s``, ``10m``, ``2h``, ``1h30m``, or
    seconds): time a few throw-away steps, then fix ``steps`` so that training (setup, monitor,
    kNN and checkpoints included; the final evaluation not) fits the budget, and record it in
    ``config.yaml`` so that a rerun with that ``steps`` is the same run
    (:mod:`collapselab.engine.budget`). With ``steps`` set, ``time_budget`` plans nothing."""

    epochs: int = 100
    steps: int | None = None
    time_budget: Any = None
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    channels_last: Any = "auto"
    compile: Any = "auto"
    threads: int | None = None
    adapt_threads: bool = True
    max_steps_per_epoch: int | None = None
    deterministic: bool = False


@dataclass
class MonitorConfig:
    """The live collapse monitor on a fixed probe batch of un-augmented training images.

    ``every``: steps between checks (0 = once per epoch, at its end). ``probe_size``: probe images.
    ``policy``: ``warn`` (log alarms) or ``stop`` (end the run at the first ``collapsed`` alarm).
    ``warmup_epochs``: alarms are held back during this early phase (transient dips, see
    docs/diagnostics.md). ``embeddings``: which named tensors to watch. ``views``: also embed one
    augmented view of the probe (the run's augmentation) at each check, for ``alignment`` (Wang &
    Isola 2020, Eq. 4) between each probe image and its view; no verdict uses it."""

    enabled: bool = True
    every: int = 0
    probe_size: int = 512
    policy: str = "warn"
    warmup_epochs: float = 1.0
    embeddings: list[str] = field(default_factory=lambda: ["repr", "emb"])
    views: bool = True


@dataclass
class EvalConfig:
    """Online kNN every ``knn_every`` epochs (0 = off) on the held-out split, cosine kNN with
    ``knn_k`` neighbours and vote temperature ``knn_temperature`` (Wu et al. 2018). Its memory
    bank is a fixed random subset of ``knn_bank`` training images (null = all), so that it
    costs a few percent of an epoch; the final evaluation always uses the whole training split.
    ``final``: at the end, kNN of the trained backbone beside raw pixels and the untrained
    backbone."""

    knn_every: int = 1
    knn_k: int = 20
    knn_temperature: float = 0.1
    knn_bank: int | None = 10000
    final: bool = True


@dataclass
class CheckpointConfig:
    """``last.pt`` is written every epoch; ``every`` > 0 also keeps ``epoch_NNNN.pt`` every that
    many epochs; ``keep`` > 0 keeps that many ``epoch_NNNN.pt`` spread evenly over the run
    (epochs round(i·E/keep), i = 1..keep, the last one included), so earlier states of a run can
    be re-embedded (``collapselab eval runs/X/checkpoints/epoch_0005.pt``)."""

    every: int = 0
    keep: int = 0


@dataclass
class LogConfig:
    """``tensorboard``: auto (when installed) | true | false. ``wandb_project``: set to log to
    Weights & Biases (``wandb_mode``: online | offline). ``progress``: tqdm bar. ``every``: steps
    between training-metric lines in metrics.jsonl / TensorBoard. ``report``: ``collapselab
    train`` writes ``report.html`` at the end of the run (``collapselab report``)."""

    every: int = 10
    tensorboard: Any = "auto"
    wandb_project: str | None = None
    wandb_mode: str = "online"
    progress: bool = True
    report: bool = True


@dataclass
class DistributedConfig:
    """``backend``: auto (nccl on CUDA, gloo on CPU) | nccl | gloo. ``sync_bn``: convert every
    BatchNorm to SyncBatchNorm (batch statistics over all ranks)."""

    backend: str = "auto"
    sync_bn: bool = False


@dataclass
class RunSection:
    """``name``: run folder name (default ``<method>_<dataset>_<timestamp>``); ``out_dir``: parent.
    ``recipe``: the shipped recipe the config starts from (``collapselab methods`` lists them):
    null = ``<method>_<dataset>`` when shipped; for a dataset without one (``npz``,
    ``imagefolder``) ``collapselab train`` picks one by image size and device
    (:func:`pick_recipe`) and prints which. Set it to choose, e.g. ``run.recipe=small/byol_32px``."""

    name: str | None = None
    out_dir: str = "runs"
    recipe: str | None = None


@dataclass
class Config:
    """A whole run. ``method`` holds the chosen method's own config class."""

    method: MethodConfig = field(default_factory=MethodConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    run: RunSection = field(default_factory=RunSection)


# --------------------------------------------------------------------------- recipes


# --------------------------------------------------------------------------- durations

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smh])")


def parse_duration(value: object, key: str = "train.time_budget") -> float:
    """Seconds in a duration: a number (seconds) or a string such as ``90s``, ``10m``, ``2h``,
    ``1h30m``, ``2.5m`` (units s, m, h; a bare number is seconds). Must be > 0."""
    if isinstance(value, bool):
        raise InputError(f"{key}={value!r}: expected a duration like 90s, 10m, 2h or 1h30m")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        elif text and re.fullmatch(rf"(?:{_PART.pattern})+", text):
            units = [u for _, u in _PART.findall(text)]
            if len(set(units)) != len(units):
                raise InputError(f"{key}={value!r}: a unit appears twice; write e.g. 1h30m")
            seconds = sum(float(n) * _UNITS[u] for n, u in _PART.findall(text))
        else:
            raise InputError(f"{key}={value!r}: expected a duration like 90s, 10m, 2h or 1h30m")
    if not math.isfinite(seconds) or seconds <= 0:
        raise InputError(f"{key}={value!r}: the duration must be > 0")
    return seconds



def recipe_dir() -> Path:
    """Folder of the shipped YAML recipes (``configs/`` in the repository links to it)."""
    return Path(str(resources.files("collapselab") / "configs"))


def available_recipes() -> list[str]:
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def recipe_path(method: str, dataset: str) -> Path | None:
    path = recipe_dir() / f"{method}_{dataset}.yaml"
    return path if path.is_file() else None


def named_recipe(name: str) -> Path:
    """The shipped recipe called ``name`` (``byol_cifar10``, ``small/simclr_16px``; ``.yaml``
    optional); an error listing the recipes when there is none."""
    rel = Path(str(name).removesuffix(".yaml") + ".yaml")
    path = recipe_dir() / rel
    if rel.is_absolute() or ".." in rel.parts or not path.is_file():
        names = sorted(str(p.relative_to(recipe_dir()).with_suffix("")) for p in recipe_dir().rglob("*.yaml"))
        hint = difflib.get_close_matches(str(name), names, n=1)
        raise InputError(f"run.recipe={name!r} is not a shipped recipe"
                         f"{f'; did you mean {hint[0]!r}?' if hint else ''} (see `collapselab methods`)")
    return path


# Image sides up to this use the 16-px CPU recipes, larger ones the 32-px ones (pick_recipe).
SMALL_RECIPE_MAX_16PX = 20


def pick_recipe(method: str, image_side: int, device_type: str) -> tuple[str | None, str]:
    """(recipe, why) for a dataset without a recipe of its own: on CUDA the CIFAR-10 recipe
    (ResNet-18, CIFAR stem); elsewhere the small-CNN CPU recipe for 16-px images (sides up to
    :data:`SMALL_RECIPE_MAX_16PX`) or for 32-px ones. None when no such recipe is shipped.
    See :func:`recipe_adaptation` for what changes with the number of channels."""
    if device_type == "cuda":
        name, why = f"{method}_cifar10", f"{image_side}-px images on CUDA: ResNet-18"
    else:
        size = 16 if image_side <= SMALL_RECIPE_MAX_16PX else 32
        name, why = f"small/{method}_{size}px", f"{image_side}-px images on {device_type}: small CNN"
    if not (recipe_dir() / f"{name}.yaml").is_file():
        return None, f"no shipped recipe {name}"
    return name, why


def recipe_adaptation(channels: int) -> tuple[dict[str, Any], str | None]:
    """Settings layered over a picked recipe for the data's channels, and why. One-channel
    images get no horizontal flips: grey-scale small-image sets are mostly digits and
    characters, which a mirror changes (on 32-px handwritten digits flips cost 5 kNN points, on
    16-px CIFAR-10 photos dropping them cost 1; docs/performance.md)."""
    if channels == 1:
        return {"data": {"augment": {"flip_p": 0.0}}}, "1-channel images: data.augment.flip_p=0"
    return {}, None


def shipped_config(path: str | os.PathLike) -> Path | None:
    """A path relative to the shipped recipes (``batch1024/byol_cifar10`` or ``...yaml``), if any."""
    rel = Path(path)
    if rel.is_absolute() or ".." in rel.parts:
        return None
    for candidate in (recipe_dir() / rel, recipe_dir() / rel.with_name(rel.name + ".yaml")):
        if candidate.is_file():
            return candidate
    return None


def _read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config layer: a file, or else a file shipped with the recipes (``batch1024/...``)."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"config file {path} is a directory; give a YAML file")
    if not path.is_file():
        shipped = shipped_config(path)
        if shipped is None:
            variants = sorted(str(p.relative_to(recipe_dir()).with_suffix(""))
                              for p in recipe_dir().glob("*/*.yaml"))
            raise InputError(f"config file {path} does not exist (shipped variants: {', '.join(variants)})")
        path = shipped
    try:
        loaded = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as err:
        raise InputError(f"{path}: not valid YAML: {_yaml_problem(err)}") from err
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InputError(f"{path}: expected a mapping of sections at the top level")
    return loaded


# --------------------------------------------------------------------------- overrides


def _schema_fields(section_type: type) -> dict[str, Any]:
    return {f.name: f for f in fields(section_type)}


def _yaml_problem(err: BaseException, position: bool = True) -> str:
    """One line saying what is wrong in a YAML text (a PyYAML error spans several lines);
    ``position``: with the line and column."""
    problem = getattr(err, "problem", None)
    if problem:
        mark = getattr(err, "problem_mark", None) if position else None
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{problem}{where}"
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["optim.lr=0.1", "method.ema=off"]`` → nested dict (values parsed as YAML scalars)."""
    if isinstance(items, str | bytes):  # one override, not one per character
        items = [items.decode() if isinstance(items, bytes) else items]
    items = list(items)
    for item in items:
        if not isinstance(item, str):
            raise InputError(f"override {item!r} is not a string of the form section.key=value (e.g. optim.lr=0.1)")
        if "=" not in item or item.startswith("="):
            raise InputError(f"override {item!r} is not of the form section.key=value (e.g. optim.lr=0.1)")
        try:
            OmegaConf.from_dotlist([item])
        except Exception as err:  # PyYAML's ParserError / ScannerError, OmegaConf's own
            raise InputError(f"override {item!r}: cannot read the value as YAML: {_yaml_problem(err, position=False)} "
                             "(for a text value, put it in YAML quotes: key='...')") from err
    try:
        nested: dict[str, Any] = OmegaConf.to_container(OmegaConf.from_dotlist(items))  # type: ignore[assignment]
    except (OmegaConfBaseException, TypeError, ValueError) as err:  # a key given as a mapping, then a list
        raise InputError(f"cannot combine the overrides {items}: {_yaml_problem(err)}") from err
    sections = _schema_fields(Config)
    for key in [k for k in nested if k not in sections and not isinstance(nested[k], dict)]:  # lr=0.1: optim.lr
        for section, values in shorthand({key: nested.pop(key)}).items():
            nested.setdefault(section, {}).update(values)
    return nested


def shorthand(kwargs: Mapping[str, Any], schema: Config | None = None) -> dict[str, Any]:
    """Python keyword overrides → nested dict. A key may be a section (``optim={"lr": 0.1}``),
    a dotted path with ``__`` for dots (``optim__lr=0.1``), or a field name that exists in exactly
    one section (``epochs=20`` → ``train.epochs``, ``lr=0.1`` → ``optim.lr``)."""
    schema = schema or Config()
    sections = _schema_fields(Config)
    owners: dict[str, list[str]] = {}
    for section in sections:
        for key in _schema_fields(type(getattr(schema, section))):
            owners.setdefault(key, []).append(section)
    nested: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in sections:
            path = [key]
        elif "__" in key:
            path = key.split("__")
        elif len(owners.get(key, [])) == 1:
            path = [owners[key][0], key]
        elif key in owners:
            options = ", ".join(f"{s}__{key}" for s in owners[key])
            raise InputError(f"keyword {key!r} is ambiguous: it exists in several sections; use one of {options}")
        else:
            near = difflib.get_close_matches(key, [*sections, *owners], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise InputError(f"unknown keyword {key!r}{hint} (use section__key for any config key)")
        node = nested
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if isinstance(value, Mapping) and isinstance(node.get(path[-1]), dict):
            node[path[-1]].update(value)
        else:
            node[path[-1]] = dict(value) if isinstance(value, Mapping) else value
    return nested


def check_keys(layer: Mapping[str, Any], schema: Any, where: str, prefix: str = "") -> None:
    """Raise :class:`InputError` for the first key of ``layer`` that ``schema`` does not have,
    naming the closest valid key (dotted)."""
    valid = _schema_fields(type(schema))
    for key, value in layer.items():
        dotted = f"{prefix}{key}"
        if key not in valid:
            raise InputError(f"unknown config key {dotted!r} in {where}{_suggest(key, prefix, valid)} "
                             f"(valid here: {', '.join(sorted(valid))})")
        child = getattr(schema, key)
        if is_dataclass(child):
            if not isinstance(value, Mapping):
                raise InputError(f"config key {dotted!r} in {where} is a section; give it a mapping, got {value!r}")
            check_keys(value, child, where, prefix=f"{dotted}.")


# what a key whose value is a container holds, when the schema says more than "a mapping"
_EXPECTED = {
    "data.augment": "a recipe name (simclr, byol, ...) or a mapping such as {recipe: byol, views: 2}",
    "optim.betas": "a list of two numbers such as [0.9, 0.999]",
    "model.backbone_args": "a mapping of the backbone's keyword arguments such as {width: 0.5}",
}


def _kind(value: Any) -> str:
    if isinstance(value, Mapping | DictConfig):
        return "a mapping"
    if isinstance(value, list | tuple | ListConfig):
        return "a list"
    return f"a {type(value).__name__}"


def check_containers(merged: DictConfig, layer: Mapping[str, Any], where: str, prefix: str = "") -> None:
    """Raise :class:`InputError` for the first key of ``layer`` that gives a list where ``merged``
    holds a mapping or a mapping where it holds a list (OmegaConf's merge raises a bare
    ``TypeError`` for these), naming the key and the type it takes."""
    for key, value in layer.items():
        if not isinstance(key, str) or key not in merged:
            continue
        dotted = f"{prefix}{key}"
        current = merged._get_node(key)
        if isinstance(current, DictConfig) and not current._is_none() and not current._is_missing():
            if isinstance(value, Mapping):
                check_containers(current, value, where, prefix=f"{dotted}.")
            elif isinstance(value, list | tuple):
                expected = _EXPECTED.get(dotted, "a mapping")
                raise InputError(f"config key {dotted!r} in {where} takes {expected}, got {_kind(value)}: {value!r}")
        elif (isinstance(current, ListConfig) and not current._is_none() and not current._is_missing()
              and isinstance(value, Mapping)):
            expected = _EXPECTED.get(dotted, "a list")
            raise InputError(f"config key {dotted!r} in {where} takes {expected}, got {_kind(value)}: {value!r}")


def _suggest(key: str, prefix: str, valid: Mapping[str, Any]) -> str:
    """'; did you mean ...?' for an unknown key: the same key in another section, a near miss
    here, a near miss anywhere, or a method that owns the key."""
    everywhere = _all_dotted_keys(Config())
    same_key = [k for k in everywhere if k.rsplit(".", 1)[-1] == key]
    if same_key and not prefix.startswith("method"):
        return f"; did you mean {same_key[0]!r}?"
    near_here = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    if near_here:
        return f"; did you mean {prefix + near_here[0]!r}?"
    if prefix.startswith("method"):
        from collapselab.methods import METHODS

        owners = [name for name, cls in METHODS.items() if key in {f.name for f in fields(cls.config_class)}]
        if owners:
            return f"; {key!r} is a setting of {', '.join(owners)}, not of this run's method"
    near = difflib.get_close_matches(prefix + key, everywhere, n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else ""


def _all_dotted_keys(schema: Any, prefix: str = "") -> list[str]:
    out = []
    for f in fields(schema):
        child = getattr(schema, f.name)
        if is_dataclass(child):
            out.extend(_all_dotted_keys(child, f"{prefix}{f.name}."))
        else:
            out.append(f"{prefix}{f.name}")
    return out


def _peek(layers: Sequence[Mapping[str, Any]], section: str, key: str, default: str) -> str:
    value = default
    for layer in layers:
        sub = layer.get(section)
        if isinstance(sub, Mapping) and key in sub and sub[key] is not None:
            value = str(sub[key])
    return value


# --------------------------------------------------------------------------- building


def load_config(
    method: str | None = None,
    dataset: str | None = None,
    /,
    config_file: str | os.PathLike | Mapping[str, Any] | None = None,
    overrides: Iterable[str] | str = (),
    use_recipe: bool = True,
    base: Mapping[str, Any] | None = None,
    recipe: str | None = None,
    recipe_layer: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> Config:
    """Build and validate a run's :class:`Config` from the layers described in the module doc.

    ``method`` / ``dataset`` name the recipe; ``method.name`` / ``data.dataset`` set in a later
    layer take precedence. ``config_file``: a YAML file or a mapping of sections (:func:`config_layer`).
    ``overrides`` are dotted strings (one string is one override), ``kwargs`` Python shorthands
    (see :func:`shorthand`; NumPy scalars are taken as Python numbers). ``base``: a saved config (a resumed run's) used instead of the recipe.
    ``recipe``: the recipe to start from unless a layer sets ``run.recipe`` (default
    ``<method>_<dataset>`` when shipped). ``recipe_layer``: settings layered over the recipe and
    under the user's layers (what :func:`pick_recipe` adapts to the data).
    """
    if isinstance(kwargs.get("method"), str):
        method = kwargs.pop("method")
    if isinstance(kwargs.get("dataset"), str):
        dataset = kwargs.pop("dataset")
    user_layers: list[tuple[str, dict[str, Any]]] = []
    if config_file is not None:
        user_layers.append(config_layer(config_file))
    override_list = [overrides] if isinstance(overrides, str) else list(overrides)
    if override_list:
        user_layers.append(("the overrides", parse_overrides(override_list)))
    if kwargs:
        user_layers.append(("the keyword arguments", shorthand(plain_values(kwargs))))
    plain = [layer for _, layer in user_layers]
    method_name = _peek(plain, "method", "name", method or DEFAULT_METHOD)
    dataset_name = _peek(plain, "data", "dataset", dataset or DEFAULT_DATASET)
    cls = method_class(method_name)
    layers: list[tuple[str, dict[str, Any]]] = []
    recipe_name: str | None = None
    if use_recipe and base is None:
        recipe_name = _peek(plain, "run", "recipe", "") or recipe
        if recipe_name is None and recipe_path(method_name, dataset_name) is not None:
            recipe_name = f"{method_name}_{dataset_name}"
    if recipe_name is not None:
        path = named_recipe(recipe_name)
        recipe_name = str(path.relative_to(recipe_dir()).with_suffix(""))
        layers.append((f"recipe {recipe_name}", _read_yaml(path)))
        if recipe_layer:
            layers.append((f"the adaptation of recipe {recipe_name}", dict(recipe_layer)))
    if base is not None:
        layers.append(("the saved config", dict(base)))
    layers.extend(user_layers)
    schema = Config(method=cls.config_class())
    merged: DictConfig = OmegaConf.structured(schema)
    layers = backbone_args_follow_backbone(layers)
    for where, layer in layers:
        merged = merge_layer(merged, layer, schema, where)
    merged.method.name = method_name
    merged.data.dataset = dataset_name
    if recipe_name is not None:
        merged.run.recipe = recipe_name
    config: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(config)
    return config


def config_layer(config: str | os.PathLike | Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """(where, layer) for a user config: a YAML file's path, or a mapping of sections
    (``{"optim": {"lr": 0.1}}``, a ``DictConfig`` too) used as an in-memory layer."""
    if isinstance(config, DictConfig):
        config = OmegaConf.to_container(config)  # type: ignore[assignment]
    if isinstance(config, Mapping):
        return "the config mapping", plain_values(config)
    if isinstance(config, str | os.PathLike):
        return str(config), _read_yaml(config)
    raise InputError(f"config must be the path of a YAML file or a mapping of sections such as "
                     f"{{'optim': {{'lr': 0.1}}}}, got {type(config).__name__}")


def check_same_run(saved: Mapping[str, Any], method: str | None, dataset: str | None, run_dir: Any,
                   how: str = "--resume") -> None:
    """Raise :class:`InputError` when ``method`` or ``dataset`` (None: not named) differ from
    those of the saved config of the run in ``run_dir`` that ``how`` would continue."""
    saved_method = (saved.get("method") or {}).get("name")
    saved_dataset = (saved.get("data") or {}).get("dataset")
    for what, given, have in (("method", method, saved_method), ("dataset", dataset, saved_dataset)):
        if given is not None and have is not None and str(given) != str(have):
            fix = (f"name {have!r} to continue it, or another run name (--name) to start a new run"
                   if how == "--auto-resume" else f"leave the {what} out to continue it")
            raise InputError(f"{how}: {run_dir} is a {saved_method} run on {saved_dataset}, "
                             f"not {what} {given!r}; {fix}")


def backbone_args_follow_backbone(
    layers: Sequence[tuple[str, dict[str, Any]]],
) -> list[tuple[str, dict[str, Any]]]:
    """``model.backbone_args`` belong to the backbone they were written for: the args of layers
    before the last layer that names ``model.backbone`` are dropped (a recipe's ``width: 32``
    is a channel count for small_cnn and a multiplier for a ResNet), and an empty mapping
    (``model.backbone_args={}``) clears the args of the layers before it."""
    def model(layer: Mapping[str, Any]) -> Mapping[str, Any]:
        section = layer.get("model")
        return section if isinstance(section, Mapping) else {}

    start = 0
    for i, (_, layer) in enumerate(layers):
        if model(layer).get("backbone") is not None or model(layer).get("backbone_args") == {}:
            start = i
    out = []
    for i, (where, layer) in enumerate(layers):
        if i < start and "backbone_args" in model(layer):
            layer = {**layer, "model": {k: v for k, v in model(layer).items() if k != "backbone_args"}}
        out.append((where, layer))
    return out


def merge_layer(merged: DictConfig, layer: Mapping[str, Any], schema: Config, where: str) -> DictConfig:
    """``layer`` merged onto ``merged`` after its keys and container types are checked; a value
    OmegaConf cannot convert is an :class:`InputError` naming the key and ``where``."""
    check_keys(layer, schema, where)
    check_containers(merged, layer, where)
    try:
        return OmegaConf.merge(merged, layer)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise InputError(f"bad value for config key {key!r} in {where}: {str(err).splitlines()[0]}") from err


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Rebuild a :class:`Config` saved with :func:`to_dict` / ``config.yaml`` (no recipe layer)."""
    method_name = str((data.get("method") or {}).get("name", DEFAULT_METHOD))
    schema = Config(method=method_class(method_name).config_class())
    merged = merge_layer(OmegaConf.structured(schema), dict(data), schema, "the saved config")
    config: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    validate(config)
    return config


def to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON-able)."""
    return OmegaConf.to_container(OmegaConf.structured(config))  # type: ignore[return-value]


def to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def check_buildable(config: Config) -> None:
    """Check the names a run resolves only when it builds its parts (the dataset, the backbone,
    the augmentation recipe), without loading data or building a network, so that
    ``collapselab train --print-config`` refuses what a run would, with the same errors."""
    from collapselab.data import build_augment
    from collapselab.data.datasets import _spec
    from collapselab.models.backbones import check_backbone_name

    _spec(config.data.dataset)
    check_backbone_name(config.model.backbone)
    recipe: Any = config.data.augment
    augment = dict(recipe) if isinstance(recipe, Mapping) else {"recipe": recipe}
    if augment.get("recipe") is None and augment.get("name") is None:
        augment["recipe"] = method_class(config.method.name).default_augment
    augment.setdefault("backend", config.data.augment_backend)
    build_augment(augment)


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    """Raise :class:`InputError` unless ``value`` is a finite number > 0 (>= 0 with ``allow_zero``)."""
    check_number(value, key, positive=not allow_zero)


def _check_finite(value: Any, key: str) -> None:
    """Raise :class:`InputError` naming the first NaN or infinite number in ``value``: a config
    section, a mapping (``data.augment``, ``model.backbone_args``), a list, or a number."""
    if is_dataclass(value):
        for f in fields(value):
            _check_finite(getattr(value, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(value, Mapping):
        for name, item in value.items():
            _check_finite(item, f"{key}.{name}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_finite(item, f"{key}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise InputError(f"{key} must be a finite number, got {value}")


def _word(value: Any, key: str, choices: tuple[str, ...], allowed: str, aliases: Mapping[str, str],
          note: Mapping[str, str] | None = None) -> str:
    """``value`` as one of ``choices``, lower-cased, after ``aliases`` (YAML reads on/off/yes/no
    as booleans, which arrive here as True/False); else a one-line :class:`InputError`
    "``key`` must be ``allowed``", with ``note`` for a word or the nearest choice as a hint."""
    text = str(value).strip().lower()
    text = aliases.get(text, text)
    if text not in choices:
        near = difflib.get_close_matches(text, choices, n=1)
        hint = (note or {}).get(text) or (f" (did you mean {near[0]!r}?)" if near else "")
        raise InputError(f"{key} must be {allowed}, got {value!r}{hint}")
    return text


def switch(value: Any, key: str) -> str:
    """A three-way switch as ``auto``, ``on`` or ``off`` (YAML reads on/off as booleans)."""
    aliases = {"true": "on", "false": "off", "yes": "on", "no": "off", "1": "on", "0": "off"}
    return _word(value, key, SWITCHES, "auto, on or off", aliases)


def amp_mode(value: Any) -> str:
    """``train.amp`` as one of :data:`AMP_MODES`. YAML reads ``off`` (and ``no``, ``false``) as a
    boolean, which arrives here as False or "False": that is "off". True ("on", "yes") names no
    precision and is an error."""
    return _word(value, "train.amp", AMP_MODES, f"one of {', '.join(AMP_MODES)}", {"false": "off"},
                 {"true": " (YAML reads on and yes as true): use auto, or bf16 / fp16 to choose the precision"})


def validate(config: Config) -> None:
    """Check values that no type can: every number finite, ranges, names, combinations. Raises
    :class:`InputError` naming the key."""
    from collapselab.engine.optim import OPTIMIZERS

    _check_finite(config, "")
    config.method.validate()
    name = config.run.name
    if name is not None and (not str(name).strip() or name in (".", "..") or "/" in name or "\\" in name):
        raise InputError(f"run.name must be a folder name inside run.out_dir, not a path: got {name!r} "
                         "(set run.out_dir for another parent folder)")
    o, t, m, d, e = config.optim, config.train, config.monitor, config.data, config.eval
    if d.augment is not None and not isinstance(d.augment, str | Mapping):
        raise InputError(f"data.augment takes {_EXPECTED['data.augment']}, got {_kind(d.augment)}: {d.augment!r}")
    if isinstance(d.augment, Mapping):
        views = d.augment.get("views")
        if views is not None and not isinstance(views, Mapping):
            raise InputError(f"data.augment.views must map view groups to their settings "
                             f"(e.g. {{view1: {{size: 16}}, local: {{count: 6}}}}), got {views!r}")
        if ("mean" in d.augment) != ("std" in d.augment):
            given, missing = ("mean", "std") if "mean" in d.augment else ("std", "mean")
            raise InputError(f"data.augment.{given} is given without data.augment.{missing}: give both "
                             f"(per channel) or neither (data.normalize uses the training split's)")
    _positive(o.lr, "optim.lr")
    _positive(o.weight_decay, "optim.weight_decay", allow_zero=True)
    _positive(o.warmup_epochs, "optim.warmup_epochs", allow_zero=True)
    _positive(o.eta, "optim.eta")
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise InputError(f"optim.betas must be two numbers in [0, 1), got {list(o.betas)}")
    if o.name not in OPTIMIZERS:
        near = difflib.get_close_matches(o.name, OPTIMIZERS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise InputError(f"optim.name must be one of {', '.join(OPTIMIZERS)}, got {o.name!r}{hint}")
    if o.lr_scaling not in LR_SCALINGS:
        raise InputError(f"optim.lr_scaling must be one of {', '.join(LR_SCALINGS)}, got {o.lr_scaling!r}")
    if not 0.0 <= o.momentum < 1.0:
        raise InputError(f"optim.momentum must be in [0, 1), got {o.momentum}")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        raise InputError(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
    if o.grad_clip is not None:
        _positive(o.grad_clip, "optim.grad_clip")
    _positive(o.predictor_lr_ratio, "optim.predictor_lr_ratio")
    if o.predictor_lr_schedule not in PREDICTOR_LR_SCHEDULES:
        raise InputError(f"optim.predictor_lr_schedule must be one of {', '.join(PREDICTOR_LR_SCHEDULES)}, "
                         f"got {o.predictor_lr_schedule!r}")
    if t.epochs < 1:
        raise InputError(f"train.epochs must be >= 1, got {t.epochs}")
    if t.steps is not None and (isinstance(t.steps, bool) or not isinstance(t.steps, int) or t.steps < 1):
        raise InputError(f"train.steps must be an integer >= 1 or null, got {t.steps!r}")
    if t.time_budget is not None:
        parse_duration(t.time_budget)
    t.amp = amp_mode(t.amp)
    t.channels_last = switch(t.channels_last, "train.channels_last")
    t.compile = switch(t.compile, "train.compile")
    if t.threads is not None and t.threads < 1:
        raise InputError(f"train.threads must be >= 1 or null, got {t.threads}")
    if t.max_steps_per_epoch is not None and t.max_steps_per_epoch < 1:
        raise InputError(f"train.max_steps_per_epoch must be >= 1 or null, got {t.max_steps_per_epoch}")
    if d.batch_size < 2:
        raise InputError(f"data.batch_size must be >= 2 (batch statistics need two samples), got {d.batch_size}")
    if m.policy not in MONITOR_POLICIES:
        raise InputError(f"monitor.policy must be 'warn' or 'stop', got {m.policy!r}")
    _positive(m.every, "monitor.every", allow_zero=True)
    if m.probe_size < 2:
        raise InputError(f"monitor.probe_size must be >= 2, got {m.probe_size}")
    _positive(m.warmup_epochs, "monitor.warmup_epochs", allow_zero=True)
    _positive(e.knn_every, "eval.knn_every", allow_zero=True)
    if e.knn_k < 1:
        raise InputError(f"eval.knn_k must be >= 1, got {e.knn_k}")
    _positive(e.knn_temperature, "eval.knn_temperature")
    if e.knn_bank is not None and e.knn_bank < e.knn_k:
        raise InputError(f"eval.knn_bank must be >= eval.knn_k ({e.knn_k}) or null (all images), got {e.knn_bank}")
    _positive(config.checkpoint.every, "checkpoint.every", allow_zero=True)
    _positive(config.checkpoint.keep, "checkpoint.keep", allow_zero=True)
    if config.log.every < 1:
        raise InputError(f"log.every must be >= 1, got {config.log.every}")
    if config.distributed.backend not in ("auto", "nccl", "gloo"):
        raise InputError(f"distributed.backend must be auto, nccl or gloo, got {config.distributed.backend!r}")
    if config.log.tensorboard not in ("auto", True, False):
        raise InputError(f"log.tensorboard must be auto, true or false, got {config.log.tensorboard!r}")
