"""Run `python -m rpo.<stage> ...` without paying torch's and transformers' imports in every job.

    python -m rpo.launch -m rpo.train key=value ...
    RPO_FORK_SERVER=1 python -m rpo.train key=value ...  (the same: rpo/__init__.py hands the job over; the
                                                         rules set it where config fork_server is true)

Why: at the embedded scale a job computes for a few seconds, and importing torch + transformers costs
~4 s of each (issue 14 measured 146 jobs in 18 min). The first job starts a server that imports them
once and waits on a UNIX socket. Each job then sends its module, arguments, working directory,
environment, umask and its stdin/stdout/stderr (the descriptors themselves); the server forks; the
child takes all of that over and runs the module as `python -m` would; the job exits with the child's
status. Written here because nothing in the standard library or our dependencies serves `python -m`
jobs (multiprocessing's forkserver serves one parent's Pool, not independent commands).

Safety, by construction:
- A server serves only jobs of its own interpreter, working directory, environment and rpo source
  files (the socket's name hashes them), so no job runs code or import-time settings (HF_HUB_OFFLINE,
  ...) other than its own. Editing any rpo/*.py starts a new server.
- The server never runs a torch operation or touches a GPU: children initialise OpenMP and CUDA.
- A job killed (SIGTERM, SIGINT) takes its child with it; a job that vanishes (SIGKILL) is noticed by
  the server, which then stops the child. The server exits after IDLE_SECONDS without a job.
- Snakemake's benchmark files time a job correctly (the wall clock), but their memory and CPU columns
  are the waiting client's: set fork_server: false to measure those.
"""
from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import os
import runpy
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

# RPO_FORK_IDLE / RPO_FORK_PRELOAD (comma-separated modules) override these: tests start light servers
IDLE_SECONDS = float(os.environ.get("RPO_FORK_IDLE", 120))
PRELOAD = tuple(filter(None, os.environ.get("RPO_FORK_PRELOAD", "torch,transformers,rpo.train,rpo.generate,"
                                                                 "rpo.refcache,rpo.report.__main__").split(",")))
# the stages whose jobs go through the server (rpo/__init__.py); not the cheap ones (judge, data, alpacaeval),
# nor rpo.rehearsal, which starts Snakemake itself
STAGES = ("rpo.train", "rpo.generate", "rpo.refcache", "rpo.report", "rpo.models", "rpo.embed")
VOLATILE_ENV = ("PWD", "OLDPWD", "SHLVL", "_")  # differ between shells, read by no import
_HEADER = struct.Struct("!I")


