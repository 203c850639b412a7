"""Start a test file as W local gloo ranks (the torchrun environment, loopback only)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import pytest

Launch = Callable[[str, Sequence[str], int, float], list[tuple[int, str, str]]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(script: str, args: Sequence[str], world: int, timeout_s: float) -> list[tuple[int, str, str]]:
    """Run ``python script *args`` as ``world`` ranks; (returncode, stdout, stderr) per rank.

    Each rank gets RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT as torchrun sets them, one
    OpenMP thread and no CUDA; all are killed (and the test fails) after ``timeout_s + 20`` s.
    """
    port = free_port()
    processes = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
                   CUDA_VISIBLE_DEVICES="")
        if sys.platform.startswith("linux"):  # loopback only: no dependence on the host's DNS
            env.setdefault("GLOO_SOCKET_IFNAME", "lo")
        processes.append(subprocess.Popen([sys.executable, script, *args], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    deadline = time.monotonic() + timeout_s + 20
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=max(1.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
            process.communicate()
        pytest.fail("distributed workers did not finish in time (killed)")
    return [(p.returncode, out, err) for p, (out, err) in zip(processes, outputs, strict=True)]


@pytest.fixture(scope="session")
def launch() -> Launch:
    return launch_ranks
