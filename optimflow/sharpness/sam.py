"""SAM and ASAM in one update call, and m-sharpness."""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import optax

from optimflow._src import checks
from optimflow._src.tree import MaskOrFn
from optimflow._src.tree import compute_dtype
from optimflow._src.tree import key_name

GradFn = Callable[[optax.Params], optax.Updates]
AdaptiveMask = Optional[
  Union[Any, Callable[[tuple[Any, ...], jax.Array], bool]]
]
_MISSING_GRAD_FN = (
  '{name} needs the keyword argument grad_fn: a function params -> gradient '
  'tree on the current batch, called at the perturbed parameters. Build it '
  'from your loss, e.g. grad_fn = lambda p: jax.grad(loss_fn)(p, batch), and '
  'call tx.update(grads, state, params, grad_fn=grad_fn) (optax.chain and '
  'nnx.Optimizer.update forward it). For Flax NNX models, '
  'optimflow.nnx.grad_fn(model, loss_fn, batch) builds it and '
  'optimflow.nnx.train_step(loss_fn) passes it for you.'
)


def global_norm(tree: Any) -> jax.Array:
  """L2 norm over all leaves, accumulated in at least float32."""
  squares = [
    jnp.sum(jnp.square(x.astype(compute_dtype(x))))
    for x in jax.tree.leaves(tree)
  ]
  return jnp.sqrt(sum(squares, jnp.zeros([], jnp.float32)))


def _is_bias(path: tuple[Any, ...], leaf: jax.Array) -> bool:
  del leaf
  return any(key_name(k).lower().endswith('bias') for k in path)


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
      w = jnp.abs(w.astype(compute_dtype(w)))
      return jnp.where(m, w + eta, jnp.ones_like(w))

    t = jax.tree.map(scale, mask, params)
  else:
    t = jax.tree.map(lambda g: jnp.ones([], compute_dtype(g)), grads)
  tg = jax.tree.map(lambda t_, g: t_ * g.astype(compute_dtype(g)), t, grads)
  factor = rho / jnp.maximum(global_norm(tg), eps)
  return jax.tree.map(
    lambda t_, v, w: (factor * t_ * v).astype(w.dtype), t, tg, params
  )


def _perturbed_gradient(grads, params, grad_fn, **perturbation):
  e = sam_perturbation(grads, params, **perturbation)
  return grad_fn(jax.tree.map(lambda w, d: w + d, params, e))