def server_key() -> str:
    """What a server must share with a job: interpreter, cwd, environment, and every rpo source file."""
    root = Path(__file__).resolve().parent
    sources = sorted((str(p.relative_to(root)), p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*.py"))
    env = sorted((k, v) for k, v in os.environ.items() if k not in VOLATILE_ENV)
    blob = json.dumps([sys.executable, sys.version, os.getcwd(), env, sources, sys.path[1:]])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def socket_path(key: str) -> Path:
    folder = Path(tempfile.gettempdir()) / f"rpo-launch-{os.getuid()}"
    if len(str(folder)) > 70:  # a UNIX socket's path must stay under 108 bytes
        folder = Path("/tmp") / f"rpo-launch-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ServerUnavailable(f"cannot create {folder}: {exc.strerror}") from exc
    return folder / f"{key}.sock"


def _send(conn: socket.socket, obj, fds=()) -> None:
    data = json.dumps(obj).encode()
    socket.send_fds(conn, [_HEADER.pack(len(data)) + data], list(fds)) if fds else conn.sendall(
        _HEADER.pack(len(data)) + data)


def _recv_request(conn: socket.socket):
    """The job's one request and the 3 descriptors sent with it (None when the job went away)."""
    first, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
    if len(first) < _HEADER.size:
        return None, fds
    size, data = _HEADER.unpack(first[:_HEADER.size])[0], first[_HEADER.size:]
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None, fds
        data += chunk
    return json.loads(data), fds


def _read(reader):
    """The next message from the server (None at the end of the stream)."""
    header = reader.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    data = reader.read(_HEADER.unpack(header)[0])
    return json.loads(data)


# -- the job's side ---------------------------------------------------------------------------------
class ServerUnavailable(RuntimeError):
    """No server answers and none could be started: the job has not been handed over."""


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        return conn
    except OSError:
        conn.close()
        return None


def _server(path: Path) -> socket.socket:
    """A connection to the server of `path`, starting it (once, under a lock) if none answers."""
    conn = _connect(path)
    if conn is not None:
        return conn
    try:
        lock = open(path.with_suffix(".lock"), "w")
    except OSError as exc:
        raise ServerUnavailable(f"cannot create {path.with_suffix('.lock')}: {exc.strerror}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect(path)
        if conn is None:
            path.unlink(missing_ok=True)
            with open(path.with_suffix(".log"), "ab") as log:
                subprocess.Popen([sys.executable, "-m", "rpo.launch", "--serve", str(path)], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log, start_new_session=True)
            deadline = time.monotonic() + 120
            while conn is None and time.monotonic() < deadline:
                time.sleep(0.05)
                conn = _connect(path)
            if conn is None:
                raise ServerUnavailable(f"the fork server did not start; see {path.with_suffix('.log')}")
    return conn


def run(module: str, argv: list[str]) -> int:
    """Run `python -m module argv` in a child of this environment's server; its exit status."""
    conn = _server(socket_path(server_key()))
    umask = os.umask(0)
    os.umask(umask)
    _send(conn, {"module": module, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "umask": umask},
          fds=(0, 1, 2))
    reader = conn.makefile("rb")
    reply = _read(reader)
    if reply is None:
        print("rpo.launch: the fork server refused the job; see its log beside the socket", file=sys.stderr)
        return 1
    child = reply["pid"]

    def forward(signum, _frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    status = _read(reader)
    if status is None:
        print("rpo.launch: the fork server went away before the job ended", file=sys.stderr)
        return 1
    return status["code"]


# -- the server's side ------------------------------------------------------------------------------
def _child(module: str, argv: list[str], request: dict, fds: list[int]) -> None:
    """In the forked child: become the job, run its module as __main__, exit with its status."""
    for target, fd in zip((0, 1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt, as in `python -m`
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"], RPO_FORK_CHILD="1")  # a stage it starts itself runs in it
    os.umask(request["umask"])
    sys.stdin = open(0, closefd=False)
    sys.stdout = open(1, "w", closefd=False, buffering=1 if os.isatty(1) else -1)
    sys.stderr = open(2, "w", closefd=False, buffering=1)
    code = 0
    # runpy notes that the preloaded module is already imported; `python -m` would run it all the same
    warnings.filterwarnings("ignore", message=".*found in sys.modules after import of package", category=RuntimeWarning)
    try:
        sys.argv = [module, *argv]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BaseException:  # what `python -m` would print
        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()  # what interpreter exit runs (the job's and the preloaded modules')
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass
    os._exit(code)  # not sys.exit: the server's own state (sockets, loop) must not unwind here


def serve(path: Path) -> None:
    import importlib

    for name in PRELOAD:  # the imports every job would otherwise pay; no torch operation runs here
        importlib.import_module(name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(64)
    jobs: dict[int, socket.socket] = {}  # child pid -> its job's connection
    idle_since = time.monotonic()
    while jobs or time.monotonic() - idle_since < IDLE_SECONDS:
        ready, _, _ = select.select([listener, *jobs.values()], [], [], 0.2)
        for conn in ready:
            if conn is listener:
                job, _ = listener.accept()
                request, fds = _recv_request(job)
                if request is None or len(fds) != 3:
                    job.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    listener.close()
                    for other in jobs.values():
                        other.close()
                    job.close()
                    _child(request["module"], request["argv"], request, fds)
                for fd in fds:
                    os.close(fd)
                jobs[pid] = job
                _send(job, {"pid": pid})
            else:  # a job's connection is readable only when the job is gone: stop its child
                pid = next(p for p, c in jobs.items() if c is conn)
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        while jobs:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            job = jobs.pop(pid, None)
            if job is not None:
                code = os.waitstatus_to_exitcode(status)
                try:
                    _send(job, {"code": code if code >= 0 else 128 - code})
                except OSError:
                    pass
                job.close()
            idle_since = time.monotonic()
    listener.close()
    for leftover in (path, path.with_suffix(".lock")):
        leftover.unlink(missing_ok=True)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        serve(Path(argv[1]))
        return 0
    if len(argv) < 2 or argv[0] != "-m":
        print("usage: python -m rpo.launch -m MODULE [ARGS...]", file=sys.stderr)
        return 2
    return run(argv[1], argv[2:])


if __name__ == "__main__":
    sys.exit(main())
