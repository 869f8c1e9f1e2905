"""Sharpness diagnostics: Hessian top eigenvalue and (adaptive) sharpness.

Flatness claims (SAM, ASAM, SAF, MESA) are checked with these measures:

* :func:`hessian_top_eigenvalue` -- ``lambda_max`` of the loss Hessian on a
  batch, by power iteration on Hessian-vector products (forward-over-reverse,
  no Hessian is formed).
* :func:`sharpness` -- the worst-case and average-case sharpness of
  Andriushchenko et al. (2023), adaptive (scale-invariant) or not, in the
  L-infinity or L2 geometry.

Compare models at matched training loss: cross-entropy curvature scales with
the loss, so a lower loss alone reads as "sharper" or "flatter".
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable, Literal, Optional

import jax
import jax.numpy as jnp
import optax

from optimflow._src import checks

LossFn = Callable[[optax.Params, Any], jax.Array]


def _f32(tree: Any) -> Any:
  return jax.tree.map(
    lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), tree
  )


def _uniform(key: jax.Array, shape: Any, dtype: Any) -> jax.Array:
  return jax.random.uniform(key, shape, dtype, -1.0, 1.0)


@functools.partial(jax.jit, static_argnames=('loss_fn', 'iters'))
def _power_iteration(loss_fn, params, batch, key, iters):
  params = _f32(params)
  grad = jax.grad(lambda p: loss_fn(p, batch))

  def hvp(v):
    return jax.jvp(grad, (params,), (v,))[1]

  def normalized(v):
    n = optax.tree.norm(v)
    inverse = jnp.where(n > 0, 1.0 / jnp.where(n > 0, n, 1.0), 0.0)
    return optax.tree.scale(inverse, v)

  def body(_, carry):
    v, _ = carry
    hv = hvp(v)
    return normalized(hv), optax.tree.vdot(v, hv).astype(jnp.float32)

  v0 = normalized(optax.tree.random_like(key, params))
  _, eigenvalue = jax.lax.fori_loop(
    0, iters, body, (v0, jnp.zeros([], jnp.float32))
  )
  return eigenvalue


def hessian_top_eigenvalue(
  loss_fn: LossFn,
  params: optax.Params,
  batch: Any,
  iters: int = 20,
  key: Optional[jax.Array] = None,
) -> jax.Array:
  """Largest-magnitude eigenvalue of the Hessian of ``loss_fn`` at ``params``.

  Power iteration ``v <- H v / ||H v||`` from a random unit vector, with
  ``H v`` a forward-over-reverse Hessian-vector product (``jax.jvp`` of
  ``jax.grad``); the returned value is the Rayleigh quotient ``v^T H v`` of
  the last iterate. At a minimum the Hessian is (nearly) positive
  semi-definite and this is ``lambda_max``. Convergence is geometric in the
  ratio of the two largest eigenvalues; increase ``iters`` if they are close.
  Computed in at least float32.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the point (any pytree of arrays).
    batch: the data passed to ``loss_fn``.
    iters: number of Hessian-vector products, ``>= 1``.
    key: PRNG key of the starting vector (default ``jax.random.key(0)``).

  Returns:
    A float32 scalar.

  Examples:
    >>> import jax.numpy as jnp, optimflow.diagnostics as diag
    >>> a = jnp.diag(jnp.array([3.0, 1.0, 0.5]))
    >>> loss = lambda w, batch: 0.5 * w @ a @ w
    >>> round(float(diag.hessian_top_eigenvalue(loss, jnp.ones(3), None)), 4)
    3.0

  References:
    Yao, Gholami, Keutzer, Mahoney, `PyHessian: Neural Networks Through the
    Lens of the Hessian <https://arxiv.org/abs/1912.07145>`_, 2020.
  """
  checks.check_int_at_least('iters', iters, 1)
  key = jax.random.key(0) if key is None else key
  return _power_iteration(loss_fn, params, batch, key, iters)


def _checkpoints(n_iters: int) -> list[int]:
  """APGD's step-size checkpoints: p0=0, p1=.22, p_{j+1}=p_j+max(dp-.03,.06)."""
  p = [0.0, 0.22]
  while p[-1] < 1.0:
    p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
  points = sorted({math.ceil(x * n_iters - 1e-9) for x in p if x <= 1.0})
  return [c for c in points if 0 < c <= n_iters]


def _projector(norm: str, rho: jax.Array) -> Callable[[Any], Any]:
  if norm == 'linf':
    return lambda d: jax.tree.map(lambda x: jnp.clip(x, -rho, rho), d)

  def l2(d):
    n = optax.tree.norm(d)
    return optax.tree.scale(jnp.minimum(1.0, rho / jnp.maximum(n, 1e-30)), d)

  return l2


def _ascent_direction(norm: str, g: Any) -> Any:
  if norm == 'linf':
    return jax.tree.map(jnp.sign, g)
  return optax.tree.scale(1.0 / jnp.maximum(optax.tree.norm(g), 1e-12), g)


