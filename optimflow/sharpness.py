"""Sharpness-aware training: SAM, ASAM, m-sharpness, SAF/MESA trajectory terms.

SAM (Foret et al., 2021) replaces the gradient at ``w`` by the gradient at the
worst point of a small ball around ``w``, found by one normalized ascent step:

.. math::

  e = \\rho \\frac{g}{\\|g\\|_2}, \\qquad
  \\text{ASAM:}\\; e = \\rho \\frac{T^2 g}{\\|T g\\|_2},\\; T = |w| + \\eta,
  \\qquad g_{\\text{SAM}} = \\nabla L(w + e).

Here that is one :class:`optax.GradientTransformationExtraArgs`,
:func:`sam`: a single ``update`` call evaluates the caller's ``grad_fn`` at
``w + e`` and hands that gradient to whatever is chained after it, so the
perturbed parameters never leave the transformation (no second call, no
parameter cache, no BatchNorm statistics from the perturbed point):

>>> import optax, optimflow
>>> tx = optax.chain(optimflow.sam(0.05), optax.sgd(0.1, momentum=0.9))

SAF and MESA (Du et al., 2022) get most of the flatness at the cost of one
pass: the loss gets a KL term towards the network's own outputs from ``E~``
epochs ago (SAF: :class:`OutputBank`, :func:`trajectory_kl`,
:func:`saf_schedule`) or towards an exponential moving average of the weights
(MESA: :func:`param_ema` plus the same :func:`trajectory_kl`). These are loss
terms with explicit state, not optimizers; all of them are jittable.

Cost per step, in forward+backward passes: SAM and ASAM 2, SAF 1, MESA 1 plus
one forward pass of the EMA model.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimflow import _checks

GradFn = Callable[[optax.Params], optax.Updates]
AdaptiveMask = Optional[
    Union[Any, Callable[[tuple[Any, ...], jax.Array], bool]]
]
MaskOrFn = Optional[Union[Any, Callable[[optax.Params], Any]]]

_MISSING_GRAD_FN = (
    '{name} needs the keyword argument grad_fn: a function params -> gradient '
    'tree on the current batch, called at the perturbed parameters. Build it '
    'from your loss, e.g. grad_fn = lambda p: jax.grad(loss_fn)(p, batch), and '
    'call tx.update(grads, state, params, grad_fn=grad_fn) (optax.chain and '
    'nnx.Optimizer.update forward it). For Flax NNX models, '
    'optimflow.nnx.grad_fn(model, loss_fn, batch) builds it and '
    'optimflow.nnx.train_step(loss_fn) passes it for you.'
)


def _compute_dtype(x: jax.Array) -> jnp.dtype:
  return jnp.promote_types(x.dtype, jnp.float32)


def _global_norm(tree: Any) -> jax.Array:
  """L2 norm over all leaves, accumulated in at least float32."""
  squares = [
      jnp.sum(jnp.square(x.astype(_compute_dtype(x))))
      for x in jax.tree.leaves(tree)
  ]
  return jnp.sqrt(sum(squares, jnp.zeros([], jnp.float32)))


def _key_name(key: Any) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _is_bias(path: tuple[Any, ...], leaf: jax.Array) -> bool:
  del leaf
  return any(_key_name(k).lower().endswith('bias') for k in path)


def adaptive_leaves(params: optax.Params, adaptive_mask: AdaptiveMask = None):
  """Which leaves ASAM rescales by ``|w| + eta`` (a tree of bools).

  The default mirrors ASAM's rule (``'weight' in name`` in PyTorch, so Linear,
  conv and norm weights): every leaf whose path names a bias is left alone
  (``T = 1``), every other leaf (``kernel``, ``scale``, ``embedding``, and
  unnamed arrays) is rescaled.

  Args:
    params: the parameter tree.
    adaptive_mask: ``None`` (the default rule), a callable ``(path, leaf) ->
      bool`` applied with :func:`jax.tree_util.tree_map_with_path`, or a tree
      of bools with the structure of ``params``.

  Returns:
    A tree of Python bools with the structure of ``params``.

  Examples:
    >>> import jax.numpy as jnp, optimflow
    >>> params = {'dense': {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones(2)}}
    >>> optimflow.sharpness.adaptive_leaves(params)
    {'dense': {'bias': False, 'kernel': True}}
  """
  if adaptive_mask is None:
    adaptive_mask = lambda path, leaf: not _is_bias(path, leaf)
  if callable(adaptive_mask):
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: bool(adaptive_mask(path, leaf)), params
    )
  return adaptive_mask


def sam_perturbation(
    grads: optax.Updates,
    params: optax.Params,
    rho: float | jax.Array = 0.05,
    *,
    adaptive: bool = False,
    eta: float | jax.Array = 0.01,
    adaptive_mask: AdaptiveMask = None,
    eps: float | jax.Array = 1e-12,
) -> optax.Updates:
  """The SAM / ASAM ascent step ``e`` (same tree and dtypes as ``params``).

  .. math::

    e = \\rho\\, \\frac{T^2 g}{\\max(\\|T g\\|_2, \\epsilon)}

  with ``T = 1`` (SAM) or ``T = |w| + eta`` on the leaves selected by
  :func:`adaptive_leaves` and ``T = 1`` on the others (ASAM). The norm is
  global over all leaves. ``||T^{-1} e|| = rho`` whenever ``||T g|| >=
  eps``; a zero gradient gives ``e = 0``.

  Args:
    grads: gradient at ``params``.
    params: the point being perturbed.
    rho: radius of the neighbourhood, ``> 0``.
    adaptive: ASAM's scale-invariant neighbourhood. Static.
    eta: ASAM's offset of ``T``, ``>= 0``.
    adaptive_mask: see :func:`adaptive_leaves`.
    eps: floor of the norm, ``> 0``.

  Returns:
    The perturbation ``e``.

  Examples:
    >>> import jax.numpy as jnp, optimflow
    >>> e = optimflow.sam_perturbation(jnp.array([3.0, 4.0]), jnp.zeros(2), 0.5)
    >>> e
    Array([0.3, 0.4], dtype=float32)
  """
  if adaptive:
    mask = adaptive_leaves(params, adaptive_mask)

    def scale(m, w):
      w = jnp.abs(w.astype(_compute_dtype(w)))
      return jnp.where(m, w + eta, jnp.ones_like(w))

    t = jax.tree.map(scale, mask, params)
  else:
    t = jax.tree.map(lambda g: jnp.ones([], _compute_dtype(g)), grads)
  tg = jax.tree.map(lambda t_, g: t_ * g.astype(_compute_dtype(g)), t, grads)
  factor = rho / jnp.maximum(_global_norm(tg), eps)
  return jax.tree.map(
      lambda t_, v, w: (factor * t_ * v).astype(w.dtype), t, tg, params
  )


def _perturbed_gradient(grads, params, grad_fn, **perturbation):
  e = sam_perturbation(grads, params, **perturbation)
  return grad_fn(jax.tree.map(lambda w, d: w + d, params, e))


def sam(
    rho: float = 0.05,
    *,
    adaptive: bool = False,
    eta: float = 0.01,
    adaptive_mask: AdaptiveMask = None,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  """Sharpness-aware minimization in one call: returns ``grad_fn(w + e)``.

  ``update(grads, state, params, *, grad_fn)`` takes the clean gradient
  ``g = grads``, forms ``e`` with :func:`sam_perturbation` and returns
  ``grad_fn(params + e)`` in the dtypes of ``grads``. Put it in front of any
  optimizer; ``optax.chain`` and ``nnx.Optimizer.update`` forward ``grad_fn``
  to it and the optimizer after it sees the sharpness-aware gradient.

  Weight decay: chain ``optax.add_decayed_weights`` *after* ``sam`` (as
  :func:`sam_sgd` does). The decay then acts on the parameters but does not
  enter ``e``. google-research/sam puts the L2 term inside the loss, so it is
  in ``g`` and in ``e`` too; to reproduce that, add the L2 term to the loss
  that both ``grads`` and ``grad_fn`` differentiate. Chaining a decay *before*
  ``sam`` is wrong: it would enter ``e`` and then be dropped, since the output
  is ``grad_fn``'s gradient.

  ``grad_fn`` must evaluate the same batch as ``grads``; with BatchNorm it
  should run in training mode and discard the statistics it computes (the
  clean pass's are kept, as in google-research/sam):
  :func:`optimflow.nnx.grad_fn` does this for Flax NNX models.

  Args:
    rho: neighbourhood radius, ``> 0``. SAM: 0.05 (CIFAR from scratch), 0.1
      (fine-tuning); ASAM: 0.5 to 1.0.
    adaptive: ASAM's adaptive neighbourhood ``T = |w| + eta``. Static.
    eta: ASAM's offset, ``>= 0``.
    adaptive_mask: which leaves ASAM rescales (default: all but biases); see
      :func:`adaptive_leaves`.
    eps: floor of the gradient norm, ``> 0``; a zero gradient gives a zero
      perturbation, never NaN.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` with empty state; it is
    not a descent method by itself (it emits a gradient).

  Examples:
    >>> import jax, jax.numpy as jnp, optax, optimflow
    >>> loss = lambda w: jnp.sum(w ** 4)
    >>> tx = optax.chain(optimflow.sam(0.1), optax.sgd(0.01))
    >>> w = jnp.array([1.0, -0.5])
    >>> state = tx.init(w)
    >>> u, state = tx.update(jax.grad(loss)(w), state, w,
    ...                      grad_fn=jax.grad(loss))
    >>> [round(v, 4) for v in (w + u).tolist()]  # gradient at w + 0.1 g/|g|
    [0.9469, -0.4946]

  References:
    Foret, Kleiner, Mobahi, Neyshabur, `Sharpness-Aware Minimization for
    Efficiently Improving Generalization <https://arxiv.org/abs/2010.01412>`_,
    2021.

    Kwon, Kim, Park, Choi, `ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks
    <https://arxiv.org/abs/2102.11600>`_, 2021.
  """
  _checks.check_positive('rho', rho)
  _checks.check_non_negative('eta', eta)
  _checks.check_positive('eps', eps)
  name = 'asam' if adaptive else 'sam'

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *,
                grad_fn: Optional[GradFn] = None, **extra_args):
    del extra_args
    if grad_fn is None:
      raise ValueError(_MISSING_GRAD_FN.format(name=name))
    if params is None:
      raise ValueError(f'{name} needs params: call tx.update(grads, state, '
                       'params, grad_fn=grad_fn).')
    g = _perturbed_gradient(
        updates, params, grad_fn, rho=rho, adaptive=adaptive, eta=eta,
        adaptive_mask=adaptive_mask, eps=eps,
    )
    return optax.tree.cast_like(g, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def asam(
    rho: float = 0.5,
    eta: float = 0.01,
    *,
    adaptive_mask: AdaptiveMask = None,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  """Adaptive SAM: :func:`sam` with ``adaptive=True`` and ASAM's defaults.

  .. math::

    e = \\rho \\frac{T^2 g}{\\|T g\\|_2}, \\quad T = |w| + \\eta
    \\text{ on kernels, scales, embeddings; } T = 1 \\text{ on biases.}

  The neighbourhood ``||T^{-1} e|| <= rho`` is invariant to rescalings of
  the weights that leave the network's function unchanged.

  Args:
    rho: radius, ``> 0`` (ASAM uses 0.5 on CIFAR-10, 1.0 on CIFAR-100).
    eta: offset of ``T``, ``>= 0``.
    adaptive_mask: which leaves get ``T = |w| + eta``; see
      :func:`adaptive_leaves`.
    eps: floor of the norm, ``> 0``.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, optimflow
    >>> params = {'kernel': jnp.array([2.0, 0.0]), 'bias': jnp.array([1.0])}
    >>> grads = {'kernel': jnp.array([1.0, 1.0]), 'bias': jnp.array([0.0])}
    >>> e = optimflow.sam_perturbation(grads, params, 0.5, adaptive=True,
    ...                                eta=0.0)
    >>> e['kernel']   # 0.5 T^2 g / |T g| with T = |w|: zero weights stay put
    Array([1., 0.], dtype=float32)
    >>> tx = optax.chain(optimflow.asam(0.5), optax.sgd(0.1, momentum=0.9))

  References:
    Kwon, Kim, Park, Choi, `ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks
    <https://arxiv.org/abs/2102.11600>`_, 2021.
  """
  return sam(rho, adaptive=True, eta=eta, adaptive_mask=adaptive_mask, eps=eps)


def sam_sgd(
    learning_rate: optax.ScalarOrSchedule,
    rho: float = 0.05,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    adaptive: bool = False,
    eta: float = 0.01,
    adaptive_mask: AdaptiveMask = None,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  """SAM in front of SGD with momentum, the papers' setting.

  ``optax.chain(sam(rho, ...), optax.add_decayed_weights(weight_decay, mask),
  optax.sgd(learning_rate, momentum, nesterov))``. This is the catalog's
  ``sam`` entry (what the CLI and the conformance suite train); to put SAM in
  front of another optimizer, chain :func:`sam` yourself. The decay is not in
  the perturbation (see :func:`sam`).

  Args:
    learning_rate: float or schedule, ``>= 0``.
    rho: SAM radius, ``> 0``.
    momentum: heavy-ball momentum in [0, 1).
    nesterov: Nesterov momentum.
    weight_decay: decoupled decay added to the SAM gradient, ``>= 0``.
    mask: which leaves are decayed.
    adaptive: ASAM instead of SAM.
    eta: ASAM offset.
    adaptive_mask: see :func:`adaptive_leaves`.
    eps: norm floor.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` whose ``update`` needs
    ``grad_fn=``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, optimflow
    >>> loss = lambda w: jnp.sum((w - 1.0) ** 2)
    >>> tx = optimflow.sam_sgd(0.1, rho=0.05)
    >>> w = jnp.zeros(2)
    >>> state = tx.init(w)
    >>> for _ in range(100):
    ...   u, state = tx.update(jax.grad(loss)(w), state, w,
    ...                        grad_fn=jax.grad(loss))
    ...   w = optax.apply_updates(w, u)
    >>> w.round(2)
    Array([1., 1.], dtype=float32)

  References:
    Foret, Kleiner, Mobahi, Neyshabur, `Sharpness-Aware Minimization for
    Efficiently Improving Generalization <https://arxiv.org/abs/2010.01412>`_,
    2021.
  """
  _checks.check_non_negative('learning_rate', learning_rate)
  _checks.check_beta('momentum', momentum, allow_one=False)
  _checks.check_non_negative('weight_decay', weight_decay)
  return optax.chain(
      sam(rho, adaptive=adaptive, eta=eta, adaptive_mask=adaptive_mask,
          eps=eps),
      optax.add_decayed_weights(weight_decay, mask),
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
  )


def asam_sgd(
    learning_rate: optax.ScalarOrSchedule,
    rho: float = 0.5,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    mask: MaskOrFn = None,
    *,
    eta: float = 0.01,
    adaptive_mask: AdaptiveMask = None,
    eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  """ASAM in front of SGD with momentum: :func:`sam_sgd` with ``adaptive``.

  The catalog's ``asam`` entry. Arguments as in :func:`sam_sgd`; ``rho``
  defaults to ASAM's 0.5 and ``eta`` to 0.01.

  Args:
    learning_rate: float or schedule, ``>= 0``.
    rho: ASAM radius, ``> 0``.
    momentum: heavy-ball momentum in [0, 1).
    nesterov: Nesterov momentum.
    weight_decay: decoupled decay, ``>= 0``.
    mask: which leaves are decayed.
    eta: offset of ``T = |w| + eta``, ``>= 0``.
    adaptive_mask: see :func:`adaptive_leaves`.
    eps: norm floor.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` needing ``grad_fn=``.

  Examples:
    >>> import optimflow
    >>> tx = optimflow.asam_sgd(0.1, rho=0.5, weight_decay=5e-4)

  References:
    Kwon, Kim, Park, Choi, `ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks
    <https://arxiv.org/abs/2102.11600>`_, 2021.
  """
  return sam_sgd(
      learning_rate, rho, momentum, nesterov, weight_decay, mask,
      adaptive=True, eta=eta, adaptive_mask=adaptive_mask, eps=eps,
  )


def sam_gradient(
    loss_fn: Callable[[optax.Params, Any], jax.Array],
    params: optax.Params,
    batch: Any,
    rho: float = 0.05,
    m: Optional[int] = None,
    *,
    adaptive: bool = False,
    eta: float = 0.01,
    adaptive_mask: AdaptiveMask = None,
    eps: float = 1e-12,
) -> optax.Updates:
  """The m-sharpness SAM gradient: per-chunk perturbations, averaged.

  The batch (every leaf has a leading axis of size ``B``) is split into
  ``B / m`` chunks of ``m`` examples; each chunk gets its own perturbation
  ``e_k`` from its own gradient, and the result is

  .. math::

    \\frac{m}{B} \\sum_k \\nabla L_k(w + e_k), \\quad
    e_k = \\text{sam\\_perturbation}(\\nabla L_k(w), w).

  The chunks run under ``jax.vmap`` (same FLOPs as plain SAM). ``m=None``
  (or ``m = B``) is plain SAM on the whole batch, equal to one :func:`sam`
  update. Foret et al. (§4.1) find that smaller ``m`` generalizes better;
  google-research/sam gets ``m`` = per-device batch by not synchronizing
  perturbations across devices.

  ``functools.partial(sam_gradient, loss_fn, batch=batch, rho=rho, m=m)`` is a
  ``params -> gradients`` function, so it can stand wherever a gradient
  function is expected (e.g. feed its output to any optax optimizer).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``, the mean loss of a batch.
    params: the parameters.
    batch: a pytree whose leaves share the leading batch axis.
    rho: SAM radius, ``> 0``.
    m: chunk size; must divide the batch size. ``None`` means the whole batch.
    adaptive: ASAM neighbourhood.
    eta: ASAM offset.
    adaptive_mask: see :func:`adaptive_leaves`.
    eps: norm floor.

  Returns:
    The averaged SAM gradient, a tree like ``params``.

  Examples:
    >>> import jax, jax.numpy as jnp, optimflow
    >>> loss = lambda w, b: jnp.mean((b['x'] @ w - b['y']) ** 2)
    >>> batch = {'x': jnp.eye(4, 2), 'y': jnp.ones(4)}
    >>> g = optimflow.sam_gradient(loss, jnp.zeros(2), batch, rho=0.1, m=2)
    >>> g.shape
    (2,)

  References:
    Foret, Kleiner, Mobahi, Neyshabur, `Sharpness-Aware Minimization for
    Efficiently Improving Generalization <https://arxiv.org/abs/2010.01412>`_,
    2021.
  """
  _checks.check_positive('rho', rho)
  sizes = {x.shape[0] for x in jax.tree.leaves(batch)}
  if len(sizes) != 1:
    raise ValueError(
        f'batch leaves must share one leading batch axis; got sizes {sizes}.'
    )
  (size,) = sizes
  m = size if m is None else m
  _checks.check_int_at_least('m', m, 1)
  if size % m:
    raise ValueError(
        f'm={m} does not divide the batch size {size}: m-sharpness splits the '
        'batch into equal chunks of m examples.'
    )
  grad = jax.grad(loss_fn)
  perturbation = dict(rho=rho, adaptive=adaptive, eta=eta,
                      adaptive_mask=adaptive_mask, eps=eps)

  def one_chunk(chunk):
    g = grad(params, chunk)
    return _perturbed_gradient(
        g, params, lambda p: grad(p, chunk), **perturbation
    )

  chunks = jax.tree.map(lambda x: x.reshape(size // m, m, *x.shape[1:]), batch)
  per_chunk = jax.vmap(one_chunk)(chunks)
  return jax.tree.map(lambda g: jnp.mean(g, axis=0), per_chunk)


# -- MESA: exponential moving average of the parameters ----------------------


class ParamEMAState(NamedTuple):
  """State of :func:`param_ema`: step count and the EMA of the parameters."""

  count: jax.Array
  ema: optax.Params


def param_ema(
    decay: float = 0.999,
    ema_dtype: Optional[jax.typing.DTypeLike] = None,
) -> optax.GradientTransformationExtraArgs:
  """Keeps an EMA of the parameters in the optimizer state; updates pass.

  Put it at the *end* of a chain: it sees the final updates ``u`` and keeps

  .. math::

    \\bar w_0 = w_0, \\qquad
    \\bar w_{t+1} = d\\, \\bar w_t + (1 - d)(w_t + u_t),

  the EMA of the parameters after each step (timm's ``ModelEmaV2``, which
  MESA uses as its teacher), and returns ``u`` unchanged. Read it with
  ``optax.tree.get(opt_state, 'ema')``.

  Args:
    decay: EMA decay ``d`` in [0, 1). MESA uses 0.9998 on ImageNet; on small
      data (tens of steps per epoch) 0.99.
    ema_dtype: dtype of the EMA; ``None`` keeps the parameters' dtypes.

  Returns:
    A :class:`optax.GradientTransformationExtraArgs` (identity on updates).

  Examples:
    >>> import jax.numpy as jnp, optax, optimflow
    >>> tx = optax.chain(optax.sgd(1.0), optimflow.param_ema(0.5))
    >>> w = jnp.array([4.0])
    >>> state = tx.init(w)
    >>> u, state = tx.update(jnp.array([2.0]), state, w)
    >>> optax.tree.get(state, 'ema')   # 0.5 * 4 + 0.5 * (4 - 2)
    Array([3.], dtype=float32)

  References:
    Du, Zhou, Feng, Tan, Zhou, `Sharpness-Aware Training for Free
    <https://arxiv.org/abs/2205.14083>`_, 2022.
  """
  _checks.check_beta('decay', decay, allow_one=False)
  ema_dtype = None if ema_dtype is None else jnp.dtype(ema_dtype)

  def copy(p):
    dtype = ema_dtype or p.dtype
    if isinstance(p, jax.ShapeDtypeStruct):  # abstract init: shapes only
      return jnp.zeros_like(p, dtype=dtype)
    return jnp.asarray(p, dtype=dtype)

  def init_fn(params):
    ema = jax.tree.map(copy, params)
    return ParamEMAState(count=jnp.zeros([], jnp.int32), ema=ema)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError('param_ema needs params: call tx.update(updates, '
                       'state, params).')

    def step(e, p, u):
      new = p.astype(_compute_dtype(p)) + u.astype(_compute_dtype(p))
      return (decay * e + (1.0 - decay) * new).astype(e.dtype)

    ema = jax.tree.map(step, state.ema, params, updates)
    return updates, ParamEMAState(optax.safe_increment(state.count), ema)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sgd_with_param_ema(
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    nesterov: bool = False,
    decay: float = 0.999,
) -> optax.GradientTransformationExtraArgs:
  """``optax.chain(optax.sgd(learning_rate, momentum), param_ema(decay))``.

  The optimizer half of MESA (the other half is the :func:`trajectory_kl`
  term against the EMA model's outputs) and the catalog's ``param_ema``
  entry.

  Args:
    learning_rate: float or schedule, ``>= 0``.
    momentum: heavy-ball momentum in [0, 1).
    nesterov: Nesterov momentum.
    decay: EMA decay in [0, 1).

  Returns:
    A :class:`optax.GradientTransformationExtraArgs`.

  Examples:
    >>> import jax.numpy as jnp, optax, optimflow
    >>> tx = optimflow.sharpness.sgd_with_param_ema(0.1, decay=0.9)
    >>> state = tx.init({'w': jnp.ones(3)})
    >>> optax.tree.get(state, 'ema')['w'].shape
    (3,)

  References:
    Du, Zhou, Feng, Tan, Zhou, `Sharpness-Aware Training for Free
    <https://arxiv.org/abs/2205.14083>`_, 2022.
  """
  _checks.check_non_negative('learning_rate', learning_rate)
  _checks.check_beta('momentum', momentum, allow_one=False)
  return optax.chain(
      optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
      param_ema(decay),
  )


# -- SAF: trajectory loss and output bank --------------------------------------


def _raise_if_out_of_range(ids: np.ndarray, num_examples: int) -> None:
  ids = np.asarray(ids)
  if ids.size and (ids.min() < 0 or ids.max() >= num_examples):
    bad = ids[(ids < 0) | (ids >= num_examples)]
    raise IndexError(
        f'example ids out of the output bank range [0, {num_examples}): got '
        f'{bad[:8].tolist()}. Ids index the training set; create the bank '
        'with OutputBank.create(num_examples=len(train_set), ...).'
    )


def _check_ids(ids: jax.Array, num_examples: int) -> None:
  if not isinstance(ids, jax.core.Tracer):
    _raise_if_out_of_range(np.asarray(ids), num_examples)
    return
  # Under jit: the host callback (which raises) only runs on bad ids.
  raise_ = functools.partial(_raise_if_out_of_range, num_examples=num_examples)
  bad = jnp.any((ids < 0) | (ids >= num_examples))
  jax.lax.cond(bad, lambda: jax.debug.callback(raise_, ids), lambda: None)


class OutputBank(NamedTuple):
  """SAF's per-example record of past logits, a jittable pytree.

  ``logits`` has shape ``(num_examples, e_tilde + 1, *output_shape)``, with
  ``output_shape = (num_classes,)`` for a classifier or e.g. ``(context,
  vocab)`` for a language model's per-position logits: a ring
  buffer over epochs. During epoch ``t`` the training step reads the logits
  example ``i`` had in epoch ``t - e_tilde`` (:meth:`reference`) and writes
  its current logits (:meth:`record`), which come from the training forward
  pass itself, so SAF needs no extra pass. Memory: ``N (e_tilde + 1) C``
  floats. Keep the bank in the train state (one global bank, indexed by the
  example's position in the training set).

  Ids outside ``[0, num_examples)`` raise ``IndexError``. Concrete ids are
  checked on the host for free; under ``jit`` the check is a host callback
  that runs only on bad ids (the error arrives as a ``JaxRuntimeError``
  carrying the message) but its presence alone costs about 0.5 ms per step
  on CPU. In a training loop, check the batch's ids on the host with
  :meth:`check` and pass ``check=False`` inside the jitted step.

  Examples:
    >>> import jax.numpy as jnp, optimflow
    >>> bank = optimflow.OutputBank.create(4, num_classes=3, e_tilde=2)
    >>> ids = jnp.array([0, 2])
    >>> bank = bank.record(ids, 0, jnp.ones((2, 3)))   # epoch 0
    >>> bank.reference(ids, 2)                         # epoch 2 reads epoch 0
    Array([[1., 1., 1.],
           [1., 1., 1.]], dtype=float32)
  """

  logits: jax.Array

  @classmethod
  def create(
      cls,
      num_examples: int,
      num_classes: int | Sequence[int],
      e_tilde: int = 2,
      dtype: jax.typing.DTypeLike = jnp.float32,
  ) -> 'OutputBank':
    """An empty bank (zeros) for ``num_examples`` examples.

    Args:
      num_examples: size of the training set.
      num_classes: number of logits per example, or the shape of one
        example's logits (e.g. ``(context, vocab)``).
      e_tilde: how many epochs back the reference lies (SAF uses 2 or 3).
      dtype: storage dtype.

    Returns:
      The bank.
    """
    _checks.check_int_at_least('num_examples', num_examples, 1)
    shape = (num_classes,) if isinstance(num_classes, int) else num_classes
    for size in shape:
      _checks.check_int_at_least('num_classes', size, 1)
    _checks.check_int_at_least('e_tilde', e_tilde, 1)
    return cls(jnp.zeros((num_examples, e_tilde + 1, *shape), dtype))

  @property
  def num_examples(self) -> int:
    return self.logits.shape[0]

  @property
  def e_tilde(self) -> int:
    return self.logits.shape[1] - 1

  def check(self, ids: Any) -> None:
    """Raises ``IndexError`` unless every id lies in ``[0, num_examples)``.

    Host-side (NumPy) and cheap: call it on each batch's ids outside ``jit``.
    """
    _raise_if_out_of_range(np.asarray(ids), self.num_examples)

  def reference(
      self, ids: jax.Array, epoch: int | jax.Array, *, check: bool = True
  ) -> jax.Array:
    """Logits recorded for ``ids`` during epoch ``epoch - e_tilde``.

    Before epoch ``e_tilde`` nothing was recorded and the result is zeros
    (a uniform target); start the trajectory term later (:func:`saf_schedule`
    with ``start >= e_tilde``).
    """
    if check:
      _check_ids(ids, self.num_examples)
    slot = (epoch - self.e_tilde) % (self.e_tilde + 1)
    return self.logits[ids, slot]

  def record(
      self,
      ids: jax.Array,
      epoch: int | jax.Array,
      logits: jax.Array,
      *,
      check: bool = True,
  ) -> 'OutputBank':
    """Stores ``logits`` (no gradient) as the epoch-``epoch`` outputs of ids."""
    if check:
      _check_ids(ids, self.num_examples)
    slot = epoch % (self.e_tilde + 1)
    value = jax.lax.stop_gradient(logits).astype(self.logits.dtype)
    return OutputBank(self.logits.at[ids, slot].set(value))


def trajectory_kl(
    logits: jax.Array,
    reference_logits: jax.Array,
    temperature: float | jax.Array = 5.0,
) -> jax.Array:
  """SAF / MESA's distillation term: ``tau^2 KL(p_ref || q)``, batch mean.

  .. math::

    \\tau^2 \\, \\frac{1}{B} \\sum_b \\sum_c p_{b,c}
      (\\log p_{b,c} - \\log q_{b,c}), \\quad
    p = \\mathrm{softmax}(z_{\\text{ref}} / \\tau),\\;
    q = \\mathrm{softmax}(z / \\tau).

  The reference gets no gradient. For SAF ``z_ref`` is the example's output
  ``e_tilde`` epochs ago (:class:`OutputBank`); for MESA it is the output of
  the EMA model (:func:`param_ema`) on the same input.

  Args:
    logits: current logits, ``(..., num_classes)``.
    reference_logits: the target logits, same shape.
    temperature: ``tau > 0`` (SAF: 5, "no need to tune").

  Returns:
    A scalar.

  Examples:
    >>> import jax.numpy as jnp, optimflow
    >>> z = jnp.array([[1.0, 2.0, 3.0]])
    >>> optimflow.trajectory_kl(z, z, temperature=2.0)
    Array(0., dtype=float32)

  References:
    Du, Zhou, Feng, Tan, Zhou, `Sharpness-Aware Training for Free
    <https://arxiv.org/abs/2205.14083>`_, 2022.
  """
  _checks.check_positive('temperature', temperature)
  if logits.shape != reference_logits.shape:
    raise ValueError(
        f'logits {logits.shape} and reference_logits '
        f'{reference_logits.shape} must have the same shape.'
    )
  log_q = jax.nn.log_softmax(logits / temperature, axis=-1)
  ref = jax.lax.stop_gradient(reference_logits).astype(log_q.dtype)
  log_p = jax.nn.log_softmax(ref / temperature, axis=-1)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)
  return temperature**2 * jnp.mean(kl)


def saf_schedule(
    lam: float = 0.3,
    start: int = 5,
    end: Optional[int] = None,
) -> Callable[[int | jax.Array], jax.Array]:
  """The trajectory term's coefficient as a function of the epoch.

  ``lam`` while ``start < epoch < end`` (strict, as in the SAF code), else 0.

  Args:
    lam: the coefficient, ``>= 0`` (SAF 0.3, MESA 0.8 in the README).
    start: last epoch without the term, ``>= 0``; with an
      :class:`OutputBank` take ``start >= e_tilde`` so the reference exists.
    end: first epoch without the term again; ``None`` means never.

  Returns:
    ``epoch -> coefficient``, jittable.

  Examples:
    >>> import optimflow
    >>> coef = optimflow.saf_schedule(0.3, start=2)
    >>> [round(float(coef(e)), 2) for e in range(5)]
    [0.0, 0.0, 0.0, 0.3, 0.3]

  References:
    Du, Zhou, Feng, Tan, Zhou, `Sharpness-Aware Training for Free
    <https://arxiv.org/abs/2205.14083>`_, 2022.
  """
  _checks.check_non_negative('lam', lam)
  _checks.check_int_at_least('start', start, 0)
  if end is not None:
    _checks.check_int_at_least('end', end, start + 1)

  def coefficient(epoch):
    on = epoch > start
    if end is not None:
      on = on & (epoch < end)
    return jnp.where(on, jnp.asarray(lam, jnp.float32), 0.0)

  return coefficient
