"""Plots of how alpha and beta share the student's update among classes.

Needs matplotlib, the `[plot]` extra: `pip install "keras-abkd[plot]"`. The
functions draw on new figures unless given axes. They never call `plt.show`,
so they work with any matplotlib backend.
"""

import numpy as np
from keras import ops

from keras_abkd import analysis

# (label, alpha, beta) drawn by default: the two KL divergences and three
# points between and beyond them.
DEFAULT_SETTINGS = (
    ("forward KL (1, 0)", 1.0, 0.0),
    ("reverse KL (0, 1)", 0.0, 1.0),
    ("AB (0.5, 0.5)", 0.5, 0.5),
    ("AB (0.2, 0.7)", 0.2, 0.7),
    ("AB (0.5, 1.5)", 0.5, 1.5),
)


def _pyplot():
    try:
        import matplotlib.pyplot as pyplot
    except ImportError:
        raise ImportError(
            "keras_abkd.plotting needs matplotlib, which is not installed. "
            'Install it with: pip install "keras-abkd[plot]"'
        ) from None
    return pyplot


def _as_row(logits, name):
    row = np.asarray(logits, dtype=np.float64)
    if row.ndim != 1 or row.size < 2:
        raise ValueError(
            f"{name} must be a 1-D sequence of at least 2 logits for one "
            f"position, got shape {row.shape}."
        )
    return row


def plot_class_updates(
    teacher_logits,
    student_logits,
    settings=DEFAULT_SETTINGS,
    temperature=1.0,
    axes=None,
):
    """Draw the per-class update weights of several divergences for one position.

    The top panel shows the teacher and student distributions, with classes
    in descending order of teacher probability. The bottom panel shows, for
    each `(alpha, beta)` in `settings`, the update weights
    `|u_i| / sum_j |u_j|` of `keras_abkd.analysis` (the share of the update
    on each class). The student's top class is marked with a star.

    Args:
        teacher_logits: 1-D sequence of teacher logits.
        student_logits: 1-D sequence of student logits, same length.
        settings: Sequence of `(label, alpha, beta)`. Defaults to
            `DEFAULT_SETTINGS`.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        axes: Optional pair of matplotlib axes `(distributions, updates)`.
            By default a new figure with two rows is created.

    Returns:
        The matplotlib `Figure`.
    """
    pyplot = _pyplot()
    teacher = _as_row(teacher_logits, "teacher_logits")
    student = _as_row(student_logits, "student_logits")
    if teacher.shape != student.shape:
        raise ValueError(
            "teacher_logits and student_logits must have the same length, got "
            f"{teacher.size} and {student.size}."
        )
    if axes is None:
        figure, axes = pyplot.subplots(2, 1, figsize=(8, 6), sharex=True)
    distribution_ax, update_ax = axes
    figure = distribution_ax.figure

    order = np.argsort(-teacher, kind="stable")
    classes = np.arange(teacher.size)
    width = 0.8 / max(len(settings), 2)

    first = analysis.analyze_gradients(teacher, student, 1.0, 0.0, temperature)
    p = ops.convert_to_numpy(first.teacher_probabilities)[order]
    q = ops.convert_to_numpy(first.student_probabilities)[order]
    distribution_ax.bar(classes - 0.2, p, width=0.4, label="teacher p")
    distribution_ax.bar(classes + 0.2, q, width=0.4, label="student q")
    distribution_ax.set_ylabel("probability")
    distribution_ax.set_title(f"Teacher and student (temperature {temperature:g})")
    distribution_ax.legend()

    student_top = int(np.argmax(q))
    for index, (label, alpha, beta) in enumerate(settings):
        result = analysis.analyze_gradients(teacher, student, alpha, beta, temperature)
        weights = ops.convert_to_numpy(result.update_weights)[order]
        offset = (index - (len(settings) - 1) / 2) * width
        update_ax.bar(classes + offset, weights, width=width, label=label)
    update_ax.plot(
        [student_top], [1.02 * update_ax.get_ylim()[1]], marker="*", color="black",
        linestyle="none", label="student's top class",
    )
    update_ax.set_xticks(classes, [str(i) for i in order])
    update_ax.set_xlabel("class (descending teacher probability)")
    update_ax.set_ylabel("share of the update")
    update_ax.set_title("Update weights |dD/d log q_i| / sum_j |dD/d log q_j|")
    update_ax.legend(fontsize="small")
    return figure


