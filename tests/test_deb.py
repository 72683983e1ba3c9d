"""The Debian package, end to end: build, lint, install, run a node as the unit does, purge.

Builds the working tree (what ``git ls-files --cached --others --exclude-standard`` lists, so
uncommitted work is included) in a temp copy with ``dpkg-buildpackage`` under a Debian-only PATH,
installs the .deb with apt, checks the unit with ``systemd-analyze verify`` and the operator key
pair postinst made, runs the unit's ExecStartPre (the node's key) as root and starts a node with
the unit's own ExecStart line and Environment= defaults as the ``sdht`` user, joins it with the
operator key and writes and reads a key through it with the installed library under
/usr/bin/python3 (clean env, cwd outside the tree), checks that a node with no key and no operator
key refuses to start, then purges the package and checks that nothing is left. Needs root and
dpkg-buildpackage; takes about a minute.
"""
from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import ROOT, free_port, wait_for

DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_ENV = {"PATH": DEBIAN_PATH, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
UNIT = Path("/lib/systemd/system/sdht-storage@.service")
DIST = Path("/usr/lib/python3/dist-packages")
ETC = Path("/etc/sdht")
OPERATOR_KEY, OPERATOR_PUB = ETC / "operator.key", ETC / "operator.pub"
NODE_KEY_SCRIPT = Path("/usr/lib/sdht/node-key")

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="installs a .deb: needs root"),
    pytest.mark.skipif(shutil.which("dpkg-buildpackage", path=DEBIAN_PATH) is None,
                       reason="dpkg-buildpackage is not installed (see .ci/apt-packages)"),
]


def run(argv: list[str], timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run ``argv`` under the Debian-only environment; fail with its output if it fails."""
    kwargs.setdefault("env", DEBIAN_ENV)
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, **kwargs)
    assert proc.returncode == 0, f"{shlex.join(argv)} exited {proc.returncode}:\n{proc.stdout[-6000:]}"
    return proc


def installed() -> bool:
    proc = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", "sdht"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=DEBIAN_ENV)
    return proc.returncode == 0 and proc.stdout.strip() not in ("", "not-installed")


def user_exists(name: str) -> bool:
    return subprocess.run(["getent", "passwd", name], stdout=subprocess.DEVNULL).returncode == 0


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """Build the .deb from a copy of the working tree; return the directory holding it."""
    if installed():
        pytest.skip("sdht is already installed here; this test would purge it and its data")
    out = tmp_path_factory.mktemp("deb")
    src = out / "sdht"
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, stdout=subprocess.PIPE, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        path = ROOT / name
        if path.is_file():  # listed but deleted in the working tree: leave it out
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src)
    return out


@pytest.fixture(scope="module")
def deb(built: Path) -> Iterator[Path]:
    """Install the built package; purge it at teardown whatever the tests did."""
    (path,) = built.glob("sdht_*_all.deb")
    run(["apt-get", "install", "-y", "--no-install-recommends", f"./{path.name}"], cwd=built)
    yield path
    if installed():
        subprocess.run(["apt-get", "purge", "-y", "sdht"], env=DEBIAN_ENV,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)


def test_lintian_reports_no_errors(built: Path) -> None:
    if shutil.which("lintian", path=DEBIAN_PATH) is None:
        pytest.skip("lintian is not installed (see .ci/apt-packages)")
    (changes,) = built.glob("sdht_*.changes")
    proc = subprocess.run(["lintian", "--fail-on", "error", changes.name], cwd=built, env=DEBIAN_ENV,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    errors = [line for line in proc.stdout.splitlines() if line.startswith("E:")]
    assert proc.returncode == 0 and not errors, proc.stdout


def test_installs_library_commands_unit_user_and_conffile(deb: Path) -> None:
    for name in ("sdht-storage", "sdht"):
        assert Path("/usr/bin", name).read_text().splitlines()[0] == "#!/usr/bin/python3"
    assert (DIST / "sdht" / "__init__.py").is_file() and (DIST / "storage" / "app.py").is_file()
    assert UNIT.is_file()
    assert "/etc/default/sdht" in run(["dpkg-query", "-W", "-f", "${Conffiles}", "sdht"]).stdout
    passwd = run(["getent", "passwd", "sdht"]).stdout.strip().split(":")
    assert int(passwd[2]) < 1000 and passwd[6] in ("/usr/sbin/nologin", "/bin/false"), passwd
    # A template unit is never enabled by the package: no instance runs until an operator asks.
    assert not list(Path("/etc/systemd/system").glob("*.wants/sdht-storage@*"))


def test_unit_verifies_silently(deb: Path) -> None:
    # systemd-analyze verify exits 0 on unknown keys and only prints a warning: any output fails.
    for target in (str(UNIT), "sdht-storage@8000.service"):
        proc = subprocess.run(["systemd-analyze", "verify", target], cwd="/", env=DEBIAN_ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=60)
        assert proc.returncode == 0 and proc.stdout == "", f"{target}:\n{proc.stdout}"


def _instance(text: str, port: int, data_dir: Path) -> str:
    """``text`` from the unit, for instance ``port`` with its data in ``data_dir``."""
    return text.replace("/var/lib/sdht/%i", str(data_dir)).replace("%i", str(port))


def unit_environment(port: int, data_dir: Path) -> dict[str, str]:
    """The unit's Environment= defaults for instance ``port`` (/etc/default/sdht sets nothing)."""
    env: dict[str, str] = {}
    for line in re.findall(r"^Environment=(.+)$", UNIT.read_text(), re.M):
        env.update(item.split("=", 1) for item in shlex.split(_instance(line, port, data_dir)))
    return env


def unit_command(port: int, data_dir: Path, key: str = "ExecStart") -> list[str]:
    """The unit's ``key`` command line (one) for instance ``port``, with its default environment
    and ``data_dir``; an ExecStartPre must run as root ("+")."""
    (line,) = re.findall(rf"^{key}=(.+)$", UNIT.read_text(), re.M)
    if key == "ExecStartPre":
        assert line.startswith("+"), line
        line = line[1:]
    env = unit_environment(port, data_dir)
    argv = [re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], arg) for arg in shlex.split(line)]
    if key == "ExecStart":
        assert "/var/lib/sdht/%i" in argv, argv
    return [_instance(arg, port, data_dir) for arg in argv]


