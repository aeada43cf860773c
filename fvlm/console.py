"""What ``fvlm`` prints: quiet by default, everything on request (``-q`` / ``-v``).

=========  ==============================================================================================
level      what reaches the terminal (stderr)
=========  ==============================================================================================
quiet      warnings and errors only (ours and third parties', rephrased), no progress bars
normal     our INFO lines, progress bars (plain periodic lines when stderr is not a terminal), and
           third-party WARNING+ (known ones rephrased in our words, developer-facing ones hidden)
verbose    everything: our DEBUG lines, third-party INFO (Prefect API requests, MLflow, ...) as they are
=========  ==============================================================================================

One handler on the root logger, filtered by :class:`ConsoleFilter`: Prefect's own handlers (the API
handler that sends flow / task run logs to the Prefect UI) still receive every record. A record is
*ours* when its logger belongs to one of this project's packages or when our code emitted it through a
Prefect run logger (its source file is in the project). A record logged with
``extra={"fvlm_console": False}`` is meant for the Prefect UI only (a per-batch line) and shows at ``-v``.
The level is exported as ``$FVLM_VERBOSITY`` so the commands a stage starts (train / evaluate
subprocesses, ``dvc repro``) print the same way; ``$FVLM_VERBOSITY`` (quiet | normal | verbose) is also
the default of a command given no flag.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO

Verbosity = Literal["quiet", "normal", "verbose"]
VERBOSITIES: tuple[str, ...] = ("quiet", "normal", "verbose")
ENV_VAR = "FVLM_VERBOSITY"

OUR_PACKAGES: frozenset[str] = frozenset(
    {
        "fvlm",
        "core",
        "flows",
        "preprocessing",
        "segmentation",
        "report_parsing",
        "synthetic",
        "training",
        "tools",
        "benchmarks",
        "experiments",
    }
)
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
_OUR_SOURCE_DIRS: tuple[str, ...] = tuple(str(_PROJECT_ROOT / name) + os.sep for name in sorted(OUR_PACKAGES))
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

# third-party chatter that stays below WARNING by default (their loggers are set to WARNING unless -v;
# Prefect's loggers are filtered at our handler instead so its API handler still gets the run logs)
NOISY_LOGGERS: tuple[str, ...] = (
    "httpx",
    "httpcore",
    "urllib3",
    "alembic",
    "filelock",
    "numexpr",
    "mlflow",
    "git",
    "matplotlib",
    "PIL",
    "docket",
    "uvicorn",
    "fastapi",
)
# environment defaults of the third parties (a user's own setting wins)
# internals of the Prefect server that stay at WARNING even at -v (hundreds of ORM-mapper lines)
SILENT_LOGGERS: tuple[str, ...] = ("sqlalchemy", "aiosqlite", "asyncio")
QUIET_ENV: dict[str, str] = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # "Downloading artifacts" bars at every model load
    # MLflow installs its own handler on import ("2026/.. INFO mlflow.store.db.utils: Creating initial MLflow
    # database tables", "INFO mlflow.pyfunc: Validating input example"): the level it reads from here
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # "🏃 View run <name> at: <url>" / "🧪 View experiment at: <url>" on stdout at the end of every run against
    # a server (the command prints its run id itself); registry chatter: training.tracking.runs.mute_mlflow_chatter
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


@dataclass(frozen=True)
class Rephrase:
    """A third-party message we know: ``text=None`` hides it (developer-facing) below ``-v``; else it is
    shown as ``text`` (``\\1``... from ``pattern``) at ``level``."""

    pattern: str
    text: str | None
    level: int = logging.WARNING


REPHRASES: tuple[Rephrase, ...] = (
    Rephrase(
        r"Starting temporary server on (\S+)",
        r"Prefect: no server running (`fvlm services up` starts one); using a temporary one at \1",
        logging.INFO,
    ),
    Rephrase(r"Stopping temporary server on", None),
    # MLflow model logging advice meant for model authors, not for whoever runs the pipeline
    Rephrase(r"serialized using CloudPickle", None),
    Rephrase(r"Add type hints to the `predict` method", None),
    Rephrase(r"An input example was not provided when logging the model", None),
    Rephrase(r"Any type hint is inferred as AnyType", None),
    Rephrase(r"Model logged without a signature", None),
    Rephrase(r"Downloading artifacts", None),
    # Prefect reporting an exception of a flow or task run: the command prints the error itself, once, as
    # one line ("fvlm parse-reports: ..."); below -v these are the same message again (with a traceback)
    Rephrase(r"Encountered exception during execution", None),
    Rephrase(r"Task run failed with (exception|state)", None),
    Rephrase(r"Finished in state Failed\(", None),
    # a crashed run (killed worker, lost server) is worth a line, in our words
    Rephrase(r"Finished in state (Crashed)\((.*)\)", r"Prefect: run \1: \2", logging.WARNING),
    # Prefect's background services losing the (temporary) server at shutdown: nothing the user can act on
    Rephrase(r"Service '?(EventsWorker|APILogWorker)'? failed", None),
    Rephrase(r"Still processing items: \d+ items remaining", None),
)
_COMPILED = tuple((re.compile(rule.pattern, re.DOTALL), rule) for rule in REPHRASES)


def strip_ansi(text: str) -> str:
    return ANSI_ESCAPE.sub("", text)


def is_ours(record: logging.LogRecord) -> bool:
    """Logged by this project (its package loggers, or our code through a Prefect run logger); a
    Python warning is ours when our code raised it."""
    warned_by_us = getattr(record, "fvlm_warning_ours", None)
    if warned_by_us is not None:
        return bool(warned_by_us)
    if record.name.split(".", 1)[0] in OUR_PACKAGES or record.name == "__main__":
        return True
    return bool(record.pathname) and record.pathname.startswith(_OUR_SOURCE_DIRS)


class ConsoleFilter(logging.Filter):
    """Decides what reaches the terminal at a :data:`Verbosity` (module docstring); rephrases known
    third-party messages in place (the record's ``msg``; Prefect's API handler has already seen it)."""

    def __init__(self, verbosity: Verbosity) -> None:
        super().__init__()
        self.verbosity = verbosity

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbosity == "verbose":
            return is_ours(record) or record.levelno >= logging.INFO
        if getattr(record, "fvlm_console", True) is False:
            return False
        floor = logging.WARNING if self.verbosity == "quiet" else logging.INFO
        if is_ours(record):
            return record.levelno >= floor
        rule, match = _rephrase_rule(record)
        if rule is not None and match is not None:
            if rule.text is None:
                return False
            record.msg, record.args = match.expand(rule.text), None
            record.levelno, record.levelname = rule.level, logging.getLevelName(rule.level)
            record.fvlm_rephrased = True
            return record.levelno >= floor
        return record.levelno >= logging.WARNING


def _rephrase_rule(record: logging.LogRecord) -> tuple[Rephrase | None, re.Match[str] | None]:
    try:
        message = strip_ansi(record.getMessage())
    except Exception:  # noqa: BLE001 - a malformed third-party record: leave it alone
        return None, None
    for pattern, rule in _COMPILED:
        match = pattern.search(message)
        if match:
            return rule, match
    return None, None


class ConsoleFormatter(logging.Formatter):
    """``12:03:04 message`` for our INFO lines; the level (and, for third parties, the source) before
    warnings; ``12:03:04 LEVEL logger: message`` at ``-v``. Never any ANSI escape."""

    def __init__(self, verbosity: Verbosity) -> None:
        super().__init__(datefmt="%H:%M:%S")
        self.verbosity = verbosity

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        if self.verbosity == "verbose":
            text = f"{stamp} {record.levelname} {record.name}: {message}"
        elif record.levelno < logging.WARNING:
            text = f"{stamp} {message}"
        elif is_ours(record) or getattr(record, "fvlm_rephrased", False):
            text = f"{stamp} {record.levelname}: {message}"
        else:
            source = getattr(record, "warning_source", None) or record.name.split(".", 1)[0]
            text = f"{stamp} {record.levelname} ({source}): {message}"
        return strip_ansi(text)


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now: while a rich bar is drawn, rich's stderr proxy prints
    log lines above the bar instead of through it."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it
        pass


_HANDLER_NAME = "fvlm-console"


def resolve_verbosity(verbose: bool = False, quiet: bool = False) -> Verbosity:
    """Flags first, then ``$FVLM_VERBOSITY``, else ``normal``."""
    if verbose:
        return "verbose"
    if quiet:
        return "quiet"
    chosen = os.environ.get(ENV_VAR, "").strip().lower()
    return chosen if chosen in VERBOSITIES else "normal"  # type: ignore[return-value]


def configure_console(verbosity: Verbosity) -> logging.Handler:
    """Install the console handler on the root logger (replacing an earlier one), set the third-party
    logger levels, the warnings hook, the progress mode and the quiet environment defaults."""
    from core.progress import configure_progress

    os.environ[ENV_VAR] = verbosity
    if verbosity != "verbose":
        for key, value in QUIET_ENV.items():
            os.environ.setdefault(key, value)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(ConsoleFilter(verbosity))
    handler.setFormatter(ConsoleFormatter(verbosity))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity == "verbose" else logging.INFO)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbosity == "verbose" else logging.WARNING)
    for name in SILENT_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _route_warnings(verbosity)
    configure_progress("off" if verbosity == "quiet" else "auto")
    return handler


def _route_warnings(verbosity: Verbosity) -> None:
    """Python warnings become log records (logger ``py.warnings``) so the console filter sees them:
    ``Category: message`` (no source line); ours keep their file and line at ``-v``."""
    logger = logging.getLogger("py.warnings")

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = strip_ansi(str(message)).strip()
        ours = filename.startswith(_OUR_SOURCE_DIRS)
        where = f" ({Path(filename).name}:{lineno})" if verbosity == "verbose" else ""
        source = _package_of(filename) or "python"
        logger.warning(
            "%s: %s%s",
            category.__name__,
            text,
            where,
            extra={"warning_source": source, "fvlm_warning_ours": ours},
        )

    warnings.showwarning = show


def _package_of(filename: str) -> str:
    """The top-level package a file belongs to (``mlflow`` for .../site-packages/mlflow/pyfunc/x.py)."""
    parts = Path(filename).parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            index = parts.index(marker)
            if index + 1 < len(parts):
                return parts[index + 1].removesuffix(".py")
    return ""
