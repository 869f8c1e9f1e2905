"""Validation of hyperparameters at construction time.

Every factory validates its numeric hyperparameters before anything is traced,
so a bad value fails with a message that names the argument, the value and the
allowed range. Values that are not concrete (tracers produced by
``optax.inject_hyperparams``, or schedules) are skipped: they were checked when
the user first built the transformation.
"""

from __future__ import annotations

import math
from typing import Any

import jax


def _concrete(value: Any) -> float | None:
  """Returns ``value`` as a Python float, or None when it is not concrete."""
  if callable(value) or value is None:
    return None
  try:
    return float(value)
  except (TypeError, jax.errors.ConcretizationTypeError):
    return None


def check_interval(
    name: str,
    value: Any,
    low: float = -math.inf,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
  """Raises ``ValueError`` unless ``low <= value <= high`` (or open ends)."""
  x = _concrete(value)
  if x is None:
    return
  ok = not math.isnan(x)
  ok = ok and (x > low if low_open else x >= low)
  ok = ok and (x < high if high_open else x <= high)
  if not ok:
    left = '(' if low_open else '['
    right = ')' if high_open else ']'
    raise ValueError(
        f'{name}={value!r} is out of range: {name} must lie in '
        f'{left}{low:g}, {high:g}{right}.'
    )


def check_positive(name: str, value: Any) -> None:
  check_interval(name, value, 0.0, math.inf, low_open=True)


def check_non_negative(name: str, value: Any) -> None:
  check_interval(name, value, 0.0, math.inf)


def check_beta(name: str, value: Any, *, allow_one: bool = True) -> None:
  """A decay rate: in [0, 1] (or [0, 1) when ``allow_one`` is False)."""
  check_interval(name, value, 0.0, 1.0, high_open=not allow_one)


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
  if value not in choices:
    raise ValueError(
        f'{name}={value!r} is not supported: choose one of '
        f'{", ".join(repr(c) for c in choices)}.'
    )


def check_int_at_least(name: str, value: Any, low: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(
        f'{name}={value!r} is invalid: {name} must be an integer >= {low}.'
    )