def unit_start_pre(port: int, data_dir: Path) -> subprocess.CompletedProcess:
    """Run the unit's ExecStartPre (the node's key) for instance ``port`` as root."""
    argv = unit_command(port, data_dir, "ExecStartPre")
    assert argv[0] == str(NODE_KEY_SCRIPT), argv
    return subprocess.run(argv, cwd="/", env={**DEBIAN_ENV, **unit_environment(port, data_dir)},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=60)


@pytest.fixture
def unit_top() -> Iterator[Path]:
    """A directory for nodes' data, owned by the sdht user; removed afterwards."""
    top = Path(tempfile.mkdtemp(prefix="sdht-deb-"))
    shutil.chown(top, "sdht", "sdht")  # mkdtemp makes it 0700: the sdht user's alone
    yield top
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def unit_node(deb: Path, unit_top: Path, tmp_path: Path) -> Iterator[int]:
    """A node started as the unit does: its ExecStartPre as root, then its command line with its
    Environment= defaults, as the sdht user, from / with an otherwise clean env."""
    port = free_port()
    data_dir = unit_top / str(port)
    pre = unit_start_pre(port, data_dir)
    assert pre.returncode == 0, pre.stdout
    assert "derived the key of node" in pre.stdout, pre.stdout
    log = open(tmp_path / "node.log", "wb")  # opened here: kept by pytest, written via the fd
    argv = unit_command(port, data_dir)
    assert argv[0] == "/usr/bin/sdht-storage"
    proc = subprocess.Popen(
        ["setpriv", "--reuid=sdht", "--regid=sdht", "--init-groups", "--no-new-privs", "--", *argv],
        cwd="/", env={**DEBIAN_ENV, "HOME": "/var/lib/sdht", **unit_environment(port, data_dir)},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"node exited {proc.returncode}; see {log.name}")
        try:
            return requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_for(healthy, 30, what=f"the packaged node on port {port}")
        yield port
    finally:
        if proc.poll() is None:  # setpriv execs: proc.pid is the gunicorn master, its group the node
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        proc.wait(10)
        log.close()


CLIENT = textwrap.dedent("""
    import sys
    import requests
    import sdht
    from sdht.pow import mint
    from sdht.kinds.register import from_packed
    from sdht.params import DEFAULTS as DEFAULT_PARAMS

    assert sdht.__file__ == "/usr/lib/python3/dist-packages/sdht/__init__.py", sdht.__file__
    port = int(sys.argv[1])
    url = f"http://127.0.0.1:{port}/v1/record"
    rec = mint("raw", {"v": 1}, DEFAULT_PARAMS["min_work"])
    resp = requests.put(url, data=rec.pack(), timeout=10)
    assert resp.status_code == 201, (resp.status_code, resp.text)
    resp = requests.get(url, params={"key": "raw"}, timeout=10)
    assert resp.status_code == 200, (resp.status_code, resp.text)
    assert from_packed(resp.content, DEFAULT_PARAMS).value == {"v": 1}
    print("raw http ok")
    # The operator key is in SDHT_OPERATOR_KEY: the ring this client publishes is signed.
    ring = sdht.Ring()
    ring.join(sdht.Node("127.0.0.1", port))
    ring.set("k", {"v": 1})
    assert ring.get("k") == {"v": 1}
    print("ring ok")
""")


