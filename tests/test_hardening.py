"""Hardening (issue 19): what a new user hit, one test per failure.

The properties every catalog entry must have (plain ``inject_hyperparams``,
non-finite in -> non-finite out, zero-size axes, the fuzz) are in
``tests/test_conformance.py``; here are the unit-level checks behind them.
"""

from __future__ import annotations

import functools
import inspect
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimflow
from optimflow import catalog
from optimflow import linalg
from optimflow import orthogonal
from optimflow import whitening
from optimflow._src import checks
from optimflow._src.tree import safe_divide


def _normal(shape, seed=0, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), shape, dtype)


# --------------------------------------------------------------------------
# 1. Integer hyperparameters that arrive as arrays (inject_hyperparams).


def test_as_count_converts_concrete_arrays_and_keeps_traced_ones():
  assert checks.as_count('ns_steps', jnp.asarray(5), 1) == 5
  assert isinstance(checks.as_count('ns_steps', np.int64(3), 1), int)

  @jax.jit
  def traced(n):
    out = checks.as_count('ns_steps', n, 1)
    assert isinstance(out, jax.core.Tracer)
    return out + 0

  assert traced(jnp.asarray(4)) == 4
  for bad in (0, -1, 2.5, True, jnp.asarray(0), jnp.asarray(5.0), 'five'):
    with pytest.raises(ValueError, match='ns_steps=.*integer >= 1'):
      checks.as_count('ns_steps', bad, 1)


def test_static_int_check_says_to_pass_static_args_for_an_array():
  # Before: "ns_steps=Array(5) is invalid: must be an integer >= 1".
  with pytest.raises(ValueError, match=r"static_args=\('ns_steps',\)"):
    checks.check_int_at_least('ns_steps', jnp.asarray(5), 1)


@pytest.mark.parametrize('method', ['plain', 'gram'])
@pytest.mark.parametrize('steps', [1, 2, 5])
def test_newton_schulz_accepts_a_traced_step_count(method, steps):
  x = linalg.frobenius_normalize(_normal((6, 16)))
  fn = linalg.newton_schulz if method == 'plain' else linalg.gram_newton_schulz
  static = fn(x, steps)
  traced = jax.jit(fn)(x, jnp.asarray(steps))
  # Same operations in the same order: equal up to XLA's fusion choices.
  chex.assert_trees_all_close(traced, static, rtol=1e-6, atol=1e-6)


def test_newton_schulz_traced_zero_steps_is_the_identity():
  x = _normal((4, 6))
  out = jax.jit(linalg.newton_schulz)(x, jnp.asarray(0))
  chex.assert_trees_all_equal(out, x)


@pytest.mark.parametrize('beta', [None, 0.5])
@pytest.mark.parametrize('steps', [3, 7, 40])
def test_whiten_accepts_traced_steps_and_beta(beta, steps):
  x = _normal((8, 24))
  static = linalg.whiten(x, steps, beta)
  if beta is None:
    traced = jax.jit(lambda x, n: linalg.whiten(x, n, None))(
      x, jnp.asarray(steps)
    )
  else:
    traced = jax.jit(linalg.whiten)(x, jnp.asarray(steps), jnp.asarray(beta))
  chex.assert_trees_all_close(traced, static, rtol=1e-5, atol=1e-6)


