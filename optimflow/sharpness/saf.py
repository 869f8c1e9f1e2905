"""SAF and MESA: trajectory loss terms, the output bank, the parameter EMA."""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimflow._src import checks
from optimflow._src.tree import compute_dtype


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
  checks.check_beta('decay', decay, allow_one=False)
  ema_dtype = checks.check_dtype('ema_dtype', ema_dtype)

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
      raise ValueError(
        'param_ema needs params: call tx.update(updates, state, params).'
      )

    def step(e, p, u):
      new = p.astype(compute_dtype(p)) + u.astype(compute_dtype(p))
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
  checks.check_non_negative('learning_rate', learning_rate)
  checks.check_beta('momentum', momentum, allow_one=False)
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
    checks.check_int_at_least('num_examples', num_examples, 1)
    shape = (num_classes,) if isinstance(num_classes, int) else num_classes
    for size in shape:
      checks.check_int_at_least('num_classes', size, 1)
    checks.check_int_at_least('e_tilde', e_tilde, 1)
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
  checks.check_positive('temperature', temperature)
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
  checks.check_non_negative('lam', lam)
  checks.check_int_at_least('start', start, 0)
  if end is not None:
    checks.check_int_at_least('end', end, start + 1)

  def coefficient(epoch):
    on = epoch > start
    if end is not None:
      on = on & (epoch < end)
    return jnp.where(on, jnp.asarray(lam, jnp.float32), 0.0)

  return coefficient
