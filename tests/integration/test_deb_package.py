"""
The Debian package end to end, as root: `scripts/build-deb.sh` builds the .deb once for this
module, `apt-get install` puts it on this machine, the unit's own ExecStart (read from the
installed unit file and, since no systemd runs here, sandboxed by hand like the unit) serves
/healthz, /status, eBPF-captured spans, a pprof CPU profile and the SSH manhole from the installed
files, and `apt-get purge` removes everything again. The checkout and its .venv are never written to.
"""
import os
import shlex
import shutil
import signal
import subprocess

import pytest
import yaml

import telegen
from tests.support.agent_process import AgentProcess, free_port, merge, wait_for
from tests.support import http_apps as apps
from tests.support.debug_tools import AUTH, GO, TOKEN, Load, pprof_top
from tests.support.ssh_session import Session, keygen
from tests.support.otlp_files import read_spans

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIT = "/lib/systemd/system/telegen.service"
CONFFILE = "/etc/telegen/config.yaml"
VENV = "/opt/telegen/venv"
# What a systemd service gets: no variables from the test runner (no PYTHONPATH, no venv).
SERVICE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
INSTALLED = [VENV, "/usr/bin/telegen", UNIT, CONFFILE, "/etc/default/telegen", "/var/lib/telegen",
             "/usr/share/doc/telegen"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(os.geteuid() != 0, reason="installing a package needs root"),
    pytest.mark.skipif(shutil.which("dpkg-buildpackage") is None, reason="dpkg-dev is not installed"),
]


def run(*argv, **kwargs):
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)


def apt_get(*args):
    # Other engineers' bootstraps may hold the dpkg lock for a while: wait for it, do not fail.
    return run("apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", *args, timeout=900,
               env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def installed_version():
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status} ${Version}", "telegen"], capture_output=True, text=True)
    return result.stdout if result.returncode == 0 else ""


def checkout_state():
    """What building must not change: the checkout's files (git's view) and its .venv's telegen."""
    status = run("git", "status", "--porcelain", "--ignored", "--", "debian", "build", "dist", "telegen/_build.py", cwd=ROOT)
    return status.stdout, os.listdir(os.path.join(ROOT, ".venv", "bin"))


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    before = checkout_state()
    out = tmp_path_factory.mktemp("deb")
    result = subprocess.run(["bash", os.path.join(ROOT, "scripts", "build-deb.sh"), str(out)],
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr
    assert checkout_state() == before
    return result.stdout.split()[-1]


@pytest.fixture(scope="module")
def installed(deb):
    # A leftover install of the same version would make apt keep it instead of this build.
    if installed_version():
        apt_get("purge", "telegen")
    apt_get("install", deb)
    yield deb
    if installed_version():
        apt_get("purge", "telegen")


def unit_value(key):
    with open(UNIT) as f:
        values = [line.split("=", 1)[1].strip() for line in f if line.startswith(key + "=")]
    assert values, f"{UNIT} has no {key}="
    return values[-1]


# What ProtectSystem=full and ProtectHome=read-only make read-only, plus the venv itself (the
# DaemonSet's read-only root filesystem): the agent must run without writing to any of them.
READ_ONLY = ["/usr", "/boot", "/efi", "/etc", "/home", "/root", "/run/user", VENV]
SANDBOX = ("for d in \"$@\"; do [ \"$d\" = -- ] && break; if [ -d \"$d\" ]; then "
           "mount --rbind \"$d\" \"$d\" && mount -o remount,bind,ro \"$d\" || exit 97; fi; shift; done; "
           "shift; exec \"$@\"")


def sandboxed(argv):
    """
    argv as the unit would run it, as far as this machine allows without systemd: its capability
    bounding set and NoNewPrivileges (setpriv), and its read-only file system view (a private mount
    namespace). unshare and setpriv exec in place, so the agent keeps the PID Popen returns.
    """
    assert (unit_value("ProtectSystem"), unit_value("ProtectHome"), unit_value("NoNewPrivileges")) == \
        ("full", "read-only", "yes"), "the unit changed: update what this test emulates"
    caps = ",".join("+" + c.lower().removeprefix("cap_") for c in unit_value("CapabilityBoundingSet").split())
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", SANDBOX, "sandbox", *READ_ONLY, "--",
            "setpriv", f"--bounding-set=-all,{caps}", "--inh-caps=-all", "--no-new-privs", "--", *argv]


