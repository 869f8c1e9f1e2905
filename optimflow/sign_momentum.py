"""Sign momentum: Lion and the Lion-kappa family.

Lion (Chen et al., 2023) takes the sign of an interpolation between the
gradient and its momentum. Lion-kappa (Chen, Liu, Liang, Liu, 2023) replaces
the sign by the gradient of any convex function kappa and shows that, with
decoupled weight decay lambda, the iteration solves the composite problem

.. math::

  \\min_x f(x) + \\tfrac{1}{\\lambda}\\,\\kappa^*(\\lambda x),

where kappa* is the convex conjugate of kappa. With ``kappa = ||.||_1`` (the
sign) the second term is the indicator of the box ``||x||_inf <= 1/lambda``:
Lion with weight decay is constrained optimisation. The kappa functions shipped
here, and the problem each one solves (``f`` plus the term on the right):

===================== =============================== ==================================
name                  gradient of kappa at y          term added to f (its constraint)
===================== =============================== ==================================
``'sign'``            sign(y)                         box ``||x||_inf <= 1/lambda``
``'l2'``              y / ||y||_2 (per leaf)          ball ``||x||_2 <= 1/lambda`` per leaf
``('lp', p)``         sign(y)(|y|/||y||_p)^(p-1)      ball ``||x||_q <= 1/lambda``, 1/p+1/q=1
``'quadratic'``       y                               ``(lambda/2)||x||^2`` (momentum SGD)
``('huber', d)``      clip(y/d, -1, 1)                ``(d lambda/2)||x||^2`` + box
``('dead_zone', d)``  sign(y) 1{|y| > d}              ``d ||x||_1`` + box
``('relativistic', d)`` y / sqrt(y^2 + d^2)           ``-(d/lambda) sum sqrt(1-lambda^2 x^2)`` on the box
===================== =============================== ==================================

At a fixed point ``lambda x* = grad_kappa(-grad f(x*))``; the tests check each
row against the closed form on ``f = 0.5||x - c||^2``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from optimflow._src import checks
from optimflow._src.tree import MaskOrFn

KappaGrad = Callable[[jax.Array], jax.Array]
KappaSpec = Union[str, tuple[str, float], KappaGrad]

_NAMED = ('sign', 'l1', 'l2', 'quadratic')
_WITH_PARAMETER = ('huber', 'dead_zone', 'relativistic', 'lp')


def _unit_scale(y: jax.Array, norm_fn: Callable[[jax.Array], jax.Array]):
  """Divides ``y`` by ``norm_fn(y)``, returning zero where the norm is zero."""
  n = norm_fn(y)
  return jnp.where(n > 0, y / jnp.where(n > 0, n, 1), 0)


def _normalize(y: jax.Array, p: float) -> jax.Array:
  """``y / ||y||_p`` in at least float32; zero for zero, no overflow."""
  y = y.astype(jnp.promote_types(y.dtype, jnp.float32))
  # Rescale by max|y| first so that |y|^p neither overflows nor underflows.
  z = _unit_scale(y, lambda v: jnp.max(jnp.abs(v), initial=0.0))
  if p == 2.0:
    return _unit_scale(z, lambda v: jnp.sqrt(jnp.sum(v * v)))
  return _unit_scale(z, lambda v: jnp.sum(jnp.abs(v) ** p) ** (1.0 / p))


def _l2_direction(y: jax.Array) -> jax.Array:
  return _normalize(y, 2.0).astype(y.dtype)


def _lp_direction(p: float) -> KappaGrad:
  def grad(y: jax.Array) -> jax.Array:
    z = _normalize(y, p)
    return (jnp.sign(z) * jnp.abs(z) ** (p - 1.0)).astype(y.dtype)

  return grad


def kappa_gradient(kappa: KappaSpec) -> KappaGrad:
  """Returns the leaf-wise map ``y -> grad kappa(y)`` for a kappa spec.

  Args:
    kappa: ``'sign'`` (alias ``'l1'``), ``'l2'``, ``'quadratic'``, a pair
      ``('huber', d)``, ``('dead_zone', d)``, ``('relativistic', d)`` with
      ``d > 0``, a pair ``('lp', p)`` with ``p >= 1``, or a callable taking
      and returning an array of the same shape (applied to each leaf).

  Returns:
    A function applied to each leaf of the interpolated momentum.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optimflow
    >>> grad = optimflow.kappa_gradient(('huber', 2.0))
    >>> grad(jnp.array([-4.0, 1.0, 0.0]))
    Array([-1. ,  0.5,  0. ], dtype=float32)
  """
  if callable(kappa):
    return kappa
  if isinstance(kappa, str):
    if kappa in ('sign', 'l1'):
      return jnp.sign
    if kappa == 'l2':
      return _l2_direction
    if kappa == 'quadratic':
      return lambda y: y
    if kappa in _WITH_PARAMETER:
      raise ValueError(
        f'kappa={kappa!r} needs a parameter: pass ({kappa!r}, value).'
      )
  elif isinstance(kappa, tuple) and len(kappa) == 2:
    name, d = kappa
    if name == 'lp':
      checks.check_interval('kappa p', d, 1.0)
      return _lp_direction(float(d))
    if name in _WITH_PARAMETER:
      checks.check_positive(f'kappa {name} delta', d)
      d = float(d)
      if name == 'huber':
        return lambda y: jnp.clip(y / d, -1, 1)
      if name == 'dead_zone':
        return lambda y: jnp.where(jnp.abs(y) > d, jnp.sign(y), 0).astype(
          y.dtype
        )
      return lambda y: y * jax.lax.rsqrt(y * y + d * d)
  names = ', '.join(repr(n) for n in _NAMED)
  pairs = ', '.join(f'({n!r}, value)' for n in _WITH_PARAMETER)
  raise ValueError(
    f'kappa={kappa!r} is not supported: choose one of {names}, {pairs}, '
    'or a callable array -> array.'
  )


class ScaleByLionKappaState(NamedTuple):
  """State of :func:`scale_by_lion_kappa`: step count and momentum."""

  count: jax.Array
  mu: optax.Updates


def scale_by_lion_kappa(
  kappa: KappaSpec = 'sign',
  b1: float = 0.9,
  b2: float = 0.99,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformation:
  """Lion-kappa direction: ``grad_kappa(b1 m + (1 - b1) g)``, then the EMA.

  .. math::

    c_t = b_1 m_{t-1} + (1 - b_1) g_t, \\quad
    u_t = \\nabla\\kappa(c_t), \\quad
    m_t = b_2 m_{t-1} + (1 - b_2) g_t.

  The direction uses the *old* momentum; the momentum is updated after.
  Updates come back in the gradient's dtype. Entries where ``c_t`` is NaN or
  infinite are passed on unchanged (``sign(inf) = 1`` would hide them), so a
  non-finite gradient gives a non-finite update.

  Args:
    kappa: which kappa; see :func:`kappa_gradient`. Static.
    b1: interpolation between momentum and gradient, in [0, 1].
    b2: momentum decay, in [0, 1).
    mu_dtype: dtype of the momentum; ``None`` keeps the parameters' dtype.

  Returns:
    A :class:`optax.GradientTransformation`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optimflow
    >>> tx = optimflow.scale_by_lion_kappa(('huber', 1.0))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> u, state = tx.update(jnp.array([5.0, -0.5]), state)
    >>> u
    Array([ 0.5 , -0.05], dtype=float32)

  References:
    Chen, Liu, Liang, Liu, `Lion Secretly Solves Constrained Optimization:
    As Lyapunov Predicts <https://arxiv.org/abs/2310.05898>`_, 2023.
  """
  grad_kappa = kappa_gradient(kappa)
  checks.check_beta('b1', b1)
  checks.check_beta('b2', b2, allow_one=False)
  mu_dtype = checks.check_dtype('mu_dtype', mu_dtype)

  def init_fn(params):
    mu = optax.tree.zeros_like(params, dtype=mu_dtype)
    return ScaleByLionKappaState(count=jnp.zeros([], jnp.int32), mu=mu)

  def update_fn(updates, state, params=None):
    del params

    def direction(g, m):
      c = (1.0 - b1) * g + b1 * m
      # sign(inf) = 1 and a clipped kappa would hide an infinite gradient:
      # non-finite entries of c are passed on, so a bad step shows.
      return jnp.where(jnp.isfinite(c), grad_kappa(c), c).astype(g.dtype)

    new_updates = jax.tree.map(direction, updates, state.mu)
    mu = optax.tree.update_moment(updates, state.mu, b2, 1)
    mu = optax.tree.cast(mu, mu_dtype)
    count = optax.safe_increment(state.count)
    return new_updates, ScaleByLionKappaState(count=count, mu=mu)

  return optax.GradientTransformation(init_fn, update_fn)


class ScaleByImplicitDecayState(NamedTuple):
  """Step count used to evaluate schedules."""

  count: jax.Array


def _at(value: optax.ScalarOrSchedule, count: jax.Array) -> jax.Array:
  return value(count) if callable(value) else value


def scale_by_implicit_decay(
  learning_rate: optax.ScalarOrSchedule,
  weight_decay: optax.ScalarOrSchedule,
) -> optax.GradientTransformation:
  """Divides updates by ``1 + learning_rate * weight_decay``.

  Placed after ``add_decayed_weights`` and ``scale_by_learning_rate`` it turns
  the explicit step ``x - eta (u + lambda x)`` into the implicit one
  ``(x - eta u) / (1 + eta lambda)`` used by Lion-kappa's discrete theorem.

  Args:
    learning_rate: the learning rate (float or schedule) of the chain.
    weight_decay: the decay (float or schedule) of the chain.

  Returns:
    A :class:`optax.GradientTransformation`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optimflow
    >>> tx = optimflow.scale_by_implicit_decay(0.5, 2.0)
    >>> u, _ = tx.update(jnp.array([4.0]), tx.init(jnp.zeros(1)))
    >>> u
    Array([2.], dtype=float32)
  """

  def init_fn(params):
    del params
    return ScaleByImplicitDecayState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    del params
    factor = 1.0 / (
      1.0 + _at(learning_rate, state.count) * _at(weight_decay, state.count)
    )
    updates = jax.tree.map(lambda u: (factor * u).astype(u.dtype), updates)
    return updates, ScaleByImplicitDecayState(optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


def lion_kappa(
  learning_rate: optax.ScalarOrSchedule,
  kappa: KappaSpec = 'sign',
  b1: float = 0.9,
  b2: float = 0.99,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: MaskOrFn = None,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
  implicit_decay: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Lion-kappa: ``x <- x - eta (grad_kappa(c) + lambda x)``.

  With decay ``lambda > 0`` this solves ``min f(x) + kappa*(lambda x)/lambda``
  (see the module docstring for the constraint each kappa imposes). With
  ``implicit_decay=True`` the step is ``x <- (x - eta grad_kappa(c)) /
  (1 + eta lambda)``, the form of the paper's discrete-time analysis.

  Args:
    learning_rate: float or schedule, ``>= 0``.
    kappa: see :func:`kappa_gradient`. Static (use ``static_args=('kappa',)``
      with ``optax.inject_hyperparams``).
    b1: interpolation between momentum and gradient, in [0, 1].
    b2: momentum decay, in [0, 1).
    weight_decay: decoupled decay ``lambda >= 0``, float or schedule; scaled by
      the learning rate as in Lion.
    mask: which leaves are decayed (tree of bools, or a callable on params).
    mu_dtype: dtype of the momentum.
    implicit_decay: use the implicit (proximal) decay step.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optimflow
    >>> c = jnp.array([2.0, -0.1, 0.3])
    >>> loss = lambda x: 0.5 * jnp.sum((x - c) ** 2)
    >>> sched = optax.linear_schedule(0.05, 0.0, 2000)
    >>> tx = optimflow.lion_kappa(sched, kappa='sign', weight_decay=2.0)
    >>> def step(carry, _):
    ...   x, state = carry
    ...   u, state = tx.update(jax.grad(loss)(x), state, x)
    ...   return (optax.apply_updates(x, u), state), None
    >>> x = jnp.zeros(3)
    >>> (x, _), _ = jax.lax.scan(step, (x, tx.init(x)), length=2000)
    >>> [round(v, 2) for v in x.tolist()]  # clip(c, +-1/lambda), radius 0.5
    [0.5, -0.1, 0.3]

  References:
    Chen, Liu, Liang, Liu, `Lion Secretly Solves Constrained Optimization:
    As Lyapunov Predicts <https://arxiv.org/abs/2310.05898>`_, 2023.
  """
  checks.check_non_negative('learning_rate', learning_rate)
  checks.check_non_negative('weight_decay', weight_decay)
  parts = [
    scale_by_lion_kappa(kappa=kappa, b1=b1, b2=b2, mu_dtype=mu_dtype),
    optax.add_decayed_weights(weight_decay, mask),
    optax.scale_by_learning_rate(learning_rate),
  ]
  if implicit_decay:
    implicit = scale_by_implicit_decay(learning_rate, weight_decay)
    parts.append(implicit if mask is None else optax.masked(implicit, mask))
  return optax.chain(*parts)


