"""Keep torch's CPU thread count at or below the number of cores nobody else is using.

The problem. torch runs CPU ops on an OpenMP team of ``torch.get_num_threads()`` threads and
every parallel region ends in a barrier. When another CPU-bound process shares one of those
cores, the team's thread on that core only runs for its time slices, and every region waits for
it. Measured on a 2-core machine training the default job: 2 threads on a quiet machine
0.24 s/epoch; with one ``python -c "while True: pass"`` running, 2 threads slow down 2.5-3x
(others saw 25x), while 1 thread slows down only ~1.1x. On a quiet machine 2 threads are
~10-80 % faster than 1 (the bigger the model, the more), so a fixed single thread is no answer.

The rule. :class:`ThreadGovernor` measures, over windows of ``interval_s`` (1 s), how many
cores *other* processes keep busy -- ``/proc/stat`` busy ticks of the CPUs this process may run
on, minus this process's own CPU time, over wall time -- and sets the thread count to
``round(cpus - others_busy)`` clamped to ``[1, ceiling]``, ``ceiling = min(max_threads,
available_cpus())``. The measurement counts what others *got*, not what they wanted: with our 2
spinning threads and one busy process on 2 cores, fair scheduling gives it ~2/3 core, so the
downward threshold is the plain rounding point (others > 0.5 core frees a thread); going back
up needs 0.25 core more headroom (``free >= k + 0.75``), and any change after the first
decision needs the same new target in 2 consecutive windows. On a quiet machine (others < 0.5
core, which background daemons are far below) the count therefore never changes, so quiet runs
stay bit-reproducible; a busy core on 2 CPUs drops the count to 1 within ~2 windows, and it
returns to 2 ~2 windows after the load ends. The first measurement after :meth:`start` decides
at once (there is no earlier decision to protect); call ``start()`` early in setup and
``poll(force=True)`` just before the first step so that it covers the ~1 s of setup.

Why not passive waiting. ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at barriers instead of
spinning) helps under load but costs 14-45 % on a quiet machine (docs/performance.md), so libgomp's
default policy stays and the team is kept no larger than the free cores instead.

Why not timing-based tuning (try 1 and 2 threads, keep the faster). Step times are noisy, so
on a quiet machine it would flip thread counts now and then, and the thread count changes CPU
float reductions at the ~1e-7 level: quiet runs would no longer be bit-reproducible. Counting
other processes' CPU use is independent of our own step time and stays put on a quiet machine.

Limits. In containers whose ``/proc/stat`` shows the host's CPUs, other tenants count as load
(which they are) and a cgroup CPU quota caps the result through :func:`available_cpus`. Child
processes (e.g. DataLoader workers) count as others. Without Linux's ``/proc/stat`` (macOS,
Windows) the governor is disabled and the thread count stays fixed; :meth:`ThreadGovernor.state`
says so.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PROC_STAT = "/proc/stat"
CGROUP_ROOT = "/sys/fs/cgroup"
# /proc/stat columns after the "cpuN" label: user nice system idle iowait irq softirq steal
# guest guest_nice. Busy = user+nice+system+irq+softirq+steal; guest is already inside user.
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)
_UP_MARGIN = 0.25  # extra free cores needed to add a thread (hysteresis)


# --------------------------------------------------------------------------- CPUs we may use


def cpu_set() -> frozenset[int] | None:
    """The CPUs this process may run on (``sched_getaffinity``), or None where unsupported."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is None:
        return None
    try:
        return frozenset(getaffinity(0))
    except OSError:
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_cpu_quota(root: str | os.PathLike[str] = CGROUP_ROOT) -> float | None:
    """The cgroup CPU quota in cores (``quota / period``), or None when unlimited or unknown.

    cgroup v2: ``<root>/cpu.max`` ("quota period" or "max period"); cgroup v1:
    ``<root>/cpu[,cpuacct]/cpu.cfs_quota_us`` and ``cpu.cfs_period_us`` (quota -1 = unlimited).
    """
    root = Path(root)
    text = _read(root / "cpu.max")
    if text is not None:
        parts = text.split()
        if len(parts) >= 2 and parts[0] != "max":
            try:
                quota, period = float(parts[0]), float(parts[1])
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
        return None
    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota_text = _read(root / sub / "cpu.cfs_quota_us")
        period_text = _read(root / sub / "cpu.cfs_period_us")
        if quota_text is None or period_text is None:
            continue
        try:
            quota, period = float(quota_text), float(period_text)
        except ValueError:
            return None
        return quota / period if quota > 0 and period > 0 else None
    return None


