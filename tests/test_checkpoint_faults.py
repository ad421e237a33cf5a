"""Issue 16 item 5: a brief filesystem fault (a read-only or full data directory) never costs a run.

A failed checkpoint save is logged and retried at the next checkpoint while training goes on; a run that
does fail from an I/O error resumes from its newest readable checkpoint (an unreadable newest one is
skipped); `/health` reports an unwritable or full data directory.

The faults are real. A full disk is a small tmpfs filled up (mounting needs root: skipped otherwise).
Read-only directories are real file modes, seen by a service running as `nobody` (root ignores modes).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from agents.building import make_vec_env
from core.settings import Settings
from records.store import RunStore
from records.tables import RunStatus, TrainingRun
from tests.conftest import SMALL_RUN, LiveService, as_user, settings_for_tests, wait_for_status
from training.checkpoints import load_newest_readable
from training.job import JobControl, TrainingJob

pytestmark = pytest.mark.training

ROOT_WITH_SETPRIV = shutil.which("setpriv") is not None and os.geteuid() == 0
TMPFS_BYTES = 16 * 1024 * 1024
# Long enough to act on while it trains (stopped or failed long before its end); a checkpoint per iteration.
LONG_RUN = replace(SMALL_RUN, total_episodes=100_000)
FAILING_RUN = replace(SMALL_RUN, total_episodes=20)


def periodic_checkpoints(directory: Path) -> list[Path]:
    """The run's periodic checkpoints, the newest (most steps) first."""
    found = directory.glob("checkpoint_*_steps.zip") if directory.is_dir() else []
    return sorted(found, key=lambda path: int(path.name.split("_")[1]), reverse=True)


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


# --- a full disk, for real: the job's data directory on a small tmpfs --------------------------------


