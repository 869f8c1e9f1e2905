"""Gradient evaluations counted at run time, exactly under jit, scan and cond.

A count taken while tracing (a Python counter bumped when ``grad_fn`` is
called) is wrong as soon as the call sits in a traced control-flow body: a
``lax.scan`` body is traced once however many times it runs, a ``lax.cond``
traces both branches though one runs. :class:`GradEvals` counts evaluations
when they *run*: each call of a wrapped ``grad_fn`` adds 1 to a ``jax.Ref``
(an int32 buffer created inside the traced step), and the step returns the
count it read at the end. The add is a device-side scalar update, so the
timed step pays nothing measurable. Where a Ref cannot be updated (a JAX
without ``jax.new_ref``, or a wrapped call under ``jax.vmap``, which cannot
write an unbatched Ref) the call is counted by a host callback instead,
still at run time.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from optimflow.lab.counting import GradEvals
  >>> evals = GradEvals()
  >>> @jax.jit
  ... def steps(x):
  ...   scope = evals.scope()
  ...   grad_fn = scope.wrap(jax.grad(lambda w: jnp.sum(w**2)))
  ...   body = lambda w, i: (jax.lax.cond(i % 2 == 0, grad_fn, jnp.sin, w), None)
  ...   return jax.lax.scan(body, x, jnp.arange(5))[0], scope.count()
  >>> _, n = steps(jnp.ones(3))
  >>> evals.add(n)
  3
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

GradFn = Callable[..., Any]

_HAS_REFS = hasattr(jax, 'new_ref') and hasattr(jax, 'ref')


class GradEvals:
  """Host-side total of the ``grad_fn`` evaluations of a run.

  Call :meth:`scope` inside each traced step, wrap the ``grad_fn`` with the
  scope, return ``scope.count()`` from the step and pass it to :meth:`add`.

  Attributes:
    total: evaluations counted so far.
  """

  def __init__(self):
    self.total = 0

  def scope(self) -> Scope:
    """A counter for one traced step (create it inside the traced function)."""
    return Scope(self)

  def add(self, count: Any) -> int:
    """Adds a step's ``scope.count()`` (a device scalar) to :attr:`total`."""
    self.total += int(count)
    return self.total

  def _host_add(self) -> None:
    self.total += 1


class Scope:
  """Counts the evaluations of wrapped gradient functions inside one step."""

  def __init__(self, host: GradEvals):
    self._host = host
    self._ref = jax.new_ref(jnp.zeros((), jnp.int32)) if _HAS_REFS else None

  def wrap(self, grad_fn: GradFn) -> GradFn:
    """``grad_fn`` that counts each call when it runs."""

    def counted(*args, **kwargs):
      self._bump()
      return grad_fn(*args, **kwargs)

    return counted

  def _bump(self) -> None:
    if self._ref is not None:
      try:
        jax.ref.addupdate(self._ref, ..., jnp.int32(1))
        return
      except Exception:  # pylint: disable=broad-except
        # Under jax.vmap an unbatched Ref cannot be written: count on the
        # host (once per batched call).
        pass
    jax.debug.callback(self._host._host_add, ordered=False)

  def count(self) -> jax.Array:
    """Device-counted evaluations so far in this step (int32 scalar)."""
    if self._ref is None:
      return jnp.zeros((), jnp.int32)
    return self._ref[...]


def per_step(total: int, steps: int) -> int | float:
  """``total / steps``: an int when exact, else rounded to 3 decimals."""
  if steps and total % steps == 0:
    return total // steps
  return round(total / steps, 3) if steps else 0
