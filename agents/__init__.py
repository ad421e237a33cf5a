"""The RL parts, one module each; here only the class names that models saved before the package use.

Modules: ``planner`` (the networks), ``hyperparameters`` (keys, defaults, merging, read-back), ``building``
(envs, new and saved models), ``evaluation`` (playing and scoring mazes), ``rollouts`` (one maze's path),
``onnx_policy`` (running an exported policy).

Models saved before this package existed (when it was one ``agents.py``) pickled their custom classes by
module path, as ``agents.MazePlannerExtractor`` and ``agents.MazeDQNPolicy``; SB3 can load those
``model.zip`` files only while the names resolve here. They are looked up on first use rather than
imported, so that ``agents.onnx_policy`` and ``agents.evaluation`` stay importable where torch is not
installed (``python -m agents.replay``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rl_maze.planner import ActionSharedQHead, MazeDQNPolicy, MazePlannerExtractor

__all__ = ["ActionSharedQHead", "MazeDQNPolicy", "MazePlannerExtractor"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from rl_maze import planner

        return getattr(planner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
