"""The service's typed errors, and `describe` for any error in a log line or a record.

Each error carries what its answer needs (a field name, a wait); `api/errors.py` alone turns them into
HTTP answers, so code below the API raises these instead of knowing about status codes.
"""

from __future__ import annotations


def describe(error: BaseException) -> str:
    """`TypeName: first line of the message` (just `TypeName` for an empty message): one line for logs
    and records, where a multi-line message (SQL statements, MLflow's server answers) would flood them."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class ServiceError(Exception):
    """A request the service understood but cannot carry out; its message is shown to the user."""


class InvalidApiKey(ServiceError):
    """`API_KEY` is set and the request's key is missing or wrong."""


class RunNotFound(ServiceError):
    """No run has this experiment id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no training run with experiment_id {run_id}")
        self.run_id = run_id


class SweepNotFound(ServiceError):
    """No sweep has this id."""

    def __init__(self, sweep_id: str) -> None:
        super().__init__(f"no sweep with sweep_id {sweep_id}")
        self.sweep_id = sweep_id


class InvalidRequest(ServiceError):
    """A request that passed schema validation but cannot run here.

    :param field: the request field at fault, as the answer names it.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class ServiceBusy(ServiceError):
    """The queue is full.

    :param retry_after_s: how long the client should wait before it tries again.
    """

    def __init__(self, queued: int, retry_after_s: int) -> None:
        super().__init__(f"{queued} runs are already queued (MAX_QUEUED_RUNS); try again later")
        self.retry_after_s = retry_after_s


class NotResumable(ServiceError):
    """The run cannot be resumed (wrong state, or nothing saved)."""


class ModelNotAvailable(ServiceError):
    """The run has no such file to download (not saved or not exported yet)."""


class PolicyNotExported(ServiceError):
    """Playing or evaluating a policy needs the run's ONNX export, which it does not have (yet)."""


class ArtifactStoreUnavailable(ServiceError):
    """A file of the run is only in the MLflow artifact store, which cannot be reached now."""


class PolicyPlayersBusy(ServiceError):
    """Every slot for rollouts and evaluations (MAX_CONCURRENT_EVALUATIONS) is taken.

    :param retry_after_s: how long the client should wait before it tries again.
    """

    def __init__(self, slots: int, retry_after_s: int) -> None:
        super().__init__(
            f"{slots} rollouts or evaluations are already running (MAX_CONCURRENT_EVALUATIONS); "
            "try again later"
        )
        self.retry_after_s = retry_after_s


class ModelFileCorrupt(ServiceError):
    """The run's saved file exists but is not a valid model (truncated, overwritten): it needs a new
    export or save, not a retry."""


class ModelFileUnreadable(ServiceError):
    """The run's saved file exists but this service cannot read it (permissions, an I/O error): an
    operator's problem, maybe a passing one."""


class RunStillActive(ServiceError):
    """The run is queued or running, so it cannot be deleted (stop it first)."""


class NotExportable(ServiceError):
    """The run's policy cannot be exported again now: it is still training, has no saved model on this
    host, or another worker is exporting it."""


class TrackingUnavailable(ServiceError):
    """MLflow could not be reached for a change that must reach it (nothing was changed)."""
