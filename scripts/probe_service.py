"""A real service process for the reliability probe: `uvicorn main:app` from this checkout on a loopback
port, with its own data directory and database, driven over HTTP."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
KEY = "probe-key"
WITHOUT_FILE_PRIVILEGES = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
CAN_DROP_PRIVILEGES = os.geteuid() == 0 and shutil.which("setpriv") is not None
RUN = {"algorithm": "PPO", "total_episodes": 2, "timesteps_per_episode": 64, "maze_size": 6, "seed": 5}
LONG = {**RUN, "total_episodes": 100_000, "n_envs": 2}
FINAL = {"completed", "failed", "stopped", "interrupted"}


class Service:
    def __init__(self, name: str, env: dict[str, str], drop_privileges: bool) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=f"probe-{name}-"))
        self.data_dir, self.db_dir = self.root / "data", self.root / "db"
        self.data_dir.mkdir()
        self.db_dir.mkdir()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.root / "service.log"
        environment = {
            **os.environ,
            "DATA_DIR": str(self.data_dir),
            "DATABASE_URL": f"sqlite:///{self.db_dir / 'service.db'}",
            "MLFLOW_ENABLED": "false",
            "MAX_CONCURRENT_RUNS": "2",
            "MAX_QUEUED_RUNS": "3",
            "MAX_REQUEST_BYTES": "65536",
            "CHECKPOINT_EVERY_EPISODES": "1",
            "EVAL_EPISODES": "5",
            "PROGRESS_INTERVAL_S": "0.5",
            "LOG_LEVEL": "INFO",
            **env,
        }
        prefix = WITHOUT_FILE_PRIVILEGES if drop_privileges else []
        command = [*prefix, sys.executable, "-m", "uvicorn", "main:app", "--port", str(self.port)]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=log)
        headers = {"X-API-Key": KEY} if env.get("API_KEY") else {}
        self.http = httpx.Client(base_url=self.url, timeout=120, headers=headers)
        wait(lambda: self._healthy(), 180, f"{name} service to start")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(self.log_path.read_text()[-3000:])
        try:
            return httpx.get(f"{self.url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, body: dict[str, Any], **headers: str) -> str:
        answer = self.http.post("/training/start", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["experiment_id"])

    def status(self, run_id: str) -> dict[str, Any]:
        return dict(self.http.get(f"/training/status/{run_id}").json())

    def until(
        self, run_id: str, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 1200
    ) -> dict[str, Any]:
        def matching() -> dict[str, Any] | None:
            body = self.status(run_id)
            return body if predicate(body) else None

        return dict(wait(matching, timeout_s, run_id))

    def finished(self, run_id: str, timeout_s: float = 1200) -> dict[str, Any]:
        return self.until(
            run_id, lambda b: b["status"] in FINAL and (b["onnx"] or {}).get("status") != "pending", timeout_s
        )

    def checkpoints(self, run_id: str) -> list[Path]:
        directory = self.data_dir / "runs" / run_id / "checkpoints"
        found = directory.glob("checkpoint_*_steps.zip") if directory.is_dir() else []
        return sorted(found, key=lambda path: int(path.name.split("_")[1]), reverse=True)

    def close(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def wait(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.3)
    raise TimeoutError(f"waiting for {what}")