class InstalledAgent(AgentProcess):
    """The unit's ExecStart, run by hand and sandboxed like the unit: the installed conffile with a
    test port and data dir."""

    start_timeout = 60.0

    def __init__(self, tmp_path, config=None):
        super().__init__(tmp_path, config)
        self.cwd = tmp_path
        self.env = SERVICE_ENV

    def command(self):
        argv = shlex.split(unit_value("ExecStart"))
        argv[argv.index(CONFFILE)] = self.config_path
        return sandboxed(argv)


def test_the_deb_is_named_by_version_and_ships_no_plugin_cache(deb):
    arch = run("dpkg", "--print-architecture").stdout.strip()
    assert os.path.basename(deb) == f"telegen_{telegen.__version__}_{arch}.deb"
    assert run("dpkg-deb", "-f", deb, "Version").stdout.strip() == telegen.__version__
    listing = run("dpkg-deb", "-c", deb).stdout
    assert "dropin.cache" not in listing
    assert f".{VENV}/bin/twistd" in listing and "./lib/systemd/system/telegen.service" in listing


def test_install_gives_cli_conffile_state_dir_plugin_cache_and_a_valid_unit(installed):
    assert installed_version() == f"install ok installed {telegen.__version__}"
    version = run("/usr/bin/telegen", "version", env=SERVICE_ENV, cwd="/").stdout
    assert version.startswith(f"telegen {telegen.__version__} (commit ")
    # The stamp is the checkout's HEAD at build time (others may have committed since).
    commit = version.split("(commit ", 1)[1].split(",", 1)[0]
    run("git", "merge-base", "--is-ancestor", commit, "HEAD", cwd=ROOT)
    assert CONFFILE in run("dpkg-query", "-W", "-f=${Conffiles}", "telegen").stdout
    assert os.path.isdir("/var/lib/telegen")
    # postinst wrote the plugin cache; twistd lists the plugin from the installed files.
    assert os.path.isfile(f"{VENV}/lib/python3.11/site-packages/twisted/plugins/dropin.cache")
    assert "telegen" in run(f"{VENV}/bin/twistd", "--help", env=SERVICE_ENV, cwd="/").stdout
    verify = subprocess.run(["systemd-analyze", "verify", UNIT], capture_output=True, text=True, timeout=60)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")


@pytest.mark.ebpf
def test_exec_start_serves_the_api_and_ebpf_from_the_installed_copy(installed, tmp_path):
    agent, config = start_installed(tmp_path)
    try:
        assert_sandboxed(agent.process.pid)
        status = agent.get("/status", headers=AUTH).json()
        stamp = run(f"{VENV}/bin/python", "-c", "from telegen import _build; print(_build.COMMIT)", env=SERVICE_ENV, cwd="/").stdout.strip()
        # The checkout says "unknown": a stamped commit proves the installed copy is serving.
        assert status["version"] == telegen.__version__ and status["commit"] == stamp != "unknown"
        wait_for(lambda: agent.get("/ready").json()["checks"]["ebpf"] == "ok", timeout=180,
                 message="ebpf ready (%s)" % agent.get("/ready").json()["checks"]["ebpf"])
        programs = agent.get("/status/ebpf", headers=AUTH).json()["programs"]
        # Go's crypto/tls uprobes attach once a Go program using it runs here: attached says whether they probe one.
        assert programs and all(p["id"] > 0 and p["attached"] for p in programs if not p["name"].startswith("gotls_"))
        assert all(p["attached"] == (p["uprobe"] is not None) for p in programs if p["name"].startswith("gotls_"))

        server, port = apps.python_server()
        try:
            subprocess.run(["curl", "-s", "-o", "/dev/null", f"http://127.0.0.1:{port}/from-the-deb"], check=True, timeout=10)
            data_dir = os.path.join(str(tmp_path), "data")
            spans = wait_for(lambda: [s for r, s in read_spans(data_dir) if r.get("process.pid") == server.pid],
                             timeout=30, message="the server's span in the sink")
            assert [kv.value.string_value for kv in spans[0].attributes if kv.key == "url.path"] == ["/from-the-deb"]
        finally:
            server.stop()

        # ExecReload: SIGHUP re-reads the config file; the same process applies it.
        agent.write_config(None, raw=yaml.safe_dump(merge(config, {"agent": {"host_metrics": {"interval": "7s"}}})))
        agent.signal(signal.SIGHUP)
        wait_for(lambda: agent.get("/config", headers=AUTH).json()["agent"]["host_metrics"]["interval"] == 7.0,
                 timeout=30, message="the SIGHUP reload to apply")
        if GO:
            profile_names_installed_files(agent, tmp_path)
        manhole_answers_status(agent)
    finally:
        code = agent.stop()
    # twistd ends a signal-stopped run by re-raising SIGTERM, which systemd counts as a clean stop.
    assert code == -signal.SIGTERM, agent.log()


