"""Gradient evaluations are counted when they run (optimflow.lab.counting).

A count taken at trace time sees a ``lax.scan`` body once however many times
it runs and both branches of a ``lax.cond``; these tests run SAM under jit,
scan and cond and check the run-time count against the number of gradients
the program evaluates, worked out by hand.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimflow
from optimflow.lab import counting
from optimflow.lab import runs
from optimflow.lab.tasks import synthetic

C = jnp.array([1.0, -2.0, 0.5])


def _loss(w):
  return 0.5 * jnp.sum((w - C) ** 2) + 0.1 * jnp.sum(w**4)


def _sam_step(tx, scope, traced):
  """One SAM step: the clean gradient plus grad_fn, both counted."""

  def grad(w):
    traced[0] += 1  # the old, trace-time count, for contrast
    return jax.grad(_loss)(w)

  def step(w, state):
    g = scope.wrap(grad)(w)
    u, state = tx.update(g, state, w, grad_fn=scope.wrap(grad))
    return optax.apply_updates(w, u), state

  return step


def _scanned_sam(tx, evals, traced, steps):
  """A jitted run of ``steps`` SAM steps under ``lax.scan``, with its count."""

  @jax.jit
  def train(w):
    scope = evals.scope()
    step = _sam_step(tx, scope, traced)
    body = lambda carry, _: (step(*carry), None)
    (w, _), _ = jax.lax.scan(body, (w, tx.init(w)), length=steps)
    return w, scope.count()

  return train


@pytest.mark.parametrize('steps', [1, 5])
def test_sam_under_scan_counts_two_per_step(steps):
  tx = optimflow.sam(0.1, rho=0.05)
  evals, traced = counting.GradEvals(), [0]

  train = _scanned_sam(tx, evals, traced, steps)

  w, n = train(jnp.zeros(3))
  assert evals.add(n) == 2 * steps
  assert traced[0] == 2  # the scan body was traced once
  # The same steps run one at a time in Python land where they did.
  w_ref, state = jnp.zeros(3), tx.init(jnp.zeros(3))
  for _ in range(steps):
    g = jax.grad(_loss)(w_ref)
    u, state = tx.update(g, state, w_ref, grad_fn=jax.grad(_loss))
    w_ref = optax.apply_updates(w_ref, u)
  np.testing.assert_allclose(w, w_ref, rtol=1e-6)
  # A second run of the compiled function counts again (no retrace).
  _, n = train(jnp.ones(3))
  assert evals.add(n) == 4 * steps and traced[0] == 2


def test_sam_under_cond_counts_the_branch_that_runs():
  """SAM on steps 0, 3, 6 (i % 3 == 0), the clean gradient alone otherwise."""
  steps = 7
  tx = optimflow.sam(0.1, rho=0.05)
  sgd = optax.sgd(0.1)
  evals, traced = counting.GradEvals(), [0]

  @jax.jit
  def train(w):
    scope = evals.scope()
    sam_step = _sam_step(tx, scope, traced)

    def plain_step(w, state):
      g = scope.wrap(jax.grad(_loss))(w)
      u, _ = sgd.update(g, sgd.init(w))
      return optax.apply_updates(w, u), state

    def body(carry, i):
      return jax.lax.cond(i % 3 == 0, sam_step, plain_step, *carry), None

    (w, _), _ = jax.lax.scan(body, (w, tx.init(w)), jnp.arange(steps))
    return w, scope.count()

  _, n = train(jnp.zeros(3))
  sam_steps = len(range(0, steps, 3))
  assert evals.add(n) == steps + sam_steps == 10
  assert traced[0] == 2  # both SAM gradients traced once, in one branch


def test_a_method_that_scans_grad_fn_is_counted_by_compare():
  """runs.minimize: a method calling grad_fn 3 times in a fori_loop."""
  ascent = 3

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None, *, grad_fn, **extra):
    del extra

    def body(_, p):
      return jax.tree.map(lambda a, g: a + 0.01 * g, p, grad_fn(p))

    del updates
    probe = jax.lax.fori_loop(0, ascent, body, params)
    return jax.tree.map(lambda q, p: p - q, probe, params), state

  tx = optax.GradientTransformationExtraArgs(init, update)
  spec = runs.Spec('scan_ascent', 'test', {}, tx, ('grad_fn',))
  problem = synthetic.Problem('q', jnp.zeros(3), _loss, jnp.zeros(3))
  run = runs.minimize(problem, spec, problem.init, steps=4)
  assert run.grad_evals_per_step == 1 + ascent


def test_sam_in_compare_and_fit_counts_two():
  spec = runs.Spec(
    'sam', 'catalog', {}, optimflow.sam(0.05, rho=0.05), ('grad_fn',)
  )
  problem = synthetic.Problem('q', jnp.zeros(3), _loss, jnp.zeros(3))
  assert (
    runs.minimize(problem, spec, problem.init, steps=3).grad_evals_per_step == 2
  )
  base = runs.Spec('sgd', 'optax', {}, optax.sgd(0.05))
  assert (
    runs.minimize(problem, base, problem.init, steps=3).grad_evals_per_step == 1
  )


def test_fractional_average_and_vmapped_grad_fn():
  assert counting.per_step(10, 7) == 1.429
  assert counting.per_step(14, 7) == 2 and isinstance(
    counting.per_step(14, 7), int
  )
  evals = counting.GradEvals()

  @jax.jit
  def f(ws):
    scope = evals.scope()
    return jax.vmap(scope.wrap(jax.grad(_loss)))(ws), scope.count()

  for run in (1, 2):
    g, n = f(jnp.zeros((4, 3)))
    jax.block_until_ready(g)
    jax.effects_barrier()
    evals.add(n)
    # Under vmap the Ref cannot be written: a host callback counts instead,
    # once per batched call (one vectorised gradient evaluation).
    assert evals.total == run


def test_without_refs_a_host_callback_counts(monkeypatch):
  """JAX without ``jax.new_ref``: the same counts, by host callbacks."""
  monkeypatch.setattr(counting, '_HAS_REFS', False)
  steps = 4
  tx = optimflow.sam(0.1, rho=0.05)
  evals, traced = counting.GradEvals(), [0]

  train = _scanned_sam(tx, evals, traced, steps)

  w, n = train(jnp.zeros(3))
  jax.block_until_ready(w)
  jax.effects_barrier()
  assert int(n) == 0 and evals.add(n) == 2 * steps
