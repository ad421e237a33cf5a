"""Each run's own log: the service's structured log records about a run, appended as JSON lines to a
file in the run's directory (so every worker process, and the API on any worker, reads the same)."""

from __future__ import annotations

import collections
import json
import logging
import os
from pathlib import Path
from typing import Any

import structlog

RUN_LOG_FILE = "service-log.jsonl"
# A run's log stops growing here (its first records are the ones worth keeping: start, set-up, errors).
MAX_RUN_LOG_BYTES = 10 * 1024 * 1024
MIN_LEVEL = logging.INFO


class RunLogWriter:
    """A structlog processor: a record with an `experiment_id` whose run directory exists (created when
    the run is submitted) is appended to that run's log, whatever the console's log level.

    :param runs_dir: the directory holding one directory per run (`Settings.models_dir`).
    """

    def __init__(self, runs_dir: Path | None) -> None:
        self.runs_dir = runs_dir

    def __call__(
        self, _logger: Any, method_name: str, event_dict: structlog.types.EventDict
    ) -> structlog.types.EventDict:
        if self.runs_dir is None:
            return event_dict
        run_id = event_dict.get("experiment_id")
        level = logging.getLevelName(method_name.upper())
        if isinstance(run_id, str) and isinstance(level, int) and level >= MIN_LEVEL:
            self._append(run_id, event_dict)
        return event_dict

    def _append(self, run_id: str, event_dict: structlog.types.EventDict) -> None:
        assert self.runs_dir is not None
        directory = self.runs_dir / run_id
        if "/" in run_id or run_id.startswith(".") or not directory.is_dir():
            return  # not a run of ours, or a deleted one: never create directories from log records
        record = {key: value for key, value in event_dict.items() if not key.startswith("_")}
        line = (json.dumps(record, default=str, ensure_ascii=False) + "\n").encode()
        try:
            # O_APPEND: several processes append whole lines without interleaving them.
            fd = os.open(directory / RUN_LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size + len(line) <= MAX_RUN_LOG_BYTES:
                    os.write(fd, line)
            finally:
                os.close(fd)
        except OSError:
            pass  # a run's log must never break the code that logs


def read_run_log(run_dir: Path, limit: int) -> tuple[list[dict[str, Any]], bool]:
    """The last `limit` records of a run's log, oldest first, and whether older ones exist."""
    path = run_dir / RUN_LOG_FILE
    if not path.is_file():
        return [], False
    last: collections.deque[str] = collections.deque(maxlen=limit + 1)
    with path.open(encoding="utf-8", errors="replace") as lines:
        last.extend(line for line in lines if line.strip())
    truncated = len(last) > limit
    records = []
    for line in list(last)[-limit:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a full disk
        if isinstance(record, dict) and "event" in record:
            records.append(record)
    return records, truncated
