"""The benchmark scripts run end to end on a tiny shape."""

import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_tiny(script):
    env = dict(os.environ)
    env["KERAS_BACKEND"] = keras.backend.backend()
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", script), "--tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "script", ["divergence_benchmark.py", "distiller_step_benchmark.py"]
)
def test_benchmark_script_runs_tiny(script):
    completed = _run_tiny(script)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "| backend |" in completed.stdout
    assert "failed" not in completed.stdout
