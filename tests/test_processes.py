"""The service as users run it: real uvicorn processes, restarts, kill -9 and several workers."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path

from mlflow.tracking import MlflowClient

from tests.conftest import FINAL_STATES, LONG_PPO, TINY_PPO, LiveService, ended_mlflow_run, wait_for_status


def test_runs_survive_a_restart_and_a_killed_run_is_interrupted(
    live_service: Callable[..., LiveService], tmp_path: Path
) -> None:
    service = live_service()
    with service.client() as http:
        done = http.post("/training/start", json=TINY_PPO).json()["experiment_id"]
        wait_for_status(http.get, done, lambda s: s["status"] in FINAL_STATES)
        alive = http.post("/training/start", json=LONG_PPO).json()["experiment_id"]
        wait_for_status(http.get, alive, lambda s: s["timesteps"] > 0)

    service.kill()  # SIGKILL: no shutdown handler runs, the record still says "running"
    restarted = live_service(data_dir=service.data_dir)

    with restarted.client() as http:
        interrupted = wait_for_status(http.get, alive, lambda s: s["status"] != "running", timeout_s=20)
        assert interrupted["status"] == "interrupted"
        assert "exited" in interrupted["error"]
        assert interrupted["finished_at"] is not None
        assert http.get(f"/training/status/{done}").json()["status"] == "completed"


def test_sigterm_stops_runs_gracefully_as_interrupted_with_their_model(
    live_service: Callable[..., LiveService],
) -> None:
    service = live_service()
    with service.client() as http:
        run_id = http.post("/training/start", json=LONG_PPO).json()["experiment_id"]
        running = wait_for_status(http.get, run_id, lambda s: s["timesteps"] > 0 and s["mlflow_run_id"])

    began = time.monotonic()
    service.stop()  # SIGTERM, as `docker stop` or Ctrl-C would

    # Bounded: the run stops at its next step, then MLflow gets at most 30 s to flush.
    assert time.monotonic() - began < 60
    tracking_uri = f"sqlite:///{service.data_dir.resolve() / 'mlflow.db'}"
    assert MlflowClient(tracking_uri).get_run(running["mlflow_run_id"]).info.status == "KILLED"
    restarted = live_service(data_dir=service.data_dir)
    with restarted.client() as http:
        status = http.get(f"/training/status/{run_id}").json()
    assert status["status"] == "interrupted"
    assert status["error"] == "the service shut down during training"
    assert status["model_available"] is True


def test_status_and_stop_work_from_any_of_several_workers(live_service: Callable[..., LiveService]) -> None:
    # A fresh MLflow store, as a first deployment has: three workers race to create it (other tests
    # start from a migrated copy); the race ends in one usable store.
    service = live_service(workers=3, fresh_mlflow_store=True)
    service.wait_for_mlflow()
    with service.client() as http:
        run_id = http.post("/training/start", json=LONG_PPO).json()["experiment_id"]

    # New connection each time, so the kernel spreads requests over the worker processes.
    workers_seen: set[str] = set()
    progress: list[int] = []
    deadline = time.monotonic() + 60
    while (len(workers_seen) < 2 or len(set(progress)) < 2) and time.monotonic() < deadline:
        with service.client() as http:
            workers_seen.add(http.get("/health").json()["worker"])
        with service.client() as http:
            status = http.get(f"/training/status/{run_id}").json()
        assert status["status"] == "running", status
        progress.append(status["timesteps"])
        time.sleep(0.1)
    assert len(workers_seen) >= 2, workers_seen
    assert len(set(progress)) >= 2, "progress written by the training worker is visible to all workers"

    for _ in range(6):  # stop from several connections: whichever worker answers, the run stops
        with service.client() as http:
            answer = http.post(f"/training/stop/{run_id}").json()
        assert answer["status"] in ("running", "stopped")
        if answer["status"] == "stopped":
            break
    with service.client() as http:
        final = wait_for_status(http.get, run_id, lambda s: s["status"] in FINAL_STATES, timeout_s=30)
    assert final["status"] == "stopped"
    assert final["model_available"] is True


def test_the_concurrency_cap_holds_across_workers(live_service: Callable[..., LiveService]) -> None:
    service = live_service(workers=3, MAX_CONCURRENT_RUNS="1")
    run_ids = []
    for _ in range(4):
        with service.client() as http:
            run_ids.append(http.post("/training/start", json=LONG_PPO).json()["experiment_id"])

    time.sleep(2)  # let every worker's scheduler look at the queue
    with service.client() as http:
        states = [http.get(f"/training/status/{run_id}").json()["status"] for run_id in run_ids]
        assert states.count("running") == 1, states
        assert states.count("queued") == 3, states
        for run_id in run_ids:
            http.post(f"/training/stop/{run_id}")


def test_a_killed_run_resumes_from_its_checkpoint_with_a_continuous_step_count(
    live_service: Callable[..., LiveService],
) -> None:
    body = {**TINY_PPO, "total_episodes": 24}
    service = live_service(CHECKPOINT_EVERY_EPISODES="2")
    service.wait_for_mlflow()
    with service.client() as http:
        run_id = http.post("/training/start", json=body).json()["experiment_id"]
        before = wait_for_status(http.get, run_id, lambda s: s["episode"] >= 5 and s["mlflow_run_id"])
        assert http.post(f"/training/resume/{run_id}").status_code == 409  # still running
    tracking_uri = f"sqlite:///{service.data_dir.resolve() / 'mlflow.db'}"
    deadline = time.monotonic() + 60
    while not MlflowClient(tracking_uri).get_metric_history(before["mlflow_run_id"], "rollout/episode"):
        assert time.monotonic() < deadline, "no metrics reached MLflow before the kill"
        time.sleep(0.2)

    service.kill()
    restarted = live_service(data_dir=service.data_dir, CHECKPOINT_EVERY_EPISODES="2")
    with restarted.client() as http:
        wait_for_status(http.get, run_id, lambda s: s["status"] == "interrupted", timeout_s=20)
        resumed = http.post(f"/training/resume/{run_id}")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["run_status"] in ("queued", "running")
        done = wait_for_status(http.get, run_id, lambda s: s["status"] in FINAL_STATES, timeout_s=240)
        assert done["status"] == "completed", done
        assert (
            done["timesteps"]
            == done["total_timesteps"]
            == body["total_episodes"] * body["timesteps_per_episode"]
        )
        assert done["episode"] == body["total_episodes"]
        assert done["maze_episodes"] >= before["maze_episodes"]
        assert done["mlflow_run_id"] == before["mlflow_run_id"]
        assert http.post(f"/training/resume/{run_id}").status_code == 409  # completed: nothing to resume
        wait_for_status(
            http.get, run_id, lambda s: s["onnx"] is not None and s["onnx"]["status"] != "pending"
        )

        assert ended_mlflow_run(tracking_uri, done["mlflow_run_id"], 120).info.status == "FINISHED"

    history = MlflowClient(tracking_uri).get_metric_history(done["mlflow_run_id"], "rollout/episode")
    episodes = sorted({point.step // body["timesteps_per_episode"] for point in history})
    # Metric points still buffered in memory at the SIGKILL are lost (documented); what was sent before
    # it stays, and from the checkpoint the run resumed at, every iteration is logged to the end.
    gaps = [(a, b) for a, b in itertools.pairwise(episodes) if b != a + 1]
    assert episodes[0] == 1 and episodes[-1] == body["total_episodes"]
    assert len(gaps) <= 1, gaps
    if gaps:
        assert (gaps[0][1] - 1) % 2 == 0, "resumed right after a checkpoint (every 2 iterations)"
