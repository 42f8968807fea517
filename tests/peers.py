"""Real DICOM peers on loopback, for e2e tests and benchmarks.

Everything here starts real programs and talks to them over ``127.0.0.1`` only:

* :class:`Orthanc` - ``/usr/sbin/Orthanc`` with a generated configuration in a fresh
  temporary directory (storage and index inside it).
* :class:`StoreSCP` - DCMTK's ``/usr/bin/storescp`` writing into a directory.
* :class:`FilmlessServer` - ``filmless serve`` on a data directory.
* :func:`run_storescu` / :func:`run_dcmsend` - DCMTK senders (and the command builders
  :func:`storescu_command` / :func:`dcmsend_command` for callers that want their own
  ``Popen``, e.g. to start several senders at once).

DCMTK tools are always called by full path: the project venv's ``bin`` also holds
pynetdicom's own ``storescu``/``storescp`` scripts, which would shadow them on ``PATH``.

Debian's DCMTK (which Orthanc links against) only disables Nagle's algorithm when the
environment variable ``TCP_NODELAY`` is set, so every child started here gets
``TCP_NODELAY=1`` (see :func:`peer_env`); without it, small PDUs on loopback stall for
tens of milliseconds each.

Each server class is a context manager. On a clean exit its temporary directory is
removed; when the ``with`` block raised, or the program died or exited abnormally, the
directory (with the program's log) is kept and its path printed to stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypedDict

import httpx

LOOPBACK = "127.0.0.1"
"""The only address the peers are reached on."""

DCMTK_BIN = Path("/usr/bin")
"""Where Debian installs DCMTK's command-line tools."""

STORESCU = DCMTK_BIN / "storescu"
DCMSEND = DCMTK_BIN / "dcmsend"
STORESCP = DCMTK_BIN / "storescp"
ECHOSCU = DCMTK_BIN / "echoscu"
ORTHANC = Path("/usr/sbin/Orthanc")

REPO_ROOT = Path(__file__).resolve().parents[1]

StrPath = str | os.PathLike[str]


class PeerError(RuntimeError):
    """A peer program failed to start, died, or a sender failed."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    The port is found by binding to port 0 and closing the socket again, so another
    process could in principle take it before the caller does; on a test machine that
    race is rare enough to accept.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def peer_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a child environment: ``os.environ``, then ``env``, then ``TCP_NODELAY=1``.

    ``TCP_NODELAY`` is forced last because Debian's DCMTK and Orthanc leave Nagle's
    algorithm on unless it is set. Proxy variables are dropped: everything here is
    loopback and must never be routed through a proxy.
    """
    merged = dict(os.environ)
    for key in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        merged.pop(key, None)
    if env:
        merged.update(env)
    merged["TCP_NODELAY"] = "1"
    return merged


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 10.0,
    *,
    process: subprocess.Popen[bytes] | None = None,
    interval: float = 0.05,
) -> None:
    """Block until a TCP connection to ``host:port`` succeeds.

    Args:
        host: address to connect to (normally :data:`LOOPBACK`).
        port: TCP port.
        timeout: seconds to wait before giving up.
        process: if given, give up early (with :class:`PeerError`) when it exits.
        interval: seconds between attempts.

    Raises:
        TimeoutError: nothing accepted within ``timeout``.
        PeerError: ``process`` exited while waiting.
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise PeerError(f"process {process.pid} exited with {process.returncode} before port {port} opened")
        try:
            with socket.create_connection((host, port), timeout=min(1.0, timeout)):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"nothing accepted connections on {host}:{port} within {timeout:.1f} s")
        time.sleep(interval)


def tree_size(path: StrPath) -> int:
    """Sum of the sizes (``st_size``, apparent bytes) of all regular files under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except FileNotFoundError:  # removed while walking (temporary files)
                pass
    return total


def file_count(path: StrPath) -> int:
    """Number of regular files under ``path`` (recursively)."""
    return sum(len(files) for _root, _dirs, files in os.walk(path))


