"""Hardware floors for an optimizer update, measured on the machine at hand.

Two lower bounds on the time of one jitted ``update(grads, state, params)``:

* **memory floor**: the bytes the update must move (every input leaf it
  reads, every output leaf it writes; inputs passed through untouched and
  unread arguments excluded) divided by the copy bandwidth measured here, with
  a donated buffer updated in place (``x + 1``: one read and one write per
  byte);
* **matmul floor**: the matrix-multiply FLOPs of the update (every
  ``dot_general`` in its jaxpr, loops multiplied by their trip count)
  divided by the float32 matmul rate measured here.

The floor of a case is the larger of the two (a roofline bound); elementwise
methods are memory-bound, Newton-Schulz methods matmul-bound. Both rates are
the best of several repetitions, so the floors are optimistic.

    from optimflow.lab.bench import floors
    rates = floors.measure_rates(nbytes=64 << 20)
    cost = floors.update_cost(jax.jit(tx.update), grads, state, params)
    floors.floor_seconds(cost, rates)

Examples:
  >>> import jax.numpy as jnp, optax
  >>> from optimflow.lab.bench import floors
  >>> w = {'k': jnp.ones((8, 4))}
  >>> tx = optax.sgd(0.1)
  >>> cost = floors.update_cost(tx.update, w, tx.init(w), w)
  >>> cost.bytes_moved  # reads the gradient, writes the update
  256
  >>> f = lambda x, y: (x @ y).sum()
  >>> floors.update_cost(f, jnp.ones((8, 4)), jnp.ones((4, 3))).matmul_flops
  192
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable

import jax
from jax.extend import core as jcore
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class Cost:
  """What an update must do.

  Attributes:
    bytes_moved: bytes of the input leaves it reads plus the output leaves
      it writes.
    matmul_flops: FLOPs of its matrix products (2 per multiply-add).
    exact: False when the jaxpr holds a ``while`` loop of unknown trip count
      (its body is counted once).
  """

  bytes_moved: int
  matmul_flops: int
  exact: bool = True


@dataclasses.dataclass(frozen=True)
class Rates:
  """Measured hardware rates.

  Attributes:
    copy_bytes_per_s: bytes read plus written per second by an in-place
      elementwise update of a donated buffer.
    matmul_flops_per_s: float32 matmul FLOPs per second.
    copy_buffer_bytes: size of the buffer the bandwidth was measured on.
    matmul_size: side of the square matrices the rate was measured on.
  """

  copy_bytes_per_s: float
  matmul_flops_per_s: float
  copy_buffer_bytes: int
  matmul_size: int


def _nbytes(aval: Any) -> int:
  shape = getattr(aval, 'shape', None)
  if shape is None:
    return 0
  return int(math.prod(shape)) * np.dtype(aval.dtype).itemsize


def _sub_jaxprs(value: Any):
  if isinstance(value, jcore.ClosedJaxpr):
    yield value.jaxpr
  elif isinstance(value, jcore.Jaxpr):
    yield value
  elif isinstance(value, (tuple, list)):
    for v in value:
      yield from _sub_jaxprs(v)


def _dot_flops(eqn: Any) -> int:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  (_, rhs_contract), (_, rhs_batch) = eqn.params['dimension_numbers']
  rhs_free = [
    d
    for i, d in enumerate(rhs.shape)
    if i not in rhs_contract and i not in rhs_batch
  ]
  return 2 * int(math.prod(lhs.shape)) * int(math.prod(rhs_free))


def jaxpr_matmul_flops(jaxpr: Any) -> tuple[int, bool]:
  """Matmul FLOPs of ``jaxpr`` and whether the count is exact.

  ``scan`` bodies count ``length`` times, ``cond`` its costliest branch,
  ``while`` bodies once (inexact); other sub-jaxprs (``jit``, custom
  derivatives) once.
  """
  total, exact = 0, True
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      total += _dot_flops(eqn)
      continue
    subs = [(k, j) for k, v in eqn.params.items() for j in _sub_jaxprs(v)]
    if not subs:
      continue
    counts = [(k, *jaxpr_matmul_flops(j)) for k, j in subs]
    exact = exact and all(c[2] for c in counts)
    if name == 'cond':
      total += max(c[1] for c in counts)
    elif name == 'scan':
      total += eqn.params['length'] * sum(c[1] for c in counts)
    else:
      if name == 'while' and any(c[1] for c in counts):
        exact = False
      total += sum(c[1] for c in counts)
  return total, exact


def _moved_bytes(jaxpr: Any) -> int:
  """Bytes of the inputs some equation reads plus outputs some equation (or
  a constant) produces; pass-through outputs and unread inputs are free."""
  read = set()
  for eqn in jaxpr.eqns:
    read.update(id(v) for v in eqn.invars if isinstance(v, jcore.Var))
  inputs = {id(v) for v in jaxpr.invars}
  moved = sum(_nbytes(v.aval) for v in jaxpr.invars if id(v) in read)
  for v in jaxpr.outvars:
    if isinstance(v, jcore.Var) and id(v) in inputs:
      continue
    moved += _nbytes(v.aval)
  return moved


def update_cost(fn: Callable[..., Any], *args: Any) -> Cost:
  """Bytes moved and matmul FLOPs of ``fn(*args)``, from its jaxpr.

  Args:
    fn: e.g. ``tx.update`` (jitted or not); extra-args transformations can
      be closed over their keyword arguments first.
    *args: its arguments (arrays or ``jax.ShapeDtypeStruct``).

  Returns:
    A :class:`Cost`.
  """
  closed = jax.make_jaxpr(fn)(*args)
  jaxpr = closed.jaxpr
  # A jitted fn traces to one ``jit`` equation: look inside it.
  if len(jaxpr.eqns) == 1 and jaxpr.eqns[0].primitive.name in ('jit', 'pjit'):
    jaxpr = jaxpr.eqns[0].params['jaxpr'].jaxpr
  flops, exact = jaxpr_matmul_flops(jaxpr)
  return Cost(_moved_bytes(jaxpr), int(flops), exact)


def _best_time(fn: Callable[[], Any], reps: int) -> float:
  jax.block_until_ready(fn())  # compile
  best = math.inf
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - start)
  return best


def copy_bandwidth(nbytes: int, reps: int = 10) -> float:
  """Bytes per second of ``x + 1`` on a donated float32 buffer of ``nbytes``.

  Each call reads and writes every byte once (in place, thanks to the
  donation), so the rate is ``2 nbytes / best time``.
  """
  n = max(1, nbytes // 4)
  update = jax.jit(lambda x: x + 1.0, donate_argnums=0)
  box = [jnp.zeros((n,), jnp.float32)]

  def step():
    box[0] = update(box[0])
    return box[0]

  return 2 * 4 * n / _best_time(step, reps)


def matmul_rate(n: int = 1024, reps: int = 5) -> float:
  """float32 FLOPs per second of an ``n x n`` by ``n x n`` product."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  mm = jax.jit(
    lambda a, b: jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)
  )
  return 2 * n**3 / _best_time(lambda: mm(a, b), reps)


