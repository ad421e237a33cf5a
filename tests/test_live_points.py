"""What each progress message adds to a live chart: the points logged since the previous message."""

from __future__ import annotations

import json

from records.live_points import MAX_POINTS_PER_METRIC, PointCursor


def test_each_take_gives_only_the_points_logged_since_the_previous_one() -> None:
    cursor = PointCursor()
    first = cursor.take({"reward": [(128, -1.0), (256, -0.5)], "loss": []})
    second = cursor.take(
        {"reward": [(128, -1.0), (256, -0.5), (384, -0.2), (512, 0.1)], "loss": [(256, 0.3)]}
    )
    third = cursor.take({"reward": [(128, -1.0), (256, -0.5), (384, -0.2), (512, 0.1)], "loss": [(256, 0.3)]})

    assert first.points == {"reward": [[128, -1.0], [256, -0.5]], "loss": []}
    assert first.after == {"reward": None, "loss": None}
    assert second.points == {"reward": [[384, -0.2], [512, 0.1]], "loss": [[256, 0.3]]}
    assert second.after == {"reward": 256, "loss": None}
    assert third.points == {"reward": [], "loss": []}
    assert third.after == {"reward": 512, "loss": 256}


def test_points_are_ordered_one_per_step_and_valid_json() -> None:
    # MLflow may hand back a step twice (the last value counts), out of order, or a NaN loss.
    taken = PointCursor().take({"loss": [(256, 0.4), (128, float("nan")), (256, 0.3), (384, float("inf"))]})

    assert taken.points == {"loss": [[256, 0.3]]}
    json.loads(json.dumps(taken.message_fields(), allow_nan=False))


def test_a_message_carries_at_most_the_newest_points_and_says_where_they_start() -> None:
    history = {"reward": [(step, float(step)) for step in range(1, MAX_POINTS_PER_METRIC + 11)]}
    taken = PointCursor().take(history)

    assert len(taken.points["reward"]) == MAX_POINTS_PER_METRIC
    assert taken.points["reward"][0] == [11, 11.0]
    # A client holding less than step 10 missed points 1..10 and reads the history again.
    assert taken.after == {"reward": 10}