def _tail(path: Path, max_chars: int = 4000) -> str:
    """Last ``max_chars`` characters of a text file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return text[-max_chars:]


def _as_paths(files_or_dir: StrPath | Iterable[StrPath]) -> list[Path]:
    """Normalise one path or an iterable of paths to a list of :class:`Path`."""
    if isinstance(files_or_dir, (str, os.PathLike)):
        return [Path(files_or_dir)]
    return [Path(p) for p in files_or_dir]


# ------------------------------------------------------------------ managed processes


class _ManagedProcess:
    """Common life cycle of a server program: temp dir, log file, start, stop, cleanup.

    Subclasses implement :meth:`_command` and :meth:`_wait_ready`. The program runs in
    its own session (process group) so that helpers it forks (``storescp --fork``, worker
    processes of ``filmless serve``) can be reaped with it; only that group, whose id is
    the pid of the process started here, is ever signalled.
    """

    name: str = "peer"
    log_name: str = "peer.log"

    def __init__(
        self,
        *,
        workdir: StrPath | None,
        env: Mapping[str, str] | None,
        startup_timeout: float,
        stop_timeout: float,
        keep: bool,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir: Path = (
            Path(tempfile.mkdtemp(prefix=f"{self.name}-")) if workdir is None else Path(workdir)
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path: Path = self.workdir / self.log_name
        self.env: dict[str, str] = peer_env(env)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.keep = keep
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._failed = False

    # -- to implement
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        raise NotImplementedError

    def _cwd(self) -> Path | None:
        return self.workdir

    # -- public
    @property
    def pid(self) -> int:
        """Process id of the running program."""
        if self.process is None:
            raise PeerError(f"{self.name} is not running")
        return self.process.pid

    @property
    def running(self) -> bool:
        """True while the program has been started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def log_text(self) -> str:
        """Everything the program wrote to stdout/stderr so far."""
        if self._log is not None:
            self._log.flush()
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self) -> Self:
        """Start the program and wait until it is ready.

        May be called again after :meth:`stop` or :meth:`kill` (same directory, same
        ports); the log file is appended to.

        Raises:
            PeerError: the program exited or did not become ready in time (it is then
                killed and its log tail is part of the message).
        """
        if self.running:
            raise PeerError(f"{self.name} is already running (pid {self.pid})")
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _close_log
        command = self._command()
        self._log.write(f"### {time.strftime('%Y-%m-%d %H:%M:%S')} $ {' '.join(command)}\n".encode())
        self._log.flush()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self._cwd(),
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        try:
            self._wait_ready(self.process, deadline)
        except BaseException as exc:
            self._failed = True
            code = self.process.poll()
            self.kill()
            if isinstance(exc, (PeerError, TimeoutError)):
                state = f"exited with status {code}" if code is not None else "was not ready in time"
                raise PeerError(
                    f"{self.name} failed to start: {state}: {exc}\nlog {self.log_path}:\n{_tail(self.log_path)}"
                ) from exc
            raise
        return self

    def stop(self, timeout: float | None = None) -> int | None:
        """Send SIGTERM and wait; SIGKILL the process group if it does not exit in time.

        Returns:
            The exit status (negative signal number if killed by a signal), or ``None``
            if the program was not started.
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            try:
                process.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                process.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                self._failed = True
                print(f"{self.name} (pid {process.pid}) ignored SIGTERM; killing it", file=sys.stderr)
                self._signal_group(signal.SIGKILL)
                process.wait()
        # Reap anything it forked that outlived it (storescp --fork children, workers).
        self._signal_group(signal.SIGKILL)
        self._close_log()
        return process.returncode

    def kill(self) -> int | None:
        """SIGKILL the program's whole process group (a crash) and wait for it."""
        process = self.process
        if process is None:
            return None
        self._signal_group(signal.SIGKILL)
        process.wait()
        self._close_log()
        return process.returncode

    def cleanup(self, *, failed: bool = False) -> None:
        """Stop the program, then remove the temporary directory unless it must be kept."""
        code = self.stop()
        if code not in (None, 0, -signal.SIGTERM, -signal.SIGKILL):
            # -SIGKILL is expected after an explicit kill(); a timeout sets _failed itself.
            self._failed = True
        keep = failed or self._failed or self.keep
        if self._own_workdir and not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif failed or self._failed:
            print(f"{self.name}: kept {self.workdir} (log: {self.log_path})", file=sys.stderr)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.cleanup(failed=True)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup(failed=exc_type is not None)

    # -- internals
    def _signal_group(self, sig: signal.Signals) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, sig)  # group id == pid (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