def test_install_makes_the_operator_key_pair(deb: Path) -> None:
    from sdht import trust  # the tree under test; the package's is checked by the node below
    key, pub = OPERATOR_KEY.stat(), OPERATOR_PUB.stat()
    assert (key.st_mode & 0o7777, key.st_uid, key.st_gid) == (0o600, 0, 0), oct(key.st_mode)
    assert (pub.st_mode & 0o7777, pub.st_uid, pub.st_gid) == (0o644, 0, 0), oct(pub.st_mode)
    assert OPERATOR_PUB.read_text().strip() == trust.public_of(OPERATOR_KEY.read_text().strip())
    for helper in (NODE_KEY_SCRIPT, NODE_KEY_SCRIPT.with_name("operator-key")):
        assert helper.stat().st_mode & 0o777 == 0o755, helper
    # Installing again (dpkg-reconfigure, upgrade) keeps the key pair.
    before = OPERATOR_KEY.read_text()
    run(["dpkg-reconfigure", "sdht"])
    assert OPERATOR_KEY.read_text() == before


def test_packaged_node_serves_the_installed_library(unit_node: int, unit_top: Path,
                                                    tmp_path: Path) -> None:
    from sdht import trust
    health = requests.get(f"http://127.0.0.1:{unit_node}/v1/health", timeout=5).json()
    assert health["mode"] == "signed rings", health
    node_key = unit_top / str(unit_node) / "node.key"  # the unit's default, in the test's data dir
    st = node_key.stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o600, pwd.getpwnam("sdht").pw_uid), oct(st.st_mode)
    operator = OPERATOR_KEY.read_text().strip()  # read by root, as the admin would
    assert node_key.read_text().strip() == trust.node_private_key(operator,
                                                                  f"127.0.0.1:{unit_node}")
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    # -I: isolated mode, no user site-packages, no PYTHON* variables, script dir not on sys.path.
    proc = run(["/usr/bin/python3", "-I", str(script), str(unit_node)], cwd="/", timeout=120,
               env={"PATH": DEBIAN_PATH, "LANG": "C.UTF-8", "SDHT_OPERATOR_KEY": operator})
    assert "raw http ok" in proc.stdout and "ring ok" in proc.stdout, proc.stdout
    health = requests.get(f"http://127.0.0.1:{unit_node}/v1/health", timeout=5).json()
    assert health["mode"] == "signed rings" and health["epoch"] >= 1, health


def test_packaged_node_answers_pipelined_requests(unit_node: int) -> None:
    """Debian's gunicorn 20.1 left a pipelined request in its buffer unanswered until the
    client gave up (storage.worker.Worker.finish_request)."""
    get = b"GET /v1/record?key=k%d HTTP/1.1\r\nHost: n\r\n\r\n"
    last = b"GET /v1/record?key=k HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n"
    got, deadline = b"", time.monotonic() + 10
    with socket.create_connection(("127.0.0.1", unit_node), timeout=10) as sock:
        sock.sendall(b"".join(get % i for i in range(99)) + last)
        while (part := sock.recv(1 << 16)) and time.monotonic() < deadline:
            got += part
    assert got.count(b"HTTP/1.1 404 ") == 100, got[-300:]


def test_node_without_keys_refuses_to_start(deb: Path, unit_top: Path) -> None:
    port = free_port()
    data_dir = unit_top / str(port)
    aside = OPERATOR_KEY.with_name("operator.key.test-aside")
    OPERATOR_KEY.rename(aside)   # a host of a multi-host cluster: no operator key
    try:
        proc = unit_start_pre(port, data_dir)
    finally:
        aside.rename(OPERATOR_KEY)
    assert proc.returncode != 0, proc.stdout
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and "refusing to start" in lines[0], proc.stdout
    assert "node.key" in lines[0] and str(OPERATOR_KEY) in lines[0], lines[0]
    assert not (data_dir / "node.key").exists()
    # Nor without the operator's public key, whatever keys the node has.
    (data_dir).mkdir()
    proc = subprocess.run([str(NODE_KEY_SCRIPT), str(port)], cwd="/", stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=60,
                          env={**DEBIAN_ENV, **unit_environment(port, data_dir),
                               "SDHT_OPERATOR_PUBKEY": ""})
    assert proc.returncode != 0 and len(proc.stdout.splitlines()) == 1, proc.stdout
    assert "SDHT_OPERATOR_PUBKEY" in proc.stdout, proc.stdout


def test_purge_leaves_nothing(deb: Path) -> None:
    # Last in this module: the earlier tests need the package installed.
    Path("/var/lib/sdht/8000").mkdir(parents=True, exist_ok=True)  # as a unit instance leaves it
    run(["apt-get", "remove", "-y", "sdht"])
    assert user_exists("sdht") and Path("/var/lib/sdht/8000").is_dir(), "remove must keep data"
    assert OPERATOR_KEY.is_file() and OPERATOR_PUB.is_file(), "remove must keep the keys"
    run(["apt-get", "purge", "-y", "sdht"])
    assert not installed()
    left = [p for p in (DIST / "sdht", DIST / "storage", Path("/usr/bin/sdht-storage"),
                        Path("/usr/bin/sdht"), UNIT, Path("/var/lib/sdht"), Path("/etc/default/sdht"),
                        NODE_KEY_SCRIPT.parent, ETC)
            if p.exists()]
    assert not left, left
    assert not user_exists("sdht")
    assert subprocess.run(["getent", "group", "sdht"], stdout=subprocess.DEVNULL).returncode != 0
