"""A training job's MLflow side: its MLflow run started, logged to and ended; a no-op with tracking off.

One object instead of an "is tracking on?" guard before each call in `TrainingJob`. Everything goes
through the `Tracker`'s background sender, so none of it blocks training on MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow_client import TrackedRun, Tracker
from onnx_export import ExportReport
from records.files import LAST_MODEL_FILE
from records.labels import mlflow_run_labels
from records.metric_names import mlflow_metrics
from records.mlflow_models import ModelHandOn
from records.tables import RunStatus, StopReason, TrainingRun

# A remote job waits this long for its files to reach the artifact store before it reports them ready.
ARTIFACT_UPLOAD_WAIT_S = 120.0


class JobTracking:
    """The MLflow run of one training job.

    :param tracker: MLflow; None: tracking is off and every method does nothing.
    :param run: the job's run.
    :param remote: the service cannot read this process's files (remote worker): `wait_for_uploads`
        waits until the files reached the artifact store.
    :param log: the job's bound logger.
    """

    def __init__(self, tracker: Tracker | None, run: TrainingRun, remote: bool, log: Any) -> None:
        self.tracker = tracker
        self.remote = remote
        self.log = log
        self.tracked: TrackedRun | None = None
        if tracker is not None:
            name, tags = mlflow_run_labels(run)
            tags.update(experiment_id=run.id, algorithm=run.algorithm, maze_size=str(run.maze_size))
            self.tracked = tracker.start_run(run.id, name, tags)

    def log_params(self, params: dict[str, Any]) -> None:
        if self.tracker is not None and self.tracked is not None:
            self.tracker.log_params(self.tracked, params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log under MLflow's grouped names (`records.metric_names`)."""
        if self.tracker is not None and self.tracked is not None:
            self.tracker.log_metrics(self.tracked, mlflow_metrics(metrics), step)

    def log_outcome(self, model_path: Path, stop_reason: StopReason) -> None:
        """Why the run ended, and its kept models (the best as `model.zip`, the last beside it)."""
        if self.tracker is None or self.tracked is None:
            return
        self.tracker.set_tags(self.tracked, {"stop_reason": stop_reason.value})
        self.tracker.log_artifact(self.tracked, model_path, "sb3_model")
        last = model_path.parent / LAST_MODEL_FILE
        if last.is_file():
            self.tracker.log_artifact(self.tracked, last, "sb3_model")
        self.wait_for_uploads()

    def log_onnx(self, onnx_path: Path, report: ExportReport, step: int, hand_on: ModelHandOn) -> None:
        """The exported policy as an MLflow model (registered when asked), with export time and parity."""
        if self.tracker is None or self.tracked is None:
            return
        self.tracker.log_onnx_model(self.tracked, onnx_path, hand_on)
        self.log_metrics(
            {
                "onnx_export_seconds": report.export_seconds,
                "onnx_action_agreement": report.parity.action_agreement,
            },
            step,
        )
        self.wait_for_uploads()

    def wait_for_uploads(self) -> None:
        """A remote job's files exist for the service only once uploaded: report them after that."""
        if self.remote and self.tracker is not None and not self.tracker.flush(ARTIFACT_UPLOAD_WAIT_S):
            self.log.warning("artifact_upload_pending", waited_s=ARTIFACT_UPLOAD_WAIT_S)

    def end(self, status: RunStatus) -> None:
        """End the MLflow run with the job's final state (a failed one tagged with its stop reason)."""
        if self.tracker is None or self.tracked is None:
            return
        if status is RunStatus.FAILED:
            self.tracker.set_tags(self.tracked, {"stop_reason": StopReason.FAILED.value})
        self.tracker.end_run(self.tracked, status.value)
