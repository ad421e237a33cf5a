"""structlog configuration shared by the service's own loggers and uvicorn's."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import structlog

from core.run_logs import RunLogWriter

_SHARED_PROCESSORS: list[structlog.types.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.StackInfoRenderer(),
    structlog.processors.format_exc_info,
]


_RUN_LOG_WRITER = RunLogWriter(None)


def configure_logging(level: str = "INFO", json_logs: bool = True, runs_dir: Path | None = None) -> None:
    """Route structlog and stdlib logging (uvicorn included) through one JSON renderer on stderr.

    :param level: minimum level name, e.g. "INFO".
    :param json_logs: JSON lines when true, coloured console output when false.
    :param runs_dir: where runs' directories are: records about a run also go to its own log there.
    """
    # One writer for the process, pointed at the latest `runs_dir`: loggers cache their processors on
    # first use (`cache_logger_on_first_use`), so a new writer would not reach loggers already used.
    _RUN_LOG_WRITER.runs_dir = runs_dir
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            *_SHARED_PROCESSORS,
            _RUN_LOG_WRITER,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED_PROCESSORS,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # uvicorn installs its own handlers before importing the app; hand its records to the root handler.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uv_logger = logging.getLogger(name)
        uv_logger.handlers = []
        uv_logger.propagate = True
    for noisy in ("alembic", "mlflow", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
