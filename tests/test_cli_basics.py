"""The `hierarchos` command line: help, version, error handling, dispatch."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import hierarchos_cli.main as cli_main

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("export-torch", "info", "conformance")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli_main.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def test_package_name_is_hierarchos_cli():
    import hierarchos_cli

    assert hierarchos_cli.__name__ == "hierarchos_cli"
    assert cli_main.__name__ == "hierarchos_cli.main"
    assert Path(hierarchos_cli.__file__).parent.name in ("cli", "hierarchos_cli")


def test_help_lists_every_command(capsys):
    rc, out, err = run_cli(capsys, "--help")
    assert rc == 0
    lines = out.splitlines()
    for cmd in COMMANDS:
        assert any(line.split()[:1] == [cmd] and len(line.split()) > 1 for line in lines), (cmd, out)


@pytest.mark.parametrize("cmd", COMMANDS)
def test_command_help(capsys, cmd):
    rc, out, _ = run_cli(capsys, cmd, "--help")
    assert rc == 0
    assert out.startswith(f"usage: hierarchos {cmd}")


def test_version(capsys):
    rc, out, _ = run_cli(capsys, "--version")
    assert rc == 0
    assert out.startswith("hierarchos-jax ")


@pytest.mark.parametrize(
    "argv",
    [
        ["frobnicate"],
        [],
        ["info"],
        ["export-torch", "only-one-arg"],
        ["conformance", "case"],  # --out missing
        ["info", "x", "--no-such-option"],
        ["--no-such-option"],
    ],
)
def test_usage_errors_are_one_line_exit_2(capsys, argv):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hierarchos") and ": error: " in lines[0]
    assert "Traceback" not in err


def test_runtime_errors_are_one_line_exit_1(capsys, monkeypatch, tmp_path):
    """A FileNotFoundError / ValueError from the library is reported, not raised."""
    fake = types.ModuleType("hierarchos_jax.io.model_dir")

    def export_torch_dir(src, out):
        raise FileNotFoundError(2, "No such file or directory", str(src))

    fake.export_torch_dir = export_torch_dir
    monkeypatch.setitem(sys.modules, "hierarchos_jax.io.model_dir", fake)
    monkeypatch.delenv("HIERARCHOS_DEBUG", raising=False)
    rc, out, err = run_cli(capsys, "export-torch", str(tmp_path / "missing"), str(tmp_path / "out"))
    assert rc == 1
    assert err.count("\n") == 1 and err.startswith("hierarchos: error: ")
    assert "missing" in err and "Traceback" not in err

    class ConfigError(ValueError):
        pass

    def bad(src, out):
        raise ConfigError("bad config:\nline two")

    fake.export_torch_dir = bad
    rc, out, err = run_cli(capsys, "export-torch", "a", "b")
    assert rc == 1
    assert err == "hierarchos: error: bad config: line two\n"


def test_missing_subsystem_is_reported(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "hierarchos_jax.conformance", None)  # import -> ImportError
    rc, _, err = run_cli(capsys, "conformance", "case", "--out", "x.npz")
    assert rc == 1
    assert err.startswith("hierarchos: error: ") and err.count("\n") == 1


def test_conformance_delegates_with_passthrough(capsys, monkeypatch):
    seen = {}
    fake = types.ModuleType("hierarchos_jax.conformance")

    def main(argv):
        seen["argv"] = list(argv)
        return 0

    fake.main = main
    monkeypatch.setitem(sys.modules, "hierarchos_jax.conformance", fake)
    rc, _, err = run_cli(capsys, "conformance", "CASE", "--out", "o.npz", "--extra-flag", "3")
    assert rc == 0, err
    assert seen["argv"] == ["CASE", "--out", "o.npz", "--extra-flag", "3"]


def test_info_missing_path_is_exit_1(capsys, tmp_path):
    rc, _, err = run_cli(capsys, "info", str(tmp_path / "nope" / "config.json"))
    assert rc == 1
    assert err.startswith("hierarchos: error: ") and err.count("\n") == 1


def _preset_names() -> list[str]:
    return sorted(p.stem for p in (REPO / "configs").glob("*.json"))


def test_info_preset(capsys):
    if not _importable("hierarchos_jax.config"):
        pytest.skip("hierarchos_jax.config not available yet")
    names = _preset_names()
    if not names:
        pytest.skip("no presets in configs/")
    rc, out, err = run_cli(capsys, "info", names[0], "--json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["param_count"] > 0
    assert isinstance(data["config"], dict) and data["config"]
    rc, out, err = run_cli(capsys, "info", names[0])
    assert rc == 0, err
    assert "parameters:" in out


def test_info_reference_model_dir(capsys, reference_case_dir):
    if not _importable("hierarchos_jax.config"):
        pytest.skip("hierarchos_jax.config not available yet")
    model = reference_case_dir / "model"
    if not model.is_dir():
        pytest.skip("reference case has no model/ directory")
    rc, out, err = run_cli(capsys, "info", str(model))
    assert rc == 0, err
    assert "parameters:" in out


def test_export_torch_reference_model(capsys, tmp_path, reference_case_dir):
    if not _importable("hierarchos_jax.io.model_dir"):
        pytest.skip("hierarchos_jax.io.model_dir not available yet")
    src = reference_case_dir / "model"
    out_dir = tmp_path / "exported"
    rc, out, err = run_cli(capsys, "export-torch", str(src), str(out_dir))
    assert rc == 0, err
    assert out_dir.is_dir() and any(out_dir.iterdir())


def test_python_dash_m_and_console_script():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "hierarchos_cli", "--help"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "export-torch" in proc.stdout
    script = Path(sys.executable).parent / "hierarchos"
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    proc = subprocess.run([str(script), "nope"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
