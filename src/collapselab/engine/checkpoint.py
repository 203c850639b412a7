"""Checkpoints that are written atomically and never unpickle code.

``save_checkpoint`` writes to a temporary file in the target folder, flushes and fsyncs it, then
renames it over the target (atomic on POSIX and Windows), so a crash mid-write leaves the previous
checkpoint intact. ``load_checkpoint`` reads with ``torch.load(weights_only=True)`` — tensors,
numbers, strings and containers only — and checks a format marker and a SHA-256 digest of the
content, so a truncated, corrupted or foreign file is refused with a clear error.

The digest (``sha256_content``) is taken over a canonical walk of the state — type tags, dict keys
in order, and each tensor's dtype, shape and bytes — not over pickle bytes: pickling writes a
string once and refers back to it when the *same object* appears again, so the bytes of an equal
state depended on which strings happened to be shared objects, and a state reloaded from disk
could digest differently from the one saved. Files written before this (``sha256`` over the
pickle bytes) are still verified the old way.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

FORMAT = "collapselab-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, corrupt or not a collapselab checkpoint."""


def _digest(state: Mapping[str, Any]) -> str:
    """Legacy SHA-256 of the pickled state (the bytes ``torch.save`` writes for it); depends on
    which equal strings are one object, so only used to verify files that carry it."""
    buffer = io.BytesIO()
    torch.save(dict(state), buffer)
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def content_digest(state: Any) -> str:
    """SHA-256 of the state's content: equal for equal states whatever their object identities,
    devices or memory layouts. Raises TypeError for objects that are not tensors, numbers,
    strings, bytes, None, or dicts/lists/tuples of them."""
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest: Any, obj: Any) -> None:
    def tag(kind: str, text: str | bytes = b"") -> None:
        data = text.encode() if isinstance(text, str) else text
        digest.update(f"{kind}{len(data)}:".encode())
        digest.update(data)

    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        tag("T", f"{t.dtype}{tuple(t.shape)}")
        tag("B", t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        tag("D", str(len(obj)))
        for key, value in obj.items():
            _feed(digest, key)
            _feed(digest, value)
    elif isinstance(obj, list | tuple):
        tag("L" if isinstance(obj, list) else "U", str(len(obj)))
        for value in obj:
            _feed(digest, value)
    elif isinstance(obj, str):
        tag("S", obj)
    elif isinstance(obj, bytes):
        tag("Y", obj)
    elif obj is None or isinstance(obj, bool | int | float):
        tag(type(obj).__name__[0], repr(obj))
    else:
        raise TypeError(f"cannot digest a {type(obj).__name__}")


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Atomically write ``state`` (tensors, numbers, strings, lists/dicts of them) to ``path``.

    The file holds ``{"format", "version", "sha256", "state"}``. Objects that ``weights_only``
    loading would refuse (arbitrary classes) are rejected here, at save time.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    buffer = io.BytesIO()
    try:  # refuse now what could not be loaded later
        digest = content_digest(state)
        torch.save({"format": FORMAT, "version": FORMAT_VERSION, "sha256_content": digest, "state": state}, buffer)
        torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path}: state holds objects that cannot be loaded safely (only tensors, numbers, "
            f"strings and containers are allowed): {err}"
        ) from err
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint written by :func:`save_checkpoint`; returns its state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint file here")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint (truncated, corrupt, or unsafe to unpickle): "
            f"{_first_line(err)}"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a collapselab checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {payload.get('version')} is not supported "
            f"(this collapselab reads version {FORMAT_VERSION})"
        )
    state = payload.get("state")
    if not isinstance(state, dict) or not _intact(state, payload):
        raise CheckpointError(f"{path}: integrity check failed (SHA-256 mismatch): the file is corrupt")
    return state


def _first_line(err: BaseException) -> str:
    """The error's first line, without torch's advice to retry with ``weights_only=False``:
    for a file of unknown origin that advice would run arbitrary code."""
    text = str(err).strip()
    if "weights_only" in text or "Weights only load failed" in text:
        return "it holds objects other than tensors, numbers and containers, which are never unpickled"
    return text.splitlines()[0] if text else type(err).__name__


def _intact(state: dict[str, Any], payload: Mapping[str, Any]) -> bool:
    if "sha256_content" in payload:
        try:
            return content_digest(state) == payload["sha256_content"]
        except TypeError:
            return False
    return _digest(_to_cpu(state)) == payload.get("sha256")  # written before content digests


def _to_cpu(obj: Any) -> Any:
    """The same structure with every tensor on the CPU (the digest is taken of CPU tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
