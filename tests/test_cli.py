"""The command line."""

import subprocess
import sys

import pytest
import torch

from fusedlstm import backends, cli, ops


def test_info_reports_versions_and_backends(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"torch                      {torch.__version__}" in text
    expected = (["cpu"] if ops.cpp else []) + \
        (["triton"] if backends.BACKENDS["triton"].unavailable("cpu") is None else []) + ["reference"]
    assert "backends for CPU tensors   " + ", ".join(expected) in text
    assert "GPU" in text


@pytest.mark.slow
def test_python_dash_m_runs_info():
    result = subprocess.run([sys.executable, "-m", "fusedlstm", "info"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "backends for CUDA tensors" in result.stdout
