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
import jax.numpy as jnp
import numpy as np


def _concrete(name: str, value: Any) -> float | None:
  """``value`` as a Python float, or None when it is not concrete.

  Callables (schedules), ``None`` and tracers are not concrete. Anything else
  that is not a real number (a string, a list) raises ``ValueError`` naming
  the argument.
  """
  if callable(value) or value is None or isinstance(value, jax.core.Tracer):
    return None
  if isinstance(value, (str, bytes)):
    raise ValueError(
      f'{name}={value!r} is not a number: {name} must be a real number'
      ' (or, where documented, a schedule).'
    )
  try:
    return float(value)
  except jax.errors.ConcretizationTypeError:
    return None
  except (TypeError, ValueError):
    raise ValueError(
      f'{name}={value!r} is not a number: {name} must be a real scalar'
      ' (or, where documented, a schedule).'
    ) from None


def check_interval(
  name: str,
  value: Any,
  low: float = -math.inf,
  high: float = math.inf,
  *,
  low_open: bool = False,
  high_open: bool = False,
) -> None:
  """Raises ``ValueError`` unless ``low <= value <= high`` (or open ends).

  Non-finite values (NaN, +-inf) are always rejected: an infinite ``high``
  only means "no upper bound".
  """
  x = _concrete(name, value)
  if x is None:
    return
  ok = math.isfinite(x)
  ok = ok and (x > low if low_open else x >= low)
  ok = ok and (x < high if high_open else x <= high)
  if not ok:
    left = '(' if low_open else '['
    right = ')' if high_open else ']'
    raise ValueError(
      f'{name}={value!r} is out of range: {name} must be finite and lie in '
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
  """Raises ``ValueError`` unless ``value`` is a Python int ``>= low``.

  For a value that must be static: an array (what
  ``optax.inject_hyperparams`` makes of an int) gets a message saying to list
  the argument in ``static_args``.
  """
  if isinstance(value, (jax.Array, np.ndarray)):
    raise ValueError(
      f'{name}={value!r} is an array, but {name} must be a static Python '
      f'int >= {low}: with optax.inject_hyperparams, pass '
      f"static_args=('{name}',)."
    )
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(
      f'{name}={value!r} is invalid: {name} must be an integer >= {low}.'
    )


def as_count(name: str, value: Any, low: int) -> int | jax.Array:
  """An iteration count: a Python int ``>= low``, or a traced integer scalar.

  ``optax.inject_hyperparams`` turns integer hyperparameters into int32
  arrays: a concrete one (eager ``update``, ``init``) is converted to an int
  and checked, a traced one (``update`` under ``jit``) is returned as it is,
  for use as a ``lax.fori_loop`` bound (it was checked when the
  transformation was first built).

  Args:
    name: the argument's name, for the message.
    value: the count.
    low: the smallest allowed value.

  Returns:
    ``value`` as an int, or the integer tracer.

  Raises:
    ValueError: ``value`` is a bool, not an integer, not a scalar, or
      ``< low``.
  """
  if isinstance(value, (jax.Array, np.ndarray, np.generic)) and not (
    isinstance(value, bool)
  ):
    dtype = getattr(value, 'dtype', None)
    if (
      np.shape(value) == ()
      and dtype is not None
      and jnp.issubdtype(dtype, jnp.integer)
    ):
      if isinstance(value, jax.core.Tracer):
        return value
      value = int(value)
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(
      f'{name}={value!r} is invalid: {name} must be an integer >= {low}'
      ' (a Python int, or an integer scalar array).'
    )
  return value


def check_dtype(name: str, value: Any) -> jnp.dtype | None:
  """``value`` as a floating ``jnp.dtype`` (``None`` stays ``None``).

  Raises:
    ValueError: ``value`` is not a dtype, or not a floating one; the message
      names the argument.
  """
  if value is None:
    return None
  try:
    dtype = jnp.dtype(value)
  except (TypeError, ValueError):
    raise ValueError(
      f'{name}={value!r} is not a dtype: pass None or a floating dtype such '
      "as 'float32' or jnp.bfloat16."
    ) from None
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
      f'{name}={value!r} is not a floating dtype: pass None or a floating '
      "dtype such as 'float32' or jnp.bfloat16."
    )
  return dtype
