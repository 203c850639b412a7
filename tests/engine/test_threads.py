"""ThreadGovernor: /proc/stat arithmetic, cgroup quotas, hysteresis, quiet-machine stability,
and one live check that a busy process on this machine is seen as load."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collapselab.engine.threads import (
    CpuLoadReader,
    ThreadGovernor,
    available_cpus,
    cgroup_cpu_quota,
    parse_proc_stat,
)

HZ = 100


class FakeMachine:
    """A fake /proc/stat file plus wall and process clocks that only move when told to."""

    def __init__(self, path: Path, n_cpus: int = 2, hz: int = HZ) -> None:
        self.path, self.n, self.hz = path, n_cpus, hz
        self.t = 1000.0
        self.own = 5.0
        self.busy = [1234] * n_cpus  # user ticks per CPU
        self.idle = [98765] * n_cpus
        self.clock_calls = 0
        self._write()

    def clock(self) -> float:
        self.clock_calls += 1
        return self.t

    def process_time(self) -> float:
        return self.own

    def run(self, seconds: float, own_cores: float, others_cores: float) -> None:
        """Advance ``seconds`` with this process using ``own_cores`` and others ``others_cores``,
        busy ticks spread evenly across the CPUs."""
        self.t += seconds
        self.own += own_cores * seconds
        for i in range(self.n):
            busy = (own_cores + others_cores) * seconds * self.hz / self.n
            self.busy[i] += busy
            self.idle[i] += seconds * self.hz - busy
        self._write()

    def _write(self) -> None:
        agg = f"cpu  {sum(map(int, self.busy))} 0 0 {sum(map(int, self.idle))} 0 0 0 0 0 0"
        lines = [agg] + [
            f"cpu{i} {int(self.busy[i])} 0 0 {int(self.idle[i])} 7 0 0 0 0 0" for i in range(self.n)
        ]
        self.path.write_text("\n".join([*lines, "intr 1 2 3", "ctxt 99"]) + "\n")

    def reader(self, cpus=None) -> CpuLoadReader:
        return CpuLoadReader(
            cpus if cpus is not None else range(self.n),
            stat_path=self.path, clock=self.clock, process_time=self.process_time, hz=self.hz,
        )


def contention(threads: int, demand: float, n: int) -> tuple[float, float]:
    """(own cores, others' cores) when our ``threads`` spinning threads meet others wanting
    ``demand`` cores of CPU-bound work on ``n`` CPUs under fair scheduling."""
    if threads + demand <= n:
        return float(threads), demand
    others = n * demand / (threads + demand)
    return n - others, others


def make_governor(machine: FakeMachine, max_threads: int = 2, **kw) -> tuple[ThreadGovernor, list]:
    calls: list[int] = []
    kw.setdefault("interval_s", 1.0)
    gov = ThreadGovernor(
        max_threads, set_threads=calls.append, reader=machine.reader(), cpus=machine.n,
        clock=machine.clock, **kw,
    )
    return gov, calls


def simulate(gov: ThreadGovernor, machine: FakeMachine, seconds: float, demand, step=0.05):
    """Train for ``seconds`` (a poll per step); ``demand(t)`` is others' wanted cores."""
    for _ in range(round(seconds / step)):
        own, others = contention(gov.threads, demand(machine.t), machine.n)
        machine.run(step, own, others)
        gov.poll()


# --------------------------------------------------------------------------- /proc/stat


def test_parse_proc_stat_counts_busy_columns_only() -> None:
    text = (
        "cpu  99 99 99 99 99 99 99 99 99 99\n"
        # user nice system idle iowait irq softirq steal guest guest_nice
        "cpu0 10 20 30 1000 500 1 2 3 7 0\n"
        "cpu1 100 0 0 1000 0 0 0 0 40 0\n"
        "intr 5 6\n"
    )
    assert parse_proc_stat(text) == (66 + 100, 2)  # idle, iowait, guest (inside user) excluded
    assert parse_proc_stat(text, {1}) == (100, 1)
    assert parse_proc_stat(text, {0, 5}) == (66, 1)  # CPUs not listed are not counted


def test_others_busy_formula_and_clamp(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path / "stat", n_cpus=2)
    r = m.reader()
    a = r.snapshot()
    m.run(2.0, own_cores=0.5, others_cores=1.25)
    assert r.others_busy(a, r.snapshot()) == pytest.approx(1.25, abs=0.01)
    # (Δticks/HZ − Δown) / Δwall with explicit numbers: 300 ticks, 1 s own, 2 s wall → 1.0
    r2 = CpuLoadReader({0, 1}, stat_path=m.path, hz=100)
    from collapselab.engine.threads import Snapshot

    assert r2.others_busy(Snapshot(0, 0, 0), Snapshot(2, 1, 300)) == pytest.approx(1.0)
    assert r2.others_busy(Snapshot(0, 0, 0), Snapshot(1, 1.5, 100)) == 0.0  # clamp at 0
    assert r2.others_busy(Snapshot(0, 0, 0), Snapshot(1, 0, 900)) == 2.0  # clamp at n_cpus
    assert r2.others_busy(Snapshot(1, 0, 0), Snapshot(1, 0, 50)) == 0.0  # empty window


def test_affinity_subset_ignores_other_cpus(tmp_path: Path) -> None:
    path = tmp_path / "stat"
    t = [0.0]

    def write(c0: int, c1: int, c2: int) -> None:
        path.write_text(
            f"cpu  0 0 0 0\ncpu0 {c0} 0 0 500\ncpu1 {c1} 0 0 500\ncpu2 {c2} 0 0 500\n"
        )

    write(0, 0, 0)
    r = CpuLoadReader({1, 2}, stat_path=path, clock=lambda: t[0], process_time=lambda: 0.0, hz=100)
    assert r.available and r.n_cpus == 2
    r.reset()
    t[0] = 1.0
    write(100, 30, 20)  # cpu0 fully busy but outside the set
    assert r.measure() == pytest.approx(0.5)
    t[0] = 2.0
    write(200, 30, 20)
    assert r.measure() == 0.0


# --------------------------------------------------------------------------- cgroup quota


def _cg(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.mark.parametrize(
    ("files", "quota", "cpus"),
    [
        ({}, None, 4),
        ({"cpu.max": "max 100000\n"}, None, 4),
        ({"cpu.max": "150000 100000\n"}, 1.5, 2),
        ({"cpu.max": "50000 100000\n"}, 0.5, 1),
        ({"cpu.max": "800000 100000\n"}, 8.0, 4),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None, 4),
        ({"cpu/cpu.cfs_quota_us": "200000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 2.0, 2),
        (
            {"cpu,cpuacct/cpu.cfs_quota_us": "250000", "cpu,cpuacct/cpu.cfs_period_us": "100000"},
            2.5,
            3,
        ),
        ({"cpu.max": "garbage"}, None, 4),
    ],
)
def test_cgroup_quota(tmp_path: Path, files: dict[str, str], quota, cpus: int) -> None:
    root = _cg(tmp_path / "cg", files)
    root.mkdir(exist_ok=True)
    got = cgroup_cpu_quota(root)
    assert got == (pytest.approx(quota) if quota is not None else None)
    assert available_cpus(cgroup_root=root, affinity={0, 1, 2, 3}) == cpus


def test_available_cpus_affinity_and_floor(tmp_path: Path) -> None:
    root = _cg(tmp_path / "cg", {"cpu.max": "10000 100000"})
    assert available_cpus(cgroup_root=tmp_path / "none", affinity={3, 5}) == 2
    assert available_cpus(cgroup_root=root, affinity={3, 5}) == 1  # 0.1 core → 1
    assert available_cpus(cgroup_root=tmp_path / "none", affinity=set()) == 1
    assert available_cpus() >= 1


# --------------------------------------------------------------------------- governor


def test_quiet_machine_never_changes_threads(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path / "stat", n_cpus=2)
    gov, calls = make_governor(m)
    assert gov.start() == 2
    m.run(1.0, 2.0, 0.1)
    assert gov.poll(force=True) is None  # the initial decision keeps 2
    # background noise up to 0.45 core (daemons, a shell), 5 minutes of steps at 20/s
    simulate(gov, m, 300.0, lambda t: 0.2 + 0.25 * math.sin(t * 1.7))
    assert gov.readings > 250
    assert gov.changes == [] and calls == [2] and gov.threads == 2


def test_single_spike_does_not_change_threads(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path / "stat", n_cpus=2)
    gov, calls = make_governor(m)
    gov.start()
    simulate(gov, m, 5.0, lambda t: 0.0)
    t0 = m.t
    simulate(gov, m, 1.0, lambda t: 1.5)  # one window of heavy load
    simulate(gov, m, 5.0, lambda t: 0.0)
    # alternating loaded/quiet windows never agree twice in a row
    simulate(gov, m, 20.0, lambda t: 1.0 if int(t - t0) % 2 else 0.0)
    assert gov.changes == [] and calls == [2]


def test_sustained_busy_core_drops_to_one_and_recovers(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path / "stat", n_cpus=2)
    gov, calls = make_governor(m)
    gov.start()
    start = m.t
    busy = lambda t: 1.0 if 10.0 <= t - start < 30.0 else 0.0  # noqa: E731
    simulate(gov, m, 10.0, busy)
    assert gov.threads == 2
    simulate(gov, m, 1.5, busy)  # one loaded window: pending, not yet applied
    assert gov.threads == 2
    simulate(gov, m, 1.5, busy)  # second loaded window: applied
    assert gov.threads == 1 and calls == [2, 1]
    first = gov.changes[0]
    assert first["threads"] == 1 and 11.0 < first["time_s"] <= 13.0
    assert first["others_busy"] == pytest.approx(2 / 3, abs=0.05)  # fair share vs 2 threads
    simulate(gov, m, 17.0, busy)  # at 1 thread the busy process gets its full core: stays 1
    assert gov.threads == 1 and gov.last_others_busy == pytest.approx(1.0, abs=0.05)
    simulate(gov, m, 4.0, busy)  # load gone for 2+ windows
    assert gov.threads == 2 and calls == [2, 1, 2]
    assert 30.0 < gov.changes[1]["time_s"] <= 33.0
    assert [c["threads"] for c in gov.changes] == [1, 2]


def test_initial_forced_decision_applies_at_once(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path / "stat", n_cpus=2)
    gov, calls = make_governor(m)
    assert gov.start() == 2
    m.run(0.1, 1.0, 1.0)
    assert gov.poll(force=True) is None and gov.readings == 0  # window too short to judge
    m.run(0.9, 1.0, 1.0)  # setup: one core ours, one core a busy process
    assert gov.poll(force=True) == 1
    assert calls == [2, 1] and gov.changes[0]["time_s"] == pytest.approx(1.0)
    # later changes need two windows again
    m.run(1.0, 1.0, 0.0)
    assert gov.poll(force=True) is None and gov.threads == 1
    m.run(1.0, 1.0, 0.0)
    assert gov.poll(force=True) == 2


def test_start_measure_window(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path / "stat", n_cpus=2)
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        m.run(s, 0.0, 1.0)

    gov, _ = make_governor(m, sleep=sleep)
    assert gov.start(measure_s=0.5) == 1 and slept == [0.5]


def test_up_needs_headroom(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path / "stat", n_cpus=2)
    gov, _ = make_governor(m)
    gov.start()
    m.run(1.0, 1.0, 1.0)
    assert gov.poll(force=True) == 1
    assert gov.target(0.3) == 1  # free 1.7 < 1.75: stay
    assert gov.target(0.2) == 2
    simulate(gov, m, 10.0, lambda t: 0.3)
    assert gov.threads == 1
    simulate(gov, m, 3.0, lambda t: 0.1)
    assert gov.threads == 2


def test_target_clamps(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path / "stat", n_cpus=8)
    gov, calls = make_governor(m, max_threads=4)
    assert gov.start() == 4 and calls == [4]
    assert gov.target(0.0) == 4  # never above max_threads
    assert gov.target(4.4) == 4  # 3.6 free cores: round to 4
    assert gov.target(4.6) == 3
    assert gov.target(7.9) == 1  # never below 1
    capped, calls2 = make_governor(m, max_threads=16)  # the fake machine has 8 CPUs
    assert capped.start() == 8 and calls2 == [8]  # ceiling = min(max_threads, cpus)


def test_poll_is_cheap_between_windows(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path / "stat", n_cpus=2)
    gov, _ = make_governor(m)
    gov.start()
    m.path.unlink()  # any read would now fail and disable the governor
    m.t += 0.5
    before = m.clock_calls
    for _ in range(1000):
        assert gov.poll() is None
    assert m.clock_calls - before == 1000 and gov.enabled
    m.t += 1.0
    assert gov.poll() is None
    assert not gov.enabled and "unreadable" in gov.reason


def test_poll_before_start_raises(tmp_path: Path) -> None:
    gov, _ = make_governor(FakeMachine(tmp_path / "stat"))
    assert gov.poll() is None  # cheap path: nothing due
    with pytest.raises(RuntimeError, match="before start"):
        gov.poll(force=True)


@pytest.mark.parametrize("why", ["missing", "config"])
def test_disabled_keeps_threads_fixed(tmp_path: Path, why: str) -> None:
    calls: list[int] = []
    if why == "missing":
        reader = CpuLoadReader({0, 1}, stat_path=tmp_path / "no" / "stat")
        gov = ThreadGovernor(3, set_threads=calls.append, reader=reader, cpus=2)
        reason = "not readable"
    else:
        gov = ThreadGovernor(3, set_threads=calls.append, enabled=False)
        reason = "disabled"
    assert not gov.enabled and reason in gov.reason
    assert gov.start() == 3 and gov.threads == 3
    assert gov.poll(force=True) is None and gov.poll() is None
    assert calls == []
    state = json.loads(json.dumps(gov.state()))
    assert state["enabled"] is False and reason in state["reason"] and state["threads"] == 3


def test_state_is_json(tmp_path: Path) -> None:
    m = FakeMachine(tmp_path / "stat", n_cpus=2)
    gov, _ = make_governor(m)
    gov.start()
    simulate(gov, m, 6.0, lambda t: 1.0)
    state = json.loads(json.dumps(gov.state()))
    assert state["enabled"] and state["reason"] is None
    assert state["max_threads"] == 2 and state["cpus"] == 2 and state["threads"] == 1
    assert state["changes"] == 1 and state["readings"] >= 5
    assert state["others_busy"] == pytest.approx(1.0, abs=0.05)
    json.dumps(gov.changes)


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        ThreadGovernor(0, enabled=False)
    with pytest.raises(ValueError):
        ThreadGovernor(1, interval_s=0, enabled=False)


# --------------------------------------------------------------------------- live


def test_live_busy_process_is_seen_as_load() -> None:
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat")
    if available_cpus() < 2:
        pytest.skip("needs 2 CPUs")
    calls: list[int] = []
    gov = ThreadGovernor(2, interval_s=0.3, set_threads=calls.append)
    assert gov.enabled
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(proc.pid, os.sched_getaffinity(0))
        gov.start()
        end = time.monotonic() + 2.0
        others: list[float] = []
        while time.monotonic() < end:
            time.sleep(0.05)
            n = gov.readings
            gov.poll()
            if gov.readings > n:
                others.append(gov.last_others_busy)
    finally:
        proc.kill()
        proc.wait()
    assert len(others) >= 4
    assert sum(others) / len(others) >= 0.6, others
    assert gov.threads == 1, (others, gov.changes)


def test_a_run_hands_back_the_callers_thread_count(tmp_path: Path) -> None:
    """The trainer sets torch's thread count for its run (and the governor may lower it); the
    caller gets its own count back, so a second run in the process starts from the same place."""
    import torch

    import collapselab

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        run = collapselab.train(
            "byol", "digits", run={"name": "t", "out_dir": str(tmp_path)},
            train={"epochs": 1, "max_steps_per_epoch": 1, "threads": 2, "device": "cpu"},
            log={"progress": False, "tensorboard": False}, eval={"final": False, "knn_every": 0},
            model={"backbone_args": {"width": 8}}, monitor={"probe_size": 32},
        )
        assert run.summary["threads"]["max_threads"] == 2  # the run itself used its own setting
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