def available_cpus(
    *,
    cgroup_root: str | os.PathLike[str] = CGROUP_ROOT,
    affinity: Collection[int] | None = None,
) -> int:
    """CPUs this process may use: affinity set size (else ``os.cpu_count()``), capped by a
    cgroup CPU quota rounded up; at least 1. ``affinity`` overrides the process's (tests)."""
    cpus = affinity if affinity is not None else cpu_set()
    n = len(cpus) if cpus is not None else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        n = min(n, math.ceil(quota - 1e-9))
    return max(1, n)


# --------------------------------------------------------------------------- others' CPU use


def parse_proc_stat(text: str, cpus: Collection[int] | None = None) -> tuple[int, int]:
    """``(busy_ticks, n_cpus)`` summed over the per-CPU lines of ``/proc/stat`` text.

    Only CPUs in ``cpus`` count (all when None); ``n_cpus`` is how many lines were used.
    """
    busy = found = 0
    for line in text.splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        label, *fields = line.split()
        try:
            index = int(label[3:])
        except ValueError:
            continue
        if cpus is not None and index not in cpus:
            continue
        values = [int(v) for v in fields]
        busy += sum(values[i] for i in _BUSY_COLUMNS if i < len(values))
        found += 1
    return busy, found


@dataclass(frozen=True)
class Snapshot:
    """One reading of the counters: wall clock (s), own CPU time (s), busy ticks."""

    wall_s: float
    own_cpu_s: float
    busy_ticks: int


class CpuLoadReader:
    """Measures how many cores other processes keep busy, from ``/proc/stat``.

    ``others_busy = (Δbusy_ticks / HZ - Δown_cpu_s) / Δwall_s`` clamped to ``[0, n_cpus]``,
    over the CPUs in ``cpus`` (default: this process's affinity set). ``available`` is False
    (with ``reason``) where ``stat_path`` cannot be read or lists none of those CPUs.
    """

    def __init__(
        self,
        cpus: Collection[int] | None = None,
        *,
        stat_path: str | os.PathLike[str] = PROC_STAT,
        clock: Callable[[], float] = time.monotonic,
        process_time: Callable[[], float] = time.process_time,
        hz: float | None = None,
    ) -> None:
        self.cpus = frozenset(cpus) if cpus is not None else cpu_set()
        self.stat_path = Path(stat_path)
        self.clock = clock
        self.process_time = process_time
        self.hz = float(hz) if hz is not None else _clock_ticks()
        self.reason: str | None = None
        self.n_cpus = 0
        text = _read(self.stat_path)
        if text is None:
            self.reason = f"{self.stat_path} is not readable (not Linux?)"
        else:
            _, self.n_cpus = parse_proc_stat(text, self.cpus)
            if self.n_cpus == 0:
                self.reason = f"{self.stat_path} lists none of this process's CPUs"
        self._last: Snapshot | None = None

    @property
    def available(self) -> bool:
        return self.reason is None

    def snapshot(self) -> Snapshot:
        """Read the counters now (raises OSError if ``stat_path`` vanished)."""
        busy, _ = parse_proc_stat(self.stat_path.read_text(), self.cpus)
        return Snapshot(self.clock(), self.process_time(), busy)

    def others_busy(self, before: Snapshot, after: Snapshot) -> float:
        """Cores other processes kept busy between two snapshots."""
        wall = after.wall_s - before.wall_s
        if wall <= 0:
            return 0.0
        busy_s = (after.busy_ticks - before.busy_ticks) / self.hz
        others = (busy_s - (after.own_cpu_s - before.own_cpu_s)) / wall
        return min(max(others, 0.0), float(self.n_cpus))

    def reset(self) -> None:
        """Start a new window now."""
        self._last = self.snapshot()

    def window_s(self) -> float:
        """Seconds since the window started (0 before :meth:`reset`)."""
        return 0.0 if self._last is None else self.clock() - self._last.wall_s

    def measure(self) -> float:
        """``others_busy`` over the window since the last call (or :meth:`reset`); starts the next
        window."""
        now = self.snapshot()
        before, self._last = self._last, now
        return 0.0 if before is None else self.others_busy(before, now)


def _clock_ticks() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100.0


# --------------------------------------------------------------------------- the governor


