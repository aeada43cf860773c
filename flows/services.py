"""Local Prefect + MLflow servers for a workstation: start, health-check, stop by PID.

``fvlm services up`` starts

* ``prefect server start --host 127.0.0.1 --port <prefect_port>`` with ``PREFECT_HOME=<data_dir>/prefect``
  (its SQLite database ``prefect.db`` lives there), health endpoint ``/api/health``;
* ``mlflow server --host 127.0.0.1 --port <mlflow_port> --workers 1`` with a SQLite backend
  ``<data_dir>/mlflow/mlflow.db`` and the artifact store ``<data_dir>/mlflow/artifacts`` (served by the
  server, so clients need no shared file system), health endpoint ``/health``;
* optionally a Prefect process worker for the deployments' work pool (``--worker``);

each as its own session (process group), output in ``<data_dir>/logs/<name>.log``, PID in
``<data_dir>/run/<name>.pid`` (JSON: pid, command, url). ``down`` signals the process group of each PID
file -- SIGTERM for the servers, SIGINT for the worker, which ignores SIGTERM -- waits, and escalates to
SIGKILL after a grace period. A PID file whose process is gone or is not the recorded command is stale
and is removed without signalling anything. Telemetry is off for all of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core import processes
from core.env import OFFLINE_DEFAULTS
from core.io import atomic_write_text
from core.stores import healthy, is_ours, pid_alive, pid_file, read_pid, running_client_env

SERVICE_NAMES: tuple[str, ...] = ("prefect", "mlflow", "worker")
DEFAULT_SERVICES: tuple[str, ...] = ("prefect", "mlflow")


class ServiceError(RuntimeError):
    """A service that could not be started or stopped; the message says which and why."""


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    command: list[str]
    env: dict[str, str]
    url: str
    health_url: str | None  # None: alive == healthy (the worker has no HTTP endpoint)
    stop_signal: int = signal.SIGTERM
    port: int | None = None
    host: str = "127.0.0.1"
    marker: str = ""  # a string the process's command line must contain (guards against reused PIDs)
    client_env: dict[str, str] = field(default_factory=dict)  # what clients export to use it (PID record)


@dataclass
class ServiceState:
    name: str
    pid: int | None = None
    alive: bool = False
    healthy: bool = False
    url: str = ""
    log: str = ""
    detail: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        state = "healthy" if self.healthy else ("starting/unhealthy" if self.alive else "stopped")
        pid = f"pid {self.pid}" if self.pid else "no pid"
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.name:8s} {state:18s} {pid:10s} {self.url}{detail}"


def _executable(name: str) -> str:
    """The console script next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise ServiceError(f"{name}: executable not found next to {sys.executable} or on PATH")
    return found


