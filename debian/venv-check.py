"""
Build-time check of the private virtualenv: is it complete without the build machine's packages?

The venv sees Debian's site packages (for BCC), so on the build machine a dependency missing from
the venv could be satisfied by a Debian package that a target machine does not have. This hides
the system site packages for a moment and runs `pip check`, which fails on any requirement of any
installed distribution (telegen's included) that the venv itself does not satisfy.
Usage: python3 debian/venv-check.py VENV
"""
import subprocess
import sys
from pathlib import Path


def main(venv):
    cfg = Path(venv) / "pyvenv.cfg"
    original = cfg.read_text()
    isolated = original.replace("include-system-site-packages = true",
                                "include-system-site-packages = false")
    if isolated == original:
        sys.exit(f"{cfg}: no 'include-system-site-packages = true' line")
    cfg.write_text(isolated)
    try:
        python = str(Path(venv) / "bin" / "python")
        subprocess.run([python, "-m", "pip", "check"], check=True)
        subprocess.run([python, "-c", "import telegen, twisted.plugins.telegen_plugin"], check=True)
    finally:
        cfg.write_text(original)


if __name__ == "__main__":
    main(sys.argv[1])
