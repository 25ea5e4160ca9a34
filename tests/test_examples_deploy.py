"""The deployment examples in examples/deploy/ are valid for the tools that read them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.process import REPO

DEPLOY = REPO / "examples" / "deploy"
VENV_BIN = Path(sys.executable).parent


def _need(program: str, where: Path | None = None) -> str:
    found = shutil.which(program, path=str(where) if where else None)
    if found is None:
        message = f"{program} is not installed: the deployment example is not checked"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def test_systemd_units_verify(tmp_path: Path) -> None:
    """systemd-analyze reads the units as systemd would: no unknown key, no bad value,
    and the ExecStart program exists (pointed at this venv's gantry)."""
    analyze = _need("systemd-analyze")
    gantry = VENV_BIN / "gantry"
    assert gantry.exists(), gantry
    service = (DEPLOY / "gantry.service").read_text()
    assert "Type=notify" in service and "ExecReload=/bin/kill -HUP $MAINPID" in service
    (tmp_path / "gantry.service").write_text(
        service.replace("/srv/site/.venv/bin/gantry", str(gantry)).replace(
            "/srv/site", str(tmp_path)
        )
    )
    shutil.copy(DEPLOY / "gantry.socket", tmp_path / "gantry.socket")
    result = subprocess.run(
        [analyze, "verify", "--man=no", "./gantry.service", "./gantry.socket"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # an unknown key or a bad value is only a warning for systemd: refuse those too
    problems = [
        line for line in result.stderr.splitlines()
        if "gantry." in line and ("Unknown" in line or "ignoring" in line or "Failed" in line)
    ]  # fmt: skip
    assert not problems, result.stderr


def test_dockerfile_lints_clean() -> None:
    hadolint = (
        _need("hadolint", VENV_BIN) if (VENV_BIN / "hadolint").exists() else _need("hadolint")
    )
    result = subprocess.run(
        [hadolint, "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    text = (DEPLOY / "Dockerfile").read_text()
    assert 'CMD ["gantry", "up"' in text and "STOPSIGNAL SIGTERM" in text
