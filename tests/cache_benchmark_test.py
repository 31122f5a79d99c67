"""The teacher cache benchmark runs end to end on a tiny shape."""

import os
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_cache_benchmark_runs_tiny():
    env = dict(os.environ)
    env["KERAS_BACKEND"] = keras.backend.backend()
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    script = os.path.join(ROOT, "benchmarks", "cache_benchmark.py")

    completed = subprocess.run(
        [sys.executable, script, "size", "students", "--tiny", "--seeds", "1", "--ks", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "| 1,000 | 8 | float32 | 53.0 |" in completed.stdout
    assert "| online teacher (dense) |" in completed.stdout
    assert "| cache, k=3 |" in completed.stdout
