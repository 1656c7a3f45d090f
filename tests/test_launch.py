"""rpo.launch: a job run through the fork server is the job `python -m` would run (its output, exit
status, directory, environment, umask, arguments and stdin), servers are reused only by jobs of the
same interpreter, environment and rpo source, and a job killed takes its child with it."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = '''
import os, sys
print("argv", sys.argv[1:])
print("cwd", os.getcwd())
print("env", os.environ.get("PROBE_VALUE"))
print("umask", oct(os.umask(0)))
print("stdin", sys.stdin.read().strip())
print("parent", os.getppid())
print("error line", file=sys.stderr)
if "sleep" in sys.argv:
    import time
    open("started", "w").write(str(os.getpid()))
    time.sleep(60)
sys.exit(int(sys.argv[1]))
'''


@pytest.fixture
def probe(tmp_path):
    (tmp_path / "launch_probe.py").write_text(PROBE)
    sockets = Path(tempfile.mkdtemp(prefix="rl", dir="/tmp"))  # short: a socket path has < 108 bytes
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "RPO_FORK_PRELOAD": "json",
           "RPO_FORK_IDLE": "5", "PROBE_VALUE": "one", "TMPDIR": str(sockets)}
    yield tmp_path, env
    shutil.rmtree(sockets, ignore_errors=True)


def launch(tmp_path, env, *args, stdin="hello", cwd=None, umask=None):
    def preexec():
        if umask is not None:
            os.umask(umask)
    return subprocess.run([sys.executable, "-m", "rpo.launch", "-m", "launch_probe", *args], input=stdin,
                          capture_output=True, text=True, env=env, cwd=cwd or tmp_path, timeout=120,
                          preexec_fn=preexec)


def field(out, name):
    return next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith(name + " "))


def test_a_job_through_the_server_is_the_job_python_m_runs(probe):
    tmp_path, env = probe
    (tmp_path / "work").mkdir()
    first = launch(tmp_path, env, "3", "--flag", cwd=tmp_path / "work", umask=0o027)
    assert first.returncode == 3, first.stderr
    assert field(first.stdout, "argv") == "['3', '--flag']"
    assert field(first.stdout, "cwd") == str(tmp_path / "work")
    assert field(first.stdout, "env") == "one" and field(first.stdout, "stdin") == "hello"
    assert field(first.stdout, "umask") == "0o27"
    assert "error line" in first.stderr
    second = launch(tmp_path, env, "0", cwd=tmp_path / "work")
    assert second.returncode == 0
    assert field(second.stdout, "parent") == field(first.stdout, "parent")  # the same server forked both
    assert field(first.stdout, "parent") != str(os.getpid())


def test_another_environment_or_edited_source_gets_another_server(probe, tmp_path_factory):
    from rpo import launch as launcher

    tmp_path, env = probe
    base = launch(tmp_path, env, "0")
    other = launch(tmp_path, {**env, "PROBE_VALUE": "two"}, "0")
    assert field(other.stdout, "env") == "two"  # its own environment, from its own server
    assert field(other.stdout, "parent") != field(base.stdout, "parent")
    key = launcher.server_key()
    source = Path(launcher.__file__)
    stat = source.stat()
    try:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert launcher.server_key() != key  # an edited rpo file: a new server, never stale code
    finally:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert launcher.server_key() == key


def test_a_killed_job_takes_its_child_with_it(probe):
    tmp_path, env = probe
    job = subprocess.Popen([sys.executable, "-m", "rpo.launch", "-m", "launch_probe", "0", "sleep"],
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (tmp_path / "started").exists()
    job.send_signal(signal.SIGTERM)
    out, _ = job.communicate(timeout=30)
    assert job.returncode == 128 + signal.SIGTERM  # the child's status: killed by the forwarded signal
    child = int((tmp_path / "started").read_text())
    assert child != job.pid and not Path(f"/proc/{child}").exists()  # gone (and reaped by the server)


def test_without_a_server_a_stage_starts_in_its_own_process(probe, tmp_path):
    tmp_path, env = probe
    (Path(env["TMPDIR"]) / f"rpo-launch-{os.getuid()}").write_text("")  # a file where the socket folder goes
    result = subprocess.run([sys.executable, "-m", "rpo.models", "--help"], capture_output=True, text=True,
                            env={**env, "RPO_FORK_SERVER": "1"}, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and "usage" in result.stdout
    assert "running rpo.models in this process" in result.stderr


def test_stages_hand_over_when_the_switch_is_on(probe):
    """RPO_FORK_SERVER=1 python -m rpo.<stage> runs in a server's child (rpo/__init__.py): a server socket
    appears under TMPDIR; without the switch the stage runs in its own process and none does."""
    tmp_path, env = probe
    servers = Path(env["TMPDIR"]) / f"rpo-launch-{os.getuid()}"
    for switch in ("0", "1"):
        result = subprocess.run([sys.executable, "-m", "rpo.models", "--help"], capture_output=True, text=True,
                                env={**env, "RPO_FORK_SERVER": switch, "RPO_FORK_PRELOAD": "rpo.models"},
                                cwd=ROOT, timeout=120)
        assert result.returncode == 0 and "usage" in result.stdout, result.stderr
        assert bool(list(servers.glob("*.sock")) if servers.is_dir() else []) == (switch == "1")
