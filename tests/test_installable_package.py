"""`pip install` of the checkout, in a fresh virtualenv outside the repository, loads the service's
`model.zip` (and, through `rl_maze.legacy_module_names`, models saved by older versions) and predicts.

Why this virtualenv set-up: torch and Stable-Baselines3 are gigabytes, so the fresh venv (made
`--without-pip`) gets them, and pip and setuptools, from the test's own environment through one `.pth`
line (`--system-site-packages` would not do: the test's interpreter is itself a venv, and that flag
exposes only the base interpreter's packages), and pip runs offline (`--no-index --no-deps
--no-build-isolation`). The project itself comes only from the wheel pip builds from a copy of the
checkout; the test checks that the repository's modules are not importable there (`agents` is not) and
that `rl_maze` is the installed copy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import maze_env
from agents import building
from rl_maze import observation
from tests.conftest import PROJECT_ROOT, TINY_PPO
from tests.test_experiments import run_to_end

PREDICT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import rl_maze
    from stable_baselines3 import DQN, PPO

    algorithm, model_zip, observations = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
    with rl_maze.legacy_module_names():
        model = {"PPO": PPO, "DQN": DQN}[algorithm].load(model_zip, device="cpu")
    actions, _ = model.predict(observations, deterministic=True)
    try:
        import agents  # noqa: F401
        checkout_importable = True
    except ImportError:
        checkout_importable = False
    print(json.dumps({"actions": actions.tolist(), "rl_maze": rl_maze.__file__,
                      "checkout_importable": checkout_importable}))
    """
)


def fresh_venv_with_the_project(root: Path) -> Path:
    """A virtualenv under `root` with this checkout pip-installed; its python."""
    checkout = root / "checkout"
    shutil.copytree(
        PROJECT_ROOT,
        checkout,
        ignore=shutil.ignore_patterns(".venv", ".git", "data", "test-artifacts", "__pycache__", "*.egg-info"),
    )
    venv = root / "venv"
    # Without pip: pip and setuptools come from the shared environment too (the bundled setuptools of
    # `venv` is too old to build a wheel without the `wheel` package).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(site) / "shared-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            str(checkout),
        ],
        check=True,
        timeout=600,
        cwd=root,
    )
    shutil.rmtree(checkout)  # what is installed must not need the checkout
    return python


def predict_outside(python: Path, algorithm: str, model_zip: Path, observations: np.ndarray) -> dict:
    workdir = python.parent.parent.parent
    np.save(workdir / "observations.npy", observations)
    (workdir / "predict.py").write_text(PREDICT)
    result = subprocess.run(
        [str(python), "predict.py", algorithm, str(model_zip), "observations.npy"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=workdir,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def some_observations(maze_size: int, count: int = 16) -> np.ndarray:
    env = building.make_vec_env(maze_size, "random", 11, count)
    return np.asarray(env.reset())


def test_the_installed_layout_matches_the_environment() -> None:
    for name in ("ACTIONS", "ACTION_DELTAS", "N_OBS_CHANNELS", "AGENT_CHANNEL", "GOAL_CHANNEL"):
        assert getattr(observation, name) == getattr(maze_env, name), name


@pytest.mark.training
def test_a_downloaded_model_zip_loads_and_predicts_in_a_fresh_venv_outside_the_repository(
    client: TestClient, tmp_path: Path
) -> None:
    run_id = run_to_end(client, TINY_PPO)["experiment_id"]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    model_zip = outside / "model.zip"
    model_zip.write_bytes(client.get(f"/experiments/{run_id}/model.zip").content)
    with zipfile.ZipFile(model_zip) as archive:  # saved under the namespaced path
        assert b"rl_maze.planner" in archive.read("data")
    observations = some_observations(TINY_PPO["maze_size"])
    expected = building.load_model("PPO", model_zip, None, "cpu").predict(observations, deterministic=True)[0]

    python = fresh_venv_with_the_project(outside)
    answer = predict_outside(python, "PPO", model_zip, observations)

    assert answer["checkout_importable"] is False
    assert str(outside / "venv") in answer["rl_maze"]
    assert answer["actions"] == expected.tolist()

    # A model saved by the old `agents` module loads there too (rl_maze.legacy_module_names).
    legacy = PROJECT_ROOT / "tests" / "data" / "legacy_dqn_5x5.zip"
    observations = some_observations(5)
    expected = building.load_model("DQN", legacy, None, "cpu").predict(observations, deterministic=True)[0]
    assert predict_outside(python, "DQN", legacy, observations)["actions"] == expected.tolist()