class ThreadGovernor:
    """Sets torch's thread count to the cores other processes leave free (see module docs).

    ``start()`` once (early in setup), then ``poll()`` every training step: it costs one clock
    comparison until ``interval_s`` has passed. ``poll(force=True)`` measures now if the window
    is at least ``min_window_s`` long. Disabled (``enabled=False`` or no ``/proc/stat``), it
    never calls ``set_threads`` and the count stays ``max_threads``. Call it from the thread
    that runs the model: OpenMP's thread count is a per-thread setting. ``cpus``, ``reader``,
    ``clock`` and ``sleep`` are injectable for tests.
    """

    def __init__(
        self,
        max_threads: int,
        *,
        interval_s: float = 1.0,
        enabled: bool = True,
        set_threads: Callable[[int], Any] = torch.set_num_threads,
        min_window_s: float = 0.2,
        cpus: int | None = None,
        reader: CpuLoadReader | None = None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Any] = time.sleep,
    ) -> None:
        if max_threads < 1:
            raise ValueError(f"max_threads must be >= 1, got {max_threads}")
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.max_threads = int(max_threads)
        self.interval_s = float(interval_s)
        self.min_window_s = float(min_window_s)
        self.cpus = int(cpus) if cpus is not None else available_cpus()
        self.ceiling = max(1, min(self.max_threads, self.cpus))
        self._set_threads = set_threads
        self._sleep = sleep
        self.reason: str | None = None
        self.reader: CpuLoadReader | None = None
        if not enabled:
            self.reason = "disabled by configuration"
        else:
            self.reader = reader if reader is not None else CpuLoadReader(
                clock=clock or time.monotonic
            )
            if not self.reader.available:
                self.reason = self.reader.reason
        self.enabled = self.reason is None
        self._clock = clock or (self.reader.clock if self.reader is not None else time.monotonic)
        self._threads = self.max_threads
        self._due = math.inf  # next regular measurement; inf until start() (and when disabled)
        self._t0 = 0.0
        self._started = False
        self._decided = False  # has the first (immediate) decision been made?
        self._pending: int | None = None
        self.changes: list[dict[str, float | int]] = []
        self.last_others_busy: float | None = None
        self.readings = 0
        self._others_sum = 0.0

    @property
    def threads(self) -> int:
        """The thread count in force."""
        return self._threads

    def start(self, measure_s: float = 0.0) -> int:
        """Take the first reading and return the thread count to use now.

        Sets ``ceiling`` threads. With ``measure_s > 0`` it sleeps that long and decides from
        that window at once; otherwise the first measurement is the next forced or due poll.
        """
        self._started = True
        self._t0 = self._clock()
        if not self.enabled or self.reader is None:
            return self._threads
        self._set_threads(self.ceiling)
        self._threads = self.ceiling
        try:
            self.reader.reset()
        except OSError as err:
            return self._disable(f"{self.reader.stat_path} unreadable: {err}")
        self._due = self._t0 + self.interval_s
        if measure_s > 0:
            self._sleep(measure_s)
            self.poll(force=True)
        return self._threads

    def poll(self, force: bool = False) -> int | None:
        """Measure if a window is due (or ``force``); returns the new thread count if it changed,
        else None."""
        if not force and self._clock() < self._due:
            return None
        if not self._started:
            raise RuntimeError("ThreadGovernor.poll() before start()")
        if not self.enabled or self.reader is None:
            return None
        if self.reader.window_s() < self.min_window_s:
            return None
        try:
            others = self.reader.measure()
        except OSError as err:
            self._disable(f"{self.reader.stat_path} unreadable: {err}")
            return None
        now = self._clock()
        self._due = now + self.interval_s
        self.last_others_busy = others
        self.readings += 1
        self._others_sum += others
        target = self.target(others)
        if not self._decided:
            self._decided = True
            return self._change(target, others, now)
        if target == self._threads:
            self._pending = None
            return None
        if self._pending != target:
            self._pending = target
            return None
        return self._change(target, others, now)

    def target(self, others_busy: float) -> int:
        """The thread count for ``others_busy`` given the current one: round down at 0.5 free
        core below it, go up only with ``_UP_MARGIN`` more headroom; within ``[1, ceiling]``."""
        n = self.reader.n_cpus if self.reader is not None else self.cpus
        free = n - others_busy
        current = self._threads
        down = math.floor(free + 0.5)
        up = math.floor(free + 0.5 - _UP_MARGIN)
        target = down if down < current else max(up, current)
        return max(1, min(target, self.ceiling))

    def state(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "enabled": self.enabled,
            "reason": self.reason,
            "max_threads": self.max_threads,
            "cpus": self.cpus,
            "threads": self._threads,
            "changes": len(self.changes),
            "readings": self.readings,
            "others_busy": None if self.last_others_busy is None
            else round(self.last_others_busy, 3),
            "others_busy_mean": round(self._others_sum / self.readings, 3)
            if self.readings else None,
            "interval_s": self.interval_s,
        }

    # ------------------------------------------------------------------ internals

    def _change(self, target: int, others: float, now: float) -> int | None:
        self._pending = None
        if target == self._threads:
            return None
        self._set_threads(target)
        self._threads = target
        self.changes.append(
            {"time_s": round(now - self._t0, 3), "threads": target, "others_busy": round(others, 3)}
        )
        return target

    def _disable(self, reason: str) -> int:
        self.enabled = False
        self.reason = reason
        self._due = math.inf
        return self._threads
