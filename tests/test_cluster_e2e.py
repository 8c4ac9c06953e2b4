"""``cluster/onprem.yaml`` for real: ``ray up``, ``ray submit tune.py``, ``ray down`` over SSH to this host.

The "machine" is an sshd of the test's own on 127.0.0.1 (own port, host key, client key, config,
authorized keys). Its sessions get a home and a Ray temp dir of their own (sshd ``SetEnv``), so
nothing in the user's ``~`` or in ``/tmp/ray`` is read or written. Where the kernel allows it the
sshd runs in a PID namespace of its own: the ``ray stop`` that ``ray down`` (and the head's start
commands) run then sees, and kills, this cluster's processes only; without one, the test runs only
while no other Ray runs on the machine, because ``ray stop`` kills every Ray process it can see.
Whatever happens, the teardown kills everything the test started.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ONPREM = REPO / "cluster" / "onprem.yaml"
BIN = Path(sys.executable).parent  # the interpreter with ray and this project; its `ray` CLI too
SSHD = "/usr/sbin/sshd"
NEEDS = {SSHD: "openssh-server", "rsync": "rsync", "nc": "netcat-openbsd"}  # nc: the SSH port, see _overlay
RAY_UP_S, RAY_SUBMIT_S, RAY_DOWN_S = 180, 300, 120


def _missing() -> list[str]:
    return sorted({pkg for exe, pkg in NEEDS.items() if not (os.access(exe, os.X_OK) or shutil.which(exe))})


def _install_tools() -> None:
    """openssh-server, rsync and nc from apt when missing; skips only where apt cannot be used."""
    missing = _missing()
    if not missing:
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"needs {', '.join(missing)} and apt-get (as root) is not available to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=120",
               *missing]
    if subprocess.run(install, env=env, capture_output=True, check=False, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-q", "-o", "DPkg::Lock::Timeout=120"], env=env,
                       capture_output=True, timeout=600, check=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True, check=False, timeout=600)
        assert done.returncode == 0, f"apt-get install {' '.join(missing)} failed:\n{done.stderr[-3000:]}"
    assert not _missing(), f"still missing after apt-get install: {_missing()}"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _pid_namespaces_work() -> bool:
    try:
        probe = ["unshare", "--pid", "--fork", "--mount-proc", "true"]
        return subprocess.run(probe, capture_output=True, check=False, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


@dataclass(frozen=True)
class Proc:
    """A process as /proc shows it (Linux only, like sshd and apt)."""

    pid: int
    ppid: int
    name: str
    cmdline: str
    pidns: str


def _processes() -> list[Proc]:
    procs = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            name, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
            ppid = int(rest.split()[1])  # after the name: state, ppid, ...
            procs.append(Proc(int(entry.name), ppid, name, cmd, os.readlink(entry / "ns" / "pid")))
        except (OSError, ValueError):  # gone meanwhile
            pass
    return procs


def _kill(procs: list[Proc], timeout: float = 10) -> None:
    for proc in procs:
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{p.pid}").exists() for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)  # a zombie (reaped by its parent later) still shows; it holds nothing


@dataclass
class Node:
    """This machine as a cluster node: an sshd of the test's own and what its sessions see."""

    root: Path  # short (Unix socket paths of Ray live under it): /tmp/fe2e<random>
    home: Path  # HOME of the SSH sessions
    ray_tmp: Path  # RAY_TMPDIR of the SSH sessions: Ray's sessions are under <ray_tmp>/ray
    key: Path  # the client's private key
    port: int
    sshd: subprocess.Popen
    pidns: str | None  # the sshd's PID namespace (e.g. "pid:[4026532301]"), None without one

    def ray_processes(self) -> list[Proc]:
        """The processes of this node's Ray: everything in its namespace but sshd, and anything
        whose command line names its Ray temp dir."""
        marker = f"{self.ray_tmp}/"
        return [p for p in _processes()
                if (p.pidns == self.pidns and not p.name.startswith("sshd")) or marker in p.cmdline]

    def ssh_clients(self) -> list[Proc]:
        """The launcher's ssh processes (ControlMaster connections outlive `ray` commands by 10 s)."""
        proxy = f"nc 127.0.0.1 {self.port}"  # the ProxyCommand an ssh runs
        return [p for p in _processes()
                if (p.name in ("ssh", "rsync") and str(self.root) in p.cmdline) or p.cmdline == proxy]


