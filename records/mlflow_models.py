"""The trained policy as an MLflow `onnx` flavour model: saved, uploaded, logged as a logged model.

Saved with a signature and an input example; uploaded as the run's artifact and logged as an MLflow 3
logged model linked to the run, with its held-out metrics; registered in the model registry on request.

Called on the tracker's sender thread (`mlflow_client.Tracker.log_onnx_model`), through the client
with explicit ids: the flavour's `log_model` reads the process-wide tracking URI and active run, which
several trackers and runs would share.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:
    from mlflow.models import Model

ONNX_ARTIFACT_PATH = "onnx_model"  # the run's copy; records/files.py ARTIFACT_PATHS downloads from it
LOGGED_MODEL_NAME = "maze_policy"


@dataclasses.dataclass(frozen=True)
class ModelHandOn:
    """What goes with a run's logged model.

    :param metrics: the kept model's held-out metrics (MLflow names), logged on the logged model (and so
        on its run) at `step`; shown with every registered version of it.
    :param step: the run's timestep of the evaluation they come from.
    :param register_as: registered model name to add the logged model to as a new version; None: none.
    """

    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    step: int = 0
    register_as: str | None = None


class RegistrationRefused(Exception):
    """The registry will not take the model under this name (not worth retrying)."""


def save_onnx_model(onnx_path: Path, model_dir: Path, description: Model | None = None) -> Path:
    """Save the ONNX policy as an MLflow `onnx` flavour model in `model_dir`, with its signature and an
    input example (the start of two held-out mazes, as the environment observes them)."""
    import mlflow.onnx
    import onnx
    import onnxruntime
    from mlflow.models import infer_signature

    import maze_env
    from agents.onnx_policy import OnnxPolicy

    model = onnx.load(str(onnx_path))
    maze_size = model.graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    example = np.stack(
        [
            maze_env.MazeEnv(maze_size=maze_size, maze_mode="fixed", seed=seed).reset()[0]
            for seed in maze_env.eval_maze_seeds(2)
        ]
    )
    signature = infer_signature(example, OnnxPolicy(onnx_path).outputs(example))
    # Explicit requirements: MLflow would otherwise infer them in a subprocess after every run.
    requirements = [f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"]
    mlflow.onnx.save_model(
        model,
        str(model_dir),
        mlflow_model=description,
        signature=signature,
        input_example=example,
        save_as_external_data=False,
        pip_requirements=requirements,
    )
    return model_dir


def upload_onnx_artifact(client: MlflowClient, run_id: str, onnx_path: Path) -> None:
    """The flavour model as the run's artifact `onnx_model/` (what the service downloads)."""
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = save_onnx_model(onnx_path, Path(scratch) / ONNX_ARTIFACT_PATH)
        client.log_artifacts(run_id, str(model_dir), ONNX_ARTIFACT_PATH)


def create_logged_model(
    client: MlflowClient, experiment_id: str, run_id: str, tags: Mapping[str, str]
) -> str:
    """A new (pending) logged model of the run; returns its id."""
    created = client.create_logged_model(
        experiment_id, name=LOGGED_MODEL_NAME, source_run_id=run_id, tags=dict(tags)
    )
    return str(created.model_id)


def upload_logged_model(client: MlflowClient, onnx_path: Path, run_id: str, model_id: str) -> None:
    """Upload the flavour model into the logged model `model_id`, mark it ready and link it to the run
    (`search_logged_models`, `models:/<model_id>`)."""
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    with tempfile.TemporaryDirectory() as scratch:
        description = Model(artifact_path=LOGGED_MODEL_NAME, run_id=run_id, model_id=model_id)
        model_dir = save_onnx_model(onnx_path, Path(scratch) / LOGGED_MODEL_NAME, description)
        client.log_model_artifacts(model_id, str(model_dir))
    client.finalize_logged_model(model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])


def log_model_metrics(
    client: MlflowClient, run_id: str, model_id: str, metrics: Mapping[str, float], step: int
) -> None:
    """Metrics of the logged model `model_id` (MLflow 3 logs them through its run, with the model's id)."""
    timestamp = int(time.time() * 1000)
    points = [Metric(key, float(value), timestamp, step, model_id=model_id) for key, value in metrics.items()]
    client.log_batch(run_id, metrics=points)


def register_logged_model(client: MlflowClient, name: str, model_id: str, run_id: str, served: bool) -> int:
    """Add the logged model `model_id` to the registered model `name` (created if new) as a new version;
    its version number. A version of this logged model already there (a retry) is answered as it is.

    :param served: the client talks to a tracking server. It resolves the source `models:/<model_id>`
        itself; a local store would resolve it through MLflow's process-wide tracking URI (another store,
        in a service that holds several), so a local version's source is the logged model's files.
    :raises RegistrationRefused: the name belongs to an MLflow prompt.
    """
    source = f"models:/{model_id}" if served else client.get_logged_model(model_id).artifact_location
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"):
        if version.source == source:
            return int(version.version)
    try:
        client.create_registered_model(name, description="Maze-solving policies (ONNX), by rl-maze.")
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        # MLflow keeps prompts as registered models, which its model searches leave out.
        if not client.search_registered_models(f"name = '{name}'"):
            # Not naming it: the sender would take a name holding "connect" or "Timeout" for an outage.
            raise RegistrationRefused("the name belongs to an MLflow prompt, not a model") from None
    created = client.create_model_version(
        name, source, run_id=run_id, await_creation_for=0, model_id=model_id
    )
    return int(created.version)