def test_radial_projection_accepts_a_traced_channel_axis():
  w, g, u = _normal((5, 4), 1), _normal((5, 4), 2), _normal((5, 4), 3)
  g = g - w * jnp.sum(g * w, 0) / jnp.sum(w * w, 0)  # fires per channel
  for axis in (0, 1, -1):
    static = optimflow.radial_projection(u, g, w, channel_axis=axis)
    traced = jax.jit(
      lambda u, g, w, a: optimflow.radial_projection(u, g, w, channel_axis=a)
    )(u, g, w, jnp.asarray(axis))
    chex.assert_trees_all_close(traced, static, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('name', ['muon', 'auon', 'hybrid_auon', 'swan'])
def test_plain_inject_hyperparams_readme_idiom(name):
  factory = getattr(optimflow, name)
  params = {'w': _normal((8, 4)), 'b': jnp.zeros(4)}
  grads = {'w': _normal((8, 4), 1), 'b': _normal((4,), 2)}
  tx = optax.inject_hyperparams(factory)(learning_rate=0.02)
  state = tx.init(params)
  u, state = jax.jit(tx.update)(grads, state, params)
  expected, _ = factory(0.02).update(grads, factory(0.02).init(params), params)
  chex.assert_trees_all_close(u, expected, rtol=1e-5, atol=1e-7)
  # The learning rate is a hyperparameter that can be changed in the state.
  state.hyperparams['learning_rate'] = jnp.asarray(0.0)
  u, _ = jax.jit(tx.update)(grads, state, params)
  assert float(jnp.abs(u['w']).max()) == 0.0


# --------------------------------------------------------------------------
# 3. Non-finite in -> non-finite out; zero in -> zero out.


def test_safe_divide_guards_only_zero():
  out = safe_divide(
    jnp.array([1.0, 1.0, 1.0, 0.0]), jnp.array([0.0, 2.0, jnp.nan, 0.0])
  )
  assert out[0] == 0 and out[1] == 0.5 and out[3] == 0
  assert jnp.isnan(out[2])


def test_frobenius_normalize_propagates_nan_and_keeps_zero():
  x = jnp.ones((3, 4)).at[1, 2].set(jnp.nan)
  assert jnp.isnan(linalg.frobenius_normalize(x)).any()
  x = jnp.ones((3, 4)).at[1, 2].set(jnp.inf)
  assert not jnp.isfinite(linalg.frobenius_normalize(x)).all()
  zero = linalg.frobenius_normalize(jnp.zeros((3, 4)))
  chex.assert_trees_all_equal(zero, jnp.zeros((3, 4)))


@pytest.mark.parametrize('bad', [jnp.nan, jnp.inf, -jnp.inf])
@pytest.mark.parametrize(
  'factory',
  [
    optimflow.muon,
    optimflow.auon,
    optimflow.hybrid_auon,
    optimflow.swan,
    functools.partial(optimflow.swan, center=False),
  ],
  ids=['muon', 'auon', 'hybrid_auon', 'swan', 'swan_uncentred'],
)
def test_matrix_methods_do_not_freeze_on_a_non_finite_gradient(factory, bad):
  # Before: the norm guard turned a NaN norm into 0, the update was exactly
  # 0 and the momentum stayed NaN for good: a silent freeze.
  params = {'w': _normal((8, 4))}
  tx = factory(0.02)
  state = tx.init(params)
  g = {'w': _normal((8, 4), 1).at[3, 1].set(bad)}
  u, state = jax.jit(tx.update)(g, state, params)
  assert not jnp.isfinite(u['w']).all()


@pytest.mark.parametrize(
  'factory',
  [optimflow.muon, optimflow.auon, optimflow.hybrid_auon, optimflow.swan],
  ids=['muon', 'auon', 'hybrid_auon', 'swan'],
)
def test_matrix_methods_zero_gradient_gives_zero_update(factory):
  params = {'w': _normal((8, 4))}
  tx = factory(0.02)
  g = {'w': jnp.zeros((8, 4))}
  u, _ = jax.jit(tx.update)(g, tx.init(params), params)
  chex.assert_trees_all_equal(u, g)


@pytest.mark.parametrize(
  'kappa', ['sign', ('huber', 0.1), ('dead_zone', 1e-3), 'l2', 'quadratic']
)
def test_lion_kappa_infinite_gradient_is_not_hidden(kappa):
  # sign(inf) = 1 and clip(inf) = 1: before, an infinite gradient gave a
  # finite step and an infinite momentum that pinned the sign for good.
  tx = optimflow.lion_kappa(1e-3, kappa=kappa)
  p = jnp.zeros(4)
  g = jnp.array([1.0, jnp.inf, -2.0, 0.5])
  u, _ = tx.update(g, tx.init(p), p)
  assert not jnp.isfinite(u[1])


# --------------------------------------------------------------------------
# 4. GradNorm of a constant slice is 0 in every dtype.


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize('value', [0.1, -1.0 / 3.0, 7.3, 1e-3])
@pytest.mark.parametrize('rows', [2, 8, 37, 1000])
def test_gradnorm_constant_slice_is_zero(dtype, value, rows):
  # Before: 0.1 * ones((8, 4)) over axis 0 gave -0.427 in float32 (the
  # rounding error of the mean, divided by eps = 1e-8).
  x = jnp.full((rows, 4), value, dtype)
  out = whitening.gradnorm(x, axis=0)
  assert out.dtype == x.dtype
  chex.assert_trees_all_equal(out, jnp.zeros_like(x))


def test_gradnorm_issue_example():
  out = optimflow.gradnorm(0.1 * jnp.ones((8, 4)), axis=0)
  chex.assert_trees_all_equal(out, jnp.zeros((8, 4)))


@pytest.mark.parametrize('center', [True, False])
def test_gradnorm_matches_float64_reference(center):
  x = np.asarray(_normal((64, 5), 4)) * 3.0 + 1.5
  x[:, 2] = 0.25  # one constant column
  ref = x.astype(np.float64)
  if center:
    ref = ref - ref.mean(0, keepdims=True)
  s = np.sqrt((ref * ref).mean(0, keepdims=True))
  ref = ref / (s + 1e-8)
  if center:
    ref[:, 2] = 0.0  # a constant slice maps to 0 (docstring)
  out = np.asarray(whitening.gradnorm(jnp.asarray(x), axis=0, center=center))
  # float32 arithmetic on O(1) standardised values: a few ulps.
  np.testing.assert_allclose(out, ref, rtol=0, atol=2e-6)


def test_swan_constant_gradient_does_not_move():
  # A constant gradient has no direction GradNorm keeps: before, SWAN turned
  # its rounding noise into a unit-RMS step (uphill as often as not).
  params = {'w': _normal((8, 4))}
  tx = optimflow.scale_by_swan()
  u, _ = tx.update({'w': jnp.full((8, 4), 0.1)}, tx.init(params))
  chex.assert_trees_all_equal(u['w'], jnp.zeros((8, 4)))


# --------------------------------------------------------------------------
# 5. Zero-size leaves.


def test_shape_factor_of_an_empty_matrix():
  assert orthogonal.shape_factor(linalg.matrix_view((0, 5)), 'keller') == 1.0
  assert orthogonal.shape_factor(linalg.matrix_view((5, 0)), 'keller') == 1.0


@pytest.mark.parametrize(
  'tx',
  [
    optimflow.scale_by_muon(),
    optimflow.scale_by_muon(reference=True),
    optimflow.scale_by_auon(),
    optimflow.scale_by_auon(ns_steps=1),
    optimflow.scale_by_swan(),
    optimflow.scale_by_grad_norm(),
    optimflow.scale_by_grad_norm(axis=0),
    optimflow.scale_by_grad_whitening(),
  ],
  ids=[
    'muon',
    'muon_reference',
    'auon',
    'hybrid_auon',
    'swan',
    'grad_norm',
    'grad_norm_axis',
    'grad_whitening',
  ],
)
def test_matrix_transformations_pass_empty_leaves_through(tx):
  # Before: ZeroDivisionError in the width factor (shape_scale='keller').
  g = {
    'a': jnp.zeros((0, 5)),
    'b': jnp.zeros((2, 0, 3)),
    'c': jnp.zeros((4, 0)),
    'w': _normal((3, 4)),
  }
  u, _ = jax.jit(tx.update)(g, tx.init(g))
  chex.assert_trees_all_equal_shapes_and_dtypes(u, g)
  chex.assert_tree_all_finite(u)


# --------------------------------------------------------------------------
# 8. Validation at construction.


def _takes(entry, name):
  return name in inspect.signature(entry.factory).parameters


@pytest.mark.parametrize('value', [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize('entry', catalog.METHODS, ids=catalog.names())
def test_non_finite_learning_rate_rejected(entry, value):
  with pytest.raises(ValueError, match=r'learning_rate=.*(inf|nan).* in \['):
    entry.build(learning_rate=value)


@pytest.mark.parametrize('entry', catalog.METHODS, ids=catalog.names())
def test_learning_rate_string_names_the_argument(entry):
  with pytest.raises(ValueError, match="learning_rate='abc' is not a number"):
    entry.build(learning_rate='abc')


@pytest.mark.parametrize(
  'entry',
  [m for m in catalog.METHODS if _takes(m, 'mu_dtype')],
  ids=[m.name for m in catalog.METHODS if _takes(m, 'mu_dtype')],
)
def test_mu_dtype_unknown_names_the_argument(entry):
  with pytest.raises(ValueError, match="mu_dtype='nosuch' is not a dtype"):
    entry.build(mu_dtype='nosuch')
  with pytest.raises(ValueError, match='mu_dtype=.*not a floating dtype'):
    entry.build(mu_dtype=jnp.int32)


def test_check_interval_range_and_non_numbers():
  with pytest.raises(
    ValueError, match=r'eps=inf is out of range: eps must be finite'
  ):
    checks.check_non_negative('eps', math.inf)
  with pytest.raises(ValueError, match=r'b1=\[0.9\] is not a number'):
    checks.check_beta('b1', [0.9])
  checks.check_non_negative('eps', jnp.asarray(0.5))  # concrete arrays pass
  checks.check_non_negative('lr', optax.constant_schedule(1.0))  # schedules
