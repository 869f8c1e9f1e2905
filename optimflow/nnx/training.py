"""Thin Flax NNX helpers for optimflow's transformations.

Sharpness-aware methods need gradients at other parameters than the model's.
:func:`grad_fn` builds that function from an NNX model, a loss and a batch,
so nobody writes ``nnx.split`` / ``nnx.merge`` by hand; :func:`train_step`
returns a jitted step that works with any optax or optimflow transformation
and hands ``grad_fn`` to those that take extra arguments:

>>> import jax.numpy as jnp, optax, optimflow.nnx
>>> from flax import nnx
>>> model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
>>> tx = optax.chain(optimflow.scale_by_sam(0.05), optax.sgd(0.1, momentum=0.9))
>>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
>>> loss_fn = lambda model, x, y: ((model(x) - y) ** 2).mean()
>>> step = optimflow.nnx.train_step(loss_fn)
>>> x, y = jnp.ones((8, 3)), jnp.zeros((8, 2))
>>> bool(step(model, optimizer, x, y) > step(model, optimizer, x, y))
True

For SAF and MESA, :func:`saf_loss` and :func:`mesa_train_step` put the
trajectory term of :mod:`optimflow.sharpness` on top of a loss on logits.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from flax import nnx
import jax
import optax

from optimflow import sharpness
from optimflow._src import checks

LossFn = Callable[..., Any]
GradFn = Callable[[Any], Any]
LogitLoss = Callable[[jax.Array, jax.Array], jax.Array]


def _args(batch: Any) -> tuple[Any, ...]:
  return batch if isinstance(batch, tuple) else (batch,)


def _value_only(loss_fn: LossFn, has_aux: bool) -> LossFn:
  return (lambda *a: loss_fn(*a)[0]) if has_aux else loss_fn


def grad_fn(
  model: nnx.Module,
  loss_fn: LossFn,
  batch: Any,
  *,
  wrt: nnx.filterlib.Filter = nnx.Param,
) -> GradFn:
  """``params -> gradient of loss_fn on batch`` for a copy of ``model``.

  ``params`` and the returned gradients are the pure ``wrt`` states that
  ``nnx.Optimizer(model, tx, wrt=wrt)`` hands to ``tx.update``, so the result
  is what :func:`optimflow.sam` expects as ``grad_fn``. The loss runs on a
  copy of the model with the given parameters and the model's other state
  (BatchNorm statistics, RNG counters) as it was when ``grad_fn`` was built;
  whatever that pass writes to the copy (e.g. the perturbed pass's BatchNorm
  statistics) is discarded, as google-research/sam does. Build it *before*
  the clean pass to reuse the clean pass's dropout masks.

  Args:
    model: the NNX model.
    loss_fn: ``loss_fn(model, *batch) -> scalar``.
    batch: the loss's arguments after the model; a tuple is unpacked, any
      other value is passed as one argument.
    wrt: the filter of the optimized variables (as in ``nnx.Optimizer``).

  Returns:
    ``grad_fn(params) -> grads``.

  Examples:
    >>> import jax.numpy as jnp, optimflow.nnx
    >>> from flax import nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> loss = lambda m, x: m(x).sum()
    >>> g = optimflow.nnx.grad_fn(model, loss, jnp.ones((4, 2)))
    >>> grads = g(nnx.as_pure(nnx.state(model, nnx.Param)))
    >>> grads['bias']
    Array([4.], dtype=float32)
  """
  args = _args(batch)
  graphdef, _, rest = nnx.split(model, wrt, ...)
  rest = nnx.as_pure(rest)  # a snapshot: split's Variables are the model's

  def fn(params):
    def value(p):
      return loss_fn(nnx.merge(graphdef, p, rest, copy=True), *args)

    return jax.grad(value)(params)

  return fn


def grad_fn_builder(
  loss_fn: LossFn, *, wrt: nnx.filterlib.Filter = nnx.Param
) -> Callable[[nnx.Module, Any], GradFn]:
  """``(model, batch) -> grad_fn(model, loss_fn, batch)``.

  The form ``optimflow.lab.tasks.fit(..., grad_fn_builder=...)`` and the CLI
  take.

  Args:
    loss_fn: ``loss_fn(model, *batch) -> scalar``.
    wrt: the filter of the optimized variables.

  Returns:
    A builder ``(model, batch) -> grad_fn``.

  Examples:
    >>> import jax.numpy as jnp, optimflow.nnx
    >>> from flax import nnx
    >>> builder = optimflow.nnx.grad_fn_builder(lambda m, x: m(x).sum())
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> g = builder(model, jnp.ones((3, 2)))
    >>> g(nnx.as_pure(nnx.state(model, nnx.Param)))['bias']
    Array([3.], dtype=float32)
  """
  return lambda model, batch: grad_fn(model, loss_fn, batch, wrt=wrt)


def _update(model, optimizer, loss_fn, has_aux, args, wrt):
  """One step: clean value and gradient, then ``optimizer.update``."""
  extra = {}
  if isinstance(optimizer.tx, optax.GradientTransformationExtraArgs):
    extra['grad_fn'] = grad_fn(
      model, _value_only(loss_fn, has_aux), args, wrt=wrt
    )
  out, grads = nnx.value_and_grad(loss_fn, has_aux=has_aux)(model, *args)
  optimizer.update(model, grads, **extra)
  return out


def train_step(
  loss_fn: LossFn,
  *,
  has_aux: bool = False,
  wrt: nnx.filterlib.Filter = nnx.Param,
  donate_argnums: int | tuple[int, ...] = (),
) -> Callable[..., Any]:
  """A jitted ``step(model, optimizer, *batch)`` for any transformation.

  The step computes the loss and its gradient on the model (the clean pass,
  whose BatchNorm statistics are kept) and calls ``optimizer.update(model,
  grads, grad_fn=...)`` when the optimizer's transformation takes extra
  arguments (``optax.chain`` always does; plain transforms get no extra
  argument), with ``grad_fn`` from :func:`grad_fn`. Sharpness-aware
  transformations (:func:`optimflow.sam`, :func:`optimflow.asam`) call it;
  others ignore it, and an unused ``grad_fn`` costs nothing.

  Args:
    loss_fn: ``loss_fn(model, *batch) -> scalar``, or ``(scalar, aux)`` with
      ``has_aux``.
    has_aux: the loss returns ``(value, aux)``; the step then returns both.
    wrt: the optimized variables; must match the optimizer's ``wrt``.
    donate_argnums: positions in ``step(model, optimizer, *batch)`` of
      arguments whose buffers the step may reuse (``jax.jit``'s donation),
      e.g. 6 for the SAF bank of :func:`saf_loss`'s ``(model, optimizer, x,
      y, ids, epoch, bank)``, so the bank is updated in place instead of
      copied every step (the caller must use the returned bank).

  Returns:
    ``step(model, optimizer, *batch) -> loss`` (or ``(loss, aux)``), an
    ``nnx.jit`` function that updates model and optimizer in place.

  Examples:
    >>> import jax.numpy as jnp, optax, optimflow.nnx
    >>> from flax import nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, optimflow.sam(0.05), wrt=nnx.Param)
    >>> step = optimflow.nnx.train_step(lambda m, x: ((m(x) - 3) ** 2).mean())
    >>> losses = [float(step(model, optimizer, jnp.ones((4, 2))))
    ...           for _ in range(50)]
    >>> round(losses[0], 1), losses[-1] < 0.02
    (8.6, True)
  """

  @functools.partial(nnx.jit, donate_argnums=donate_argnums)
  def step(model, optimizer, *batch):
    return _update(model, optimizer, loss_fn, has_aux, batch, wrt)

  return step


def ema_model(
  model: nnx.Module,
  optimizer: nnx.Optimizer,
  *,
  wrt: nnx.filterlib.Filter = nnx.Param,
) -> nnx.Module:
  """A copy of ``model`` whose parameters are the EMA kept by ``param_ema``.

  The optimizer's transformation must contain :func:`optimflow.param_ema`
  (e.g. ``optax.chain(optax.sgd(0.1), optimflow.param_ema(0.99))``). Other
  state (BatchNorm statistics) is copied from ``model``. Works inside and
  outside ``nnx.jit``.

  Args:
    model: the trained model.
    optimizer: its ``nnx.Optimizer``.
    wrt: the optimizer's filter.

  Returns:
    A new module (the teacher of MESA, or the EMA model to evaluate).

  Examples:
    >>> import jax.numpy as jnp, optax, optimflow.nnx
    >>> from flax import nnx
    >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
    >>> tx = optax.chain(optax.sgd(0.1), optimflow.param_ema(0.5))
    >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    >>> teacher = optimflow.nnx.ema_model(model, optimizer)
    >>> bool((teacher.kernel[...] == model.kernel[...]).all())  # no step yet
    True
  """
  ema = optax.tree.get(nnx.as_pure(nnx.state(optimizer.opt_state)), 'ema')
  if ema is None:
    raise ValueError(
      'ema_model needs optimflow.param_ema(decay) in the optimizer, e.g. '
      'optax.chain(optax.sgd(lr), optimflow.param_ema(0.99)).'
    )
  graphdef, _, rest = nnx.split(model, wrt, ...)
  return nnx.merge(graphdef, ema, rest, copy=True)


def saf_loss(
  logit_loss: LogitLoss,
  *,
  temperature: float = 5.0,
  coefficient: Callable[[Any], jax.Array] = sharpness.saf_schedule(),
  check_ids: bool = True,
) -> LossFn:
  """SAF's loss: ``logit_loss + coefficient(epoch) * trajectory_kl``.

  The returned ``loss(model, x, y, ids, epoch, bank) -> (value, new_bank)``
  runs one forward pass, compares its logits with those the examples ``ids``
  had ``bank.e_tilde`` epochs ago and records the new ones: use it with
  ``train_step(..., has_aux=True, donate_argnums=6)``, keeping the bank in
  the train state (donated, a large bank is updated in place instead of
  copied at every step).

  Args:
    logit_loss: ``logit_loss(logits, y) -> scalar`` (e.g. cross-entropy).
    temperature: the KL temperature ``tau > 0``.
    coefficient: ``epoch -> lambda``, e.g. :func:`optimflow.saf_schedule`.
    check_ids: check under ``jit`` that the ids lie in the bank (costs about
      0.5 ms per step on CPU, see :class:`optimflow.OutputBank`). For full
      speed pass ``False`` and call ``bank.check(ids)`` on the host before
      each step.

  Returns:
    The loss function.

  Examples:
    >>> import jax.numpy as jnp, optax, optimflow.nnx
    >>> from flax import nnx
    >>> ce = lambda z, y: optax.softmax_cross_entropy_with_integer_labels(
    ...     z, y).mean()
    >>> loss = optimflow.nnx.saf_loss(ce, coefficient=optimflow.saf_schedule(
    ...     0.3, start=2))
    >>> model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    >>> step = optimflow.nnx.train_step(loss, has_aux=True, donate_argnums=6)
    >>> bank = optimflow.OutputBank.create(8, num_classes=3, e_tilde=2)
    >>> x, y, ids = jnp.ones((8, 4)), jnp.zeros(8, jnp.int32), jnp.arange(8)
    >>> for epoch in range(4):
    ...   value, bank = step(model, optimizer, x, y, ids, epoch, bank)

  References:
    Du, Zhou, Feng, Tan, Zhou, `Sharpness-Aware Training for Free
    <https://arxiv.org/abs/2205.14083>`_, 2022.
  """
  checks.check_positive('temperature', temperature)

  def loss(model, x, y, ids, epoch, bank):
    logits = model(x)
    reference = bank.reference(ids, epoch, check=check_ids)
    kl = sharpness.trajectory_kl(logits, reference, temperature)
    value = logit_loss(logits, y) + coefficient(epoch) * kl
    return value, bank.record(ids, epoch, logits, check=False)

  return loss


def mesa_train_step(
  logit_loss: LogitLoss,
  *,
  temperature: float = 5.0,
  coefficient: Callable[[Any], jax.Array] = sharpness.saf_schedule(0.8),
  wrt: nnx.filterlib.Filter = nnx.Param,
) -> Callable[..., jax.Array]:
  """MESA: a jitted step with the KL term towards the EMA model's outputs.

  ``step(model, optimizer, x, y, epoch) -> loss``: the teacher's logits come
  from :func:`ema_model` (one extra forward pass, no gradient), then the
  step is :func:`train_step`'s with ``logit_loss + coefficient(epoch) *
  trajectory_kl(logits, teacher_logits, temperature)``. The optimizer must
  end in :func:`optimflow.param_ema`.

  Args:
    logit_loss: ``logit_loss(logits, y) -> scalar``.
    temperature: KL temperature ``tau > 0``.
    coefficient: ``epoch -> lambda`` (MESA's README: 0.8).
    wrt: the optimizer's filter.

  Returns:
    The jitted step.

  Examples:
    >>> import jax.numpy as jnp, optax, optimflow.nnx
    >>> from flax import nnx
    >>> ce = lambda z, y: optax.softmax_cross_entropy_with_integer_labels(
    ...     z, y).mean()
    >>> model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    >>> tx = optimflow.sharpness.sgd_with_param_ema(0.1, decay=0.9)
    >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    >>> step = optimflow.nnx.mesa_train_step(ce)
    >>> x, y = jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)
    >>> value = step(model, optimizer, x, y, 0)

  References:
    Du, Zhou, Feng, Tan, Zhou, `Sharpness-Aware Training for Free
    <https://arxiv.org/abs/2205.14083>`_, 2022.
  """
  checks.check_positive('temperature', temperature)

  def loss(model, x, y, epoch, teacher_logits):
    logits = model(x)
    kl = sharpness.trajectory_kl(logits, teacher_logits, temperature)
    return logit_loss(logits, y) + coefficient(epoch) * kl

  @nnx.jit
  def step(model, optimizer, x, y, epoch):
    teacher_logits = ema_model(model, optimizer, wrt=wrt)(x)
    return _update(
      model, optimizer, loss, False, (x, y, epoch, teacher_logits), wrt
    )

  return step
