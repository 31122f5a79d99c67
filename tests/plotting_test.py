"""The plotting helpers and the `keras-abkd plot-gradients` command."""

import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from keras_abkd import plotting  # noqa: E402
from keras_abkd.cli import main as cli_main  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_heatmap_values_follow_alpha_and_beta_axes():
    alphas = [0.0, 0.5, 1.0]
    betas = [-1.0, 2.0]

    figure, values = plotting.plot_alpha_beta_heatmap(
        lambda alpha, beta: 10 * alpha + beta, alphas, betas
    )

    np.testing.assert_allclose(values, [[-1.0, 4.0, 9.0], [2.0, 7.0, 12.0]])
    assert figure.axes[0].get_xlabel() == "alpha"
    assert figure.axes[0].get_ylabel() == "beta"


def test_class_updates_draws_every_setting():
    settings = [("forward KL", 1.0, 0.0), ("reverse KL", 0.0, 1.0)]

    figure = plotting.plot_class_updates([3.0, 1.0, 0.0], [1.0, 2.0, 0.5], settings)

    update_ax = figure.axes[1]
    labels = update_ax.get_legend_handles_labels()[1]
    assert "forward KL" in labels
    assert "reverse KL" in labels
    heights = [patch.get_height() for patch in update_ax.patches]
    # Two settings of three classes, each setting's weights summing to 1.
    assert len(heights) == 6
    np.testing.assert_allclose(sum(heights), 2.0, rtol=1e-6)


def test_class_updates_rejects_mismatched_logits():
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        plotting.plot_class_updates([3.0, 1.0, 0.0], [1.0, 2.0])


def test_missing_matplotlib_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)

    with pytest.raises(ImportError, match=r"keras-abkd\[plot\]"):
        plotting.plot_class_updates([1.0, 0.0], [0.0, 1.0])


def test_cli_writes_png(tmp_path):
    output = tmp_path / "gradients.png"

    code = cli_main.main(
        ["plot-gradients", "--output", str(output), "--grid-points", "3", "--settings", "1,0;0,1"]
    )

    assert code == 0
    assert output.read_bytes()[:8] == PNG_SIGNATURE


def test_cli_rejects_bad_settings(capsys):
    with pytest.raises(SystemExit):
        cli_main.main(["plot-gradients", "--output", "x.png", "--settings", "1,0,2"])

    assert "alpha,beta pairs" in capsys.readouterr().err


def test_cli_rejects_mismatched_logits(tmp_path, capsys):
    code = cli_main.main(
        [
            "plot-gradients",
            "--output",
            str(tmp_path / "x.png"),
            "--teacher-logits",
            "1,2,3",
            "--student-logits",
            "1,2",
        ]
    )

    assert code == 2
    assert "same number of classes" in capsys.readouterr().err