def lion(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.99,
  weight_decay: optax.ScalarOrSchedule = 0.0,
  mask: MaskOrFn = None,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  """Lion: ``x <- x - eta (sign(b1 m + (1 - b1) g) + lambda x)``.

  Bit-identical to ``optax.lion`` given the same arguments. Note the one
  difference in defaults: ``optax.lion`` decays by ``weight_decay=1e-3``
  unless told otherwise, ours by ``0.0`` (as the PyTorch packages do). Lion
  wants a learning rate 3-10x smaller and a decay 3-10x larger than AdamW,
  keeping their product; with decay the iterate stays in the box
  ``||x||_inf <= 1/weight_decay``.

  Args:
    learning_rate: float or schedule, ``>= 0``.
    b1: interpolation between momentum and gradient, in [0, 1].
    b2: momentum decay, in [0, 1).
    weight_decay: decoupled decay, float or schedule, ``>= 0``.
    mask: which leaves are decayed.
    mu_dtype: dtype of the momentum.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optimflow
    >>> tx = optimflow.lion(1e-3, weight_decay=1e-2)
    >>> params = {'w': jnp.ones((2, 2))}
    >>> state = tx.init(params)
    >>> grads = {'w': jnp.array([[1.0, -1.0], [0.0, 2.0]])}
    >>> u, state = tx.update(grads, state, params)
    >>> (u['w'] * 1e5).round().tolist()  # -lr * (sign(0.1 g) + wd * w)
    [[-101.0, 99.0], [-1.0, -101.0]]

  References:
    Chen et al., `Symbolic Discovery of Optimization Algorithms
    <https://arxiv.org/abs/2302.06675>`_, 2023.
  """
  return lion_kappa(
    learning_rate,
    kappa='sign',
    b1=b1,
    b2=b2,
    weight_decay=weight_decay,
    mask=mask,
    mu_dtype=mu_dtype,
  )