@functools.partial(
  jax.jit, static_argnames=('loss_fn', 'norm', 'adaptive', 'n_iters')
)
def _worst_case(
  loss_fn, params, batch, rho, step_size, *, norm, adaptive, n_iters
):
  """m-APGD on ``delta~`` with ``delta = s * delta~``, ``s = |w|`` or 1."""
  params = _f32(params)
  scale = jax.tree.map(
    lambda w: jnp.abs(w) if adaptive else jnp.ones_like(w), params
  )

  def objective(d):
    shifted = jax.tree.map(lambda w, s, x: w + s * x, params, scale, d)
    return loss_fn(shifted, batch)

  value_and_grad = jax.value_and_grad(objective)
  project = _projector(norm, rho)
  checkpoints = _checkpoints(n_iters)
  is_ckpt = jnp.zeros(n_iters + 1, bool).at[jnp.array(checkpoints)].set(True)
  lengths = (
    jnp.zeros(n_iters + 1, jnp.float32)
    .at[jnp.array(checkpoints)]
    .set(jnp.diff(jnp.array([0] + checkpoints)).astype(jnp.float32))
  )

  zero = jax.tree.map(jnp.zeros_like, params)
  clean, g0 = value_and_grad(zero)
  init = dict(
    d=zero,
    d_prev=zero,
    loss=clean,
    grad=g0,
    eta=step_size,
    best=clean,
    best_d=zero,
    best_grad=g0,
    successes=jnp.zeros([]),
    eta_ckpt=step_size,
    best_ckpt=clean,
  )

  def body(k, c):
    ascent = _ascent_direction(norm, c['grad'])
    z = project(jax.tree.map(lambda d, a: d + c['eta'] * a, c['d'], ascent))
    a = jnp.where(k == 0, 1.0, 0.75)
    d = project(
      jax.tree.map(
        lambda d, z, p: d + a * (z - d) + (1 - a) * (d - p),
        c['d'],
        z,
        c['d_prev'],
      )
    )
    loss, grad = value_and_grad(d)
    successes = c['successes'] + (loss > c['loss'])
    better = loss > c['best']
    pick = lambda new, old: jax.tree.map(
      lambda x, y: jnp.where(better, x, y), new, old
    )
    best, best_d, best_grad = pick(
      (loss, d, grad), (c['best'], c['best_d'], c['best_grad'])
    )
    # Checkpoint: halve the step and restart from the best point when too few
    # steps improved, or when neither the step nor the best value changed.
    at = is_ckpt[k + 1]
    few = successes < 0.75 * lengths[k + 1]
    stuck = (c['eta'] == c['eta_ckpt']) & (best == c['best_ckpt'])
    reduce = at & (few | stuck)
    restart = lambda x, y: jax.tree.map(
      lambda u, v: jnp.where(reduce, u, v), x, y
    )
    d, d_prev, loss, grad = restart(
      (best_d, best_d, best, best_grad), (d, c['d'], loss, grad)
    )
    return dict(
      d=d,
      d_prev=d_prev,
      loss=loss,
      grad=grad,
      eta=jnp.where(reduce, c['eta'] / 2, c['eta']),
      best=best,
      best_d=best_d,
      best_grad=best_grad,
      successes=jnp.where(at, 0.0, successes),
      eta_ckpt=jnp.where(at, c['eta'], c['eta_ckpt']),
      best_ckpt=jnp.where(at, best, c['best_ckpt']),
    )

  final = jax.lax.fori_loop(0, n_iters, body, init)
  return final['best'] - clean


@functools.partial(
  jax.jit, static_argnames=('loss_fn', 'norm', 'adaptive', 'n_iters')
)
def _average_case(loss_fn, params, batch, rho, key, *, norm, adaptive, n_iters):
  params = _f32(params)
  sampler = jax.random.normal if norm == 'l2' else _uniform

  def sample(args):
    k, r = args
    u = optax.tree.random_like(k, params, sampler)
    shifted = jax.tree.map(
      lambda w, x: w + r * (jnp.abs(w) if adaptive else 1.0) * x,
      params,
      u,
    )
    return loss_fn(shifted, batch)

  # Sample 0 has radius 0: the clean loss, computed by the same code.
  radii = jnp.zeros(n_iters + 1, jnp.float32).at[1:].set(rho)
  losses = jax.lax.map(sample, (jax.random.split(key, n_iters + 1), radii))
  return jnp.mean(losses[1:] - losses[0])


