"""What `fvlm` prints (fvlm/console.py): quiet by default, warnings only at -q, everything at -v.

The main test runs `fvlm convert` on a small generated cohort as a user would (a subprocess, default
verbosity, the Prefect flow path on: a temporary Prefect server, batches as task runs) and fails when a
third-party line (httpx / Prefect / MLflow chatter) or an ANSI escape reaches the console.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from fvlm.cli import build_parser
from fvlm.console import ConsoleFilter, ConsoleFormatter, configure_console, resolve_verbosity

ANSI = re.compile(r"\x1b\[")
THIRD_PARTY = re.compile(
    r"\b(httpx|httpcore|prefect(\.\w+)?|mlflow|urllib3|alembic|numexpr)\b[:)]|HTTP Request|Finished in state"
)
# default console: at most these lines for a convert run (server notice, discovery, stage summary, the
# command's own two summary lines on stdout)
MAX_DEFAULT_LINES = 6


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthetic import generate_cohort

    root = tmp_path_factory.mktemp("console")
    generate_cohort(root / "demo", studies=3, seed=0, size="demo", workers=1)
    (root / "params.yaml").write_text("convert: {workers: 1}\norchestration: {stage_flows: true}\n")
    return root


def fvlm(root: Path, *args: str, flows: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FVLM_SALT": "test-salt"}
    env.pop("FVLM_NO_FLOWS", None) if flows else env.update(FVLM_NO_FLOWS="1")
    for key in ("FVLM_VERBOSITY", "FVLM_PROGRESS", "PREFECT_API_URL", "PREFECT_LOGGING_LEVEL"):
        env.pop(key, None)
    command = [sys.executable, "-m", "fvlm.cli", *args]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def convert_args(root: Path, out: str) -> list[str]:
    return ["--params", str(root / "params.yaml"), "convert", str(root / "demo" / "dicom"), str(root / out)]


def console_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def test_convert_default_console_has_no_third_party_lines(cohort: Path) -> None:
    result = fvlm(cohort, *convert_args(cohort, "converted"))
    lines = console_lines(result)
    assert result.returncode == 0, "\n".join(lines)
    offending = [line for line in lines if THIRD_PARTY.search(line) or ANSI.search(line)]
    assert not offending, "third-party chatter at default verbosity:\n" + "\n".join(offending)
    assert len(lines) <= MAX_DEFAULT_LINES, "\n".join(lines)
    joined = "\n".join(lines)
    assert "convert: 3 " in joined  # our one-line stage summary (library or flow)
    assert "convert: 3 studies (3 ok" in result.stdout  # the command's result
    assert "INFO" not in result.stderr  # our INFO lines carry no level / logger name


def test_quiet_prints_no_info_lines(cohort: Path) -> None:
    result = fvlm(cohort, *convert_args(cohort, "converted-quiet"), "-q", flows=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # no INFO line, no progress, nothing went wrong
    assert "convert: 3 studies (3 ok" in result.stdout  # the command's result still prints


def test_verbose_after_the_subcommand_shows_everything(cohort: Path) -> None:
    default = fvlm(cohort, *convert_args(cohort, "converted-plain"), flows=False)
    verbose = fvlm(cohort, *convert_args(cohort, "converted-verbose"), "-v", flows=False)
    assert default.returncode == 0 and verbose.returncode == 0, verbose.stderr
    assert len(console_lines(verbose)) > len(console_lines(default))
    assert " DEBUG preprocessing." in verbose.stderr  # our debug lines, with level and logger name
    assert "DEBUG" not in default.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "convert", "in", "out"],
        ["convert", "in", "out", "-v"],
        ["convert", "-v", "in", "out"],
        ["-q", "convert", "in", "out"],
        ["convert", "in", "out", "--quiet"],
        ["services", "status", "-q"],
    ],
)
def test_verbosity_flags_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.verbose, args.quiet) == (("-v" in argv), ("-q" in argv or "--quiet" in argv))


def test_a_global_flag_is_not_reset_by_the_subcommand() -> None:
    args = build_parser().parse_args(["-q", "convert", "in", "out"])
    assert args.quiet is True and args.verbose is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["convert", "-q", "-v", "in", "out"])  # one or the other


def test_verbosity_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FVLM_VERBOSITY", "quiet")
    assert resolve_verbosity() == "quiet" and resolve_verbosity(verbose=True) == "verbose"
    monkeypatch.setenv("FVLM_VERBOSITY", "loud")
    assert resolve_verbosity() == "normal"


def test_mlflow_own_handler_is_quiet_by_default_and_talks_at_verbose(tmp_path: Path) -> None:
    """MLflow configures its own stderr handler when imported (the train stage's database set-up lines)."""
    script = (
        "import logging, sys\n"
        "from fvlm.console import configure_console\n"
        "configure_console(sys.argv[1])\n"
        "import mlflow\n"
        "logging.getLogger('mlflow.store.db.utils').info('Creating initial MLflow database tables...')\n"
    )
    env = {key: value for key, value in os.environ.items() if key not in ("MLFLOW_LOGGING_LEVEL", "FVLM_VERBOSITY")}
    runs = {
        verbosity: subprocess.run(
            [sys.executable, "-c", script, verbosity],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        for verbosity in ("normal", "verbose")
    }
    assert all(run.returncode == 0 for run in runs.values()), {v: r.stderr[-2000:] for v, r in runs.items()}
    assert "Creating initial MLflow database tables" not in runs["normal"].stderr + runs["normal"].stdout
    assert "Creating initial MLflow database tables" in runs["verbose"].stderr + runs["verbose"].stdout


def record(name: str, level: int, message: str, pathname: str = "/elsewhere/lib.py") -> logging.LogRecord:
    return logging.LogRecord(name, level, pathname, 1, message, None, None)


def test_filter_keeps_ours_drops_third_party_info_and_rephrases() -> None:
    normal, quiet, verbose = ConsoleFilter("normal"), ConsoleFilter("quiet"), ConsoleFilter("verbose")
    ours = record("preprocessing.convert", logging.INFO, "discovered 3 studies")
    chatter = record("httpx", logging.INFO, 'HTTP Request: POST http://127.0.0.1/api/logs/ "HTTP/1.1 201 Created"')
    assert normal.filter(ours) and not quiet.filter(ours) and verbose.filter(ours)
    assert not normal.filter(chatter) and verbose.filter(chatter)
    # our code logging through a Prefect run logger is ours (its source file is in the project)
    our_file = str(Path(__file__).resolve().parents[1] / "flows" / "batching.py")
    run_log = record("prefect.flow_runs", logging.INFO, "convert: 3 items", our_file)
    assert normal.filter(run_log)
    assert not normal.filter(record("prefect.task_runs", logging.INFO, "Finished in state Completed()"))
    ui_only = record("prefect.flow_runs", logging.INFO, "convert: batch 1/2 done")
    ui_only.fvlm_console = False
    assert not normal.filter(ui_only) and verbose.filter(ui_only)
    # developer-facing MLflow advice is hidden; a failed Prefect run is rephrased
    assert not normal.filter(record("mlflow.pyfunc", logging.WARNING, "... serialized using CloudPickle, ..."))
    # a failed run's exception: the command prints it once, as one line; Prefect's copies (with the
    # traceback) show at -v only; a crashed run is rephrased
    for message in (
        "Finished in state Failed('Flow run encountered an exception: ValueError: bad reports.id_column')",
        "Encountered exception during execution: ValueError('bad reports.id_column')",
        "Task run failed with exception: ValueError('x') - Retries are exhausted",
        "Service 'EventsWorker' failed with 3 pending items.",
    ):
        assert not normal.filter(record("prefect.flow_runs", logging.ERROR, message)), message
        assert verbose.filter(record("prefect.flow_runs", logging.ERROR, message)), message
    crashed = record("prefect.flow_runs", logging.ERROR, "Finished in state Crashed('Execution was cancelled')")
    assert normal.filter(crashed) and crashed.getMessage().startswith("Prefect: run Crashed:")
    server = record("prefect", logging.INFO, "Starting temporary server on http://127.0.0.1:8123\nSee https://docs")
    assert normal.filter(server) and "temporary one at http://127.0.0.1:8123" in server.getMessage()
    assert "\n" not in server.getMessage()


def test_formatter_strips_ansi_and_names_third_party_sources() -> None:
    formatter = ConsoleFormatter("normal")
    warning = record("somelib.module", logging.WARNING, "\x1b[93mcareful\x1b[0m")
    text = formatter.format(warning)
    assert "\x1b" not in text and text.endswith("WARNING (somelib): careful")
    assert formatter.format(record("training.trainer.loop", logging.INFO, "hello")).endswith(" hello")


def test_python_warnings_reach_the_console_in_our_format(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in ("FVLM_VERBOSITY", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):  # restored after the test
        monkeypatch.setenv(key, "")
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, warnings.showwarning)
    try:
        configure_console("normal")
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            showwarning = warnings.showwarning
            advice = "\x1b[93mAdd type hints to the `predict` method\x1b[0m"
            showwarning(advice, UserWarning, "/x/site-packages/mlflow/pyfunc/__init__.py", 3)
            showwarning("volume is \x1b[1mtilted\x1b[0m", UserWarning, "/x/site-packages/nibabel/loadsave.py", 7)
        err = capsys.readouterr().err
        assert "predict" not in err  # developer-facing advice: hidden below -v
        assert "WARNING (nibabel): UserWarning: volume is tilted" in err and "\x1b" not in err
    finally:
        for handler in list(root.handlers):
            if handler not in saved[0]:
                root.removeHandler(handler)
        root.setLevel(saved[1])
        warnings.showwarning = saved[2]


def test_mlflow_registry_chatter_and_view_run_lines_only_at_verbose(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.utils import logging_utils

    from fvlm.console import QUIET_ENV
    from training.tracking.runs import mute_mlflow_chatter

    assert QUIET_ENV["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] == "true"  # "View run ... at:" lines
    stream = logging_utils.MLFLOW_LOGGING_STREAM
    monkeypatch.setattr(stream, "write", stream.write)  # restore the stream after the test
    monkeypatch.setattr(stream, "fvlm_muted", False, raising=False)
    monkeypatch.setenv("FVLM_VERBOSITY", "normal")
    mute_mlflow_chatter()
    logging_utils.eprint("Successfully registered model 'fvlm-ct'.")
    logging_utils.eprint("Created version '3' of model 'fvlm-ct'.")
    logging_utils.eprint("Registered model 'fvlm-ct' already exists. Creating a new version of this model...")
    logging_utils.eprint("something MLflow needs to say")
    assert capsys.readouterr().err == "something MLflow needs to say\n"


@pytest.mark.slow  # starts a temporary Prefect server (~30 s)
def test_a_user_error_under_a_flow_prints_one_clean_line(tmp_path: Path) -> None:
    """A bad ``reports.id_column`` with a Prefect server: the command's one line, no Prefect traceback, no
    copy of the message, no EventsWorker line (issue #31); everything at -v."""
    from flows.services import shared_prefect_server

    (tmp_path / "reports.csv").write_text("study_key,Findings,Impression\ns1,normal lungs,none\n")
    (tmp_path / "params.yaml").write_text("reports: {id_column: no_such_column}\norchestration: {stage_flows: true}\n")
    with shared_prefect_server(timeout_s=180, log_dir=tmp_path / "logs") as server:
        env = {**os.environ, "FVLM_SALT": "test-salt", "PREFECT_API_URL": server.api_url}
        for key in ("FVLM_VERBOSITY", "FVLM_NO_FLOWS", "FVLM_PROGRESS", "PREFECT_LOGGING_LEVEL"):
            env.pop(key, None)
        command = [sys.executable, "-m", "fvlm.cli", "--params", str(tmp_path / "params.yaml"), "parse-reports"]
        command += [str(tmp_path / "reports.csv"), str(tmp_path / "out" / "reports.parquet")]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = console_lines(result)
    assert result.returncode != 0
    assert len(lines) == 1 and "no_such_column" in lines[0] and "reports.id_column" in lines[0], lines