# linux/capability.h numbers of the unit's capabilities.
CAP_NUMBERS = {"CAP_DAC_READ_SEARCH": 2, "CAP_NET_ADMIN": 12, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21,
               "CAP_SYS_RESOURCE": 24, "CAP_PERFMON": 38, "CAP_BPF": 39}


def proc_status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":", 1) for line in f)


def assert_sandboxed(pid):
    """The running agent really has the unit's bounding set (less what this machine's own bounding
    set lacks: CAP_SYS_RESOURCE here), no_new_privs and read-only mounts."""
    status = proc_status(pid)
    mask = sum(1 << CAP_NUMBERS[c] for c in unit_value("CapabilityBoundingSet").split())
    mask &= int(proc_status("self")["CapBnd"], 16)
    assert int(status["CapBnd"], 16) == int(status["CapEff"], 16) == mask
    assert status["NoNewPrivs"].strip() == "1"
    with open(f"/proc/{pid}/mountinfo") as f:
        options = {fields[4]: fields[5].split(",") for fields in (line.split() for line in f)}
    assert all("ro" in options[d] for d in ("/usr", "/etc", VENV)), options


def start_installed(tmp_path):
    """The installed agent on the shipped config plus a test port and data dir, eBPF (HTTP only),
    the debug endpoints behind a token and the manhole on loopback with a fresh key."""
    agent = InstalledAgent(str(tmp_path))
    agent.manhole_port = free_port()
    agent.manhole_key = keygen(str(tmp_path / "manhole_key"))
    shutil.copy(agent.manhole_key + ".pub", tmp_path / "authorized_keys")
    with open(CONFFILE) as f:
        shipped = yaml.safe_load(f)
    config = merge(shipped, merge(agent.base_config(), {
        "agent": {"ebpf": {"enabled": True, "network": {"tcp": False}}},
        "self_telemetry": {"debug": {"enabled": True}, "auth": {"enabled": True, "bearer_token": TOKEN}},
        "manhole": {"enabled": True, "listen": f"tcp:{agent.manhole_port}:interface=127.0.0.1",
                    "authorized_keys": str(tmp_path / "authorized_keys")},
    }))
    agent.write_config(None, raw=yaml.safe_dump(config))
    return agent.start(), config


def profile_names_installed_files(agent, tmp_path):
    """`go tool pprof -top` reads a CPU profile of the installed agent, whose frames are files
    under /opt/telegen/venv (the build compiled the bytecode with the install path)."""
    with Load(agent):
        answer = agent.get("/debug/pprof/profile?seconds=3", headers=AUTH, timeout=30)
    assert answer.code == 200, answer.body
    path = tmp_path / "cpu.pprof"
    path.write_bytes(answer.body)
    top = pprof_top(str(path), "-lines", "-nodecount=400")
    assert "Type: cpu" in top
    assert f"{VENV}/lib/python3.11/site-packages/telegen/" in top, top
    assert "debian/telegen" not in top and ROOT not in top, top


def manhole_answers_status(agent):
    session = Session(agent.manhole_port, agent.manhole_key)
    try:
        session.wait_output(">>> ")
        session.type("status()['commit']")
        stamp = agent.get("/status", headers=AUTH).json()["commit"]
        session.wait_output(f"'{stamp}'")
    finally:
        session.close()


def test_purge_removes_what_the_package_installed(installed):
    apt_get("purge", "telegen")
    assert installed_version() == ""
    assert [p for p in INSTALLED if os.path.lexists(p)] == []
