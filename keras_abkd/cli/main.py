"""Entry point of the `keras-abkd` command.

Each subcommand lives in its own module of this package and exposes
`add_parser(subparsers)`, which registers the subcommand and sets `func`.
"""

import argparse
import importlib
import logging
import os
import sys

# TensorFlow logs several start-up lines at import unless this level is set.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Modules of this package that define a subcommand, in the order of `--help`.
SUBCOMMAND_MODULES = [
    "keras_abkd.cli.demo",
    "keras_abkd.cli.plot_gradients",
    "keras_abkd.cli.cache_teacher",
    "keras_abkd.cli.sweep",
]


def _version():
    from keras_abkd import __version__

    return __version__


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-abkd",
        description="Knowledge distillation for Keras 3 with the alpha-beta divergence.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}"
    )
    parser.add_argument(
        "--log-level",
        default="WARNING",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="Level of the library's log messages. Defaults to WARNING.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