# ------------------------------------------------------------------------- Orthanc


class Orthanc(_ManagedProcess):
    """Orthanc on loopback with a generated configuration in a fresh temporary directory.

    Layout of :attr:`workdir`: ``orthanc.json`` (the configuration), ``storage/`` (DICOM
    attachments), ``index/`` (SQLite index) and ``orthanc.log`` (stdout and stderr).

    Orthanc 1.10 has no option to choose the listening address: it binds all interfaces.
    ``RemoteAccessAllowed: false`` makes the HTTP server refuse non-local clients; the
    DICOM port cannot be restricted, so callers only ever reach it on 127.0.0.1.

    Storage semantics are Orthanc's defaults (``SyncStorageArea: true``: files are
    fsync'ed before the C-STORE response), unless ``extra_config`` overrides them.

    Example::

        with Orthanc("ORTHANC") as orthanc:
            run_storescu(series_dir, LOOPBACK, orthanc.dicom_port, orthanc.aet)
            assert orthanc.instance_count() == 300
    """

    name = "orthanc"
    log_name = "orthanc.log"

    def __init__(
        self,
        aet: str = "ORTHANC",
        *,
        dicom_port: int | None = None,
        http_port: int | None = None,
        modalities: Mapping[str, Any] | None = None,
        extra_config: Mapping[str, Any] | None = None,
        workdir: StrPath | None = None,
        env: Mapping[str, str] | None = None,
        executable: StrPath = ORTHANC,
        verbose: bool = False,
        startup_timeout: float = 60.0,
        stop_timeout: float = 20.0,
        keep: bool = False,
    ) -> None:
        """Prepare (but do not start) an Orthanc.

        Args:
            aet: Orthanc's own AE title (``DicomAet``).
            dicom_port: DICOM port; a free one by default.
            http_port: REST port; a free one by default.
            modalities: ``DicomModalities``, e.g. ``{"filmless": ["FILMLESS", "127.0.0.1", 11112]}``.
            extra_config: keys merged last into the generated configuration.
            workdir: use this directory instead of a fresh temporary one (never deleted).
            env: extra environment variables (``TCP_NODELAY=1`` is always set).
            executable: the Orthanc binary.
            verbose: pass ``--verbose`` (log DICOM and HTTP details).
            startup_timeout: seconds to wait for ``GET /system``.
            stop_timeout: seconds to wait after SIGTERM before SIGKILL.
            keep: keep the temporary directory even on success.
        """
        super().__init__(
            workdir=workdir, env=env, startup_timeout=startup_timeout, stop_timeout=stop_timeout, keep=keep
        )
        self.aet = aet
        self.dicom_port = dicom_port if dicom_port is not None else free_port()
        self.http_port = http_port if http_port is not None else free_port()
        self.executable = Path(executable)
        self.verbose = verbose
        self.storage_dir = self.workdir / "storage"
        self.index_dir = self.workdir / "index"
        self.config_path = self.workdir / "orthanc.json"
        self.config: dict[str, Any] = {
            "Name": f"filmless-peer-{aet}",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.index_dir),
            "StorageCompression": False,
            "Plugins": [],
            "LuaScripts": [],
            # HTTP: local only, no auth, nothing we do not need.
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "RegisteredUsers": {},
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "HttpThreadsCount": 10,
            "HttpTimeout": 10,
            "SslEnabled": False,
            # DICOM
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomModalities": dict(modalities or {}),
            "DicomModalitiesInDatabase": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomThreadsCount": 4,
            "DicomScuTimeout": 10,
            "DicomAssociationCloseDelay": 0,
            "UnknownSopClassAccepted": False,
            "OrthancPeers": {},
            # Jobs: nothing to restore, nothing to persist.
            "ConcurrentJobs": 2,
            "SaveJobs": False,
            "JobsHistorySize": 10,
            "MetricsEnabled": False,
            "CheckRevisions": False,
        }
        if extra_config:
            self.config.update(extra_config)
        self.base_url = f"http://{LOOPBACK}:{self.http_port}"
        self._http: httpx.Client | None = None

    def _command(self) -> list[str]:
        self.storage_dir.mkdir(exist_ok=True)
        self.index_dir.mkdir(exist_ok=True)
        self.config_path.write_text(json.dumps(self.config, indent=2))
        command = [str(self.executable)]
        if self.verbose:
            command.append("--verbose")
        command += ["--no-jobs", str(self.config_path)]
        return command

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(base_url=self.base_url, timeout=30.0, trust_env=False)
        return self._http

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        client = self._client()
        while True:
            if process.poll() is not None:
                raise PeerError(f"Orthanc exited with {process.returncode}")
            try:
                if client.get("/system", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() >= deadline:
                raise TimeoutError("GET /system did not answer")
            time.sleep(0.05)
        wait_for_port(LOOPBACK, self.dicom_port, max(0.1, deadline - time.monotonic()), process=process)

    def rest(self, path: str, *, method: str = "GET", json_body: Any = None, timeout: float = 30.0) -> Any:
        """Call Orthanc's REST API and return the decoded JSON answer.

        Args:
            path: e.g. ``"/statistics"`` or ``"/instances?expand"``.
            method: HTTP method (GET by default).
            json_body: request body, sent as JSON when not ``None``.
            timeout: seconds.

        Raises:
            httpx.HTTPStatusError: Orthanc answered with an error status.
        """
        response = self._client().request(method, path, json=json_body, timeout=timeout)
        response.raise_for_status()
        if not response.content:
            return None
        return response.json()

    def statistics(self) -> dict[str, Any]:
        """``GET /statistics`` (counts and disk sizes; sizes come as decimal strings)."""
        stats: dict[str, Any] = self.rest("/statistics")
        return stats

    def instance_count(self) -> int:
        """Number of instances in Orthanc's index."""
        return int(self.statistics()["CountInstances"])

    def stored_bytes(self) -> int:
        """Bytes of all attachments as Orthanc accounts them (``/statistics`` TotalDiskSize).

        With ``StorageCompression`` off this is the size of the stored DICOM files (plus
        any auxiliary attachments Orthanc keeps); the SQLite index is not included, see
        :meth:`storage_dir_bytes` and :meth:`index_dir_bytes` for what is on disk.
        """
        return int(self.statistics()["TotalDiskSize"])

    def storage_dir_bytes(self) -> int:
        """Apparent size of the files in the storage directory."""
        return tree_size(self.storage_dir)

    def index_dir_bytes(self) -> int:
        """Apparent size of the SQLite index directory."""
        return tree_size(self.index_dir)

    def cleanup(self, *, failed: bool = False) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        super().cleanup(failed=failed)


# ------------------------------------------------------------------------ storescp


class StoreSCP(_ManagedProcess):
    """DCMTK ``storescp`` writing every received instance into :attr:`output_dir`.

    It is started with ``+xa`` (accept all transfer syntaxes DCMTK knows), ``-pm``
    (promiscuous: accept unknown storage SOP classes too), ``-dhl`` (no reverse DNS
    lookups) and ``-od``. With ``fork=True`` (``--fork``) each association is served by
    its own child process, so parallel associations are handled in parallel; in the
    default single-process mode they are served one after the other.
    """

    name = "storescp"
    log_name = "storescp.log"

    def __init__(
        self,
        aet: str = "STORESCP",
        *,
        port: int | None = None,
        output_dir: StrPath | None = None,
        fork: bool = False,
        extra_args: Sequence[str] = (),
        workdir: StrPath | None = None,
        env: Mapping[str, str] | None = None,
        executable: StrPath = STORESCP,
        startup_timeout: float = 15.0,
        stop_timeout: float = 10.0,
        keep: bool = False,
    ) -> None:
        """Prepare (but do not start) a storescp.

        Args:
            aet: the AE title it answers to.
            port: listening port; a free one by default.
            output_dir: where received files go; ``<workdir>/received`` by default.
            fork: serve each association in a forked child (``--fork``).
            extra_args: more storescp options, placed before the port.
            workdir: use this directory instead of a fresh temporary one (never deleted).
            env: extra environment variables (``TCP_NODELAY=1`` is always set).
            executable: the storescp binary.
            startup_timeout: seconds to wait for the port to accept connections.
            stop_timeout: seconds to wait after SIGTERM before SIGKILL.
            keep: keep the temporary directory even on success.
        """
        super().__init__(
            workdir=workdir, env=env, startup_timeout=startup_timeout, stop_timeout=stop_timeout, keep=keep
        )
        self.aet = aet
        self.port = port if port is not None else free_port()
        self.output_dir = Path(output_dir) if output_dir is not None else self.workdir / "received"
        self.fork = fork
        self.extra_args = list(extra_args)
        self.executable = Path(executable)

    @property
    def dicom_port(self) -> int:
        """Alias of :attr:`port`, for symmetry with the other servers."""
        return self.port

    def _command(self) -> list[str]:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        command = [str(self.executable), "-aet", self.aet, "+xa", "-pm", "-dhl", "-od", str(self.output_dir)]
        if self.fork:
            command.append("--fork")
        command += [*self.extra_args, str(self.port)]
        return command

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        wait_for_port(LOOPBACK, self.port, max(0.1, deadline - time.monotonic()), process=process)
        # The port answering is not proof that *this* storescp got it: ask it for a C-ECHO.
        while not echo(LOOPBACK, self.port, self.aet, timeout=2, env=self.env):
            if process.poll() is not None:
                raise PeerError(f"storescp exited with {process.returncode}")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no C-ECHO answer on port {self.port}")
            time.sleep(0.05)
        if process.poll() is not None:
            raise PeerError(f"storescp exited with {process.returncode}")

    def file_count(self) -> int:
        """Number of files received so far."""
        return file_count(self.output_dir)

    def stored_bytes(self) -> int:
        """Apparent size of all files received so far."""
        return tree_size(self.output_dir)


# ------------------------------------------------------------------------- senders


def storescu_command(
    files_or_dir: StrPath | Iterable[StrPath],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "BENCH",
    *,
    extra_args: Sequence[str] = (),
    executable: StrPath = STORESCU,
) -> list[str]:
    """Build a DCMTK ``storescu`` command line.

    Directories among the inputs are scanned recursively (``+sd +r``). Options in
    ``extra_args`` go before the peer address (e.g. ``["-R"]``, ``["-xs"]``, ``["-v"]``).
    """
    paths = _as_paths(files_or_dir)
    command = [str(executable), "-aet", calling_aet, "-aec", called_aet]
    if any(p.is_dir() for p in paths):
        command += ["+sd", "+r"]
    command += [*extra_args, host, str(port), *(str(p) for p in paths)]
    return command


def dcmsend_command(
    files_or_dir: StrPath | Iterable[StrPath],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "BENCH",
    *,
    extra_args: Sequence[str] = (),
    executable: StrPath = DCMSEND,
) -> list[str]:
    """Build a DCMTK ``dcmsend`` command line: the same options as storescu's."""
    return storescu_command(
        files_or_dir, host, port, called_aet, calling_aet, extra_args=extra_args, executable=executable
    )


def echo(
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "BENCH",
    *,
    timeout: int = 5,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Send one C-ECHO with DCMTK ``/usr/bin/echoscu``; True if the peer answered success."""
    command = [
        str(ECHOSCU), "-aet", calling_aet, "-aec", called_aet,
        "-to", str(timeout), "-ta", str(timeout), "-td", str(timeout), host, str(port),
    ]
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, env=peer_env(env), timeout=timeout * 3 + 5
        )
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0


def _run_sender(command: list[str], env: Mapping[str, str] | None, timeout: float, check: bool) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        errors="replace",
        env=peer_env(env),
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise PeerError(
            f"{Path(command[0]).name} exited with {result.returncode}\n"
            f"$ {' '.join(command[:12])}{' ...' if len(command) > 12 else ''}\n"
            f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
        )
    return result


def run_storescu(
    files_or_dir: StrPath | Iterable[StrPath],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "BENCH",
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Send files (or directories, scanned recursively) with DCMTK ``/usr/bin/storescu``.

    All inputs go over one association (storescu opens another only if it runs out of
    presentation contexts). Output is captured as text.

    Args:
        files_or_dir: a file, a directory, or several of them.
        host: peer address (use :data:`LOOPBACK`).
        port: peer DICOM port.
        called_aet: the peer's AE title (``-aec``).
        calling_aet: our AE title (``-aet``).
        extra_args: more storescu options, placed before the peer address.
        env: extra environment variables (``TCP_NODELAY=1`` is always set).
        timeout: seconds before the process is killed (``subprocess.TimeoutExpired``).
        check: raise :class:`PeerError` (with the output) on a non-zero exit status.
    """
    command = storescu_command(files_or_dir, host, port, called_aet, calling_aet, extra_args=extra_args)
    return _run_sender(command, env, timeout, check)


def run_dcmsend(
    files_or_dir: StrPath | Iterable[StrPath],
    host: str,
    port: int,
    called_aet: str,
    calling_aet: str = "BENCH",
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Send files or directories with DCMTK ``/usr/bin/dcmsend``; see :func:`run_storescu`.

    Unlike storescu, dcmsend proposes only the presentation contexts the files need and
    decompresses lossless input when the peer does not accept it.
    """
    command = dcmsend_command(files_or_dir, host, port, called_aet, calling_aet, extra_args=extra_args)
    return _run_sender(command, env, timeout, check)


# ------------------------------------------------------------------------ filmless


class FilmlessStats(TypedDict):
    """The JSON object printed by ``filmless stats --data DIR --json``."""

    patients: int
    studies: int
    series: int
    instances: int
    received_bytes: int
    stored_bytes: int
    pending_compression: int


def filmless_command() -> list[str]:
    """How to run the ``filmless`` CLI: the venv's console script, else ``python -m filmless.cli``."""
    script = Path(sys.prefix) / "bin" / "filmless"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "filmless.cli"]


class FilmlessServer(_ManagedProcess):
    """``filmless serve`` on loopback, with its data directory and log.

    Layout of :attr:`workdir`: ``data/`` (``--data``, unless ``data_dir`` is given) and
    ``filmless.log`` (stdout and stderr). Ready means ``GET /healthz`` answered 200 and the
    DICOM port accepts TCP connections.

    :meth:`start` may be called again after :meth:`kill` or :meth:`stop` to restart on
    the same data directory and ports (crash-recovery tests).
    """

    name = "filmless"
    log_name = "filmless.log"

    def __init__(
        self,
        ae_title: str = "FILMLESS",
        *,
        data_dir: StrPath | None = None,
        dicom_port: int | None = None,
        http_port: int | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        workdir: StrPath | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        keep: bool = False,
    ) -> None:
        """Prepare (but do not start) a filmless server.

        Args:
            ae_title: ``--ae-title``.
            data_dir: ``--data``; ``<workdir>/data`` by default. A given directory is never deleted.
            dicom_port: ``--dicom-port``; a free one by default.
            http_port: ``--http-port``; a free one by default.
            extra_args: appended to ``filmless serve ...``.
            env: extra environment variables (e.g. ``FILMLESS_*`` settings).
            command: the CLI prefix; :func:`filmless_command` by default.
            workdir: use this directory instead of a fresh temporary one (never deleted).
            startup_timeout: seconds to wait for readiness.
            stop_timeout: seconds to wait after SIGTERM before SIGKILL.
            keep: keep the temporary directory even on success.
        """
        super().__init__(
            workdir=workdir, env=env, startup_timeout=startup_timeout, stop_timeout=stop_timeout, keep=keep
        )
        self.aet = ae_title
        self.data_dir = Path(data_dir) if data_dir is not None else self.workdir / "data"
        self.dicom_port = dicom_port if dicom_port is not None else free_port()
        self.http_port = http_port if http_port is not None else free_port()
        self.extra_args = list(extra_args)
        self.cli: list[str] = list(command) if command is not None else filmless_command()
        if self.cli[1:3] == ["-m", "filmless.cli"]:
            # Not installed as a console script: make the checkout importable.
            path = self.env.get("PYTHONPATH")
            self.env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.base_url = f"http://{LOOPBACK}:{self.http_port}"

    @property
    def ae_title(self) -> str:
        """Alias of :attr:`aet`."""
        return self.aet

    def _cwd(self) -> Path | None:
        return REPO_ROOT if self.cli[1:3] == ["-m", "filmless.cli"] else self.workdir

    def _command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            *self.cli,
            "serve",
            "--data",
            str(self.data_dir),
            "--dicom-port",
            str(self.dicom_port),
            "--http-port",
            str(self.http_port),
            "--ae-title",
            self.aet,
            *self.extra_args,
        ]

    def _wait_ready(self, process: subprocess.Popen[bytes], deadline: float) -> None:
        with httpx.Client(base_url=self.base_url, timeout=1.0, trust_env=False) as client:
            while True:
                if process.poll() is not None:
                    raise PeerError(f"filmless serve exited with {process.returncode}")
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() >= deadline:
                    raise TimeoutError("GET /healthz did not answer 200")
                time.sleep(0.05)
        wait_for_port(LOOPBACK, self.dicom_port, max(0.1, deadline - time.monotonic()), process=process)

    def http(self, timeout: float = 30.0) -> httpx.Client:
        """A new HTTP client for this server's API (the caller closes it)."""
        return httpx.Client(base_url=self.base_url, timeout=timeout, trust_env=False)

    def stats(self, timeout: float = 60.0) -> FilmlessStats:
        """Run ``filmless stats --data DIR --json`` and return its decoded output.

        Raises:
            PeerError: the command failed or printed something that is not a JSON object.
        """
        command = [*self.cli, "stats", "--data", str(self.data_dir), "--json"]
        result = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            env=self.env,
            cwd=self._cwd(),
            timeout=timeout,
        )
        if result.returncode != 0:
            raise PeerError(
                f"filmless stats exited with {result.returncode}\nstdout:\n{result.stdout[-2000:]}\n"
                f"stderr:\n{result.stderr[-4000:]}"
            )
        try:
            stats = json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise PeerError(f"filmless stats printed no JSON: {result.stdout[-2000:]!r}") from exc
        if not isinstance(stats, dict):
            raise PeerError(f"filmless stats printed {type(stats).__name__}, not an object")
        return stats  # type: ignore[return-value]

    def wait_compressed(self, timeout: float = 600.0, interval: float = 0.2) -> FilmlessStats:
        """Poll :meth:`stats` until ``pending_compression`` is 0; return the last stats.

        Resolution is bounded by how long one ``filmless stats`` run takes (a Python start-up).

        Raises:
            TimeoutError: still pending after ``timeout`` seconds.
            PeerError: the server died while waiting.
        """
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if int(stats["pending_compression"]) == 0:
                return stats
            if self.process is not None and self.process.poll() is not None:
                raise PeerError(f"filmless serve exited with {self.process.returncode} while compressing")
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{stats['pending_compression']} instances still pending compression after {timeout:.0f} s"
                )
            time.sleep(interval)