def _start_sshd(root: Path, home: Path, ray_tmp: Path, in_namespace: bool, started: list) -> int:
    """Starts the node's sshd (appended to `started` at once, for the teardown); returns its port."""
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"fsrf-e2e-{name}", "-f",
                        str(root / name)], check=True, timeout=30)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = _free_port()
    config = root / "sshd_config"
    config.write_text(
        "\n".join([
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {root / 'host_key'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}",
            f"PidFile {root / 'sshd.pid'}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",  # the keys live under /tmp
            f"AllowUsers {_user()}",
            "MaxSessions 50",
            "MaxStartups 50",
            # the node's own home and Ray temp dir (a machine of its own; the user's ~ stays untouched)
            f"SetEnv HOME={home} RAY_TMPDIR={ray_tmp}",
        ]) + "\n"
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir, as Debian's service makes
    check = subprocess.run([SSHD, "-t", "-f", str(config)], capture_output=True, text=True, check=False, timeout=30)
    assert check.returncode == 0, f"sshd -t: {check.stderr}"
    cmd = [SSHD, "-D", "-f", str(config), "-E", str(root / "sshd.log")]
    if in_namespace:  # sshd is the namespace's init: killing it kills everything inside
        cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", *cmd]
    with open(root / "sshd.out", "w") as out:  # unshare's own complaints when killed end up here
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    started.append(proc)
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, f"sshd exited: {(root / 'sshd.log').read_text(errors='replace')[-2000:]}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return port
        except OSError:
            assert time.monotonic() < deadline, "sshd is not listening after 15 s"
            time.sleep(0.1)


@pytest.fixture()
def node() -> Iterator[Node]:
    _install_tools()
    in_namespace = _pid_namespaces_work()
    root = Path(tempfile.mkdtemp(prefix="fe2e", dir="/tmp"))
    home, ray_tmp = root / "home", root / "n"
    home.mkdir()
    ray_tmp.mkdir()
    started: list[subprocess.Popen] = []
    node = None
    try:
        port = _start_sshd(root, home, ray_tmp, in_namespace, started)
        pidns = None
        if in_namespace:  # the namespace of unshare's child, the sshd listening by now
            pidns = next(p.pidns for p in _processes() if p.ppid == started[0].pid)
            assert pidns != os.readlink("/proc/self/ns/pid")
        node = Node(root=root, home=home, ray_tmp=ray_tmp, key=root / "client_key", port=port,
                    sshd=started[0], pidns=pidns)
        yield node
    finally:
        if node is not None:
            _kill(node.ray_processes())  # with a namespace, only strays: killing its init below ends the rest
        for sshd in started:
            _kill([p for p in _processes() if p.ppid == sshd.pid])  # the namespace's init (sshd), if any
            sshd.kill()
            sshd.wait(timeout=30)
        if node is not None:
            _kill(node.ssh_clients())
        shutil.rmtree(root, ignore_errors=True)


def _ray_stop_would_hit() -> list[str]:
    """Ray processes on this machine, matched the way `ray stop` matches them."""
    from ray.autoscaler._private.constants import RAY_PROCESSES

    return [f"{p.pid} {p.cmdline[:80]}" for p in _processes()
            if any(key in (p.name if by_name else p.cmdline) for key, by_name in RAY_PROCESSES)]


def _overlay(node: Node, cluster_name: str) -> dict:
    """cluster/onprem.yaml, pointed at this machine; each change says why."""
    config = yaml.safe_load(ONPREM.read_text())
    gcs_port, client_port = _free_port(""), _free_port("")  # not 6379/10001: other Rays may run here
    config["cluster_name"] = cluster_name  # unique: names the launcher's state and SSH control path
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"].update(
        ssh_user=_user(),
        ssh_private_key=str(node.key),
        # Ray 2.60's SSH runner has no port option (SSHOptions: key, control path, ProxyCommand only)
        ssh_proxy_command=f"nc %h {node.port}",
    )
    # file_mounts as they are: "." is this repository (ray up runs from its root) and ~/.ray/auth_token
    # is the launcher's token (the launcher's HOME is a temp dir holding a token generated for the test)
    assert set(config["file_mounts"]) == {"~/fsrf-tune", "~/.ray/auth_token"}
    # no venv and no pip: the login shell's python is this interpreter, importing the mounted copy
    # of the project (as `pip install -e ~/fsrf-tune` does on a real node)
    exports = (f'export PATH="{BIN}:$PATH" PYTHONPATH="$HOME/fsrf-tune" RAY_USAGE_STATS_ENABLED=0'
               # pip --user installs keep working with the node's own HOME
               f' PYTHONUSERBASE="{_user_base()}"')
    config["setup_commands"] = [f"grep -qs fsrf-e2e ~/.bashrc || echo '{exports}  # fsrf-e2e' >> ~/.bashrc"]

    def here(cmd: str) -> str:
        out = cmd.replace("~/fsrf-venv/bin/ray", "ray").replace(":6379", f":{gcs_port}")
        return out.replace("--port=6379", f"--port={gcs_port} --ray-client-server-port={client_port}")

    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        config[key] = [here(c) for c in config[key]]
        assert all("fsrf-venv" not in c and "6379" not in c for c in config[key]), config[key]
    head = " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    return config


