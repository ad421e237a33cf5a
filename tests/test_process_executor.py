"""EXECUTOR=process: each run trains in a child process of a real uvicorn service."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from mlflow.tracking import MlflowClient

from bench.process_cpu import parent_pids, process_tree
from tests.conftest import FINAL_STATES, LONG_PPO, TINY_PPO, LiveService, wait_for_status
from training.executors.processes import describe_exit


def descendants(pid: int) -> list[int]:
    return process_tree(pid)[1:]


def is_fork_server(pid: int) -> bool:
    try:
        return b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def training_process_of(service: LiveService) -> int:
    """The one process training for the service: a child of its fork server (not a thread of it)."""
    assert service.process is not None
    service_pid = service.process.pid
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        parents = parent_pids()
        servers = [pid for pid, parent in parents.items() if parent == service_pid and is_fork_server(pid)]
        trainers = [pid for pid, parent in parents.items() if parent in servers]
        if len(servers) == 1 and len(trainers) == 1:
            return trainers[0]
        time.sleep(0.2)
    raise AssertionError(f"no single training process under the service: {descendants(service_pid)}")


def test_runs_train_in_child_processes_and_a_killed_one_fails_alone(
    live_service: Callable[..., LiveService],
) -> None:
    service = live_service(EXECUTOR="process", MAX_CONCURRENT_RUNS="1")
    with service.client() as http:
        doomed = http.post("/training/start", json=LONG_PPO).json()["experiment_id"]
        wait_for_status(http.get, doomed, lambda s: s["timesteps"] > 0)
        trainer = training_process_of(service)
        assert service.process is not None and trainer != service.process.pid
        os.kill(trainer, signal.SIGKILL)  # as the kernel's out-of-memory killer would
        failed = wait_for_status(http.get, doomed, lambda s: s["status"] in FINAL_STATES, timeout_s=15)
        assert failed["status"] == "failed"
        assert "exited unexpectedly (killed by SIGKILL " in failed["error"]

        # The service and the next run are unaffected: it trains, exports and verifies as with threads.
        for body in (TINY_PPO,):
            run_id = http.post("/training/start", json=body).json()["experiment_id"]
            done = wait_for_status(
                http.get, run_id, lambda s: s["onnx"] is not None and s["onnx"]["status"] != "pending"
            )
            assert done["status"] == "completed", done
            assert done["timesteps"] == body["total_episodes"] * body["timesteps_per_episode"]
            assert done["onnx"]["status"] == "exported" and done["onnx"]["parity_passed"] is True
            onnx_bytes = http.get(f"/experiments/{run_id}/model.onnx").content
            session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
            model_input = session.get_inputs()[0]
            dtype = np.uint8 if model_input.type == "tensor(uint8)" else np.float32
            observation = np.zeros((1, *model_input.shape[1:]), dtype=dtype)
            (actions,) = session.run(None, {model_input.name: observation})[:1]
            assert actions.shape[0] == 1
            assert http.get(f"/experiments/{run_id}/model.zip").content.startswith(b"PK")

        # A stop request reaches the child: it saves and ends `stopped`.
        stopped = http.post("/training/start", json=LONG_PPO).json()["experiment_id"]
        wait_for_status(http.get, stopped, lambda s: s["timesteps"] > 0)
        assert http.post(f"/training/stop/{stopped}").status_code == 200
        end = wait_for_status(http.get, stopped, lambda s: s["status"] in FINAL_STATES, timeout_s=10)
        assert end["status"] == "stopped" and end["model_available"] is True

        # Stopped at once, before its process can have started training: the order waits for it.
        hasty = http.post("/training/start", json=LONG_PPO).json()["experiment_id"]
        assert http.post(f"/training/stop/{hasty}").status_code == 200
        end = wait_for_status(http.get, hasty, lambda s: s["status"] in FINAL_STATES, timeout_s=30)
        assert end["status"] == "stopped" and end["error"] is None, end


def test_a_service_killed_mid_run_leaves_it_saved_and_resumable(
    live_service: Callable[..., LiveService],
) -> None:
    body = {**TINY_PPO, "total_episodes": 16}
    service = live_service(EXECUTOR="process", CHECKPOINT_EVERY_EPISODES="0")
    service.wait_for_mlflow()
    with service.client() as http:
        run_id = http.post("/training/start", json=body).json()["experiment_id"]
        before = wait_for_status(http.get, run_id, lambda s: s["episode"] >= 3 and s["mlflow_run_id"])

    service.kill()  # SIGKILL: the service runs no shutdown code; its child notices and saves
    restarted = live_service(data_dir=service.data_dir, EXECUTOR="process")
    with restarted.client() as http:
        # Saved by the child at the kill, not a periodic checkpoint (there are none): nothing is lost.
        interrupted = wait_for_status(
            http.get, run_id, lambda s: s["status"] != "running" and s["model_available"], timeout_s=20
        )
        assert interrupted["status"] == "interrupted", interrupted
        assert interrupted["timesteps"] >= before["timesteps"]
        assert http.post(f"/training/resume/{run_id}").status_code == 200
        done = wait_for_status(http.get, run_id, lambda s: s["status"] in FINAL_STATES, timeout_s=240)
        assert done["status"] == "completed", done
        # Saved mid-iteration, resumed with whole iterations: at most one iteration past the budget.
        budget = body["total_episodes"] * body["timesteps_per_episode"]
        assert budget <= done["timesteps"] < budget + body["timesteps_per_episode"]
        assert done["episode"] == body["total_episodes"] and done["progress"] == 1.0
        assert done["maze_episodes"] >= interrupted["maze_episodes"]
        assert done["mlflow_run_id"] == before["mlflow_run_id"]

        # SIGTERM with a run in a child: it saves, ends `interrupted`, its MLflow run KILLED.
        long_run = http.post("/training/start", json=LONG_PPO).json()["experiment_id"]
        running = wait_for_status(http.get, long_run, lambda s: s["timesteps"] > 0 and s["mlflow_run_id"])
    trainer = training_process_of(restarted)
    began = time.monotonic()
    restarted.stop()
    assert time.monotonic() - began < 60
    deadline = time.monotonic() + 10
    while Path(f"/proc/{trainer}").exists():
        assert time.monotonic() < deadline, "the training process outlived the service"
        time.sleep(0.2)
    tracking_uri = f"sqlite:///{service.data_dir.resolve() / 'mlflow.db'}"
    assert MlflowClient(tracking_uri).get_run(running["mlflow_run_id"]).info.status == "KILLED"
    with live_service(data_dir=service.data_dir, EXECUTOR="process").client() as http:
        end = http.get(f"/training/status/{long_run}").json()
    assert end["status"] == "interrupted" and end["error"] == "the service shut down during training"
    assert end["model_available"] is True


def test_exit_codes_are_described_for_people() -> None:
    assert describe_exit(1) == "exit status 1"
    assert describe_exit(-signal.SIGKILL).startswith("killed by SIGKILL")
    assert describe_exit(-signal.SIGSEGV) == "killed by SIGSEGV"