def sharpness(
  loss_fn: LossFn,
  params: optax.Params,
  batches: Iterable[Any],
  *,
  rho: float,
  kind: Literal['worst', 'average'] = 'worst',
  norm: Literal['linf', 'l2'] = 'linf',
  adaptive: bool = True,
  n_iters: int = 20,
  key: Optional[jax.Array] = None,
  step_size_mult: float = 1.0,
) -> jax.Array:
  """Worst-case or average-case (adaptive) sharpness, averaged over batches.

  For each batch ``B`` (of size m, the "m" of m-sharpness):

  .. math::

    S_{\\text{worst}} = \\max_{\\delta \\in C} L_B(w + \\delta) - L_B(w),
    \\qquad
    S_{\\text{avg}} = \\mathbb{E}_\\delta\\, L_B(w + \\delta) - L_B(w),

  with, writing ``s = |w|`` (adaptive) or ``s = 1``, ``delta = s * u``:

  * worst, ``linf``: ``||u||_inf <= rho``; worst, ``l2``: ``||u||_2 <= rho``;
  * average, ``l2``: ``u ~ N(0, rho^2 I)`` (not normalized to a sphere);
    average, ``linf``: ``u ~ U[-rho, rho]``.

  Adaptive measures use ``|w|`` on every leaf, biases included, so they are
  invariant to rescalings that leave a ReLU network's function unchanged.
  The worst case is searched by m-APGD (Andriushchenko et al.) in ``u``
  coordinates: ``u_0 = 0``, step ``eta_0 = 2 rho step_size_mult``, ascent
  direction ``sign(grad_u)`` (``linf``) or ``grad_u / ||grad_u||`` (``l2``),
  projection onto the ball, momentum 0.75, and at checkpoints ``p_0 = 0,
  p_1 = .22, p_{j+1} = p_j + max(p_j - p_{j-1} - .03, .06)`` the step is
  halved and the search restarts from the best point when fewer than 75% of
  the steps since the last checkpoint improved, or when neither the step
  nor the best value changed. The best value seen (``u = 0`` included) is
  returned, so ``S_worst >= 0``. Two departures from the reference code,
  both to make the adaptive measure exactly invariant: the ``l2`` ascent
  direction is normalized in ``u`` coordinates (the reference uses the
  unweighted ``||grad_w||``), so the projection onto the ellipsoid
  ``||delta / |w| ||_2 <= rho`` is a rescaling of ``u`` instead of a
  bisection; a restart also resets ``u`` to the best point (the reference
  reloads the best weights but keeps ``u``).

  Cost per batch: ``n_iters + 1`` forward-backward passes (worst) or
  ``n_iters + 1`` forward passes (average).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar`` mean loss (evaluation mode,
      e.g. BatchNorm with running statistics; normalize the logits inside it
      to remove cross-entropy's scale).
    params: the parameters.
    batches: an iterable of batches (e.g. a list of ``(x, y)``); ``[batch]``
      for one batch. The reference uses 1024 training examples in batches of
      128.
    rho: radius, ``>= 0``. Reference grids (CIFAR-10, ResNet-18): adaptive
      worst-``linf`` 0.001 to 0.008, adaptive average-``l2`` 0.05 to 0.4.
    kind: ``'worst'`` or ``'average'``.
    norm: ``'linf'`` or ``'l2'``.
    adaptive: scale perturbations by ``|w|``.
    n_iters: ascent steps (worst) or samples (average), ``>= 1``.
    key: PRNG key; required for ``kind='average'``.
    step_size_mult: multiplier of the initial ascent step (worst case).

  Returns:
    The mean over batches, a float32 scalar.

  Examples:
    >>> import jax, jax.numpy as jnp, optimflow.diagnostics as diag
    >>> loss = lambda w, b: 0.5 * jnp.sum(b * w ** 2)   # curvature b
    >>> w, b = jnp.ones(2), jnp.array([4.0, 1.0])
    >>> s = diag.sharpness(loss, w, [b], rho=0.1, kind='worst', norm='linf')
    >>> round(float(s), 4)   # 0.5 * (4 + 1) * (1.1**2 - 1)
    0.525
    >>> float(diag.sharpness(loss, w, [b], rho=0.0))
    0.0

  References:
    Andriushchenko, Croce, Müller, Hein, Flammarion, `A Modern Look at the
    Relationship between Sharpness and Generalization
    <https://arxiv.org/abs/2302.07011>`_, 2023.
  """
  checks.check_choice('kind', kind, ('worst', 'average'))
  checks.check_choice('norm', norm, ('linf', 'l2'))
  checks.check_non_negative('rho', rho)
  checks.check_int_at_least('n_iters', n_iters, 1)
  checks.check_positive('step_size_mult', step_size_mult)
  if kind == 'average' and key is None:
    raise ValueError(
      "kind='average' samples perturbations: pass key=jax.random.key(seed)."
    )
  statics = dict(norm=norm, adaptive=bool(adaptive), n_iters=n_iters)
  rho = jnp.asarray(rho, jnp.float32)
  values = []
  for i, batch in enumerate(batches):
    if kind == 'worst':
      values.append(
        _worst_case(
          loss_fn, params, batch, rho, 2.0 * rho * step_size_mult, **statics
        )
      )
    else:
      values.append(
        _average_case(
          loss_fn, params, batch, rho, jax.random.fold_in(key, i), **statics
        )
      )
  if not values:
    raise ValueError('batches is empty: pass at least one batch.')
  return jnp.mean(jnp.stack(values))
