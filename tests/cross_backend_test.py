"""The Distiller's training step gives the same numbers on every backend."""

import os
import subprocess
import sys

import numpy as np
import pytest

BACKENDS = ["jax", "tensorflow", "torch"]
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(backend, output_path):
    env = dict(os.environ, KERAS_BACKEND=backend, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = REPOSITORY + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-m", "tests.parity_run", str(output_path)],
        cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"{backend} run failed:\n{result.stderr[-3000:]}"
    return dict(np.load(output_path))


@pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND", "jax") != "jax",
    reason="starts all three backends itself; run once, in the JAX session",
)
def test_training_steps_match_across_backends(tmp_path):
    results = {backend: _run(backend, tmp_path / f"{backend}.npz") for backend in BACKENDS}

    reference = results["jax"]
    assert reference["losses"].shape == (8, 3)
    assert np.all(np.isfinite(reference["losses"]))
    # The losses must move, or the comparison proves nothing.
    assert reference["losses"][-1, 0] != reference["losses"][0, 0]
    for backend in ("tensorflow", "torch"):
        np.testing.assert_allclose(
            results[backend]["losses"], reference["losses"], rtol=1e-5,
            err_msg=f"losses differ between jax and {backend}",
        )
        for key in reference:
            if key.startswith("student_"):
                np.testing.assert_allclose(
                    results[backend][key], reference[key], rtol=1e-5, atol=1e-6,
                    err_msg=f"{key} differs between jax and {backend}",
                )
