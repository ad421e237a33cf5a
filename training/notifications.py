"""End-of-run notifications: one POST of a run's final status to the `notify_url` given at start.

Each worker process polls the database for ended runs whose notification is `pending`, claims each with
one conditional UPDATE (so exactly one worker sends it, whichever trained the run), and sends it on a
thread of its own with retries and back-off: training never waits for a receiver.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.errors import describe
from core.settings import Settings
from records.tables import RunStatus, TrainingRun
from records.views import training_status

log = structlog.get_logger(__name__)

FINAL_STATES = [status.value for status in RunStatus if status.is_final]
POLL_S = 1.0
SENDERS = 4
# Answers worth retrying (the receiver is busy or briefly broken); any other 4xx is final.
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


class Notifier:
    """Sends the notifications of ended runs.

    :param settings: `notify_attempts`, `notify_backoff_s` and `notify_timeout_s`.
    :param session_factory: sessions on the run database (the notification columns are this module's).
    """

    def __init__(self, settings: Settings, session_factory: sessionmaker[Session]) -> None:
        self._settings = settings
        self._sessions = session_factory
        self._stop = threading.Event()
        self._senders = ThreadPoolExecutor(max_workers=SENDERS, thread_name_prefix="run-notify")
        self._thread = threading.Thread(target=self._poll_loop, name="run-notify-poll", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop claiming; notifications under way give up at their next wait (left `sending`)."""
        self._stop.set()
        self._thread.join(timeout=5)
        self._senders.shutdown(wait=False, cancel_futures=True)

    def _poll_loop(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                for run in self._claim():
                    self._senders.submit(self._send, run)
            except Exception as error:  # a database outage: try again at the next poll
                log.warning("notify_poll_failed", error=describe(error))

    def _claim(self) -> list[TrainingRun]:
        with self._sessions() as session:
            ids = session.scalars(
                select(TrainingRun.id)
                .where(TrainingRun.notify_state == "pending")
                .where(TrainingRun.status.in_(FINAL_STATES))
                .limit(SENDERS * 4)
            ).all()
        claimed = []
        for run_id in ids:
            with self._sessions() as session, session.begin():
                result = session.execute(
                    update(TrainingRun)
                    .where(TrainingRun.id == run_id, TrainingRun.notify_state == "pending")
                    .where(TrainingRun.status.in_(FINAL_STATES))
                    .values(notify_state="sending")
                )
                run = session.get(TrainingRun, run_id) if result.rowcount else None  # type: ignore[attr-defined]
            if run is not None:
                claimed.append(run)
        return claimed

    def _send(self, run: TrainingRun) -> None:
        assert run.notify_url is not None
        body = training_status(run, self._settings).model_dump(mode="json")
        body.update(event="run_finished", name=run.name, tags=run.tags or {})
        payload = json.dumps(body).encode()
        attempts = self._settings.notify_attempts
        delay = self._settings.notify_backoff_s
        outcome, error = "failed", ""
        for attempt in range(1, attempts + 1):
            retry, error = self._post(run.notify_url, payload)
            if not error:
                outcome = "sent"
                break
            log.warning("run_notify_attempt_failed", experiment_id=run.id, attempt=attempt, error=error)
            if not retry or attempt == attempts or self._stop.wait(delay):
                break
            delay *= 2
        self._record(run.id, outcome)
        log.info(
            "run_notified" if outcome == "sent" else "run_notify_failed",
            experiment_id=run.id,
            status=run.status,
            attempts=attempt,
            error=error or None,
        )

    def _post(self, url: str, payload: bytes) -> tuple[bool, str]:
        """One POST; (worth retrying, error) with an empty error on a 2xx answer."""
        request = urllib.request.Request(
            url,
            data=payload,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "rl-maze-service"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self._settings.notify_timeout_s) as response:
                response.read(1024)
                return False, ""
        except urllib.error.HTTPError as answer:
            return answer.code in RETRYABLE_STATUS, f"HTTP {answer.code}"
        except (urllib.error.URLError, TimeoutError, OSError) as failure:
            return True, describe(failure)

    def _record(self, run_id: str, outcome: str) -> None:
        for _ in range(3):  # a database blip must not lose the outcome
            try:
                with self._sessions() as session, session.begin():
                    session.execute(
                        update(TrainingRun)
                        .where(TrainingRun.id == run_id, TrainingRun.notify_state == "sending")
                        .values(notify_state=outcome)
                    )
                return
            except Exception as error:
                log.warning("notify_state_not_recorded", experiment_id=run_id, error=describe(error))
                time.sleep(1)
