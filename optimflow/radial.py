"""Radial projection: AdamP and SGDP.

On a scale-invariant weight ``w`` (one followed by a normalisation layer, so
that ``f(c w) = f(w)``) the gradient is orthogonal to ``w``. Momentum still
adds a radial component to the update, which inflates ``||w||`` and, because
the effective step size of a scale-invariant weight is ``eta / ||w||^2``,
slows training down prematurely. AdamP and SGDP (Heo et al., 2021) detect
scale-invariant weights from the cosine between gradient and weight and remove
the radial component of the update:

.. math::

  \\text{if } \\max_c |\\cos(g_c, w_c)| < \\delta / \\sqrt{n}: \\quad
  u_c \\leftarrow u_c - \\hat w_c \\langle \\hat w_c, u_c \\rangle, \\quad
  \\hat w_c = w_c / (\\|w_c\\| + \\epsilon),

first for every output channel ``c`` (rows of length ``n``), and if that test
fails, for the whole leaf viewed as one row. When the projection fires, the
decoupled weight decay is multiplied by ``wd_ratio``.

Layouts. The channel is ``channel_axis`` of each leaf; the default ``-1`` is
the output axis of Flax kernels (Dense ``(in, out)``, Conv ``(..., in, out)``).
For PyTorch-style ``(out, in, ...)`` leaves pass ``channel_axis=0``: this is
what the reference (``adamp`` on PyPI) does on torch weights. Leaves with fewer
than two dimensions (biases, norm scales, scalars) are never projected.

Cosine and zero rows. The cosine follows current PyTorch
``F.cosine_similarity(x, y, eps)``, which clamps each norm separately:
``<x, y> / (max(||x||, eps) max(||y||, eps))`` (PyTorch 1.9 clamped the
product, ``<x, y> / max(||x|| ||y||, eps)``; the two differ only for rows
with a norm below ``eps`` or a product of norms below ``eps``, e.g. two
aligned rows of norm 1e-5: cosine 1 now, 0.01 then). A zero row of the
weight or of the gradient has cosine 0, never NaN. A zero-initialised kernel
(LoRA B, zero-init heads) therefore always passes the test: the projection is
a no-op on it (``w_hat = 0``) but its decay is scaled by ``wd_ratio``, as in
the reference.

The statistics are computed in (at least) float32 whatever the parameter
dtype, so ``eps = 1e-8`` does not underflow in bfloat16/float16. All branch
selection is ``jnp.where``; ``delta``, ``wd_ratio``, ``eps``, the betas,
``momentum``, ``dampening`` and ``weight_decay`` may be traced (they survive
``optax.inject_hyperparams``). ``channel_axis`` is structural but survives
``inject_hyperparams`` too: a traced axis picks among the leaf's axes with
``lax.switch`` (``static_args=('channel_axis',)`` compiles only the one).

Faithful to the reference (PyPI ``adamp`` 0.3.0), including two details that
are easy to miss: the cosine test uses the raw gradient while the projection
acts on the update; and in SGDP without Nesterov the reference projects its
momentum buffer in place, so the projected momentum is what is carried to
the next step (done here too).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimflow._src import checks
from optimflow._src.tree import MaskOrFn
from optimflow._src.tree import compute_dtype


def _check_channel_axis(channel_axis: Any) -> Union[int, jax.Array]:
  """``channel_axis`` as an int, or a traced integer scalar.

  ``optax.inject_hyperparams`` turns the int into an int32 array: a concrete
  one is converted back, a traced one (``update`` under ``jit``) is kept and
  :func:`radial_projection` picks the axis with ``lax.switch``.
  """
  if (
    isinstance(channel_axis, (jax.Array, np.ndarray, np.generic))
    and np.shape(channel_axis) == ()
    and jnp.issubdtype(channel_axis.dtype, jnp.integer)
  ):
    if isinstance(channel_axis, jax.core.Tracer):
      return channel_axis
    channel_axis = int(channel_axis)
  if isinstance(channel_axis, bool) or not isinstance(channel_axis, int):
    raise ValueError(
      f'channel_axis={channel_axis!r} is invalid: channel_axis must be an '
      'integer axis (-1 for Flax kernels, 0 for PyTorch (out, in) weights).'
    )
  return channel_axis


def _check_projection_args(delta, wd_ratio, eps, weight_decay, channel_axis):
  checks.check_positive('delta', delta)
  checks.check_interval('wd_ratio', wd_ratio, 0.0, 1.0)
  checks.check_positive('eps', eps)
  checks.check_non_negative('weight_decay', weight_decay)
  return _check_channel_axis(channel_axis)


def radial_projection(
  update: jax.Array,
  grad: jax.Array,
  param: jax.Array,
  delta: jax.typing.ArrayLike = 0.1,
  eps: jax.typing.ArrayLike = 1e-8,
  channel_axis: int = -1,
  allowed: jax.typing.ArrayLike = True,
) -> tuple[jax.Array, jax.Array]:
  """Removes the radial part of ``update`` where ``param`` is scale-invariant.

  For a leaf with at least two dimensions, with channels along
  ``channel_axis`` and ``n`` entries per channel:

  1. channel view: if ``max_c |cos(grad_c, param_c)| < delta / sqrt(n)``, each
     channel of the update loses its component along that channel of the
     parameter;
  2. otherwise, layer view: if ``|cos(grad, param)| < delta / sqrt(size)``, the
     update loses its component along the whole parameter;
  3. otherwise the update is unchanged.

  Both views use the same four per-channel sums (``<g, w>``, ``||g||^2``,
  ``||w||^2``, ``<w, u>``), one reduction each; the layer sums are sums of
  the channel sums, so the leaf is read once per statistic. Leaves with fewer
  than two dimensions are returned unchanged.

  Args:
    update: the update to project (any float dtype).
    grad: the raw gradient used for the cosine test.
    param: the parameter.
    delta: threshold of the cosine test, ``> 0``.
    eps: floor of the norms in the cosine and added to the norm of ``param``
      in the projection, ``> 0``.
    channel_axis: axis of ``param`` indexing channels (``-1``: Flax layout,
      ``0``: PyTorch ``(out, in, ...)`` layout); a traced integer selects
      the axis with ``lax.switch`` (taken modulo the rank).
    allowed: a boolean (or boolean scalar array); when false, never project.

  Returns:
    The projected update, in float32 or wider (the dtype the statistics were
    computed in; leaves that are not examined come back as given), and a
    boolean scalar, true when a projection fired.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optimflow
    >>> w = jnp.array([[1.0], [2.0]])        # one channel (Flax layout)
    >>> g = jnp.array([[2.0], [-1.0]])       # orthogonal to w
    >>> u, fired = optimflow.radial_projection(jnp.array([[1.0], [-1.0]]), g, w)
    >>> bool(fired), [round(x, 4) for x in u.ravel().tolist()]
    (True, [1.2, -0.6])
    >>> round(float(jnp.vdot(u, w)), 6)      # orthogonal to w
    0.0
  """
  if param.ndim < 2 or allowed is False:  # static: nothing to project
    return update, jnp.zeros([], bool)
  if isinstance(channel_axis, jax.core.Tracer):  # inject_hyperparams + jit
    branches = [
      functools.partial(
        radial_projection,
        delta=delta,
        eps=eps,
        channel_axis=axis,
        allowed=allowed,
      )
      for axis in range(param.ndim)
    ]
    index = jnp.mod(channel_axis, param.ndim)
    return jax.lax.switch(index, branches, update, grad, param)
  if not -param.ndim <= channel_axis < param.ndim:
    raise ValueError(
      f'channel_axis={channel_axis} is out of range for a parameter of '
      f'shape {param.shape}.'
    )
  dtype = jnp.promote_types(jnp.result_type(update, grad, param), jnp.float32)
  u, g, w = (x.astype(dtype) for x in (update, grad, param))
  axis = channel_axis % w.ndim
  reduce_axes = tuple(a for a in range(w.ndim) if a != axis)
  row_length = max(w.size // max(w.shape[axis], 1), 1)

  def channel_sum(x):
    return jnp.sum(x, axis=reduce_axes, keepdims=True)

  # |g|^2 rather than g * g: XLA would merge g * g with the g**2 of Adam's
  # second moment and materialise it in a separate pass.
  gg = channel_sum(jnp.abs(g) * jnp.abs(g))
  gw, ww, wu = (channel_sum(x) for x in (g * w, w * w, w * u))
  # The layer sums below are sums of these channel sums. Without the barrier
  # XLA rewrites sum(sum(x, axes), rest) into a second full pass over x
  # (3-4x slower on CPU for large kernels).
  gw, gg, ww, wu = jax.lax.optimization_barrier((gw, gg, ww, wu))

  def abs_cosine(gw, gg, ww):
    # torch's F.cosine_similarity: each norm clamped at eps separately.
    return jnp.abs(gw) / (
      jnp.maximum(jnp.sqrt(gg), eps) * jnp.maximum(jnp.sqrt(ww), eps)
    )

  def coefficient(wu, ww):
    # <w_hat, u> / (||w|| + eps), with w_hat = w / (||w|| + eps).
    norm = jnp.sqrt(ww) + eps
    return wu / norm / norm

  layer_gw, layer_gg, layer_ww, layer_wu = (
    jnp.sum(x) for x in (gw, gg, ww, wu)
  )
  channel_fires = jnp.max(abs_cosine(gw, gg, ww), initial=0.0) < (
    delta / math.sqrt(row_length)
  )
  layer_fires = abs_cosine(layer_gw, layer_gg, layer_ww) < (
    delta / math.sqrt(max(w.size, 1))
  )
  channel_fires = jnp.logical_and(channel_fires, allowed)
  layer_fires = jnp.logical_and(layer_fires, allowed)
  coef = jnp.where(
    channel_fires,
    coefficient(wu, ww),
    jnp.where(layer_fires, coefficient(layer_wu, layer_ww), 0.0),
  )
  return u - coef * w, jnp.logical_or(channel_fires, layer_fires)


def _leaf_flags(mask: MaskOrFn, params: optax.Params) -> Any:
  """Broadcasts a mask (prefix tree, or callable on params) to the leaves."""
  if mask is None:
    return jax.tree.map(lambda _: True, params)
  if callable(mask):
    mask = mask(params)
  return jax.tree.map(
    lambda m, subtree: jax.tree.map(lambda _: m, subtree), mask, params
  )


def _map_leaves(
  leaf_fn, n_out, updates, params, mask, weight_decay_mask, *moments
):
  """Maps ``leaf_fn(g, w, may_project, decays, *moments)`` over the leaves.

  ``leaf_fn`` returns a tuple of ``n_out`` arrays; the result is the tuple of
  the ``n_out`` trees of its entries (``None`` where ``updates`` has ``None``).
  """
  if params is None:
    raise ValueError(
      'AdamP/SGDP need the parameters: call update(updates, state, params).'
    )
  project = _leaf_flags(mask, params)
  decays = _leaf_flags(weight_decay_mask, params)
  is_none = lambda x: x is None
  outs = jax.tree.map(
    lambda g, *rest: None if g is None else leaf_fn(g, *rest),
    updates,
    params,
    project,
    decays,
    *moments,
    is_leaf=is_none,
  )
  return tuple(
    jax.tree.map(
      lambda g, o, i=i: None if g is None else o[i],
      updates,
      outs,
      is_leaf=is_none,
    )
    for i in range(n_out)
  )


def _project_and_decay(
  direction,
  grad,
  param,
  may_project,
  decays,
  *,
  scale,
  weight_decay,
  delta,
  eps,
  wd_ratio,
  channel_axis,
):
  """``scale * proj(direction) + weight_decay * ratio * param`` in grad's dtype.

  ``ratio`` is ``wd_ratio`` when the projection fired on this leaf, else 1.
  Returns the update and ``proj(direction)`` (in the compute dtype).
  """
  projected, fired = radial_projection(
    direction, grad, param, delta, eps, channel_axis, may_project
  )
  ratio = jnp.where(fired, wd_ratio, 1.0)
  decay = jnp.where(decays, weight_decay * ratio, 0.0)
  update = scale * projected + decay * param.astype(projected.dtype)
  return update.astype(grad.dtype), projected


def _one_minus_power(b, count):
  """``1 - b**count`` without the cancellation of the direct float32 form.

  For ``b = 0.999`` and small ``count`` the direct form loses ~1e-5 relative
  accuracy in float32; ``-expm1(count * log1p(b - 1))`` keeps ~1e-7.
  """
  return -jnp.expm1(count * jnp.log1p(-(1.0 - b)))


class ScaleByAdamPState(NamedTuple):
  """State of :func:`scale_by_adamp`: step count and Adam's two moments."""

  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def scale_by_adamp(
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  weight_decay: jax.typing.ArrayLike = 0.0,
  delta: jax.typing.ArrayLike = 0.1,
  wd_ratio: jax.typing.ArrayLike = 0.1,
  nesterov: bool = False,
  channel_axis: int = -1,
  mask: MaskOrFn = None,
  weight_decay_mask: MaskOrFn = None,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformation:
  """AdamP direction: Adam, radial projection, projection-aware decay.

  .. math::

    m_t = b_1 m_{t-1} + (1-b_1) g_t, \\quad v_t = b_2 v_{t-1} + (1-b_2) g_t^2,

    d_t = \\frac{\\tilde m_t}{\\sqrt{v_t}/\\sqrt{1-b_2^t} + \\epsilon}, \\quad
    \\tilde m_t = b_1 m_t + (1-b_1) g_t \\text{ (nesterov), else } m_t,

    u_t = \\mathrm{proj}(d_t; g_t, w) / (1 - b_1^t) + \\lambda r_t w,

  where ``proj`` is :func:`radial_projection` and ``r_t`` is ``wd_ratio``
  on leaves where it fired, 1 elsewhere. Chained with
  ``scale_by_learning_rate(eta)`` this is the reference step
  ``w <- w (1 - eta lambda r_t) - eta proj(d_t) / (1 - b_1^t)``. Updates come
  back in the gradient's dtype.

  Args:
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: added to the denominator; also the norm floor of the projection
      (one ``eps``, as in the reference), > 0.
    weight_decay: decoupled decay ``lambda >= 0``. It lives inside the
      transform because it depends on whether the projection fired.
    delta: threshold of the cosine test, > 0.
    wd_ratio: factor on the decay where the projection fires, in [0, 1].
    nesterov: Nesterov form of the first moment. Static.
    channel_axis: channel axis of each leaf: ``-1`` for Flax layouts, ``0``
      for PyTorch ``(out, in, ...)`` layouts. Static.
    mask: which leaves may be projected (a tree of bools that is a prefix of
      the params, or a callable on params); ``None``: every leaf with at
      least two dimensions.
    weight_decay_mask: which leaves are decayed, same form; ``None``: all
      leaves (as in the reference).
    mu_dtype: dtype of the first moment; ``None`` keeps the params' dtype.

  Returns:
    A :class:`optax.GradientTransformation`; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optimflow
    >>> tx = optimflow.scale_by_adamp()
    >>> w = jnp.array([[1.0], [2.0]])        # one channel, Flax layout
    >>> state = tx.init(w)
    >>> g = jnp.array([[2.0], [-1.0]])       # orthogonal to w: scale-invariant
    >>> u, state = tx.update(g, state, w)    # Adam alone would give [1, -1]
    >>> [round(x, 4) for x in u.ravel().tolist()]
    [1.2, -0.6]
    >>> round(float(jnp.vdot(u, w)), 6)
    0.0

  References:
    Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, `AdamP: Slowing Down the Slowdown
    for Momentum Optimizers on Scale-invariant Weights
    <https://arxiv.org/abs/2006.08217>`_, ICLR 2021.
  """
  checks.check_beta('b1', b1, allow_one=False)
  checks.check_beta('b2', b2, allow_one=False)
  channel_axis = _check_projection_args(
    delta, wd_ratio, eps, weight_decay, channel_axis
  )
  mu_dtype = checks.check_dtype('mu_dtype', mu_dtype)

  def init_fn(params):
    return ScaleByAdamPState(
      count=jnp.zeros([], jnp.int32),
      mu=optax.tree.zeros_like(params, dtype=mu_dtype),
      nu=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None):
    count = optax.safe_increment(state.count)
    mu = optax.tree.update_moment(updates, state.mu, b1, 1)
    nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
    bc1 = _one_minus_power(b1, count)
    sqrt_bc2 = jnp.sqrt(_one_minus_power(b2, count))

    def leaf(g, w, may_project, decays, m, v):
      dtype = compute_dtype(g)
      m, v = m.astype(dtype), v.astype(dtype)
      if nesterov:
        m = b1 * m + (1.0 - b1) * g.astype(dtype)
      # As in the reference, the bias correction of m divides after the
      # projection (which is linear in the direction).
      direction = m / (jnp.sqrt(v) / sqrt_bc2 + eps)
      update, _ = _project_and_decay(
        direction,
        g,
        w,
        may_project,
        decays,
        scale=1.0 / bc1,
        weight_decay=weight_decay,
        delta=delta,
        eps=eps,
        wd_ratio=wd_ratio,
        channel_axis=channel_axis,
      )
      return (update,)

    (new_updates,) = _map_leaves(
      leaf, 1, updates, params, mask, weight_decay_mask, mu, nu
    )
    mu = optax.tree.cast_like(mu, state.mu)
    nu = optax.tree.cast_like(nu, state.nu)
    return new_updates, ScaleByAdamPState(count=count, mu=mu, nu=nu)

  return optax.GradientTransformation(init_fn, update_fn)


def adamp(
  learning_rate: optax.ScalarOrSchedule,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-8,
  weight_decay: jax.typing.ArrayLike = 0.0,
  delta: jax.typing.ArrayLike = 0.1,
  wd_ratio: jax.typing.ArrayLike = 0.1,
  nesterov: bool = False,
  channel_axis: int = -1,
  mask: MaskOrFn = None,
  weight_decay_mask: MaskOrFn = None,
  mu_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  """AdamP: Adam without the radial part of updates on scale-invariant weights.

  ``chain(scale_by_adamp(...), scale_by_learning_rate(learning_rate))``:

  .. math::

    w \\leftarrow w - \\eta\\,\\big(\\mathrm{proj}(d_t)/(1-b_1^t)
    + \\lambda r_t w\\big),

  with the Adam direction ``d_t``, the projection and ``r_t`` of
  :func:`scale_by_adamp`. Matches ``adamp.AdamP`` (PyPI ``adamp`` 0.3.0) step
  for step; for weights stored as PyTorch ``(out, in, ...)`` pass
  ``channel_axis=0``. The decay is multiplied by the (scheduled) learning
  rate, as in AdamW.

  Args:
    learning_rate: float or schedule, ``>= 0``.
    b1: decay of the first moment, in [0, 1).
    b2: decay of the second moment, in [0, 1).
    eps: denominator term and norm floor, > 0.
    weight_decay: decoupled decay, ``>= 0``.
    delta: threshold of the cosine test, > 0.
    wd_ratio: decay factor where the projection fires, in [0, 1].
    nesterov: Nesterov form of the first moment. Static.
    channel_axis: ``-1`` (Flax) or ``0`` (PyTorch layout).
    mask: which leaves may be projected.
    weight_decay_mask: which leaves are decayed.
    mu_dtype: dtype of the first moment.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optimflow
    >>> w = {'kernel': jnp.array([[1.0], [2.0]]), 'bias': jnp.zeros(1)}
    >>> tx = optimflow.adamp(0.1, weight_decay=0.01)
    >>> state = tx.init(w)
    >>> g = {'kernel': jnp.array([[2.0], [-1.0]]), 'bias': jnp.ones(1)}
    >>> u, state = tx.update(g, state, w)
    >>> # -0.1 * (proj(d) + 0.01 * 0.1 * w): the decay is scaled by wd_ratio
    >>> [round(x, 5) for x in u['kernel'].ravel().tolist()]
    [-0.1201, 0.0598]
    >>> [round(x, 5) for x in u['bias'].tolist()]          # 1-D: plain AdamW
    [-0.1]

  References:
    Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, `AdamP: Slowing Down the Slowdown
    for Momentum Optimizers on Scale-invariant Weights
    <https://arxiv.org/abs/2006.08217>`_, ICLR 2021.
  """
  checks.check_non_negative('learning_rate', learning_rate)
  return optax.chain(
    scale_by_adamp(
      b1=b1,
      b2=b2,
      eps=eps,
      weight_decay=weight_decay,
      delta=delta,
      wd_ratio=wd_ratio,
      nesterov=nesterov,
      channel_axis=channel_axis,
      mask=mask,
      weight_decay_mask=weight_decay_mask,
      mu_dtype=mu_dtype,
    ),
    optax.scale_by_learning_rate(learning_rate),
  )


class ScaleBySGDPState(NamedTuple):
  """State of :func:`scale_by_sgdp`: the momentum buffer."""

  trace: optax.Updates


def _check_sgd_momentum(momentum, dampening, nesterov):
  checks.check_beta('momentum', momentum, allow_one=False)
  checks.check_beta('dampening', dampening)
  if nesterov:
    try:
      checks.check_interval(
        'momentum', momentum, 0.0, 1.0, low_open=True, high_open=True
      )
      checks.check_interval('dampening', dampening, 0.0, 0.0)
    except ValueError as e:
      raise ValueError(
        f'{e} nesterov=True needs momentum > 0 and dampening = 0.'
      ) from None


def scale_by_sgdp(
  momentum: jax.typing.ArrayLike = 0.0,
  dampening: jax.typing.ArrayLike = 0.0,
  eps: jax.typing.ArrayLike = 1e-8,
  weight_decay: jax.typing.ArrayLike = 0.0,
  delta: jax.typing.ArrayLike = 0.1,
  wd_ratio: jax.typing.ArrayLike = 0.1,
  nesterov: bool = False,
  channel_axis: int = -1,
  mask: MaskOrFn = None,
  weight_decay_mask: MaskOrFn = None,
  accumulator_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformation:
  """SGDP direction: heavy-ball momentum, radial projection, decay.

  .. math::

    b_t = \\mu b_{t-1} + (1 - \\tau) g_t, \\quad
    d_t = g_t + \\mu b_t \\text{ (nesterov), else } b_t,

    u_t = \\mathrm{proj}(d_t; g_t, w) + \\frac{\\lambda r_t}{1 - \\mu} w,

  with ``b_0 = 0``, dampening ``tau``, :func:`radial_projection` as ``proj``
  and ``r_t = wd_ratio`` on leaves where it fired, 1 elsewhere. The
  ``1/(1 - mu)`` on the decay is the reference's (it matches the decay to the
  momentum's effective step). Without Nesterov the reference's direction *is*
  its momentum buffer and is projected in place, so the momentum carried to
  the next step is the projected one, ``b_t <- proj(b_t)``; this transform
  does the same (with Nesterov the buffer is left unprojected).

  Args:
    momentum: heavy-ball coefficient ``mu``, in [0, 1).
    dampening: ``tau``, in [0, 1].
    eps: norm floor of the projection, > 0.
    weight_decay: decoupled decay ``lambda >= 0``.
    delta: threshold of the cosine test, > 0.
    wd_ratio: decay factor where the projection fires, in [0, 1].
    nesterov: Nesterov momentum (needs momentum > 0 and dampening 0). Static.
    channel_axis: ``-1`` (Flax) or ``0`` (PyTorch layout).
    mask: which leaves may be projected (prefix tree of bools or callable).
    weight_decay_mask: which leaves are decayed; ``None``: all.
    accumulator_dtype: dtype of the momentum; ``None`` keeps params' dtype.

  Returns:
    A :class:`optax.GradientTransformation`; ``update`` needs ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optimflow
    >>> tx = optimflow.scale_by_sgdp(momentum=0.9)
    >>> w = jnp.array([[1.0], [2.0]])
    >>> u, _ = tx.update(jnp.array([[2.1], [-1.0]]), tx.init(w), w)
    >>> [round(x, 4) for x in u.ravel().tolist()]   # g - w <w, g> / ||w||^2
    [2.08, -1.04]

  References:
    Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, `AdamP: Slowing Down the Slowdown
    for Momentum Optimizers on Scale-invariant Weights
    <https://arxiv.org/abs/2006.08217>`_, ICLR 2021.
  """
  _check_sgd_momentum(momentum, dampening, nesterov)
  channel_axis = _check_projection_args(
    delta, wd_ratio, eps, weight_decay, channel_axis
  )
  accumulator_dtype = checks.check_dtype('accumulator_dtype', accumulator_dtype)

  def init_fn(params):
    return ScaleBySGDPState(
      trace=optax.tree.zeros_like(params, dtype=accumulator_dtype)
    )

  def update_fn(updates, state, params=None):
    trace = jax.tree.map(
      lambda g, b: None if g is None else momentum * b + (1.0 - dampening) * g,
      updates,
      state.trace,
      is_leaf=lambda x: x is None,
    )

    def leaf(g, w, may_project, decays, b):
      dtype = compute_dtype(g)
      b = b.astype(dtype)
      direction = g.astype(dtype) + momentum * b if nesterov else b
      update, projected = _project_and_decay(
        direction,
        g,
        w,
        may_project,
        decays,
        scale=1.0,
        weight_decay=weight_decay / (1.0 - momentum),
        delta=delta,
        eps=eps,
        wd_ratio=wd_ratio,
        channel_axis=channel_axis,
      )
      # The reference projects its buffer in place when the direction *is*
      # the buffer (nesterov=False): the stored momentum is the projected one.
      return update, (b if nesterov else projected)

    new_updates, trace = _map_leaves(
      leaf, 2, updates, params, mask, weight_decay_mask, trace
    )
    trace = optax.tree.cast_like(trace, state.trace)
    return new_updates, ScaleBySGDPState(trace=trace)

  return optax.GradientTransformation(init_fn, update_fn)


def sgdp(
  learning_rate: optax.ScalarOrSchedule,
  momentum: jax.typing.ArrayLike = 0.0,
  dampening: jax.typing.ArrayLike = 0.0,
  eps: jax.typing.ArrayLike = 1e-8,
  weight_decay: jax.typing.ArrayLike = 0.0,
  delta: jax.typing.ArrayLike = 0.1,
  wd_ratio: jax.typing.ArrayLike = 0.1,
  nesterov: bool = False,
  channel_axis: int = -1,
  mask: MaskOrFn = None,
  weight_decay_mask: MaskOrFn = None,
  accumulator_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  """SGDP: momentum SGD minus the radial part of updates (scale-invariant w).

  ``chain(scale_by_sgdp(...), scale_by_learning_rate(learning_rate))``:

  .. math::

    w \\leftarrow w - \\eta\\,\\Big(\\mathrm{proj}(d_t)
    + \\frac{\\lambda r_t}{1-\\mu} w\\Big),

  with ``d_t``, the projection and ``r_t`` of :func:`scale_by_sgdp`. Matches
  ``adamp.SGDP`` (PyPI ``adamp`` 0.3.0) step for step; for PyTorch
  ``(out, in, ...)`` weights pass ``channel_axis=0``. The reference's README
  suggests ``learning_rate=0.1, momentum=0.9, nesterov=True,
  weight_decay=1e-5``.

  Args:
    learning_rate: float or schedule, ``>= 0``.
    momentum: heavy-ball coefficient, in [0, 1).
    dampening: in [0, 1].
    eps: norm floor of the projection, > 0.
    weight_decay: decoupled decay, ``>= 0``.
    delta: threshold of the cosine test, > 0.
    wd_ratio: decay factor where the projection fires, in [0, 1].
    nesterov: Nesterov momentum (needs momentum > 0, dampening 0). Static.
    channel_axis: ``-1`` (Flax) or ``0`` (PyTorch layout).
    mask: which leaves may be projected.
    weight_decay_mask: which leaves are decayed.
    accumulator_dtype: dtype of the momentum.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optimflow
    >>> tx = optimflow.sgdp(0.1, momentum=0.9, weight_decay=0.01)
    >>> w = jnp.array([[1.0], [2.0]])
    >>> u, _ = tx.update(jnp.array([[2.1], [-1.0]]), tx.init(w), w)
    >>> # -0.1 * (proj(g) + 0.01 * 0.1 / (1 - 0.9) * w)
    >>> [round(x, 4) for x in u.ravel().tolist()]
    [-0.209, 0.102]

  References:
    Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, `AdamP: Slowing Down the Slowdown
    for Momentum Optimizers on Scale-invariant Weights
    <https://arxiv.org/abs/2006.08217>`_, ICLR 2021.
  """
  checks.check_non_negative('learning_rate', learning_rate)
  return optax.chain(
    scale_by_sgdp(
      momentum=momentum,
      dampening=dampening,
      weight_decay=weight_decay,
      nesterov=nesterov,
      eps=eps,
      delta=delta,
      wd_ratio=wd_ratio,
      channel_axis=channel_axis,
      mask=mask,
      weight_decay_mask=weight_decay_mask,
      accumulator_dtype=accumulator_dtype,
    ),
    optax.scale_by_learning_rate(learning_rate),
  )
