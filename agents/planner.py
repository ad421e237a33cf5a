"""The planner networks now live in `rl_maze.planner` (an installable package); this name stays because
models saved while they lived here pickled their classes as `agents.planner.*`: this module *is*
`rl_maze.planner` under its old name."""

import sys

from rl_maze import planner

sys.modules[__name__] = planner
