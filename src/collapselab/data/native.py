"""Native CPU backend for the augmentations: one fused C kernel per view (``_native/views.c``).

The torch ops in :mod:`collapselab.data.augment` sweep the whole batch once per elementwise
operation (some 60 passes per view), which on a CPU is bound by memory traffic and by the
dispatch cost of each small op. The native kernel makes a view image by image in a buffer that
stays in cache: crop + flip, colour jitter in each image's order, grayscale, blur, solarise
and normalise in one pass. It computes the same function from the same drawn parameters
(:func:`~collapselab.data.augment.sample_view_params`), so switching backends changes no
random stream; the tests compare the two paths (≤ 2e-6 on [0, 1] pixels).

The kernel is compiled on first use with the system C compiler (``$CC`` or ``cc``; no Python or
torch headers needed, ~1 s) into ``$COLLAPSELAB_CACHE`` (default ``~/.cache/collapselab``),
keyed by a hash of the source, flags and compiler, written atomically, and loaded with
:mod:`ctypes`. With OpenMP the images are shared among ``torch.get_num_threads()`` threads:
the kernel links ``libgomp.so.1``, which resolves to the copy torch has already loaded, so they
are torch's own intra-op threads (Python threads instead would compete with torch's OpenMP
workers, which spin for milliseconds after each parallel op; measured slower). Without a
compiler, or with ``COLLAPSELAB_NATIVE=0``, :func:`available` is False and ``backend="auto"``
uses the torch ops (with one log line).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from collapselab._validation import InputError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_native") / "views.c"
CFLAGS = ("-O3", "-std=c99", "-fPIC", "-shared", "-fno-math-errno", "-fno-trapping-math")
ENV_DISABLE = "COLLAPSELAB_NATIVE"
ENV_CACHE = "COLLAPSELAB_CACHE"

OP_SKIP, OP_AFFINE, OP_HUE = 0, 1, 2

_ARGTYPES = (
    [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    + [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    + [ctypes.c_void_p] * 2  # boxes flip
    + [ctypes.c_void_p] * 9  # jitter ops jf ja jc sigma gray blur_on kernels
    + [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p]
    + [ctypes.c_int]  # threads
)


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$COLLAPSELAB_CACHE``, else ``$XDG_CACHE_HOME/collapselab``,
    else ``~/.cache/collapselab``."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "collapselab"


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc)


def _flags(openmp: bool = True) -> list[str]:
    flags = list(CFLAGS)
    if platform.machine().lower() in ("x86_64", "amd64"):
        # AVX2 + FMA doubles the vector width of the pixel loops; the host's own CPU features
        # are part of the cache key, so a shared cache never hands a binary to a CPU without them
        flags.append("-march=native")
    if openmp:
        # libgomp.so.1: torch (imported first) has loaded its own copy, so the kernel's parallel
        # region runs on torch's intra-op threads instead of competing with them
        flags.append("-fopenmp")
    return flags


def _cpu_key() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _library_path(cc: str, flags: Sequence[str]) -> Path:
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    key = hashlib.sha256("\0".join([SOURCE.read_text(), " ".join(flags), version, platform.machine(),
                                    _cpu_key()]).encode()).hexdigest()[:16]
    suffix = ".dll" if os.name == "nt" else ".so"
    return cache_dir() / f"views-{key}{suffix}"


def build(force: bool = False) -> Path:
    """Compile the kernel (if not cached) and return the library's path: with OpenMP when the
    compiler supports it, else serial. Raises ``RuntimeError`` with the compiler's message when
    neither compiles."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError(f"no C compiler found ({os.environ.get('CC') or 'cc'} is not on PATH; set $CC)")
    errors = []
    for openmp in (True, False):
        flags = _flags(openmp)
        path = _library_path(cc, flags)
        if path.exists() and not force:
            return path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            if os.environ.get(ENV_CACHE):
                raise
            # an unwritable home: a per-user folder in the temporary directory instead
            path = Path(tempfile.gettempdir()) / f"collapselab-{os.getuid() if hasattr(os, 'getuid') else 'user'}" / path.name
            if path.exists() and not force:
                return path
            path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.stem + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            proc = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True,
                                  text=True, timeout=300)
            if proc.returncode == 0:
                os.replace(tmp, path)  # atomic: a half-written library is never loaded
                return path
            errors.append(f"{cc} {' '.join(flags)}: exit {proc.returncode}: {proc.stderr.strip()[-1000:]}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"compiling {SOURCE.name} failed: " + " | ".join(errors))


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    if os.environ.get(ENV_DISABLE, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        log.warning("collapselab: native augmentation kernel unavailable, using torch ops (%s)", err)
        return None
    fn = lib.collapselab_views
    fn.argtypes = _ARGTYPES
    fn.restype = ctypes.c_int
    lib.collapselab_openmp.restype = ctypes.c_int
    return lib


def available() -> bool:
    """True when the native kernel is (or can be) compiled and loaded on this machine."""
    return _library() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def kernel_arguments(images: torch.Tensor, params: Mapping[str, torch.Tensor], config: Any,
                     mean: Sequence[float] | None, std: Sequence[float] | None) -> dict[str, Any]:
    """The per-image arrays the kernel reads, computed from drawn ``params`` with the same rules
    as the torch path (``resized_crop``'s taps, ``color_jitter``'s affine form and skips)."""
    from collapselab.data import augment as A

    b, c, height, width = images.shape
    out_h, out_w = config.output_size(height, width)
    f32 = torch.float32
    active = A.jitter_active(config, c)
    order = params["order"]
    f, gray_coef, mean_coef = A.jitter_coefficients(params, active)
    affine = OP_AFFINE if any(active[:3]) else OP_SKIP
    ops = torch.where(order == A.JITTER_OPS.index("hue"), OP_HUE if active[3] else affine, affine)
    sigma = A._hue_sigma(params["hue"], f32) if active[3] else torch.zeros(b, 3)
    ksize = config.kernel_size(out_h, out_w)
    blur_on = params["blur"] & (config.blur_p > 0)
    kernels = A.gaussian_kernels(params["sigma"], ksize) if bool(blur_on.any()) else torch.zeros(b, ksize)
    if (mean is None) != (std is None):
        raise InputError("normalize: give both mean and std (per channel) or neither")
    m = s = None
    if mean is not None:
        m = torch.as_tensor(mean, dtype=f32).flatten().contiguous()
        s = torch.as_tensor(std, dtype=f32).flatten().contiguous()
        if m.numel() != c or s.numel() != c:
            raise InputError(f"normalize: mean/std have {m.numel()}/{s.numel()} values for {c} channels")
    u8 = torch.uint8
    return {
        "out_size": (out_h, out_w),
        "boxes": params["boxes"].to(torch.int64).contiguous(), "flip": params["flip"].to(u8),
        "jitter": (params["jitter"] & any(active)).to(u8),
        "ops": ops.to(torch.int8).contiguous(),
        "jf": f.to(f32).contiguous(), "ja": gray_coef.to(f32).contiguous(),
        "jc": mean_coef.to(f32).contiguous(),
        "sigma": sigma.to(f32).contiguous(),
        "gray": (params["grayscale"] & (config.grayscale_p > 0) & (c == 3)).to(u8),
        "blur_on": blur_on.to(u8), "kernels": kernels.to(f32).contiguous(), "ksize": ksize,
        "reflect": int(ksize // 2 < min(out_h, out_w)),
        "solar": (params["solarize"] & (config.solarize_p > 0)).to(u8),
        "threshold": float(config.solarize_threshold), "mean": m, "std": s,
    }


def apply_view_native(images: torch.Tensor, params: Mapping[str, torch.Tensor], config: Any,
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      threads: int | None = None) -> torch.Tensor:
    """:func:`~collapselab.data.augment.apply_view` computed by the native kernel.

    ``images``: CPU uint8 or float (B, C, H, W); returns float32 (B, C, h, w). Raises
    ``RuntimeError`` if the kernel is not :func:`available`."""
    lib = _library()
    if lib is None:
        raise RuntimeError("the native augmentation kernel is not available on this machine "
                           "(see the log, or set backend='torch')")
    if images.device.type != "cpu":
        raise InputError(f"the native augmentation kernel runs on the CPU; the images are on {images.device}")
    if images.dtype != torch.uint8:
        images = images.to(torch.float32)
    images = images.contiguous()
    b, c, height, width = images.shape
    args = kernel_arguments(images, params, config, mean, std)
    out_h, out_w = args["out_size"]
    out = torch.empty((b, c, out_h, out_w), dtype=torch.float32)
    if b == 0:
        return out
    fixed = [
        args["boxes"], args["flip"],
        args["jitter"], args["ops"], args["jf"], args["ja"], args["jc"], args["sigma"],
        args["gray"], args["blur_on"], args["kernels"],
    ]
    pointers = [t.data_ptr() for t in fixed]
    tail = (args["ksize"], args["reflect"], args["solar"].data_ptr(), args["threshold"],
            _ptr(args["mean"]), _ptr(args["std"]))
    workers = max(1, min(threads or torch.get_num_threads(), b))
    code = lib.collapselab_views(images.data_ptr(), int(images.dtype == torch.uint8), 0, b, c, height, width,
                                 out.data_ptr(), out_h, out_w, *pointers, *tail, workers)
    if code != 0:
        raise MemoryError("native augmentation kernel: out of scratch memory")
    return out


def uses_openmp() -> bool:
    """True when the loaded kernel was built with OpenMP (else it runs on one thread)."""
    lib = _library()
    return bool(lib is not None and lib.collapselab_openmp())


__all__ = ["apply_view_native", "available", "build", "cache_dir", "kernel_arguments", "uses_openmp"]
