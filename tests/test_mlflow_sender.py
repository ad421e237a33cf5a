"""The MLflow sender gives up at once on what the store refuses for good: nothing queued behind waits."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.tracking import MlflowClient

from records.mlflow_sender import MlflowSender, Operation, _is_refused, _is_transient


def metric_operation(run_key: str, mlflow_run_id: str, given_up: list[str]) -> Operation:
    def send(client: MlflowClient) -> None:
        client.log_batch(mlflow_run_id, metrics=[Metric("reward", 1.0, int(time.time() * 1000), 1)])

    return Operation(run_key, "log metrics", send, on_give_up=given_up.append)


def test_writes_to_a_deleted_run_or_a_deleted_file_are_given_up_without_delaying_other_runs(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("sender")
    deleted, live = client.create_run(experiment).info.run_id, client.create_run(experiment).info.run_id
    client.delete_run(deleted)  # as DELETE /experiments/{id} does while the run's last uploads are queued
    given_up: list[str] = []
    attempts: list[str] = []

    def upload_missing_file(sender_client: MlflowClient) -> None:
        attempts.append("upload")
        sender_client.log_artifact(live, str(tmp_path / "runs" / "gone" / "model.onnx"))

    sender = MlflowSender(lambda: MlflowClient(uri))
    try:
        began = time.monotonic()
        sender.enqueue(metric_operation("deleted-run", deleted, given_up))
        sender.enqueue(metric_operation("deleted-run", deleted, given_up))
        sender.enqueue(Operation("live-run", "log model", upload_missing_file, on_give_up=given_up.append))
        sender.enqueue(metric_operation("live-run", live, given_up))
        assert sender.flush(timeout_s=20), "the sender still held operations after 20 s"
        elapsed = time.monotonic() - began
    finally:
        sender.close(timeout_s=1)

    # Each refused operation was tried once and reported; retries with backoff took ~25 s before.
    assert elapsed < 5, elapsed
    assert attempts == ["upload"]
    # The two deleted-run writes are one request when the sender merged them, else two.
    assert 1 <= sum("'active' state" in message for message in given_up) <= 2, given_up
    assert sum("model.onnx" in message for message in given_up) == 1, given_up
    assert [m.value for m in client.get_metric_history(live, "reward")] == [1.0]


@pytest.mark.parametrize("run_id", ["bc108632d06445d2b8df6e503b0f0c36", "503b0f0c36bc108632d06445d2b8df6e"])
def test_a_deleted_run_whose_id_holds_503_is_refused_not_an_outage(run_id: str) -> None:
    # Seen in a full test run: "503" inside the hex run id read as HTTP 503, and the sender retried the
    # refused write with backoff for as long as it ran.
    deleted = MlflowException(
        f"The run {run_id} must be in the 'active' state. Current state is deleted.",
        error_code=INVALID_PARAMETER_VALUE,
    )
    assert not _is_transient(deleted)
    assert _is_refused(deleted)


@pytest.mark.parametrize(
    "message",
    [
        "API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code 503 != 200",
        "503 Server Error: Service Unavailable for url: http://127.0.0.1:5000/api/2.0/mlflow/runs/get",
        "HTTPConnectionPool(host='127.0.0.1', port=5000): Max retries exceeded",
        "(sqlite3.OperationalError) database is locked",
    ],
)
def test_outages_are_still_retried(message: str) -> None:
    outage = MlflowException(message, error_code=INVALID_PARAMETER_VALUE)
    assert _is_transient(outage)
    assert not _is_refused(outage)
