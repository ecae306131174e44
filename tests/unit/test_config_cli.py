"""`telegen validate`: exit codes, messages and the redacted --show output."""
import os

import yaml

from telegen.config.cli import validate_main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_valid_file(tmp_path, capsys, monkeypatch):
    """A valid file exits 0 and says so, naming the file; nothing on stderr."""
    path = tmp_path / "ok.yaml"
    path.write_text("otlp:\n  endpoint: c:4317\n")
    assert validate_main(["--config", str(path)], environ={}) == 0
    out, err = capsys.readouterr()
    assert out == f"Configuration is valid: {path}\n"
    assert err == ""


def test_default_is_shipped_config(capsys):
    """Without --config the shipped etc/telegen/config.yaml is checked."""
    assert validate_main([], environ={}) == 0
    assert capsys.readouterr().out == f"Configuration is valid: {os.path.join(ROOT, 'etc', 'telegen', 'config.yaml')}\n"


def test_invalid_file(tmp_path, capsys):
    """An invalid file exits 2 with the one-line error on stderr."""
    path = tmp_path / "bad.yaml"
    path.write_text("otlp:\n  endpont: c:4317\n")
    assert validate_main(["--config", str(path)], environ={}) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{path}: otlp.endpont: unknown key at line 2 (did you mean 'endpoint'?)\n"


def test_missing_file(tmp_path, capsys):
    """A missing file exits 2 too."""
    assert validate_main(["-c", str(tmp_path / "nope.yaml")], environ={}) == 2
    assert "cannot read the file" in capsys.readouterr().err


def test_show_prints_effective_redacted_config(tmp_path, capsys):
    """--show prints the effective config (env applied) as YAML with secrets redacted."""
    path = tmp_path / "ok.yaml"
    path.write_text("self_telemetry:\n  auth:\n    enabled: true\n    bearer_token: ${API_TOKEN}\n")
    environ = {"API_TOKEN": "very-secret-token", "TELEGEN_OTLP_ENDPOINT": "env:4317"}
    assert validate_main(["--config", str(path), "--show"], environ=environ) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"Configuration is valid: {path}\n")
    assert "very-secret-token" not in out
    shown = yaml.safe_load(out.split("\n", 1)[1])
    assert shown["self_telemetry"]["auth"]["bearer_token"] == "[REDACTED]"
    assert shown["otlp"]["endpoint"] == "env:4317"
    assert shown["queues"]["traces"]["capacity"] == 10000


def test_bad_arguments(capsys):
    """An unknown option is a usage error (exit 2), not a traceback."""
    assert validate_main(["--bogus"], environ={}) == 2
    assert "usage: telegen validate" in capsys.readouterr().err


def test_help_exits_zero(capsys):
    """--help prints usage and exits 0."""
    assert validate_main(["--help"], environ={}) == 0
    assert "--show" in capsys.readouterr().out