def measure_rates(
  nbytes: int, matmul_sizes: tuple[int, ...] = (512, 1024), reps: int = 5
) -> Rates:
  """Copy bandwidth on a buffer of ``nbytes`` and the best matmul rate over
  ``matmul_sizes``."""
  bandwidth = copy_bandwidth(nbytes, reps)
  rates = {n: matmul_rate(n, reps) for n in matmul_sizes}
  best = max(rates, key=rates.get)
  return Rates(bandwidth, rates[best], int(nbytes), int(best))


def floor_seconds(cost: Cost, rates: Rates) -> tuple[float, str]:
  """The roofline floor of ``cost`` and its bound (``'memory'`` or
  ``'matmul'``).

  Examples:
    >>> from optimflow.lab.bench import floors
    >>> rates = floors.Rates(1e10, 1e11, 1 << 20, 512)
    >>> floors.floor_seconds(floors.Cost(2e9, 1e9), rates)
    (0.2, 'memory')
    >>> floors.floor_seconds(floors.Cost(1e9, 1e11), rates)
    (1.0, 'matmul')
  """
  memory = cost.bytes_moved / rates.copy_bytes_per_s
  matmul = cost.matmul_flops / rates.matmul_flops_per_s
  return (matmul, 'matmul') if matmul > memory else (memory, 'memory')
