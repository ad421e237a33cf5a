"""The metric points a run logged since its previous progress message, for live charts as dense as
the finished run's curves.

The points are read from MLflow, the store the finished curves (`GET /experiments/{id}` history) come
from, so a live chart and the finished one draw the same points, and every uvicorn worker sees them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from records.mlflow_runs import HISTORY_KEYS

# One message carries at most this many points per metric (~25 bytes each); a client that missed
# more (a long outage, a late first push) sees `points_after` past its last point and re-reads the history.
MAX_POINTS_PER_METRIC = 1000

History = Mapping[str, Sequence[tuple[int, float]]]
# Reads one metric's (step, value) history of an MLflow run: (mlflow_run_id, key) → points.
ReadHistory = Callable[[str, str], Sequence[tuple[int, float]]]


@dataclasses.dataclass(frozen=True)
class NewPoints:
    """What one message adds to a live chart.

    `points[key]` are `[step, value]` pairs, ascending by step, every one logged after step
    `after[key]` (None: from the run's start); a client whose chart ends before `after[key]` missed
    points and should read the history again.
    """

    points: dict[str, list[list[float]]]
    after: dict[str, int | None]

    def message_fields(self) -> dict[str, object]:
        return {"points": self.points, "points_after": self.after}


NO_POINTS: dict[str, object] = {"points": None, "points_after": None}


def read_history(read: ReadHistory, mlflow_run_id: str) -> dict[str, list[tuple[int, float]]]:
    """The charted metrics' points of one MLflow run (blocks on MLflow)."""
    return {key: list(read(mlflow_run_id, key)) for key in HISTORY_KEYS}


class PointCursor:
    """Per watched run: the last step already sent of each metric, so each message carries only what
    is new. One cursor serves every client of the run in this worker (the message is encoded once)."""

    def __init__(self) -> None:
        self._last_step: dict[str, int] = {}

    def take(self, history: History) -> NewPoints:
        """The points of `history` after those already taken, at most MAX_POINTS_PER_METRIC per metric."""
        points: dict[str, list[list[float]]] = {}
        after: dict[str, int | None] = {}
        for key, logged in history.items():
            last = self._last_step.get(key)
            new = _by_step(p for p in logged if last is None or p[0] > last)
            after[key] = last
            if len(new) > MAX_POINTS_PER_METRIC:
                after[key] = int(new[-MAX_POINTS_PER_METRIC - 1][0])
                new = new[-MAX_POINTS_PER_METRIC:]
            if new:
                self._last_step[key] = int(new[-1][0])
            points[key] = new
        return NewPoints(points, after)


def _by_step(points: Iterable[tuple[int, float]]) -> list[list[float]]:
    """Ascending by step, the last value logged at a step kept; non-finite values (not JSON) left out."""
    latest: dict[int, float] = {}
    for step, value in points:
        if math.isfinite(value):
            latest[int(step)] = float(value)
    return [[step, latest[step]] for step in sorted(latest)]
