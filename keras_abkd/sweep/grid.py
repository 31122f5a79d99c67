"""`Grid`: the (alpha, beta) cells of a sweep, and the parser of value lists."""

import dataclasses
import math

# Values are rounded to this many decimals, so that a range such as
# `0:1:0.1` gives 0.3 and not 0.30000000000000004, and equal cells compare
# equal after a JSON round trip.
DECIMALS = 10


def _round(value):
    return round(float(value), DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def _parse_number(text, option):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"{option}: {text!r} is not a number. Give comma-separated numbers "
            "such as 0,0.5,1 or a range start:stop:step such as 0:1:0.25."
        ) from None
    if not math.isfinite(value):
        raise ValueError(f"{option}: values must be finite numbers, got {text!r}.")
    return value


def _parse_range(item, option):
    parts = item.split(":")
    if len(parts) != 3:
        raise ValueError(
            f"{option}: the range {item!r} must have the form start:stop:step, "
            "such as 0:1:0.25 (stop included)."
        )
    start, stop, step = (_parse_number(part, option) for part in parts)
    if step <= 0:
        raise ValueError(f"{option}: the step of {item!r} must be > 0, got {step:g}.")
    if stop < start:
        raise ValueError(
            f"{option}: the range {item!r} ends before it starts. Write it as "
            "start:stop:step with start <= stop."
        )
    # The stop is included when it lies on the range, up to rounding error.
    count = int(math.floor((stop - start) / step + 1e-9)) + 1
    return [start + i * step for i in range(count)]


def parse_values(text, option="values"):
    """Parse a comma-separated list of numbers and `start:stop:step` ranges.

    Ranges include their stop when it lies on the range: `0:1:0.25` gives
    0, 0.25, 0.5, 0.75 and 1. Items may be mixed: `0,0.2:0.6:0.2,1`.

    Args:
        text: The list as a string.
        option: Name of the option the list came from, used in error
            messages.

    Returns:
        A tuple of floats in the order given, rounded to `DECIMALS` decimals.

    Raises:
        ValueError: for an empty list, a value that is not a finite number,
            a malformed range, or a value given twice.
    """
    items = [item.strip() for item in str(text).split(",")]
    if not any(items):
        raise ValueError(f"{option}: the list is empty. Give at least one value.")

    values = []
    for item in items:
        if not item:
            raise ValueError(
                f"{option}: {text!r} contains an empty item. Separate values "
                "with single commas."
            )
        if ":" in item:
            values.extend(_parse_range(item, option))
        else:
            values.append(_parse_number(item, option))

    values = tuple(_round(value) for value in values)
    duplicates = sorted({value for value in values if values.count(value) > 1})
    if duplicates:
        listed = ", ".join(f"{value:g}" for value in duplicates)
        raise ValueError(f"{option}: {listed} given more than once in {text!r}.")
    return values


@dataclasses.dataclass(frozen=True)
class Grid:
    """The (alpha, beta) cells of a sweep, in the order they run.

    Build one with `Grid.product` (every alpha with every beta) or
    `Grid.alpha_plus_beta` (every sum alpha + beta with every alpha, which
    tunes the sum and alpha separately), or from strings with `Grid.parse`.

    Args:
        cells: Tuple of `(alpha, beta)` float pairs, without repeats.

    Example:

    ```python
    grid = Grid.parse(alphas="0.2:1:0.4", betas="0,0.5")
    grid.cells  # ((0.2, 0.0), (0.2, 0.5), (0.6, 0.0), ...)
    ```
    """

    cells: tuple

    def __post_init__(self):
        cells = tuple((_round(alpha), _round(beta)) for alpha, beta in self.cells)
        if not cells:
            raise ValueError("The grid has no (alpha, beta) cell. Give at least one.")
        for alpha, beta in cells:
            if not (math.isfinite(alpha) and math.isfinite(beta)):
                raise ValueError(
                    "alpha and beta must be finite numbers, got "
                    f"alpha={alpha}, beta={beta}."
                )
        repeated = sorted({cell for cell in cells if cells.count(cell) > 1})
        if repeated:
            raise ValueError(f"The grid contains the cells {repeated} more than once.")
        object.__setattr__(self, "cells", cells)

    @classmethod
    def product(cls, alphas, betas):
        """Return the grid of every alpha with every beta."""
        return cls(tuple((alpha, beta) for alpha in alphas for beta in betas))

    @classmethod
    def alpha_plus_beta(cls, sums, alphas):
        """Return the grid of every sum `alpha + beta` with every alpha.

        Each cell is `(alpha, sum - alpha)`.
        """
        return cls(tuple((alpha, total - alpha) for total in sums for alpha in alphas))

    @classmethod
    def parse(cls, alphas=None, betas=None, alpha_plus_beta=None):
        """Build a grid from value lists as the `keras-abkd sweep` options take them.

        Give `alphas` with either `betas` (a product grid) or
        `alpha_plus_beta` (every sum with every alpha). Each list is a string
        for `parse_values`.

        Raises:
            ValueError: for a missing or conflicting list, or an invalid one.
        """
        if alphas is None:
            raise ValueError(
                "--alphas is missing. Give --alphas with --betas (every alpha "
                "with every beta) or with --alpha-plus-beta."
            )
        if (betas is None) == (alpha_plus_beta is None):
            raise ValueError(
                "Give exactly one of --betas (every alpha with every beta) and "
                "--alpha-plus-beta (every sum alpha + beta with every alpha), "
                f"got {'both' if betas is not None else 'neither'}."
            )

        alpha_values = parse_values(alphas, "--alphas")
        if betas is not None:
            return cls.product(alpha_values, parse_values(betas, "--betas"))
        sums = parse_values(alpha_plus_beta, "--alpha-plus-beta")
        return cls.alpha_plus_beta(sums, alpha_values)