def plot_alpha_beta_heatmap(scalar, alphas, betas, ax=None, title=None, label=None):
    """Draw a heatmap of `scalar(alpha, beta)` over a grid.

    Forward KL `(1, 0)` and reverse KL `(0, 1)` are marked where they lie
    inside the grid.

    Args:
        scalar: Function of `(alpha, beta)` returning a float.
        alphas: Increasing 1-D sequence of alpha values (the x axis).
        betas: Increasing 1-D sequence of beta values (the y axis).
        ax: Optional matplotlib axes. By default a new figure is created.
        title: Optional title of the axes.
        label: Optional label of the colour bar.

    Returns:
        `(figure, values)`, where `values[j, i] = scalar(alphas[i], betas[j])`.
    """
    pyplot = _pyplot()
    alphas = np.asarray(alphas, dtype=np.float64)
    betas = np.asarray(betas, dtype=np.float64)
    if ax is None:
        _, ax = pyplot.subplots(figsize=(5, 4))

    values = np.array([[float(scalar(alpha, beta)) for alpha in alphas] for beta in betas])
    image = ax.pcolormesh(alphas, betas, values, shading="nearest")
    ax.figure.colorbar(image, ax=ax, label=label)
    for name, alpha, beta, marker in (("FKL", 1.0, 0.0, "o"), ("RKL", 0.0, 1.0, "s")):
        if alphas[0] <= alpha <= alphas[-1] and betas[0] <= beta <= betas[-1]:
            ax.plot([alpha], [beta], marker=marker, color="white", markeredgecolor="black")
            ax.annotate(name, (alpha, beta), textcoords="offset points", xytext=(6, 4), color="white")
    ax.set_xlabel("alpha")
    ax.set_ylabel("beta")
    if title:
        ax.set_title(title)
    return ax.figure, values


def plot_gradient_overview(
    teacher_logits,
    student_logits,
    settings=DEFAULT_SETTINGS,
    temperature=1.0,
    alphas=None,
    betas=None,
):
    """Draw the class updates and both concentration heatmaps in one figure.

    Args:
        teacher_logits: 1-D sequence of teacher logits.
        student_logits: 1-D sequence of student logits, same length.
        settings: Sequence of `(label, alpha, beta)` for the update panel.
        temperature: Positive float dividing both logits. Defaults to 1.0.
        alphas: Grid of alpha values for the heatmaps. Defaults to 21
            points from -0.5 to 1.5.
        betas: Grid of beta values for the heatmaps. Defaults to 21 points
            from -0.5 to 1.5.

    Returns:
        The matplotlib `Figure`.
    """
    pyplot = _pyplot()
    if alphas is None:
        alphas = np.linspace(-0.5, 1.5, 21)
    if betas is None:
        betas = np.linspace(-0.5, 1.5, 21)
    figure = pyplot.figure(figsize=(13, 8), layout="constrained")
    grid = figure.add_gridspec(2, 2, width_ratios=(1.5, 1))
    distribution_ax = figure.add_subplot(grid[0, 0])
    update_ax = figure.add_subplot(grid[1, 0], sharex=distribution_ax)
    plot_class_updates(
        teacher_logits, student_logits, settings, temperature, axes=(distribution_ax, update_ax)
    )

    def effect(field):
        def scalar(alpha, beta):
            result = analysis.analyze_gradients(
                teacher_logits, student_logits, alpha, beta, temperature
            )
            return ops.convert_to_numpy(getattr(result, field))

        return scalar

    plot_alpha_beta_heatmap(
        effect("hardness_concentration"), alphas, betas, ax=figure.add_subplot(grid[0, 1]),
        title="Hardness concentration", label="update share on the largest-error class",
    )
    plot_alpha_beta_heatmap(
        effect("confidence_concentration"), alphas, betas, ax=figure.add_subplot(grid[1, 1]),
        title="Confidence concentration", label="update share on the student's top class",
    )
    return figure