@pytest.fixture
def small_disk() -> Iterator[Path]:
    mount_point = Path(tempfile.mkdtemp(prefix="rel5-tmpfs-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        mount_point.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
        mount_point.rmdir()


def fill(disk: Path) -> Path:
    """Write (or add to) a file until the disk is full (ENOSPC); its path."""
    filler = disk / "filler"
    with filler.open("ab") as file:
        try:
            while True:
                file.write(b"\0" * (1 << 16))
                file.flush()
        except OSError:
            pass
    return filler


def trained_on(store: RunStore, run_id: str, steps: int) -> Callable[[], bool]:
    """A condition: the run has trained `steps` more env steps than it had now."""
    due = store.get(run_id).timesteps + steps
    return lambda: store.get(run_id).timesteps >= due


def settled_on_a_full_disk(
    disk: Path, store: RunStore, run_id: str, iteration: int, checkpoints: Path
) -> Path:
    """The newest checkpoint once two iterations have passed on the full disk without a new one.

    A save that had written its file just before the disk filled up succeeds, and removing the oldest
    checkpoint then frees room that the next save takes, and so on: the disk is topped up again after
    every iteration that saved one, until none does.
    """
    newest, quiet = periodic_checkpoints(checkpoints)[0], 0
    for _ in range(20):
        wait_until(trained_on(store, run_id, iteration), 120, "an iteration on a full disk")
        current = periodic_checkpoints(checkpoints)[0]
        if current == newest:
            quiet += 1
            if quiet == 2:
                return current
        else:
            newest, quiet = current, 0
            fill(disk)
    raise AssertionError("checkpoints were still saved after the disk had been topped up 20 times")


@pytest.fixture
def job_settings(small_disk: Path, tmp_path: Path) -> Settings:
    """Overrides tests/conftest.py's `job_settings` (its `job_store` follows): only the run files are on
    the small disk; the database is not what this test is about."""
    settings = settings_for_tests(
        small_disk / "data",
        mlflow_enabled=False,
        eval_episodes=0,  # a best-model save would be one more write to fail
        checkpoint_every_episodes=1,
        database_url=f"sqlite:///{tmp_path / 'service.db'}",
    )
    torch.set_num_threads(settings.torch_threads)
    return settings


def claim(store: RunStore) -> TrainingRun:
    run = store.claim_next_queued("tests:1:faults", max_running=10)
    assert run is not None
    return run


def test_a_full_disk_skips_checkpoints_and_training_goes_on(
    job_settings: Settings, job_store: RunStore, small_disk: Path
) -> None:
    job_store.create(LONG_RUN)
    run = claim(job_store)
    control = JobControl()
    outcome: list[RunStatus] = []
    thread = threading.Thread(
        target=lambda: outcome.append(TrainingJob(job_settings, job_store, None, run, control).execute())
    )
    checkpoints = job_settings.run_dir(run.id) / "checkpoints"
    thread.start()
    try:
        wait_until(lambda: periodic_checkpoints(checkpoints), 120, "a first checkpoint")
        iteration = run.timesteps_per_episode
        filler = fill(small_disk)
        before = settled_on_a_full_disk(small_disk, job_store, run.id, iteration, checkpoints)
        # Several checkpoints are due (one per iteration) and fail with ENOSPC while the disk is full.
        wait_until(trained_on(job_store, run.id, 4 * iteration), 120, "training on")
        assert job_store.get(run.id).status == "running" and thread.is_alive()
        assert periodic_checkpoints(checkpoints)[0] == before, "no checkpoint saved on a full disk"

        filler.unlink()  # the disk has room again: the next checkpoint is saved
        wait_until(lambda: periodic_checkpoints(checkpoints)[0] != before, 120, "a checkpoint after")
    finally:
        control.stop.set()
        thread.join(timeout=120)
    assert outcome == [RunStatus.STOPPED], job_store.get(run.id).error
    assert len(periodic_checkpoints(checkpoints)) == 2  # the two newest are kept, older ones removed
    # No write that failed on the full disk left its partial file. Checked once the job has ended: while
    # it trains, a checkpoint being written has its partial file for a moment (seen in a full run).
    assert not [path.name for path in checkpoints.iterdir() if path.name.startswith(".partial-")]


def test_a_run_failed_by_a_full_disk_resumes_from_its_newest_readable_checkpoint(
    job_settings: Settings, job_store: RunStore, small_disk: Path
) -> None:
    job_store.create(FAILING_RUN)
    run = claim(job_store)
    checkpoints = job_settings.run_dir(run.id) / "checkpoints"
    thread = threading.Thread(target=TrainingJob(job_settings, job_store, None, run, JobControl()).execute)
    thread.start()
    wait_until(lambda: len(periodic_checkpoints(checkpoints)) >= 2, 120, "two checkpoints")
    filler = fill(small_disk)
    thread.join(timeout=300)
    failed = job_store.get(run.id)
    assert failed.status == "failed" and "No space left on device" in (failed.error or ""), failed.error

    filler.unlink()
    newest, previous = periodic_checkpoints(checkpoints)[:2]
    newest.write_bytes(newest.read_bytes()[:-300])  # damaged: a truncated zip
    env = make_vec_env(run.maze_size, run.maze_mode, run.seed, run.n_envs)
    chosen = load_newest_readable(run.algorithm, job_settings.run_dir(run.id), env, "cpu", run.id)
    env.close()
    assert chosen is not None and chosen[1] == previous  # the damaged newest one is skipped
    assert job_store.requeue_for_resume(run.id), "a run failed by an I/O error can be resumed"
    resumed = claim(job_store)

    status = TrainingJob(job_settings, job_store, None, resumed, JobControl()).execute()

    record = job_store.get(run.id)
    assert status is RunStatus.COMPLETED, record.error
    assert record.timesteps >= record.total_timesteps


# --- a read-only data directory, for real: a service running as `nobody` ---------------------------


@pytest.fixture
def nobody_dirs() -> Iterator[tuple[Path, Path]]:
    """A data directory and a database directory the user `nobody` owns."""
    parent = Path(tempfile.mkdtemp(prefix="rel5-nobody-"))
    os.chmod(parent, 0o755)
    user = pwd.getpwnam("nobody")
    made = []
    for name in ("data", "db"):
        path = parent / name
        path.mkdir()
        os.chown(path, user.pw_uid, user.pw_gid)
        made.append(path)
    yield made[0], made[1]
    shutil.rmtree(parent, ignore_errors=True)


@pytest.fixture
def nobody_service(nobody_dirs: tuple[Path, Path], live_service: Callable[..., LiveService]) -> LiveService:
    # `nobody_dirs` first: torn down after the service stopped, not while it still writes there.
    data, db = nobody_dirs
    return live_service(
        data_dir=data,
        run_as=as_user("nobody"),
        HOME=str(data),
        MLFLOW_ENABLED="false",
        MLFLOW_TRACKING_URI=f"sqlite:///{data / 'mlflow.db'}",
        DATABASE_URL=f"sqlite:///{db / 'service.db'}",  # outside the directory made read-only
        CHECKPOINT_EVERY_EPISODES="1",
        EVAL_EPISODES="0",
    )


def log_events(service: LiveService, event: str) -> list[dict[str, Any]]:
    found = []
    for line in service.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{event}"' in line:
            found.append(json.loads(line))
    return found


RUN_BODY = {"algorithm": "PPO", "timesteps_per_episode": 64, "maze_size": 5, "n_envs": 2, "seed": 3}


@pytest.mark.skipif(not ROOT_WITH_SETPRIV, reason="needs root and setpriv")
def test_a_read_only_data_directory_is_reported_and_training_goes_on(nobody_service: LiveService) -> None:
    service = nobody_service
    with service.client() as http:
        assert http.get("/health").json()["data_dir"] | {"free_bytes": 0} == {
            "ok": True,
            "detail": "data directory writable",
            "writable": True,
            "free_bytes": 0,
        }
        run_id = http.post("/training/start", json={**RUN_BODY, "total_episodes": 100_000}).json()[
            "experiment_id"
        ]
        checkpoints = service.data_dir / "runs" / run_id / "checkpoints"
        before = wait_until(lambda: periodic_checkpoints(checkpoints), 120, "a first checkpoint")[0]
        service.data_dir.chmod(0o555)
        checkpoints.chmod(0o555)
        try:
            health = http.get("/health").json()
            read_only_at = http.get(f"/training/status/{run_id}").json()["timesteps"]
            wait_for_status(http.get, run_id, lambda body: body["timesteps"] >= read_only_at + 4 * 64)
            assert http.get(f"/training/status/{run_id}").json()["status"] == "running"
        finally:
            service.data_dir.chmod(0o755)
            checkpoints.chmod(0o755)
        wait_until(lambda: periodic_checkpoints(checkpoints)[0] != before, 120, "a checkpoint after")
        healthy = http.get("/health").json()
        stopped = http.post(f"/training/stop/{run_id}", params={"wait_s": 30}).json()

    assert health["status"] == "degraded"
    assert health["data_dir"]["ok"] is False and health["data_dir"]["writable"] is False
    assert "Permission denied" in health["data_dir"]["detail"]
    assert healthy["status"] == "ok" and healthy["data_dir"]["ok"] is True
    assert stopped["status"] == "stopped"
    skipped = [
        event for event in log_events(service, "checkpoint_not_saved") if event["experiment_id"] == run_id
    ]
    assert skipped and skipped[0]["level"] == "warning"
    assert "Permission denied" in skipped[0]["error"]


@pytest.mark.skipif(not ROOT_WITH_SETPRIV, reason="needs root and setpriv")
def test_a_run_failed_by_an_unwritable_directory_resumes_from_its_previous_checkpoint(
    nobody_service: LiveService,
) -> None:
    service = nobody_service
    with service.client() as http:
        run_id = http.post("/training/start", json={**RUN_BODY, "total_episodes": 20}).json()["experiment_id"]
        run_dir = service.data_dir / "runs" / run_id
        wait_until(lambda: len(periodic_checkpoints(run_dir / "checkpoints")) >= 2, 120, "two checkpoints")
        run_dir.chmod(0o555)  # its final model cannot be saved: the run fails at its end
        try:
            failed = wait_for_status(
                http.get, run_id, lambda body: body["status"] != "running", timeout_s=180
            )
        finally:
            run_dir.chmod(0o755)
        newest, previous = periodic_checkpoints(run_dir / "checkpoints")[:2]
        newest.write_bytes(newest.read_bytes()[:-300])  # and its newest checkpoint is damaged

        resumed = http.post(f"/training/resume/{run_id}")
        assert resumed.status_code == 200, resumed.text
        done = wait_for_status(http.get, run_id, lambda body: body["status"] != "running", timeout_s=180)

    assert failed["status"] == "failed" and "PermissionError" in failed["error"], failed
    assert done["status"] == "completed", done
    assert done["timesteps"] >= 20 * 64
    used = [
        event for event in log_events(service, "resuming_from_checkpoint") if event["experiment_id"] == run_id
    ]
    assert len(used) == 1 and used[0]["checkpoint"] == str(previous), used
    assert used[0]["skipped"] == [newest.name]
    unreadable = log_events(service, "checkpoint_unreadable")
    assert [event["checkpoint"] for event in unreadable] == [str(newest)]


def test_health_reports_a_data_directory_short_of_space(live_service: Callable[..., LiveService]) -> None:
    # The real free space, against a threshold no disk meets: what an operator sees on a full disk.
    service = live_service(DATA_DIR_MIN_FREE_MB="1000000000")
    answer = httpx.get(f"{service.base_url}/health", timeout=30).json()

    assert answer["status"] == "degraded"
    assert answer["data_dir"]["ok"] is False and answer["data_dir"]["writable"] is True
    assert answer["data_dir"]["free_bytes"] > 0
    assert "DATA_DIR_MIN_FREE_MB" in answer["data_dir"]["detail"]
