"""The trained policy handed on through a real `mlflow server`: a logged model with a signature that
`mlflow.pyfunc` loads in another process, in an experiment the MLflow UI opens in its classic view."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import maze_env
from agents.onnx_policy import OnnxPolicy
from mlflow_client import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from records.mlflow_models import LOGGED_MODEL_NAME
from tests.conftest import FINAL_STATES, TINY_PPO, LiveService, ended_mlflow_run, wait_for_status
from tests.mlflow_server import MlflowServer

# Loads the logged model with MLflow alone (no code of this project imported) and predicts.
PREDICT = """
import sys
import mlflow.pyfunc
import numpy as np

model = mlflow.pyfunc.load_model(sys.argv[1])
outputs = model.predict(np.load(sys.argv[2]))
np.save(sys.argv[3], np.asarray(outputs["action"]))
"""


def test_the_policy_is_a_logged_model_that_pyfunc_loads_and_that_acts_as_the_service(
    live_service: Callable[..., LiveService],
    mlflow_server: MlflowServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = live_service(MLFLOW_TRACKING_URI=mlflow_server.uri)
    experiment_id = service.wait_for_mlflow()
    with service.client() as http:
        run_id = http.post("/training/start", json=TINY_PPO).json()["experiment_id"]
        final = wait_for_status(http.get, run_id, lambda s: s["status"] in FINAL_STATES)
        assert final["status"] == "completed", final
        wait_for_status(http.get, run_id, lambda s: s["onnx"]["status"] == "exported", timeout_s=60)
        onnx_file = tmp_path / "policy.onnx"
        downloaded = http.get(f"/experiments/{run_id}/model.onnx")
        assert downloaded.status_code == 200
        onnx_file.write_bytes(downloaded.content)
    ended_mlflow_run(mlflow_server.uri, final["mlflow_run_id"])  # its end follows the model's upload

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment(experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    models = [
        model
        for model in client.search_logged_models(experiment_ids=[experiment_id])
        if model.source_run_id == final["mlflow_run_id"]
    ]
    assert len(models) == 1
    model = models[0]
    assert (model.name, str(model.status)) == (LOGGED_MODEL_NAME, "READY")
    # The service's own copy is still the run's artifact onnx_model/model.onnx (downloaded above).
    assert "onnx_model/model.onnx" in {
        item.path for item in client.list_artifacts(final["mlflow_run_id"], "onnx_model")
    }

    uri = f"models:/{model.model_id}"
    previous_uri = mlflow.get_tracking_uri()
    # set_tracking_uri also writes MLFLOW_TRACKING_URI into os.environ, where every service a later test
    # starts would inherit it (and log there): monkeypatch puts the environment back after the test.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    mlflow.set_tracking_uri(mlflow_server.uri)
    try:
        info = mlflow.models.get_model_info(uri)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert info.signature is not None
    inputs = info.signature.inputs.to_dict()
    assert tuple(inputs[0]["tensor-spec"]["shape"]) == (-1, maze_env.N_OBS_CHANNELS, 5, 5)
    assert info.signature.outputs.input_names() == ["action", "logits"]
    assert info.saved_input_example_info is not None

    observations = np.stack(
        [
            maze_env.MazeEnv(maze_size=5, maze_mode="fixed", seed=seed).reset()[0]
            for seed in maze_env.eval_maze_seeds(50)
        ]
    )
    observations_file, actions_file = tmp_path / "observations.npy", tmp_path / "actions.npy"
    np.save(observations_file, observations)
    subprocess.run(
        [sys.executable, "-c", PREDICT, uri, str(observations_file), str(actions_file)],
        cwd=tmp_path,  # outside the repository
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri},
        check=True,
        timeout=300,
    )
    served = OnnxPolicy(onnx_file).predict(observations)
    loaded = np.load(actions_file)
    assert loaded.dtype == np.int64
    np.testing.assert_array_equal(loaded, served)
