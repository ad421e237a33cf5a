"""What a benchmark ran on (CPU, cores, package versions, load average) for its report, and its log lines."""

from __future__ import annotations

import contextlib
import datetime
import importlib.metadata
import os
import platform
import sys
from pathlib import Path


def log(message: str) -> None:
    print(f"[{datetime.datetime.now(datetime.UTC):%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def machine_line() -> str:
    return (
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, no GPU. Python {platform.python_version()}, "
        f"torch {version('torch')}, stable-baselines3 {version('stable-baselines3')}, "
        f"mlflow {version('mlflow')}, fastapi {version('fastapi')}, uvicorn {version('uvicorn')}, "
        f"websockets {version('websockets')}, httpx {version('httpx')}."
    )
