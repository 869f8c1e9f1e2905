"""One training loop for Flax NNX models, shared by the CLI, the examples,
the notebooks and the benchmarks.

:func:`fit` trains a model with any optax transformation and returns a
:class:`History`: train loss per step, test loss and accuracy at evaluation
points, wall time per step (compilation excluded), optimizer-state bytes and
gradient evaluations per step.

Methods that need more than the gradient (``kind='extra_args'`` in the catalog,
e.g. SAM) receive ``grad_fn`` at every update. ``fit`` builds it through a
*grad_fn builder*::

  grad_fn_builder(model, batch) -> grad_fn      # batch = (x, y)
  grad_fn(params) -> grads                      # same trees as the optimizer's

The builder is called inside the jitted train step, and its ``grad_fn`` is
passed as ``optimizer.update(model, grads, grad_fn=grad_fn)``; ``params`` and
``grads`` are the pure ``nnx.Param`` states the optimizer hands to
``tx.update``. :func:`params_grad_fn` is a minimal builder (gradient of the
loss on the same batch at other parameters; BatchNorm in train mode, its
statistics updates discarded); :func:`grad_fn_builder` returns it, and is
what the CLI uses.

Examples:
  >>> import optax
  >>> from flax import nnx
  >>> from optimflow.lab import tasks
  >>> data = tasks.load_digits()
  >>> model = tasks.MLP((32,), rngs=nnx.Rngs(0))
  >>> hist = tasks.fit(model, optax.adam(1e-2), data, steps=30, progress=False)
  >>> bool(hist.train_loss[-1] < hist.train_loss[0]), hist.grad_evals_per_step
  (True, 1)
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional, Protocol

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimflow import nnx as optimflow_nnx
from optimflow._src import checks
from optimflow.lab import counting
from optimflow.lab.report import format_table  # noqa: F401  (re-exported)
from optimflow.lab.tasks import digits

LossFn = Callable[[nnx.Module, jax.Array, jax.Array], jax.Array]
GradFn = Callable[[Any], Any]
GradFnBuilder = Callable[[nnx.Module, tuple[jax.Array, jax.Array]], GradFn]


class Dataset(Protocol):
  """What :func:`fit` reads from its data (e.g. :class:`DigitsData`)."""

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def params_grad_fn(loss: LossFn = digits.loss_fn) -> GradFnBuilder:
  """A grad_fn builder: gradient of ``loss`` on the batch at given params.

  The returned ``grad_fn(params)`` evaluates the loss of a copy of the model
  whose ``nnx.Param`` leaves are ``params`` (other state, e.g. BatchNorm
  statistics, as in the model; their updates are discarded). This is
  :func:`optimflow.nnx.grad_fn_builder`.

  Args:
    loss: ``loss(model, x, y) -> scalar``.

  Returns:
    ``builder(model, (x, y)) -> grad_fn``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from optimflow.lab import tasks
    >>> model = tasks.MLP((8,), rngs=nnx.Rngs(0))
    >>> x, y = jnp.ones((4, 8, 8, 1)), jnp.zeros((4,), jnp.int32)
    >>> grad_fn = tasks.params_grad_fn()(model, (x, y))
    >>> g = grad_fn(nnx.as_pure(nnx.state(model, nnx.Param)))
    >>> g['head']['kernel'].shape
    (8, 10)
  """

  return optimflow_nnx.grad_fn_builder(loss)


def grad_fn_builder(loss: LossFn = digits.loss_fn) -> GradFnBuilder:
  """The grad_fn builder the CLI uses for ``loss``: :func:`params_grad_fn`."""
  return params_grad_fn(loss)


def tree_bytes(tree: Any) -> int:
  """Sum of ``nbytes`` over the array leaves of ``tree``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optimflow.lab.tasks import tree_bytes
    >>> tree_bytes({'a': jnp.zeros((2, 3)), 'b': None, 'c': jnp.zeros(4, jnp.int8)})
    28
  """
  return int(sum(getattr(x, 'nbytes', 0) for x in jax.tree.leaves(tree)))


def optimizer_state_bytes(optimizer: nnx.Optimizer) -> int:
  """Bytes held by the optax state of ``optimizer`` (its step counter excluded)."""
  return tree_bytes(nnx.state(optimizer.opt_state))


@dataclasses.dataclass
class History:
  """What :func:`fit` records.

  Attributes:
    steps: step indices ``1..n``.
    train_loss: mini-batch loss at each step (before the update).
    eval_steps: steps at which the test set was evaluated.
    test_loss: test loss at ``eval_steps``.
    test_accuracy: test accuracy at ``eval_steps``.
    step_time_s: wall time of each step, synchronised; the first includes
      compilation.
    opt_state_bytes: bytes of the optax state.
    grad_evals_per_step: gradient evaluations per step (1, 2 for SAM).
    final: full-train-set and test-set loss and accuracy after training.
    eval_extra: values returned by ``fit``'s ``eval_fn`` at ``eval_steps``,
      one list per key.
  """

  steps: np.ndarray
  train_loss: np.ndarray
  eval_steps: np.ndarray
  test_loss: np.ndarray
  test_accuracy: np.ndarray
  step_time_s: np.ndarray
  opt_state_bytes: int
  grad_evals_per_step: int | float
  final: dict[str, float]
  eval_extra: dict[str, list[float]] = dataclasses.field(default_factory=dict)

  @property
  def compile_time_s(self) -> float:
    """Wall time of the first step (tracing and compilation included)."""
    return float(self.step_time_s[0])

  @property
  def ms_per_step(self) -> float:
    """Mean wall time of the steps after the first, in milliseconds."""
    rest = self.step_time_s[1:]
    return float(1e3 * rest.mean()) if rest.size else float('nan')

  def smoothed_train_loss(self, decay: float = 0.9) -> np.ndarray:
    """Bias-corrected exponential moving average of :attr:`train_loss`."""
    out = np.empty_like(self.train_loss)
    acc = 0.0
    for i, v in enumerate(self.train_loss):
      acc = decay * acc + (1 - decay) * v
      out[i] = acc / (1 - decay ** (i + 1))
    return out

  def to_dict(self) -> dict[str, Any]:
    """A JSON-serialisable dict of everything recorded."""
    return dict(
      steps=self.steps.tolist(),
      train_loss=self.train_loss.tolist(),
      eval_steps=self.eval_steps.tolist(),
      test_loss=self.test_loss.tolist(),
      test_accuracy=self.test_accuracy.tolist(),
      step_time_s=self.step_time_s.tolist(),
      ms_per_step=self.ms_per_step,
      compile_time_s=self.compile_time_s,
      opt_state_bytes=self.opt_state_bytes,
      grad_evals_per_step=self.grad_evals_per_step,
      final=dict(self.final),
      eval_extra={k: list(v) for k, v in self.eval_extra.items()},
    )


def batches(n: int, batch_size: int, steps: int, seed: int):
  """Yields ``steps`` index arrays: shuffled epochs, remainders dropped.

  Examples:
    >>> from optimflow.lab.tasks import batches
    >>> [b.tolist() for b in batches(5, 2, 3, seed=0)]
    [[2, 4], [3, 0], [4, 1]]
  """
  rng = np.random.default_rng(seed)
  per_epoch = n // batch_size
  done = 0
  while done < steps:
    perm = rng.permutation(n)
    for i in range(min(per_epoch, steps - done)):
      yield perm[i * batch_size : (i + 1) * batch_size]
    done += per_epoch


def evaluate(
  model: nnx.Module,
  x: np.ndarray,
  y: np.ndarray,
  *,
  loss: LossFn = digits.loss_fn,
  chunk: int = 2048,
) -> dict[str, float]:
  """Loss and accuracy of ``model`` (in eval mode) on ``(x, y)``.

  Args:
    model: the model; it is switched to eval mode and back to train mode.
    x: inputs.
    y: integer labels.
    loss: ``loss(model, x, y) -> mean loss``.
    chunk: examples per forward pass.

  Returns:
    ``{'loss': ..., 'accuracy': ...}`` as Python floats.
  """
  model.eval()
  total_loss = total_acc = 0.0
  for start in range(0, len(y), chunk):
    xb = jnp.asarray(x[start : start + chunk])
    yb = jnp.asarray(y[start : start + chunk])
    l, a = _eval_step(model, xb, yb, loss)
    total_loss += float(l) * len(yb)
    total_acc += float(a) * len(yb)
  model.train()
  n = max(len(y), 1)
  return {'loss': total_loss / n, 'accuracy': total_acc / n}


@nnx.jit(static_argnums=3)
def _eval_step(model, x, y, loss):
  return loss(model, x, y), digits.accuracy(model(x), y)


def fit(
  model: nnx.Module,
  tx: optax.GradientTransformation,
  data: Dataset,
  *,
  steps: int,
  batch_size: int = 128,
  seed: int = 0,
  eval_every: Optional[int] = None,
  progress: bool = True,
  desc: Optional[str] = None,
  grad_fn_builder: Optional[GradFnBuilder] = None,
  loss: LossFn = digits.loss_fn,
  grad_evals_per_step: Optional[int] = None,
  eval_fn: Optional[Callable[[nnx.Module], dict[str, float]]] = None,
) -> History:
  """Trains ``model`` in place with ``tx`` and returns its :class:`History`.

  Mini-batches are drawn without replacement from shuffled epochs (order
  fixed by ``seed``); the train step is ``nnx.jit``-ed; the optimizer is
  ``nnx.Optimizer(model, tx, wrt=nnx.Param)``. The model is put in train mode
  for the steps and eval mode for evaluations.

  Args:
    model: an NNX model mapping ``x`` to logits; updated in place.
    tx: the optax transformation.
    data: arrays ``x_train, y_train, x_test, y_test``.
    steps: number of optimizer steps, ``>= 1``.
    batch_size: examples per step (capped at the train-set size).
    seed: seed of the batch order.
    eval_every: evaluate the test set every this many steps (and at the
      end); default ``steps // 10``.
    progress: show a tqdm bar with the live loss.
    desc: label of the bar.
    grad_fn_builder: for ``kind='extra_args'`` methods: ``builder(model,
      (x, y)) -> grad_fn``, passed as ``optimizer.update(..., grad_fn=...)``
      (see the module docstring and :func:`grad_fn_builder`).
    loss: ``loss(model, x, y) -> scalar``.
    grad_evals_per_step: override the count of gradient evaluations per step;
      by default the gradient evaluations (the clean gradient and each
      ``grad_fn`` call) counted when they run, averaged over the steps.
    eval_fn: called with the model at each evaluation point; the floats it
      returns are recorded in ``History.eval_extra`` (e.g. a weight norm).

  Returns:
    A :class:`History`.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  checks.check_int_at_least('steps', steps, 1)
  checks.check_int_at_least('batch_size', batch_size, 1)
  if eval_every is None:
    eval_every = max(1, steps // 10)
  checks.check_int_at_least('eval_every', eval_every, 1)
  n = len(data.y_train)
  batch_size = min(batch_size, n)

  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  evals = counting.GradEvals()

  @nnx.jit
  def train_step(model, optimizer, x, y):
    scope = evals.scope()  # counts gradients when they run, not when traced
    value, grads = scope.wrap(nnx.value_and_grad(loss))(model, x, y)
    extra = {}
    if grad_fn_builder is not None:
      extra['grad_fn'] = scope.wrap(grad_fn_builder(model, (x, y)))
    optimizer.update(model, grads, **extra)
    return value, scope.count()

  model.train()
  x_train, y_train = data.x_train, data.y_train
  losses = np.zeros(steps, np.float64)
  times = np.zeros(steps, np.float64)
  eval_steps, test_loss, test_acc = [], [], []
  extra: dict[str, list[float]] = {}
  bar = tqdm(
    total=steps, desc=desc, disable=not progress, leave=False, mininterval=0.25
  )
  for i, idx in enumerate(batches(n, batch_size, steps, seed)):
    xb, yb = jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx])
    start = time.perf_counter()
    value, n_grads = train_step(model, optimizer, xb, yb)
    value = float(value)
    times[i] = time.perf_counter() - start
    evals.add(n_grads)
    losses[i] = value
    step = i + 1
    if step % eval_every == 0 or step == steps:
      metrics = evaluate(model, data.x_test, data.y_test, loss=loss)
      eval_steps.append(step)
      test_loss.append(metrics['loss'])
      test_acc.append(metrics['accuracy'])
      for key, val in (eval_fn(model) if eval_fn else {}).items():
        extra.setdefault(key, []).append(float(val))
    if progress and (step % 10 == 0 or step == steps):
      postfix = {'loss': f'{value:.4f}'}
      if test_acc:
        postfix['test_acc'] = f'{test_acc[-1]:.3f}'
      bar.set_postfix(postfix, refresh=False)
    bar.update(1)
  bar.close()

  train_metrics = evaluate(model, x_train, y_train, loss=loss)
  final = {
    'train_loss': train_metrics['loss'],
    'train_accuracy': train_metrics['accuracy'],
    'test_loss': test_loss[-1],
    'test_accuracy': test_acc[-1],
  }
  if grad_evals_per_step is None:
    grad_evals_per_step = counting.per_step(evals.total, steps)
  return History(
    steps=np.arange(1, steps + 1),
    train_loss=losses,
    eval_steps=np.asarray(eval_steps),
    test_loss=np.asarray(test_loss),
    test_accuracy=np.asarray(test_acc),
    step_time_s=times,
    opt_state_bytes=optimizer_state_bytes(optimizer),
    grad_evals_per_step=grad_evals_per_step,
    final=final,
    eval_extra=extra,
  )
