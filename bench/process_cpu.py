"""CPU time of a process and its live descendants (from /proc), and a meter of cores used over a window."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(stat_path: Path) -> float:
    """utime + stime of a process or thread, from /proc/.../stat."""
    fields = stat_path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def parent_pids() -> dict[int, int]:
    """pid → parent pid of every live process."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return parents


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants: with EXECUTOR=process the runs train in the service's
    grandchildren (a fork server's children); MLflow's ONNX model logging starts a Python subprocess."""
    children: dict[int, list[int]] = {}
    for child, parent in parent_pids().items():
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += children.get(current, [])
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants (a process that exited in between is not counted)."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(Path(f"/proc/{member}/stat"))
    return total


@dataclass(frozen=True)
class CpuUse:
    """Cores used on average over a window (CPU seconds / wall seconds)."""

    service: float
    event_loop: float  # the service's main thread: uvicorn's event loop
    load_generator: float  # this benchmark: pollers and probe, plus the WebSocket clients' process


class CpuMeter:
    def __init__(self, pid: int) -> None:
        self._pid = pid
        self._main_thread = Path(f"/proc/{pid}/task/{pid}/stat")
        self._start = self._now()

    def _now(self) -> tuple[float, float, float, float]:
        return (
            time.monotonic(),
            tree_cpu_seconds(self._pid),
            cpu_seconds(self._main_thread),
            time.process_time(),
        )

    def read(self, other_client_cpu_s: float = 0.0) -> CpuUse:
        """:param other_client_cpu_s: CPU seconds of load-generator processes other than this one."""
        end = self._now()
        wall = end[0] - self._start[0]
        service, loop, client = ((end[i] - self._start[i]) / wall for i in (1, 2, 3))
        return CpuUse(service, loop, client + other_client_cpu_s / wall)
