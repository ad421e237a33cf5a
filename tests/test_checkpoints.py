"""`training/checkpoints.py` on real SB3 model files: a failed save is skipped and the next one lands,
the two newest are kept, resume takes the newest one that loads."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from agents.building import build_model, make_vec_env
from training.checkpoints import (
    NoReadableCheckpoint,
    SaveCheckpoints,
    load_newest_readable,
    periodic_checkpoints,
    readable_checkpoint,
)


@pytest.fixture
def env() -> Iterator[VecEnv]:
    torch.set_num_threads(1)
    vec_env = make_vec_env(5, "random", 1, 2)
    yield vec_env
    vec_env.close()


@pytest.fixture
def model(env: VecEnv) -> BaseAlgorithm:
    return build_model("PPO", env, {}, 1, "cpu", 64)


def saver(model: BaseAlgorithm, directory: Path) -> SaveCheckpoints:
    callback = SaveCheckpoints(save_freq=1, directory=directory, run_id="run-1")
    callback.init_callback(model)
    return callback


def save_at(callback: SaveCheckpoints, steps: int) -> Path | None:
    callback.model.num_timesteps = steps
    saved = callback.save()
    time.sleep(0.01)  # distinct modification times
    return saved


def test_a_failed_save_is_skipped_and_the_next_one_lands(model: BaseAlgorithm, tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    directory.write_text("in the way")  # a real OSError, even for root: the directory cannot be made
    callback = saver(model, directory)

    assert save_at(callback, 64) is None  # no exception: training would go on
    directory.unlink()
    saved = save_at(callback, 128)

    assert saved == directory / "checkpoint_128_steps.zip" and readable_checkpoint(tmp_path) == saved
    assert [path.name for path in directory.iterdir()] == [saved.name]  # no partial file left


def test_the_two_newest_checkpoints_are_kept(model: BaseAlgorithm, tmp_path: Path) -> None:
    callback = saver(model, tmp_path / "checkpoints")
    for steps in (64, 128, 192, 256):
        save_at(callback, steps)

    assert [path.name for path in periodic_checkpoints(tmp_path / "checkpoints")] == [
        "checkpoint_256_steps.zip",
        "checkpoint_192_steps.zip",
    ]


def test_resume_skips_a_damaged_newest_checkpoint(model: BaseAlgorithm, env: VecEnv, tmp_path: Path) -> None:
    callback = saver(model, tmp_path / "checkpoints")
    previous, newest = save_at(callback, 64), save_at(callback, 128)
    assert previous is not None and newest is not None
    newest.write_bytes(newest.read_bytes()[:-300])

    loaded = load_newest_readable("PPO", tmp_path, env, "cpu", "run-1")

    assert loaded is not None and loaded[1] == previous and loaded[0].num_timesteps == 64
    assert readable_checkpoint(tmp_path) == previous


def test_a_run_resumed_from_an_older_checkpoint_keeps_what_it_writes_next(
    model: BaseAlgorithm, tmp_path: Path
) -> None:
    callback = saver(model, tmp_path / "checkpoints")
    older, damaged = save_at(callback, 64), save_at(callback, 192)
    assert older is not None and damaged is not None
    damaged.write_bytes(b"")
    os.utime(older, ns=(1, 1))  # it was written long before

    written = save_at(callback, 128)  # after resuming from `older`: fewer steps than the damaged one

    assert written in periodic_checkpoints(tmp_path / "checkpoints")
    assert readable_checkpoint(tmp_path) == written


def test_no_checkpoint_that_loads_is_an_error_not_a_fresh_start(env: VecEnv, tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "checkpoint_64_steps.zip").write_bytes(b"PK\x03\x04 truncated")

    assert readable_checkpoint(tmp_path) is None
    with pytest.raises(NoReadableCheckpoint, match=r"checkpoint_64_steps\.zip"):
        load_newest_readable("PPO", tmp_path, env, "cpu", "run-1")
    assert load_newest_readable("PPO", tmp_path / "nothing", env, "cpu", "run-1") is None