def _control_path(cluster_name: str) -> Path:
    """Where Ray's SSH runner keeps this cluster's ControlMaster sockets (SSHCommandRunner)."""
    user, cluster = (hashlib.sha256(s.encode()).hexdigest()[:10] for s in (_user(), cluster_name))
    return Path(f"/tmp/ray_ssh_{user}/{cluster}")


def _user_base() -> str:
    import site

    return site.getuserbase()


def _ray(args: list[str], *, env: dict, log: Path, timeout: float, teardown: bool = False) -> tuple[int, str]:
    """One `ray` CLI command from the repository root, output to `log`; its process group dies on timeout."""
    with open(log, "w") as out:
        proc = subprocess.Popen([str(BIN / "ray"), *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc = -9
    text = log.read_text(errors="replace")
    if rc == -9 and not teardown:
        pytest.fail(f"ray {args[0]} did not finish in {timeout} s; its output ends:\n{text[-4000:]}")
    return rc, text


@pytest.mark.cluster
def test_ray_up_submit_down_on_this_machine(node: Node, tmp_path: Path) -> None:
    from tuning.store import read_trials

    if node.pidns is None and (others := _ray_stop_would_hit()):
        pytest.skip("no PID namespace for the node (unshare --pid refused) and other Ray processes run here: "
                    f"the `ray stop` of `ray down` would kill them ({others[0]}, ...)")
    launcher = tmp_path / "launcher"  # the machine `ray up` runs on: its HOME holds its token
    launcher.mkdir()
    env = {**os.environ, "HOME": str(launcher), "TMPDIR": str(node.root), "RAY_TMPDIR": str(node.root),
           "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
           "PYTHONUSERBASE": _user_base()}
    env.pop("RAY_ADDRESS", None)
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, capture_output=True,
                   check=True, timeout=60)
    assert (launcher / ".ray" / "auth_token").is_file()

    overlay = tmp_path / "onprem-local.yaml"
    cluster_name = f"fsrf-e2e-{uuid.uuid4().hex[:8]}"
    overlay.write_text(yaml.safe_dump(_overlay(node, cluster_name), sort_keys=False))
    results = tmp_path / "results"
    started, downed = time.monotonic(), False
    try:
        rc, out = _ray(["up", "-y", "--no-config-cache", str(overlay)], env=env, log=tmp_path / "up.log",
                       timeout=RAY_UP_S)
        assert rc == 0, f"ray up failed ({rc}):\n{out[-4000:]}"
        names = {p.name for p in node.ray_processes()}
        assert {"gcs_server", "raylet"} <= names, f"no Ray head on the node after ray up: {names}"
        assert (node.home / "fsrf-tune" / "tuning" / "_run.py").is_file(), "the repository was not mounted"
        token = (launcher / ".ray" / "auth_token").read_text()
        assert (node.home / ".ray" / "auth_token").read_text() == token, "the token was not mounted"

        rc, out = _ray(["submit", "--no-config-cache", str(overlay), "tune.py", "--", "--smoke-test",
                        "--storage", str(results), "--name", "e2e"],
                       env=env, log=tmp_path / "submit.log", timeout=RAY_SUBMIT_S)
        assert rc == 0, f"ray submit tune.py failed ({rc}):\n{out[-6000:]}"
        # the search joined the cluster of `ray up` instead of starting a Ray of its own
        sessions = sorted(p.name for p in (node.ray_tmp / "ray").glob("session_2*"))
        assert len(sessions) == 1, f"tune.py started a Ray of its own next to the cluster's: {sessions}"
        drivers = list((node.ray_tmp / "ray" / sessions[0] / "logs").glob("python-core-driver-*"))
        assert drivers, "no driver ever connected to the cluster"
        trials = read_trials(results / "e2e")
        assert trials.num_rows == 4, trials.to_pylist()
        assert set(trials.column("status").to_pylist()) <= {"COMPLETE", "PRUNED"}, trials.to_pylist()

        rc, out = _ray(["down", "-y", str(overlay)], env=env, log=tmp_path / "down.log", timeout=RAY_DOWN_S)
        downed = True
        assert rc == 0, f"ray down failed ({rc}):\n{out[-4000:]}"
        deadline = time.monotonic() + 20
        while (left := node.ray_processes()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"Ray processes of the cluster outlived ray down: {[p.cmdline[:100] for p in left]}"
    finally:
        if not downed:
            _ray(["down", "-y", str(overlay)], env=env, log=tmp_path / "down-teardown.log",
                 timeout=RAY_DOWN_S, teardown=True)
        _kill(node.ssh_clients())
        shutil.rmtree(_control_path(cluster_name), ignore_errors=True)
        print(f"cluster e2e: {time.monotonic() - started:.0f} s from ray up to ray down")
