"""`keras-abkd plot-gradients`: draw how alpha and beta share the student's update.

Writes one PNG with the teacher and student distributions of one position,
the per-class update weights under forward KL, reverse KL and several
(alpha, beta), and heatmaps of the hardness and confidence concentration over
an (alpha, beta) grid. Needs matplotlib (`pip install "keras-abkd[plot]"`).
"""

import argparse
import logging
import os
import sys

logger = logging.getLogger(__name__)

# A teacher peaked on class 0 and a flatter student whose top class is 1.
DEFAULT_TEACHER_LOGITS = "4,2.5,1,0.5,0,-0.5,-1,-2"
DEFAULT_STUDENT_LOGITS = "2,2.4,1,0.8,0.5,0.2,0,-0.3"


def _floats(text):
    try:
        return [float(item) for item in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 1,0.5,-2, got {text!r}"
        ) from None


def _settings(text):
    settings = []
    for pair in text.split(";"):
        values = _floats(pair)
        if len(values) != 2:
            raise argparse.ArgumentTypeError(
                f"expected alpha,beta pairs separated by ';' such as "
                f"'1,0;0,1;0.2,0.7', got {pair!r}"
            )
        settings.append((f"({values[0]:g}, {values[1]:g})", values[0], values[1]))
    return settings


def _range(text):
    values = _floats(text)
    if len(values) != 2 or not values[0] < values[1]:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with LOW < HIGH, got {text!r}")
    return values


def run(args):
    try:
        import matplotlib
    except ImportError:
        print(
            'plot-gradients needs matplotlib. Install it with: pip install "keras-abkd[plot]"',
            file=sys.stderr,
        )
        return 1
    matplotlib.use("Agg")
    import numpy as np

    from keras_abkd import plotting

    if len(args.teacher_logits) != len(args.student_logits):
        print(
            "--teacher-logits and --student-logits must have the same number of "
            f"classes, got {len(args.teacher_logits)} and {len(args.student_logits)}.",
            file=sys.stderr,
        )
        return 2
    if args.grid_points < 2:
        print(f"--grid-points must be at least 2, got {args.grid_points}.", file=sys.stderr)
        return 2

    output_folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(output_folder):
        print(
            f"The folder of --output does not exist: {output_folder}. Create it "
            "first or choose another path.",
            file=sys.stderr,
        )
        return 2

    settings = args.settings or plotting.DEFAULT_SETTINGS
    try:
        figure = plotting.plot_gradient_overview(
            args.teacher_logits,
            args.student_logits,
            settings=settings,
            temperature=args.temperature,
            alphas=np.linspace(*args.alpha_range, args.grid_points),
            betas=np.linspace(*args.beta_range, args.grid_points),
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    figure.savefig(args.output, dpi=args.dpi)
    logger.info("Wrote %s", args.output)
    print(f"Wrote {args.output}")
    return 0


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "plot-gradients",
        help="Plot the per-class update of several divergences to a PNG file.",
        description=__doc__,
    )
    parser.add_argument("--output", required=True, help="Path of the PNG file to write.")
    parser.add_argument(
        "--teacher-logits", type=_floats, default=_floats(DEFAULT_TEACHER_LOGITS),
        help=f"Comma-separated teacher logits of one position. Defaults to {DEFAULT_TEACHER_LOGITS}.",
    )
    parser.add_argument(
        "--student-logits", type=_floats, default=_floats(DEFAULT_STUDENT_LOGITS),
        help=f"Comma-separated student logits of one position. Defaults to {DEFAULT_STUDENT_LOGITS}.",
    )
    parser.add_argument(
        "--temperature", type=float, default=1.0,
        help="Temperature dividing both logits. Defaults to 1.0.",
    )
    parser.add_argument(
        "--settings", type=_settings, default=None,
        help="(alpha, beta) pairs of the update panel, as 'a,b;a,b'. Defaults to "
        "forward KL, reverse KL, (0.5, 0.5), (0.2, 0.7) and (0.5, 1.5).",
    )
    parser.add_argument(
        "--alpha-range", type=_range, default=[-0.5, 1.5],
        help="LOW,HIGH of the heatmaps' alpha axis. Defaults to -0.5,1.5.",
    )
    parser.add_argument(
        "--beta-range", type=_range, default=[-0.5, 1.5],
        help="LOW,HIGH of the heatmaps' beta axis. Defaults to -0.5,1.5.",
    )
    parser.add_argument(
        "--grid-points", type=int, default=21,
        help="Grid points per heatmap axis. Defaults to 21.",
    )
    parser.add_argument("--dpi", type=int, default=100, help="Resolution of the PNG. Defaults to 100.")
    parser.set_defaults(func=run)
