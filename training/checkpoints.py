"""A run's periodic checkpoints: saved whole or not at all, a failed save retried at the next one, the
newest few kept, and the newest readable saved model found to resume from.

A checkpoint is written beside its final name and renamed into place, so a save that fails (a read-only
or full data directory) leaves no half file that looks like the newest checkpoint. A file damaged later
(a truncated copy, a bad disk) is skipped when resuming: the next newer-to-older one that loads is used.
"""

from __future__ import annotations

import re
from pathlib import Path

import structlog
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from agents.building import load_model
from core.errors import describe
from records.files import CHECKPOINT_DIR, LAST_MODEL_FILE, MODEL_FILE, fetch_artifact, intact_sb3_archive
from records.mlflow_runs import MlflowRuns

log = structlog.get_logger(__name__)

# Periodic checkpoints kept per run: the newest, and older ones to fall back to if it proves unreadable.
KEEP_CHECKPOINTS = 2
CHECKPOINT_NAME = re.compile(r"checkpoint_(\d+)_steps\.zip")
PARTIAL_PREFIX = ".partial-"  # a checkpoint being written; never a resume candidate


class NoReadableCheckpoint(RuntimeError):
    """Saved models exist for the run, but none of them loads."""


class SaveCheckpoints(BaseCallback):
    """Saves a checkpoint every `save_freq` calls (environment steps of the vectorised env).

    A save that fails with an OS error (permission, read-only, disk full) is logged and skipped: training
    goes on and the next checkpoint tries again. After a successful save only the newest `keep` remain.

    :param save_freq: calls between checkpoints.
    :param directory: where the checkpoints go (created when missing).
    :param run_id: the run, for the log.
    :param keep: checkpoints kept (at least 2, so that an unreadable newest one has a fallback).
    """

    def __init__(self, save_freq: int, directory: Path, run_id: str, keep: int = KEEP_CHECKPOINTS) -> None:
        super().__init__()
        self.save_freq = save_freq
        self.directory = directory
        self.keep = max(2, keep)
        self.log = log.bind(experiment_id=run_id)
        self.failed_saves = 0

    def _on_step(self) -> bool:
        if self.n_calls % self.save_freq == 0:
            self.save()
        return True

    def save(self) -> Path | None:
        """Save a checkpoint of the model now; its path, or None when the save failed."""
        path = self.directory / f"checkpoint_{self.model.num_timesteps}_steps.zip"
        partial = self.directory / f"{PARTIAL_PREFIX}{path.name}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.model.save(partial)
            partial.replace(path)
        except OSError as error:
            self.failed_saves += 1
            self.log.warning(
                "checkpoint_not_saved",
                checkpoint=path.name,
                error=describe(error),
                retry="at the next checkpoint",
                failed_in_a_row=self.failed_saves,
            )
            _remove_quietly(partial)
            return None
        if self.failed_saves:
            self.log.info(
                "checkpoint_saved_again", checkpoint=path.name, after_failed_saves=self.failed_saves
            )
        self.failed_saves = 0
        self._prune()
        return path

    def _prune(self) -> None:
        for old in periodic_checkpoints(self.directory)[self.keep :]:
            _remove_quietly(old)


def periodic_checkpoints(directory: Path) -> list[Path]:
    """A run's periodic checkpoints, the newest first: the last written (a run resumed from an older one
    writes checkpoints with fewer steps than a damaged newer one it skipped), then the most steps."""
    found = []
    for path in directory.glob("checkpoint_*_steps.zip") if directory.is_dir() else ():
        match = CHECKPOINT_NAME.fullmatch(path.name)
        try:
            if match is not None:
                found.append((path.stat().st_mtime_ns, int(match.group(1)), path))
        except OSError:
            continue  # removed meanwhile
    return [path for *_, path in sorted(found, reverse=True)]


def resume_candidates(run_dir: Path) -> list[Path]:
    """Every saved model to go on training from, newest first: the periodic checkpoints and the last
    model as saved when the run ended (never its best model, which `model.zip` is when
    `last_model.zip` exists)."""
    last = run_dir / LAST_MODEL_FILE
    candidates = [
        last if last.is_file() else run_dir / MODEL_FILE,
        *periodic_checkpoints(run_dir / CHECKPOINT_DIR),
    ]
    existing = []
    for path in candidates:
        try:
            existing.append((path.stat().st_mtime_ns, path))
        except OSError:
            continue  # missing, or its directory cannot be searched: nothing to resume from there
    return [path for _, path in sorted(existing, key=lambda item: item[0], reverse=True)]


def readable_checkpoint(run_dir: Path) -> Path | None:
    """The newest saved model that is an intact archive (whether a resume can start at all)."""
    return next((path for path in resume_candidates(run_dir) if intact_sb3_archive(path)), None)


def load_newest_readable(
    algorithm: str, run_dir: Path, env: VecEnv, device: str, run_id: str
) -> tuple[BaseAlgorithm, Path] | None:
    """Load the newest saved model of the run that loads; None when nothing was saved.

    An unreadable or damaged one (truncated, unreadable by this process) is skipped with a warning and
    the next older one tried; the log says which one was used.

    :raises NoReadableCheckpoint: models were saved, but none loads.
    """
    bound = log.bind(experiment_id=run_id)
    candidates = resume_candidates(run_dir)
    skipped: list[str] = []
    for path in candidates:
        if not intact_sb3_archive(path):
            bound.warning("checkpoint_unreadable", checkpoint=str(path), reason="not an intact archive")
            skipped.append(path.name)
            continue
        try:
            model = load_model(algorithm, path, env, device)
        except Exception as error:  # whatever makes a file unloadable: an older one may still load
            bound.warning("checkpoint_unreadable", checkpoint=str(path), reason=describe(error))
            skipped.append(path.name)
            continue
        bound.info("resuming_from_checkpoint", checkpoint=str(path), skipped=skipped)
        return model, path
    if candidates:
        raise NoReadableCheckpoint(
            f"none of the run's {len(candidates)} saved models loads: {', '.join(skipped)}"
        )
    return None


def fetch_last_model(runs: MlflowRuns, mlflow_run_id: str, run_dir: Path) -> Path | None:
    """The last model a run trained on another machine uploaded when it stopped, fetched into `run_dir`
    (as `model.zip` when that is also its best, or it was saved before best models were kept)."""
    for filename in (LAST_MODEL_FILE, MODEL_FILE):
        fetched = fetch_artifact(runs, mlflow_run_id, filename, run_dir)
        if fetched is not None:
            return fetched
    return None


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except NotADirectoryError:
        pass  # its directory is not there: neither is the file
    except OSError as error:
        log.warning("checkpoint_not_removed", checkpoint=str(path), error=describe(error))
