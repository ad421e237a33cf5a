"""Where a run's saved files are (SB3 models, checkpoints, ONNX export): here, or fetched from MLflow.

Fetched from the MLflow artifact store when another machine trained the run (ray executor), and cached
in this process's data directory.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

import structlog

from core.errors import ModelFileCorrupt, ModelFileUnreadable, describe
from core.settings import Settings
from records.mlflow_runs import MlflowRuns
from records.tables import TrainingRun

log = structlog.get_logger(__name__)

# The model a run offers (`model.zip`, exported to ONNX) is its best held-out evaluation's. The model at
# its last step is `last_model.zip` when that is another one, else `model.zip` itself: resume goes on
# from it. `best_model.zip` holds a new best while training, until the run ends and keeps it.
MODEL_FILE = "model.zip"
LAST_MODEL_FILE = "last_model.zip"
BEST_MODEL_FILE = "best_model.zip"
# Our file names → where the training job logs them in MLflow.
ARTIFACT_PATHS = {
    MODEL_FILE: "sb3_model/model.zip",
    LAST_MODEL_FILE: "sb3_model/last_model.zip",
    "model.onnx": "onnx_model/model.onnx",
}
CACHE_DIR = "artifact-cache"
SB3_DATA_ENTRY = "data"  # the JSON description every Stable-Baselines3 model archive holds
CHECKPOINT_DIR = "checkpoints"  # a run's periodic checkpoints, inside its run directory


def saved_file(settings: Settings, run: TrainingRun, filename: str = "model.zip") -> Path | None:
    """A file this machine saved for a run, if it exists; the path is built from our own id and a
    constant name, never from user input."""
    path = settings.run_dir(run.id) / filename
    return path if path.is_file() else None


def check_model_file(path: Path, run_id: str) -> None:
    """Raise `ModelFileUnreadable` unless the whole file reads, and `ModelFileCorrupt` for an SB3 model
    that is no intact zip (ONNX files are checked by loading them). Our models are a few MB at most."""
    try:
        with path.open("rb") as file:
            while file.read(1 << 20):
                pass
    except OSError as error:
        log.warning("model_file_unreadable", experiment_id=run_id, path=str(path), error=describe(error))
        raise ModelFileUnreadable(
            f"run {run_id}'s {path.name} cannot be read on the server ({type(error).__name__}); "
            "an operator must check its file permissions and disk"
        ) from error
    if path.suffix == ".zip" and not _intact_sb3_archive(path):
        raise ModelFileCorrupt(f"run {run_id}'s {path.name} is not an intact zip archive (truncated?)")


def _intact_sb3_archive(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            # A truncated SB3 archive can still open as a zip: the torch files inside are zips too, and
            # the reader then finds the innermost one's directory. SB3's own `data` entry tells them apart.
            return SB3_DATA_ENTRY in archive.namelist() and archive.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest saved model of a run to go on training from: a periodic checkpoint, or its last model
    as saved when it ended; never its best model (which `model.zip` is when `last_model.zip` exists)."""
    last = run_dir / LAST_MODEL_FILE
    candidates = [
        last if last.is_file() else run_dir / MODEL_FILE,
        *(run_dir / CHECKPOINT_DIR).glob("checkpoint_*_steps.zip"),
    ]
    existing = [path for path in candidates if path.is_file()]
    return max(existing, key=lambda path: path.stat().st_mtime_ns) if existing else None


def model_available(settings: Settings, run: TrainingRun) -> bool:
    """A model was saved, here or on a worker that uploaded it (the worker's path is in `model_path`)."""
    return saved_file(settings, run) is not None or (
        run.model_path is not None and run.mlflow_run_id is not None
    )


def model_file(
    settings: Settings, mlflow_runs: MlflowRuns | None, run: TrainingRun, filename: str
) -> Path | None:
    """The run's file: the local one, else a cached or freshly fetched copy from the artifact store.

    The cache is keyed by the run's finish time: a resumed run that finishes again gets a new copy.
    Blocks on MLflow; call it off the event loop. Store outages raise (answered as 503).
    """
    local = saved_file(settings, run, filename)
    if local is not None:
        return local
    if mlflow_runs is None or run.mlflow_run_id is None or run.finished_at is None:
        return None
    version = str(int(run.finished_at.timestamp() * 1_000_000))
    directory = settings.data_dir / CACHE_DIR / run.id / version
    cached = directory / filename
    if cached.is_file():
        return cached
    return fetch_artifact(mlflow_runs, run.mlflow_run_id, filename, directory)


def fetch_artifact(
    mlflow_runs: MlflowRuns, mlflow_run_id: str, filename: str, directory: Path
) -> Path | None:
    """Download one of our files from the run's artifacts into `directory`; None when it has none.

    The file appears atomically (downloaded beside it, then renamed): concurrent requests never see
    half a file.
    """
    artifact_path = ARTIFACT_PATHS[filename]
    folder = artifact_path.rsplit("/", 1)[0]
    if artifact_path not in mlflow_runs.artifact_paths(mlflow_run_id, folder):
        return None
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        downloaded = mlflow_runs.download_artifact(mlflow_run_id, artifact_path, Path(scratch))
        target = directory / filename
        shutil.move(str(downloaded), target)
    log.info("artifact_fetched", mlflow_run_id=mlflow_run_id, artifact=artifact_path, path=str(target))
    return target


def keep_best_model(run_dir: Path, last_is_best: bool) -> Path:
    """Once a run ended with its last model saved as `last_model.zip`: make `model.zip` its best model,
    and keep `last_model.zip` only when that is another model. Returns `model.zip`'s path.

    :param run_dir: the run's directory.
    :param last_is_best: the last model is the best one (or the only one: never evaluated).
    """
    model, last, best = run_dir / MODEL_FILE, run_dir / LAST_MODEL_FILE, run_dir / BEST_MODEL_FILE
    if last_is_best:
        last.replace(model)
        best.unlink(missing_ok=True)
    elif best.is_file():
        best.replace(model)
    # Otherwise `model.zip` is the best already: found before the run was stopped and resumed.
    return model
