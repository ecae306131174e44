"""
The Debian packaging's static contract: versions agree, the systemd unit says what the service
needs and passes `systemd-analyze verify`, and every file the package installs exists in the
checkout. Building and installing the package is tests/integration/test_deb_package.py.
"""
import os
import re
import shutil
import subprocess

import pytest

import telegen

from tests.support.debian_unit import DEBIAN, ROOT, read, service, unit_directives

UNIT = os.path.join(DEBIAN, "telegen.service")
EXEC_START = "/opt/telegen/venv/bin/twistd"
CAPABILITIES = {"CAP_BPF", "CAP_PERFMON", "CAP_SYS_RESOURCE", "CAP_SYS_ADMIN", "CAP_SYS_PTRACE",
                "CAP_DAC_READ_SEARCH", "CAP_NET_ADMIN"}


def test_changelog_version_is_the_package_version():
    first = read("changelog").splitlines()[0]
    match = re.match(r"^telegen \(([^)]+)\) \S+; urgency=\w+$", first)
    assert match, first
    # A native package: the .deb is telegen_<__version__>_<arch>.deb exactly.
    assert match.group(1) == telegen.__version__
    assert read("source/format").strip() == "3.0 (native)"


def test_unit_runs_foreground_twistd_with_the_installed_config():
    assert service("Type") == "simple"
    argv = service("ExecStart").split()
    assert argv[0] == EXEC_START
    assert argv[1:] == ["-n", "--pidfile=", "telegen", "--config", "/etc/telegen/config.yaml"]
    assert service("ExecReload") == "/bin/kill -HUP $MAINPID"
    assert service("Restart") == "on-failure"
    assert service("EnvironmentFile") == "-/etc/default/telegen"
    assert service("StateDirectory") == "telegen"


def test_unit_grants_what_ebpf_needs_and_no_hardening_that_breaks_it():
    assert service("LimitMEMLOCK") == "infinity"
    assert set(service("CapabilityBoundingSet").split()) == CAPABILITIES
    assert set(service("AmbientCapabilities").split()) == CAPABILITIES
    for key, value in [("NoNewPrivileges", "yes"), ("PrivateTmp", "yes"), ("ProtectHome", "read-only"),
                       ("ProtectSystem", "full"), ("ReadWritePaths", "/var/lib/telegen")]:
        assert service(key) == value, key
    directives = unit_directives(read("telegen.service"))
    # Each of these hides /sys (tracefs, bpffs), /lib/modules (BCC's headers), other processes,
    # or W+X pages (libffi callbacks): the agent would start and see nothing.
    for key in ["ProtectKernelTunables", "ProtectKernelModules", "ProtectProc", "ProcSubset",
                "MemoryDenyWriteExecute", "PrivateDevices", "InaccessiblePaths"]:
        assert ("Service", key) not in directives, key


def verify_unit(tmp_path, text):
    """systemd-analyze verify on an offline root holding the unit, its binaries and systemd's units."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/telegen.service").write_text(text)
    for path, source in [(EXEC_START, None), ("/bin/kill", "/bin/kill")]:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source:
            shutil.copy(source, target)
        else:
            target.write_text("#!/bin/sh\n")
            target.chmod(0o755)
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "/etc/systemd/system/telegen.service"],
        capture_output=True, text=True, timeout=60)
    # verify exits 0 on directives it ignores; what it says about the unit is the verdict.
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "telegen.service" in line]
    return result.returncode, complaints


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None or not os.path.isdir("/usr/lib/systemd/system"),
    reason="systemd-analyze and systemd's unit files are not installed")


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path):
    assert verify_unit(tmp_path, read("telegen.service")) == (0, [])


@needs_systemd_analyze
def test_verify_catches_a_broken_unit(tmp_path):
    broken = read("telegen.service").replace("Restart=on-failure", "Restart=sometimes\nProtectSytem=full")
    code, complaints = verify_unit(tmp_path, broken)
    assert any("sometimes" in line for line in complaints), complaints
    assert any("ProtectSytem" in line for line in complaints), complaints


def test_installed_files_exist_in_the_checkout():
    for line in read("telegen.install").splitlines():
        source = line.split()[0]
        assert os.path.isfile(os.path.join(ROOT, source)), source


def test_usr_bin_telegen_is_the_venv_console_script():
    with open(os.path.join(ROOT, "setup.py"), encoding="utf-8") as f:
        assert '"telegen = telegen.cli:main"' in f.read()
    assert read("telegen.links").split() == ["opt/telegen/venv/bin/telegen", "usr/bin/telegen"]


def test_depends_on_debian_bcc_and_the_venv_python():
    control = read("control")
    binary = control.split("\nPackage: telegen\n", 1)[1]
    depends = re.search(r"^Depends:(.*?)(?=^\S)", binary, re.S | re.M).group(1)
    names = {d.strip().split()[0] for d in depends.split(",") if d.strip()}
    assert {"python3.11", "python3-bpfcc", "libbpfcc"} <= names
    rules = read("rules")
    assert "PYTHON := /usr/bin/python3.11" in rules
    assert "-m venv --system-site-packages" in rules


def test_maintainer_scripts_are_valid_sh_with_debhelper_snippets():
    for name in ["telegen.postinst", "telegen.postrm"]:
        path = os.path.join(DEBIAN, name)
        assert os.access(path, os.X_OK), name
        subprocess.run(["sh", "-n", path], check=True)
        assert "#DEBHELPER#" in read(name), name