def scale_by_sam(
  rho: float = 0.05,
  *,
  adaptive: bool = False,
  eta: float = 0.01,
  adaptive_mask: AdaptiveMask = None,
  eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  """SAM's gradient in one call: returns ``grad_fn(w + e)`` (a building block).

  Not a descent method by itself: it emits a gradient, so it must be followed
  by an optimizer (``optax.chain(scale_by_sam(rho), optax.sgd(...))``);
  :func:`sam` is that chain with SGD and momentum, the papers' setting.

  ``update(grads, state, params, *, grad_fn)`` takes the clean gradient
  ``g = grads``, forms ``e`` with :func:`sam_perturbation` and returns
  ``grad_fn(params + e)`` in the dtypes of ``grads``. Put it in front of any
  optimizer; ``optax.chain`` and ``nnx.Optimizer.update`` forward ``grad_fn``
  to it and the optimizer after it sees the sharpness-aware gradient.

  Weight decay: chain ``optax.add_decayed_weights`` *after* ``sam`` (as
  :func:`sam` does). The decay then acts on the parameters but does not
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
    >>> tx = optax.chain(optimflow.scale_by_sam(0.1), optax.sgd(0.01))
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
  checks.check_positive('rho', rho)
  checks.check_non_negative('eta', eta)
  checks.check_positive('eps', eps)
  name = 'asam' if adaptive else 'sam'

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(
    updates,
    state,
    params=None,
    *,
    grad_fn: Optional[GradFn] = None,
    **extra_args,
  ):
    del extra_args
    if grad_fn is None:
      raise ValueError(_MISSING_GRAD_FN.format(name=name))
    if params is None:
      raise ValueError(
        f'{name} needs params: call tx.update(grads, state, '
        'params, grad_fn=grad_fn).'
      )
    g = _perturbed_gradient(
      updates,
      params,
      grad_fn,
      rho=rho,
      adaptive=adaptive,
      eta=eta,
      adaptive_mask=adaptive_mask,
      eps=eps,
    )
    return optax.tree.cast_like(g, updates), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def scale_by_asam(
  rho: float = 0.5,
  eta: float = 0.01,
  *,
  adaptive_mask: AdaptiveMask = None,
  eps: float = 1e-12,
) -> optax.GradientTransformationExtraArgs:
  """ASAM's gradient: :func:`scale_by_sam` with ``adaptive=True`` and ASAM's defaults.

  A building block like :func:`scale_by_sam`, not a descent method by itself:
  follow it with an optimizer (:func:`asam` chains SGD with momentum).

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
    >>> tx = optax.chain(optimflow.scale_by_asam(0.5), optax.sgd(0.1, momentum=0.9))

  References:
    Kwon, Kim, Park, Choi, `ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks
    <https://arxiv.org/abs/2102.11600>`_, 2021.
  """
  return scale_by_sam(
    rho, adaptive=True, eta=eta, adaptive_mask=adaptive_mask, eps=eps
  )


def sam(
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
  """SAM: SGD with momentum on the sharpness-aware gradient (the papers' setting).

  ``optax.chain(scale_by_sam(rho, ...), optax.add_decayed_weights(weight_decay, mask),
  optax.sgd(learning_rate, momentum, nesterov))``. This is the catalog's
  ``sam`` entry (what the CLI and the conformance suite train); to put SAM in
  front of another optimizer, chain :func:`scale_by_sam` yourself. The decay is not in
  the perturbation (see :func:`scale_by_sam`).

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
    >>> tx = optimflow.sam(0.1, rho=0.05)
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
  checks.check_non_negative('learning_rate', learning_rate)
  checks.check_beta('momentum', momentum, allow_one=False)
  checks.check_non_negative('weight_decay', weight_decay)
  return optax.chain(
    scale_by_sam(
      rho, adaptive=adaptive, eta=eta, adaptive_mask=adaptive_mask, eps=eps
    ),
    optax.add_decayed_weights(weight_decay, mask),
    optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
  )


def asam(
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
  """ASAM in front of SGD with momentum: :func:`sam` with ``adaptive``.

  The catalog's ``asam`` entry. Arguments as in :func:`sam`; ``rho``
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
    >>> tx = optimflow.asam(0.1, rho=0.5, weight_decay=5e-4)

  References:
    Kwon, Kim, Park, Choi, `ASAM: Adaptive Sharpness-Aware Minimization for
    Scale-Invariant Learning of Deep Neural Networks
    <https://arxiv.org/abs/2102.11600>`_, 2021.
  """
  return sam(
    learning_rate,
    rho,
    momentum,
    nesterov,
    weight_decay,
    mask,
    adaptive=True,
    eta=eta,
    adaptive_mask=adaptive_mask,
    eps=eps,
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
  (or ``m = B``) is plain SAM on the whole batch, equal to one :func:`scale_by_sam`
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
  checks.check_positive('rho', rho)
  sizes = {x.shape[0] for x in jax.tree.leaves(batch)}
  if len(sizes) != 1:
    raise ValueError(
      f'batch leaves must share one leading batch axis; got sizes {sizes}.'
    )
  (size,) = sizes
  m = size if m is None else m
  checks.check_int_at_least('m', m, 1)
  if size % m:
    raise ValueError(
      f'm={m} does not divide the batch size {size}: m-sharpness splits the '
      'batch into equal chunks of m examples.'
    )
  grad = jax.grad(loss_fn)
  perturbation = dict(
    rho=rho, adaptive=adaptive, eta=eta, adaptive_mask=adaptive_mask, eps=eps
  )

  def one_chunk(chunk):
    g = grad(params, chunk)
    return _perturbed_gradient(
      g, params, lambda p: grad(p, chunk), **perturbation
    )

  chunks = jax.tree.map(lambda x: x.reshape(size // m, m, *x.shape[1:]), batch)
  per_chunk = jax.vmap(one_chunk)(chunks)
  return jax.tree.map(lambda g: jnp.mean(g, axis=0), per_chunk)


# -- MESA: exponential moving average of the parameters ----------------------
