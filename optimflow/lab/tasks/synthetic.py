"""Synthetic test problems with known solutions.

Each factory returns a :class:`Problem`: a starting point, a scalar loss and
the known optimum. ``box`` is the Lion-kappa constraint demo: a quadratic
whose unconstrained minimiser has coordinates outside the box
``||x||_inf <= radius``, so an optimizer that respects the box lands on
``clip(center, -radius, radius)`` instead.

Examples:
  >>> import jax
  >>> from optimflow.lab.tasks import synthetic
  >>> p = synthetic.rosenbrock()
  >>> float(p.loss(p.optimum))
  0.0
  >>> q = synthetic.box(dim=50, radius=0.5, seed=0)
  >>> bool(abs(q.center).max() > 0.5), float(abs(q.optimum).max())
  (True, 0.5)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from optimflow._src import checks


@dataclasses.dataclass(frozen=True)
class Problem:
  """A small optimisation problem with a known solution.

  Attributes:
    name: short name for tables.
    init: starting point.
    loss: ``x -> scalar``; jittable.
    optimum: the known minimiser (for ``box``: the constrained one).
    center: for quadratics, the unconstrained minimiser ``c``.
    radius: for ``box``, the half-width of the box.
  """

  name: str
  init: jax.Array
  loss: Callable[[jax.Array], jax.Array]
  optimum: jax.Array
  center: Optional[jax.Array] = None
  radius: Optional[float] = None

  @property
  def optimal_value(self) -> jax.Array:
    """``loss(optimum)``."""
    return self.loss(self.optimum)


def _half_squared_distance(c: jax.Array) -> Callable[[jax.Array], jax.Array]:
  return lambda x: 0.5 * jnp.sum((x - c) ** 2)


def quadratic(
  dim: int = 200,
  *,
  scale: float = 1.5,
  seed: int = 0,
  init: Optional[jax.Array] = None,
) -> Problem:
  """``f(x) = 0.5 ||x - c||^2`` with ``c ~ U[-scale, scale]^dim``.

  Args:
    dim: number of coordinates.
    scale: half-width of the uniform law of ``c``; ``> 0``.
    seed: seed of ``c``.
    init: starting point; zeros by default.

  Returns:
    A :class:`Problem` with optimum ``c``.
  """
  checks.check_int_at_least('dim', dim, 1)
  checks.check_positive('scale', scale)
  c = jax.random.uniform(
    jax.random.key(seed), (dim,), jnp.float32, -scale, scale
  )
  x0 = jnp.zeros((dim,), jnp.float32) if init is None else jnp.asarray(init)
  return Problem('quadratic', x0, _half_squared_distance(c), c, center=c)


def box(
  dim: int = 200,
  radius: float = 0.5,
  *,
  scale: float = 1.5,
  seed: int = 0,
  init: Optional[jax.Array] = None,
) -> Problem:
  """The quadratic of :func:`quadratic` restricted to ``||x||_inf <= radius``.

  With ``scale > radius`` some coordinates of ``c`` lie outside the box; the
  constrained minimiser is ``clip(c, -radius, radius)``. Lion with weight
  decay ``1/radius`` converges there (Chen, Liu, Liang, Liu, 2023).

  Args:
    dim: number of coordinates.
    radius: half-width of the box; ``> 0``.
    scale: half-width of the uniform law of ``c``; ``> 0``.
    seed: seed of ``c``.
    init: starting point; zeros by default.

  Returns:
    A :class:`Problem` whose ``optimum`` is the box solution, ``center`` is
    ``c`` and ``radius`` the box half-width.
  """
  checks.check_positive('radius', radius)
  q = quadratic(dim, scale=scale, seed=seed, init=init)
  return dataclasses.replace(
    q,
    name='box',
    optimum=jnp.clip(q.center, -radius, radius),
    radius=float(radius),
  )


def rosenbrock(
  a: float = 1.0, b: float = 100.0, init: tuple[float, float] = (-1.5, 2.0)
) -> Problem:
  """``f(x, y) = (a - x)^2 + b (y - x^2)^2``; minimum 0 at ``(a, a^2)``.

  Args:
    a: location parameter.
    b: valley steepness; ``> 0``.
    init: starting point.

  Returns:
    A 2-D :class:`Problem`.
  """
  checks.check_positive('b', b)

  def loss(x):
    return (a - x[0]) ** 2 + b * (x[1] - x[0] ** 2) ** 2

  return Problem(
    'rosenbrock',
    jnp.asarray(init, jnp.float32),
    loss,
    jnp.array([a, a * a], jnp.float32),
  )


def rastrigin(
  dim: int = 2, amplitude: float = 10.0, init: Optional[jax.Array] = None
) -> Problem:
  """``f(x) = A n + sum(x_i^2 - A cos(2 pi x_i))``; global minimum 0 at 0.

  Many local minima on the integer grid; a test of escaping them.

  Args:
    dim: number of coordinates (2 for plots).
    amplitude: ``A >= 0``.
    init: starting point; ``(2.7, -3.2, 2.7, ...)`` by default.

  Returns:
    A :class:`Problem`.
  """
  checks.check_int_at_least('dim', dim, 1)
  checks.check_non_negative('amplitude', amplitude)

  def loss(x):
    return amplitude * x.size + jnp.sum(
      x**2 - amplitude * jnp.cos(2 * math.pi * x)
    )

  if init is None:
    init = jnp.where(jnp.arange(dim) % 2 == 0, 2.7, -3.2).astype(jnp.float32)
  return Problem(
    'rastrigin',
    jnp.asarray(init, jnp.float32),
    loss,
    jnp.zeros((dim,), jnp.float32),
  )