def service_specs(
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    work_pool: str = "fvlm-process",
) -> dict[str, ServiceSpec]:
    data_dir = data_dir.resolve()
    base_env = {**OFFLINE_DEFAULTS}
    prefect_home = data_dir / "prefect"
    prefect_api = f"http://{host}:{prefect_port}/api"
    prefect_env = {
        **base_env,
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}",
    }
    mlflow_dir = data_dir / "mlflow"
    return {
        "prefect": ServiceSpec(
            name="prefect",
            command=[
                _executable("prefect"),
                "server",
                "start",
                "--host",
                host,
                "--port",
                str(prefect_port),
                "--analytics-off",
            ],
            # the UI asks /ui-settings where the API is: without these it says :4200 whatever --port was
            env={
                **prefect_env,
                "PREFECT_API_URL": prefect_api,
                "PREFECT_UI_API_URL": prefect_api,
                "PREFECT_SERVER_API_HOST": host,
                "PREFECT_SERVER_API_PORT": str(prefect_port),
            },
            url=f"http://{host}:{prefect_port}",
            health_url=f"{prefect_api}/health",
            port=prefect_port,
            host=host,
            marker="server",
            client_env={"PREFECT_API_URL": prefect_api},
        ),
        "mlflow": ServiceSpec(
            name="mlflow",
            command=[
                _executable("mlflow"),
                "server",
                "--host",
                host,
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{mlflow_dir / 'mlflow.db'}",
                "--artifacts-destination",
                str(mlflow_dir / "artifacts"),
                "--serve-artifacts",
            ],
            env={**base_env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"},
            url=f"http://{host}:{mlflow_port}",
            health_url=f"http://{host}:{mlflow_port}/health",
            port=mlflow_port,
            host=host,
            marker="mlflow",
            client_env={"MLFLOW_TRACKING_URI": f"http://{host}:{mlflow_port}"},
        ),
        "worker": ServiceSpec(
            name="worker",
            command=[_executable("prefect"), "worker", "start", "--pool", work_pool, "--type", "process"],
            env={**prefect_env, "PREFECT_API_URL": prefect_api},
            url=f"pool {work_pool} @ {prefect_api}",
            health_url=None,
            stop_signal=signal.SIGINT,  # the Prefect worker ignores SIGTERM
            marker="worker",
        ),
    }


def recorded_port(data_dir: Path, name: str) -> int | None:
    """The port the running service ``name`` was started on (its PID record), else None."""
    record = read_pid(data_dir, name)
    if record is None or record.get("port") is None or not is_ours(record):
        return None
    return int(record["port"])  # type: ignore[call-overload]


def write_client_env(data_dir: Path) -> tuple[Path, dict[str, str]]:
    """``<data_dir>/services.env`` for shells and notebooks: exports for the services that run and answer now
    (their recorded ports) and nothing else -- ``--only prefect`` never names an MLflow it did not start."""
    env = running_client_env(data_dir)
    path = data_dir / "services.env"
    lines = [f"export {key}={value}\n" for key, value in env.items()]
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        if key not in env:
            lines.append(f"unset {key}  # not running under {data_dir}\n")
    atomic_write_text(path, "".join(lines))
    return path, env


def client_env(host: str, prefect_port: int, mlflow_port: int) -> dict[str, str]:
    """What clients (fvlm commands, DVC stages, notebooks) export to use the running services."""
    return {
        "PREFECT_API_URL": f"http://{host}:{prefect_port}/api",
        "MLFLOW_TRACKING_URI": f"http://{host}:{mlflow_port}",
    }


def _log_file(data_dir: Path, name: str) -> Path:
    return data_dir / "logs" / f"{name}.log"


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def status(data_dir: Path, specs: dict[str, ServiceSpec], names: Iterable[str] = SERVICE_NAMES) -> list[ServiceState]:
    states = []
    for name in names:
        spec = specs[name]
        state = ServiceState(name=name, url=spec.url, log=str(_log_file(data_dir, name)))
        record = read_pid(data_dir, name)
        health_url = spec.health_url
        if record is not None:
            state.pid = int(record["pid"])  # type: ignore[arg-type]
            state.alive = is_ours(record)
            if not state.alive:
                state.detail = "stale pid file"
            elif record.get("health_url"):  # where it runs, whatever port was asked for this time
                state.url, health_url = str(record["url"]), str(record["health_url"])
        state.healthy = state.alive and healthy(health_url)
        states.append(state)
    return states


def start(
    data_dir: Path,
    specs: dict[str, ServiceSpec],
    names: Sequence[str] = DEFAULT_SERVICES,
    *,
    timeout_s: float = 120.0,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> list[ServiceState]:
    """Start the named services (in parallel), wait for their health endpoints; raise ServiceError on failure.

    Services already running (live PID file) are left alone. On a failure the services started by this
    call are stopped again. ``die_with_parent`` (Linux; tests, benchmarks): the services get SIGTERM when
    the calling process dies, even by SIGKILL, instead of outliving it as ``fvlm services up`` intends.
    """
    die_with_parent = die_with_parent or os.environ.get("FVLM_SERVICES_DIE_WITH_PARENT") == "1"
    if "worker" in names and len(names) > 1:  # the worker connects to the Prefect server: start it last
        first = [name for name in names if name != "worker"]
        start(data_dir, specs, first, timeout_s=timeout_s, cwd=cwd, die_with_parent=die_with_parent)
        start(data_dir, specs, ["worker"], timeout_s=timeout_s, cwd=cwd, die_with_parent=die_with_parent)
        return status(data_dir, specs, names)
    data_dir.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "logs", "prefect", "mlflow/artifacts"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    launched: dict[str, subprocess.Popen[bytes]] = {}
    launch_times: dict[str, float] = {}
    try:
        for name in names:
            spec = specs[name]
            record = read_pid(data_dir, name)
            if record is not None and is_ours(record):
                continue
            pid_file(data_dir, name).unlink(missing_ok=True)
            probe_host = "127.0.0.1" if spec.host in ("0.0.0.0", "") else spec.host
            if spec.port is not None and port_in_use(probe_host, spec.port):
                raise ServiceError(
                    f"{name}: port {spec.port} is already in use (another server?); "
                    f"choose another one in params.yaml services.{name}_port"
                )
            env = {**os.environ, **spec.env}
            log_handle = open(_log_file(data_dir, name), "ab")  # noqa: SIM115 - handed to the child
            try:
                process = subprocess.Popen(  # noqa: S603 - fixed argv
                    spec.command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_handle,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=str(cwd or data_dir),
                    start_new_session=True,
                    preexec_fn=processes.die_with_parent
                    if die_with_parent and sys.platform.startswith("linux")
                    else None,  # noqa: PLW1509
                )
            finally:
                log_handle.close()
            launched[name] = process
            launch_times[name] = time.monotonic()
            atomic_write_text(
                pid_file(data_dir, name),
                json.dumps(
                    {
                        "pid": process.pid,
                        "command": spec.command,
                        "url": spec.url,
                        "health_url": spec.health_url,
                        "host": spec.host,
                        "port": spec.port,
                        "client_env": spec.client_env,
                        "marker": spec.marker,
                        "started": time.time(),
                    }
                ),
            )
        deadline = processes.LoadScaledDeadline(timeout_s)  # a busy machine is slow, not broken
        waiting = set(launched)
        while waiting:
            for name in sorted(waiting):
                process = launched[name]
                if process.poll() is not None:
                    raise ServiceError(
                        f"{name}: exited with code {process.returncode} during start-up; "
                        f"log {_log_file(data_dir, name)}:\n{_log_tail(_log_file(data_dir, name))}"
                    )
                health_url = specs[name].health_url
                if (health_url and healthy(health_url)) or (
                    health_url is None and time.monotonic() - launch_times[name] > 3.0  # alive for 3 s: a worker is up
                ):
                    waiting.discard(name)
            if waiting and deadline.passed():
                raise ServiceError(
                    f"{', '.join(sorted(waiting))}: not healthy after {deadline.describe()}; see {data_dir / 'logs'} "
                    "(a slower machine: raise services.startup_timeout_s or --timeout)"
                )
            if waiting:
                time.sleep(0.5)
    except BaseException:
        stop(data_dir, specs, list(launched))
        raise
    return status(data_dir, specs, names)


def stop(
    data_dir: Path, specs: dict[str, ServiceSpec], names: Sequence[str] = SERVICE_NAMES, *, grace_s: float = 20.0
) -> list[ServiceState]:
    """Stop services by their PID files (process group; SIGINT for the worker); escalate to SIGKILL."""
    # the worker first: it talks to the Prefect server
    ordered = sorted(names, key=lambda n: 0 if n == "worker" else 1)
    signalled: list[tuple[str, int]] = []
    states = {}
    for name in ordered:
        spec = specs[name]
        record = read_pid(data_dir, name)
        state = ServiceState(name=name, url=spec.url)
        states[name] = state
        if record is None:
            state.detail = "not running"
            continue
        pid = int(record["pid"])  # type: ignore[arg-type]
        state.pid = pid
        if not is_ours(record):
            state.detail = "stale pid file removed"
            pid_file(data_dir, name).unlink(missing_ok=True)
            continue
        _signal_group(pid, spec.stop_signal)
        signalled.append((name, pid))
    deadline = time.monotonic() + grace_s
    for name, pid in signalled:
        while pid_alive(pid) and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.2)
        if pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
            states[name].detail = "killed after grace period"
            _reap(pid)
        else:
            states[name].detail = "stopped"
        pid_file(data_dir, name).unlink(missing_ok=True)
    return [states[name] for name in names]


def _signal_group(pid: int, sig: int) -> None:
    try:
        if os.getpgid(pid) == pid:  # started with start_new_session: signal its whole group (uvicorn workers)
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    """Collect the exit status if the service is our own child (tests start and stop in one process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --------------------------------------------------------------------- one temporary server per DAG run
@dataclass
class TemporaryServer:
    """Prefect's API server (the app its temporary mode runs) for the length of one ``fvlm demo`` /
    ``fvlm pipeline``: ``started`` is False when ``PREFECT_API_URL`` already named a server."""

    api_url: str
    started: bool
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    failure: str = ""  # why none runs (``shared_prefect_server(or_none=True)`` after a failed start)

    @property
    def ui_url(self) -> str:
        """The Prefect UI of this server (its API URL without ``/api``)."""
        return self.api_url.removesuffix("/").removesuffix("/api")


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def temporary_server_command(port: int, host: str = "127.0.0.1") -> list[str]:
    """The command Prefect 3 itself runs for its temporary server (``SubprocessASGIServer``): uvicorn
    serving ``prefect.server.api.server:create_app`` (API and UI: :func:`temporary_server_env`) -- less
    Prefect's ``--app-dir <site-packages>``, which puts site-packages *ahead of* the standard library: an
    ``argparse.py`` there (PyPI's 2015 ``argparse``, required by unittest2 <- batchgenerators <- nnU-Net <-
    TotalSegmentator) then replaces the standard library's, and pydantic-settings' ``from argparse import
    BooleanOptionalAction`` kills the server at start. ``prefect`` imports from this interpreter's own path."""
    import importlib.util

    if importlib.util.find_spec("prefect") is None:
        raise ServiceError("prefect is not installed in this environment")
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def temporary_server_env(port: int, environ: Mapping[str, str], host: str = "127.0.0.1") -> dict[str, str]:
    """What the run's server is started with: the API *and* the UI, as ``fvlm services up`` serves them.

    Prefect's own temporary mode (``PREFECT__SERVER_EPHEMERAL=1``, which ``create_app`` also reads) mounts
    no UI, whatever ``PREFECT_UI_ENABLED`` says, so the URL ``fvlm demo`` prints answered every page
    ``{"detail":"Not Found"}``. Without it the app serves the UI from Prefect's built static files (copied
    once per Prefect version into the package's ``ui_build`` folder, or ``PREFECT_UI_STATIC_DIRECTORY``)
    and runs the server's background services, as ``prefect server start`` does (healthy after 2.8-3.8 s
    either way on an idle machine; 6.8-9.0 s vs 5.7-8.3 s API-only at load 10 on 2 CPUs, stopped in 0.2 s).
    ``PREFECT_UI_API_URL``: the UI asks ``/ui-settings`` where the API is, and without it says :4200, not
    this free port.
    """
    api_url = f"http://{host}:{port}/api"
    return {
        **{key: value for key, value in environ.items() if key != "PREFECT__SERVER_EPHEMERAL"},
        **OFFLINE_DEFAULTS,
        "PREFECT_UI_ENABLED": "true",
        "PREFECT_UI_API_URL": api_url,
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def start_temporary_server(*, timeout_s: float = 120.0, log_dir: Path | None = None) -> TemporaryServer:
    """``PREFECT_API_URL`` when it is set (``fvlm services up``, ``tracking.prefect_api_url``), else start
    one server (API and UI) on a free port and export its API URL into ``os.environ``, so that this process's flows
    and every command it starts (``dvc repro`` -> ``fvlm <stage>``) report to it.

    The server opens ``$PREFECT_HOME``'s database (``core.config.apply_services_environment`` points it
    at ``<services.data_dir>/prefect``: the database ``fvlm services up`` serves later). It dies with this
    process (``PR_SET_PDEATHSIG``); :func:`stop_temporary_server` stops it. Does not import Prefect.
    """
    existing = os.environ.get("PREFECT_API_URL")
    if existing:
        return TemporaryServer(api_url=existing, started=False)
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = temporary_server_env(port, os.environ)
    log = None
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / "prefect-temporary.log"
    log_handle = open(log, "ab") if log is not None else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        process = subprocess.Popen(  # noqa: S603 - fixed argv
            temporary_server_command(port),
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=processes.die_with_parent if sys.platform.startswith("linux") else None,  # noqa: PLW1509
        )
    finally:
        if log is not None:
            log_handle.close()  # type: ignore[union-attr]
    server = TemporaryServer(api_url=api_url, started=True, process=process, log=log)
    deadline = processes.LoadScaledDeadline(timeout_s)  # the wait grows with the load average
    while not healthy(f"{api_url}/health", timeout_s=1.0):
        exited = process.poll() is not None
        if exited or deadline.passed():
            stop_temporary_server(server)
            tail = _log_tail(log) if log is not None else ""
            why = f"exited with code {process.returncode}" if exited else f"not healthy within {deadline.describe()}"
            raise ServiceError(
                f"temporary Prefect server on port {port} did not start ({why})" + (f": {tail}" if tail else "")
            )
        time.sleep(0.2)
    os.environ["PREFECT_API_URL"] = api_url
    return server


def stop_temporary_server(server: TemporaryServer) -> None:
    """Stop a server :func:`start_temporary_server` started (and unset the URL it exported)."""
    if not server.started or server.process is None:
        return
    if os.environ.get("PREFECT_API_URL") == server.api_url:
        del os.environ["PREFECT_API_URL"]
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@contextlib.contextmanager
def shared_prefect_server(
    *, timeout_s: float = 120.0, log_dir: Path | None = None, or_none: bool = False
) -> Iterator[TemporaryServer]:
    """``with shared_prefect_server() as server:`` -- :func:`start_temporary_server` ... stop.

    ``or_none``: a server that does not start (a machine too busy even for the load-scaled wait) is not a
    failure of the run: the body runs without one (``server.failure`` says why; stage commands then run
    their libraries, which record themselves in their manifests and ``stage-runs.jsonl``).
    """
    try:
        server = start_temporary_server(timeout_s=timeout_s, log_dir=log_dir)
    except ServiceError as error:
        if not or_none:
            raise
        yield TemporaryServer(api_url="", started=False, failure=str(error))
        return
    try:
        yield server
    finally:
        stop_temporary_server(server)
