"""The maze policies' classes under a stable, installable module path (`pip install .` installs this
package), so that a Stable-Baselines3 `model.zip` saved by the service loads anywhere.

To train a saved `planner_learned` model on, load it with `MazePPO` / `MazeDQN` (SB3's algorithms plus
its reward model's steps, `rl_maze.algorithms`): plain `PPO` / `DQN` load it too, but leave its reward
map untrained.

SB3 pickles a model's custom classes by module path: models saved now refer to `rl_maze.planner`.
Models saved by older versions refer to `agents.MazePlannerExtractor` / `agents.planner.*` (modules of
the service's checkout); outside the checkout, load them inside `legacy_module_names()`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import types
from collections.abc import Iterator

from rl_maze import planner
from rl_maze.algorithms import MazeDQN, MazePPO
from rl_maze.planner import ActionSharedQHead, MazeDQNPolicy, MazePlannerExtractor

# What models saved by older versions name as `agents.<Class>` (see legacy_module_names).
_LEGACY_NAMES = ("ActionSharedQHead", "MazeDQNPolicy", "MazePlannerExtractor")
__all__ = [
    "ActionSharedQHead",
    "MazeDQN",
    "MazeDQNPolicy",
    "MazePPO",
    "MazePlannerExtractor",
    "legacy_module_names",
]


@contextlib.contextmanager
def legacy_module_names() -> Iterator[None]:
    """While open, `agents` and `agents.planner` name this package's planner classes (unless a real
    `agents` package is importable, as in the service's checkout), so that older `model.zip` files load:

        with rl_maze.legacy_module_names():
            model = PPO.load("old_model.zip")
    """
    if importlib.util.find_spec("agents") is not None:
        yield
        return
    legacy = types.ModuleType("agents")
    legacy.__path__ = []  # a package, so that `agents.planner` resolves too
    for name in _LEGACY_NAMES:
        setattr(legacy, name, getattr(planner, name))
    legacy.planner = planner  # type: ignore[attr-defined]
    added = {"agents": legacy, "agents.planner": planner}
    for name, module in added.items():
        sys.modules.setdefault(name, module)
    try:
        yield
    finally:
        for name, module in added.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]
