"""Tests of optimflow.whitening (SWAN) and its Newton-Schulz in linalg.

Reference: a float64 numpy transcription of the paper's two operators in
torch layout (GradNorm over each row of ``(out, in)``; Algorithm 2's coupled
iteration ``T = 3I - ZY, Y <- beta Y T, Z <- beta T Z`` on the smaller Gram
side, no shortcuts). Invariants: GradNorm moments, whitened singular values,
the null direction that centring creates on square and expanding layers,
float32 work for bf16 parameters, zero state bytes on hidden matrices, the
shared Newton-Schulz code with Muon, bad input. The conformance suite runs
the catalog entry with ``center=False`` (see catalog.py); the checks at the
end run the suite's own functions on the paper's centred SWAN.
"""

from __future__ import annotations

import dataclasses
import math

import chex
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers
import pytest

import optimflow
from optimflow import catalog
from optimflow import linalg
from optimflow import whitening
from tests import test_conformance as conformance

# --------------------------------------------------------------------------
# Reference (numpy, float64, torch layout (out, in)).


def _ref_gradnorm(g, eps=1e-8):
  """Each row of ``(out, in)`` standardised across its ``in`` columns."""
  mean = g.mean(axis=1, keepdims=True)
  std = np.sqrt(((g - mean) ** 2).mean(axis=1, keepdims=True))
  return (g - mean) / (std + eps)


def _ref_scaled_coeffs(steps, floor=1e-2, cushion=1.01):
  """Chen & Chow (2014) scaled Newton-Schulz schedule, float64.

  Transcribed from the method, not from ``linalg.whitening_coeffs``: with
  every singular value in ``[l, u]``, the step is the cubic
  ``g(s) = alpha s (3 - alpha^2 s^2) / 2``, ``alpha^2 = 3 / (u^2 + u l + l^2)``
  (the member of the family with ``g(l) = g(u)``), i.e. ``a = 3 alpha / 2``,
  ``b = -alpha^3 / 2``. The next step is designed for ``[g(l), u]``: ``u``
  stays the cushion, ``l`` becomes ``g(l)``. Returns the ``(steps, 3)`` table
  and the guaranteed lower end after each step.
  """
  low, rows, lows = floor, [], []
  for _ in range(steps):
    alpha = math.sqrt(3.0 / (cushion**2 + cushion * low + low**2))
    rows.append((1.5 * alpha, -0.5 * alpha**3, 0.0))
    low = 0.5 * alpha * low * (3.0 - alpha**2 * low**2)
    lows.append(low)
  return np.array(rows), np.array(lows)


def _ref_whiten(g, steps=10, beta=0.5):
  """Algorithm 2: coupled NS for (G G^T)^(-1/2) G on the smaller side.

  ``T = 3I - ZY, Y <- beta Y T, Z <- beta T Z``; ``beta=None`` uses the
  scaled schedule's per-step cubics ``a s + b s^3``, i.e. ``P = aI + b ZY``
  in place of ``beta T`` (float64 throughout).
  """
  transpose = g.shape[0] > g.shape[1]
  x = g.T if transpose else g
  x = x / np.linalg.norm(x)
  eye = np.eye(x.shape[0])
  y, z = x @ x.T, eye
  if beta is None:
    for a, b, _ in _ref_scaled_coeffs(steps)[0]:
      p = a * eye + b * z @ y
      y, z = y @ p, p @ z
  else:
    for _ in range(steps):
      t = 3 * eye - z @ y
      y, z = beta * y @ t, beta * t @ z
  delta = z @ x
  return delta.T if transpose else delta


def _ref_swan(g_flax, steps=7, beta=None):
  """SWAN on a Flax ``(in, out)`` kernel via the torch-layout reference."""
  g = _ref_gradnorm(np.asarray(g_flax, np.float64).T)
  delta = _ref_whiten(g, steps, beta)
  delta *= math.sqrt(delta.size) / np.linalg.norm(delta)  # unit RMS
  return delta.T


def _normal(shape, seed=0, dtype=jnp.float32):
  return jax.random.normal(jax.random.key(seed), shape, dtype)


def _svals(x):
  return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


# --------------------------------------------------------------------------
# GradNorm.


@settings(max_examples=5, deadline=None)
@given(
  fan_in=st.integers(2, 12),
  fan_out=st.integers(1, 6),
  conv=st.booleans(),
  seed=st.integers(0, 2**16),
)
def test_gradnorm_rows_have_mean_zero_and_std_one(fan_in, fan_out, conv, seed):
  shape = (3, 2, fan_in, fan_out) if conv else (fan_in, fan_out)
  g = {'w': 5.0 * _normal(shape, seed) + 3.0}
  tx = optimflow.scale_by_grad_norm()
  u, _ = tx.update(g, tx.init(g))
  rows = np.asarray(u['w'], np.float64).reshape(-1, fan_out)  # (fan-in, out)
  np.testing.assert_allclose(rows.mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(rows.std(axis=0), 1.0, rtol=1e-4)


def test_gradnorm_equals_reference_and_torch_axis():
  g = np.asarray(_normal((7, 5), 1))
  tx = optimflow.scale_by_grad_norm()
  u, _ = tx.update({'w': jnp.asarray(g)}, tx.init({'w': g}))
  np.testing.assert_allclose(u['w'], _ref_gradnorm(g.T).T, rtol=1e-5, atol=1e-6)
  # torch layout (out, in): standardise over axis 1.
  torch_tx = optimflow.scale_by_grad_norm(axis=1)
  v, _ = torch_tx.update({'w': jnp.asarray(g.T)}, torch_tx.init(None))
  np.testing.assert_allclose(v['w'], u['w'].T, rtol=1e-6, atol=1e-6)


def test_gradnorm_zero_column_and_no_centering():
  g = jnp.stack([jnp.zeros(6), jnp.arange(6.0) - 1.0, jnp.full(6, 2.0)], 1)
  u = whitening.gradnorm(g, axis=0)
  chex.assert_tree_all_finite(u)
  np.testing.assert_array_equal(u[:, 0], 0.0)  # zero unit stays zero
  np.testing.assert_array_equal(u[:, 2], 0.0)  # constant unit: mean removed
  r = whitening.gradnorm(g, axis=0, center=False)
  np.testing.assert_allclose(
    jnp.sqrt(jnp.mean(r[:, 1:] ** 2, axis=0)), 1.0, rtol=1e-6
  )


def test_gradnorm_dimension_numbers_scanned_layers():
  g = _normal((3, 6, 4), 2)  # (layers, in, out)
  dims = MuonDimensionNumbers(reduction_axis=1, output_axis=2)
  tx = optimflow.scale_by_grad_norm(dimension_numbers=dims)
  u, _ = tx.update({'w': g}, tx.init(None))
  for layer in range(3):
    np.testing.assert_allclose(
      u['w'][layer], whitening.gradnorm(g[layer], axis=0), rtol=1e-6, atol=1e-6
    )


# --------------------------------------------------------------------------
# The shared Newton-Schulz (linalg).


def _scalar_map(table, s):
  for a, b, _ in table:
    s = a * s + b * s**3
  return s


def test_whitening_coeffs_constant_beta_is_algorithm_2():
  np.testing.assert_allclose(
    linalg.whitening_coeffs(3, 0.8), [[2.4, -0.8, 0.0]] * 3, rtol=1e-15
  )


def test_scaled_schedule_whitens_the_design_interval():
  """Seven scaled steps map [0.01, 1] into [l_7, 1], l_7 = 0.9988 (Chen & Chow)."""
  t = linalg.whitening_coeffs(7)
  ref, lows = _ref_scaled_coeffs(7)
  # The table is the independent transcription's, to float64 rounding: the
  # two differ in the order of operations, and a rounding error in the lower
  # end l is amplified by at most g'(l) <= 1.5 sqrt 3 = 2.6 per step, so
  # 2.6^7 * 2.2e-16 = 2e-13 after seven steps.
  np.testing.assert_allclose(t, ref, rtol=1e-12, atol=0)
  assert t.shape == (7, 3) and not t[:, 2].any()
  s = np.logspace(-2, 0, 400)
  out = _scalar_map(t, s)
  # The design guarantee: every s in [l, u] lands in [l_7, 1]; 1e-12 is room
  # for float64 rounding over 7 cubic evaluations (~1e-16 each).
  assert out.min() >= lows[-1] - 1e-12 and out.max() <= 1.0 + 1e-12
  assert 0.9988 < lows[-1] < 0.9989  # the figure the docstring quotes
  # Rounding room: s up to the cushion 1.01 is inside the designed interval.
  assert _scalar_map(t, 1.01) >= lows[-1] - 1e-12
  # Every step is one of the family alpha s (3 - alpha^2 s^2) / 2, alpha >= 1
  # (a = 3 alpha / 2, b = -alpha^3 / 2), tending to Higham's (1.5, -0.5):
  # alpha^2 = 3 / (u^2 + u l + l^2) decreases as l grows towards u, and
  # alpha -> 3 / (3 u^2) = 1 / u < 1 only if l passed u, which it never does.
  alpha = t[:, 0] / 1.5
  np.testing.assert_allclose(t[:, 1], -(alpha**3) / 2)
  assert np.all(np.diff(alpha) < 0) and 1 < alpha[-1] < 1.02


@settings(max_examples=20, deadline=None)
@given(log_s=st.floats(-4.0, 0.0))
def test_scaled_7_whitens_at_least_as_well_as_higham_10(log_s):
  """Scaled (7 steps) against Higham's constant cubic (10 steps), float64.

  On the design interval ``[0.01, 1]`` the scaled map is within ``1 - l_7``
  of 1 (where Higham has converged quadratically it can be closer, so the
  bound there is the design guarantee, not Higham's error). Below the floor
  both maps are nearly linear and below 1: the scaled one's lead
  ``scaled / higham`` tends to ``prod(alpha_k) / 1.5^3`` (the ratio of the
  linear coefficients, ``a_k = 1.5 alpha_k`` against 1.5 ten times) as
  ``s -> 0`` and shrinks as the cubic terms grow, so it is least at the floor.
  ``1e-12``: float64 rounding over at most 17 cubic evaluations.
  """
  s = 10.0**log_s
  floor = 1e-2
  table, lows = _ref_scaled_coeffs(7, floor=floor)
  higham_table = np.tile([1.5, -0.5, 0.0], (10, 1))
  scaled = _scalar_map(linalg.whitening_coeffs(7), s)
  higham = _scalar_map(linalg.whitening_coeffs(10, 0.5), s)
  assert higham == _scalar_map(higham_table, s)
  assert abs(1 - scaled) <= max(abs(1 - higham), 1 - lows[-1]) + 1e-12
  if s >= floor:
    assert lows[-1] - 1e-12 <= scaled <= 1 + 1e-12
  else:  # Higham's small directions stay under-whitened
    floor_lead = _scalar_map(table, floor) / _scalar_map(higham_table, floor)
    linear_lead = np.prod(table[:, 0] / 1.5) / 1.5**3
    assert 1 < floor_lead < linear_lead
    lead = scaled / higham
    assert floor_lead * (1 - 1e-12) <= lead <= linear_lead * (1 + 1e-12)


def test_traced_beta_matches_static_beta():
  # Issue 19: a traced beta (plain inject_hyperparams under jit) is used as
  # the constant cubic (3 beta, -beta, 0) instead of raising.
  tx = optax.inject_hyperparams(
    optimflow.scale_by_swan, static_args=('ns_steps',)
  )(ns_beta=0.5)
  g = {'w': _normal((8, 12))}
  u, _ = jax.jit(tx.update)(g, tx.init(g))
  static = optax.inject_hyperparams(
    optimflow.scale_by_swan, static_args=('ns_steps', 'ns_beta')
  )(ns_beta=0.5)
  expected, _ = jax.jit(static.update)(g, static.init(g))
  chex.assert_tree_all_finite(u)
  chex.assert_trees_all_close(u, expected, rtol=1e-5, atol=1e-6)


def test_whitening_coeffs_bad_interval():
  with pytest.raises(ValueError, match='floor'):
    linalg.whitening_coeffs(3, floor=0.0)
  with pytest.raises(ValueError, match='cushion'):
    linalg.whitening_coeffs(3, cushion=0.9)


@pytest.mark.parametrize('method', ['plain', 'gram'])
@pytest.mark.parametrize('beta', [None, 0.5])
def test_whiten_recovers_the_polar_factor_down_to_the_floor(method, beta):
  """Singular values from 1 to 0.0107 after scaling: 7 scaled steps whiten all."""
  u, _ = jnp.linalg.qr(_normal((24, 24), 3))
  v, _ = jnp.linalg.qr(_normal((48, 24), 4))
  sv = jnp.logspace(0, -1.7, 24)
  assert 0.01 < sv.min() / jnp.linalg.norm(sv) < 0.011
  x = (u * sv) @ v.T  # (24, 48)
  got = _svals(
    linalg.whiten(x, method=method, beta=beta, steps=7 if beta is None else 10)
  )
  if beta is None:
    assert got.min() > 0.998 and got.max() < 1.0001
    np.testing.assert_allclose(
      linalg.whiten(x, method=method), u @ v.T, atol=2e-3
    )
  else:  # Higham's ten steps leave the smallest direction under-whitened
    assert got.min() < 0.75 and got.max() < 1.0001


@pytest.mark.parametrize(
  'shape,method,beta',
  [
    ((24, 24), 'plain', 0.5),
    ((24, 24), 'gram', 0.5),
    ((16, 64), 'gram', 0.8),
    ((64, 16), 'plain', 0.8),
    ((2, 8, 40), 'gram', 0.5),
    ((24, 24), 'plain', None),
    ((16, 64), 'gram', None),
  ],
)
def test_whitening_is_algorithm_2_through_muons_newton_schulz(
  shape, method, beta
):
  """whiten == Algorithm 2's coupled iteration (float64) == Muon's NS code.

  Muon's :func:`linalg.newton_schulz` with the cubic coefficient table gives
  the same iterate as the coupled Gram-side inverse square root.
  """
  x = _normal(shape, 4)
  got = linalg.whiten(x, 6, beta, eps=1e-30, method=method)
  x0 = x / jnp.linalg.norm(x, axis=(-2, -1), keepdims=True)
  muon_ns = linalg.newton_schulz(x0, 6, linalg.whitening_coeffs(6, beta))
  np.testing.assert_allclose(got, muon_ns, rtol=1e-4, atol=2e-5)
  flat = np.asarray(x, np.float64).reshape((-1,) + shape[-2:])
  ref = np.stack([_ref_whiten(m, 6, beta) for m in flat]).reshape(shape)
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=2e-5)


def test_swan_runs_through_linalg(monkeypatch):
  """The SWAN path calls linalg.whiten (no second iteration in whitening)."""
  calls = []
  whiten = linalg.whiten

  def spy(x, *args, **kwargs):
    calls.append(x.shape)
    return whiten(x, *args, **kwargs)

  monkeypatch.setattr(linalg, 'whiten', spy)
  g = {'a': _normal((8, 4)), 'b': _normal((8, 4), 1), 'c': _normal((4, 6))}
  for tx in (optimflow.scale_by_swan(), optimflow.scale_by_grad_whitening()):
    calls.clear()
    tx.update(g, tx.init(g))
    # Same-shape matrices are stacked into one group, traced once; on CPU
    # the group runs one matrix at a time (linalg.matrixwise), elsewhere as
    # a batch (either orientation).
    by_shape = {tuple(sorted(s[-2:])): s[:-2] for s in calls}
    assert len(calls) == 2 and sorted(by_shape) == [(4, 6), (4, 8)]
    matrixwise = jax.default_backend() in linalg.MATRIXWISE_BACKENDS
    assert by_shape[(4, 8)] == (() if matrixwise else (2,))


# --------------------------------------------------------------------------
# Whitening: singular values, parity with the reference.


@pytest.mark.parametrize(
  'shape', [(32, 128), (128, 32), (48, 96), (3, 3, 8, 32)]
)
@pytest.mark.parametrize('normalization', ['frobenius', 'gram'])
def test_whitened_singular_values_agree(shape, normalization):
  """Full-rank Gaussian gradient: the update's singular values are ~equal.

  Centring removes one direction when ``fan_in <= fan_out`` (rank
  ``fan_in - 1``): that singular value is 0, the others agree.
  """
  g = {'w': _normal(shape, 5)}
  tx = optimflow.scale_by_swan(normalization=normalization)
  u, _ = tx.update(g, tx.init(g))
  s = _svals(np.asarray(u['w']).reshape(-1, shape[-1]))
  m, n = math.prod(shape[:-1]), shape[-1]
  if m <= n:
    assert s[-1] < 1e-3 * s[0]
    s = s[:-1]
  assert s.max() / s.min() < 1.03
  # Unit RMS: the r nonzero singular values all equal sqrt(m n / r).
  np.testing.assert_allclose(s, math.sqrt(m * n / len(s)), rtol=0.02)


def test_gram_normalization_whitens_more_per_step():
  x = _normal((64, 256), 6)
  smin = lambda norm: _svals(linalg.whiten(x, 5, 0.5, normalization=norm)).min()
  assert smin('gram') > smin('frobenius') + 0.2
  assert smin('gram') > 0.85


@pytest.mark.parametrize(
  'shape,steps,beta',
  [
    ((12, 20), 10, 0.5),
    ((20, 12), 10, 0.5),
    ((16, 16), 10, 0.5),
    ((12, 20), 6, 0.8),
    ((3, 3, 4, 10), 10, 0.5),
    ((12, 20), 7, None),
    ((20, 12), 7, None),
    ((3, 3, 4, 10), 7, None),
  ],
)
def test_swan_matches_reference(shape, steps, beta):
  g = _normal(shape, 7)
  tx = optimflow.scale_by_swan(ns_steps=steps, ns_beta=beta)
  u, _ = tx.update({'w': g}, tx.init(None))
  ref = _ref_swan(np.asarray(g).reshape(-1, shape[-1]), steps, beta)
  np.testing.assert_allclose(
    np.asarray(u['w']).reshape(ref.shape), ref, rtol=2e-4, atol=2e-4
  )


def test_grad_whitening_alone_is_the_polar_factor():
  g = _normal((40, 24), 8)
  tx = optimflow.scale_by_grad_whitening(output_scale=None)
  u, _ = tx.update({'w': g}, tx.init(None))
  np.testing.assert_allclose(u['w'], linalg.polar_factor(g), atol=2e-3)


@pytest.mark.parametrize('output_scale', ['unit_rms', 'match_gradnorm', None])
def test_output_scale(output_scale):
  g = {'w': _normal((4, 16, 32), 9)}  # conv-like (4*16 = 64 in, 32 out)
  tx = optimflow.scale_by_swan(output_scale=output_scale)
  u, _ = tx.update(g, tx.init(g))
  norm = float(jnp.linalg.norm(u['w']))
  gn = whitening.gradnorm(g['w'].reshape(64, 32), axis=0)
  expected = {
    'unit_rms': math.sqrt(64 * 32),
    'match_gradnorm': float(jnp.linalg.norm(gn)),
    None: math.sqrt(32),
  }[output_scale]  # ||U V^T||_F = sqrt(min)
  np.testing.assert_allclose(norm, expected, rtol=1e-3)


def test_scanned_layers_are_separate_matrices():
  g = _normal((3, 12, 20), 10)
  dims = MuonDimensionNumbers(reduction_axis=1, output_axis=2)
  tx = optimflow.scale_by_swan(dimension_numbers=dims)
  u, _ = tx.update({'w': g}, tx.init(None))
  single = optimflow.scale_by_swan()
  for layer in range(3):
    v, _ = single.update({'w': g[layer]}, single.init(None))
    # Stacked and single runs round differently (XLA fusion); float32
    # rounding (1.2e-7) grows by up to the product of the steps' linear
    # coefficients (~210, module docstring): 2.5e-5, doubled for margin.
    np.testing.assert_allclose(u['w'][layer], v['w'], rtol=1e-5, atol=5e-5)


def test_centred_update_keeps_unit_means():
  """1^T u = 0 per output unit: the paper's SWAN never moves a unit's mean."""
  g = {'w': _normal((10, 30), 11), 'v': _normal((30, 10), 12)}
  tx = optimflow.scale_by_swan()
  u, _ = tx.update(g, tx.init(g))
  np.testing.assert_allclose(u['w'].sum(axis=0), 0.0, atol=2e-4)
  np.testing.assert_allclose(u['v'].sum(axis=0), 0.0, atol=2e-4)


# --------------------------------------------------------------------------
# The null direction created by centring; low precision.


@pytest.mark.parametrize(
  'shape,dtype,beta',
  [
    ((64, 64), jnp.float32, None),
    ((64, 64), jnp.bfloat16, None),
    ((32, 96), jnp.bfloat16, None),
    ((64, 64), jnp.float32, 0.5),
    ((64, 64), jnp.bfloat16, 0.5),
    ((64, 64), jnp.float32, 0.8),
    ((32, 96), jnp.bfloat16, 0.5),
    ((3, 3, 8, 72), jnp.float32, 0.5),
    ((3, 3, 8, 72), jnp.bfloat16, 0.8),
  ],
)
def test_null_direction_stays_bounded(shape, dtype, beta):
  """fan_in <= fan_out: the centred Gram is singular; the output is not."""
  g = _normal(shape, 13, dtype)
  fan_out = shape[-1]
  gn = whitening.gradnorm(g.astype(jnp.float32).reshape(-1, fan_out), axis=0)
  gram = np.asarray(gn @ gn.T, np.float64)
  eig = np.linalg.eigvalsh(gram)
  assert eig[0] < 1e-6 * eig[-1]  # singular: the all-ones fan-in direction
  tx = optimflow.scale_by_swan(ns_beta=beta, output_scale=None)
  u, _ = tx.update({'w': g}, tx.init(None))
  assert u['w'].dtype == dtype
  chex.assert_tree_all_finite(u)
  w = np.asarray(u['w'], np.float64).reshape(-1, fan_out)
  s = _svals(w)
  assert s.max() < 1.7  # beta = 0.8 overshoots to ~1.6, never explodes
  if beta != 0.8:  # converged except the smallest directions of a square
    assert s.max() < 1.01 and np.median(s) > 0.9
  # The amplified null direction is annihilated by the final product.
  ones = np.ones(w.shape[0]) / math.sqrt(w.shape[0])
  tol = 2e-3 if dtype == jnp.float32 else 2e-2
  assert np.linalg.norm(ones @ w) < tol * np.linalg.norm(w)


def test_bf16_gradients_are_whitened_in_float32():
  g32 = _normal((24, 40), 14).astype(jnp.bfloat16).astype(jnp.float32)
  tx = optimflow.scale_by_swan()
  u16, _ = tx.update({'w': g32.astype(jnp.bfloat16)}, tx.init(None))
  u32, _ = tx.update({'w': g32}, tx.init(None))
  assert u16['w'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(
    np.asarray(u16['w'], np.float32),
    np.asarray(u32['w'].astype(jnp.bfloat16), np.float32),
  )


def test_zero_gradient_and_zero_unit():
  tx = optimflow.scale_by_swan()
  u, _ = tx.update({'w': jnp.zeros((8, 8))}, tx.init(None))
  np.testing.assert_array_equal(u['w'], 0.0)
  g = _normal((8, 6), 15).at[:, 2].set(0.0)
  u, _ = tx.update({'w': g}, tx.init(None))
  chex.assert_tree_all_finite(u)


# --------------------------------------------------------------------------
# State memory.


def _tiny_transformer():
  from optimflow.lab.bench.cases import transformer_tree  # pylint: disable=import-outside-toplevel

  return transformer_tree(blocks=2, d=16, ff=64, vocab=40)


def _array_bytes(tree):
  return sum(x.nbytes for x in jax.tree.leaves(tree) if jnp.ndim(x) > 0)


def test_state_bytes_on_hidden_matrices_are_zero():
  params = _tiny_transformer()
  labels = optimflow.orthogonal.matrix_labels()(params)
  is_matrix = jax.tree.leaves(jax.tree.map(lambda l: l == 'matrix', labels))
  leaves = jax.tree.leaves(params)
  matrix_bytes = sum(x.nbytes for x, m in zip(leaves, is_matrix) if m)
  other_bytes = sum(x.nbytes for x, m in zip(leaves, is_matrix) if not m)
  assert matrix_bytes > 0.5 * (matrix_bytes + other_bytes)
  # The SWAN branch alone: no state at all.
  assert jax.tree.leaves(optimflow.scale_by_swan().init(params)) == []
  # The alias: only AdamW's two moments of the non-matrix leaves, plus
  # scalars (counters).
  state = optimflow.swan(1e-3).init(params)
  assert _array_bytes(state) == 2 * other_bytes
  assert all(
    jnp.ndim(x) == 0 or x.nbytes < 4 * 40 * 16 + 1
    for x in jax.tree.leaves(state)
  )
  # For comparison: Muon stores one moment per matrix, AdamW two per leaf.
  muon_state = optimflow.muon(1e-3).init(params)
  assert _array_bytes(muon_state) == matrix_bytes + 2 * other_bytes
  assert _array_bytes(optax.adamw(1e-3).init(params)) == 2 * (
    matrix_bytes + other_bytes
  )
  # Still zero after an update, with a schedule and weight decay.
  tx = optimflow.swan(optax.cosine_decay_schedule(1e-3, 10), weight_decay=0.1)
  state = jax.eval_shape(
    tx.update, jax.tree.map(jnp.ones_like, params), tx.init(params), params
  )[1]
  assert (
    sum(
      math.prod(x.shape) * x.dtype.itemsize
      for x in jax.tree.leaves(state)
      if x.ndim
    )
    == 2 * other_bytes
  )


def test_swan_routes_like_muon():
  params = _tiny_transformer()
  grads = jax.tree.map(lambda x: _normal(x.shape, 16), params)
  tx = optimflow.swan(1.0, adam_learning_rate=0.0)
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  labels = optimflow.orthogonal.matrix_labels()(params)
  matrices = jax.tree.map(
    lambda g, lab: g if lab == 'matrix' else None, grads, labels
  )
  ref, _ = jax.jit(optimflow.scale_by_swan().update)(matrices, None)
  for lab, a, b in zip(
    jax.tree.leaves(labels),
    jax.tree.leaves(u),
    jax.tree.leaves(ref, is_leaf=lambda x: x is None),
  ):
    if lab == 'matrix':
      np.testing.assert_allclose(a, -b, rtol=1e-6, atol=1e-6)
    else:
      assert b is None
      np.testing.assert_array_equal(a, 0.0)  # AdamW with lr 0
  assert labels['embed']['embedding'] == 'other'
  assert labels['block_0']['mlp']['up']['kernel'] == 'matrix'


# --------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
  'kwargs,match',
  [
    (dict(ns_steps=0), 'ns_steps'),
    (dict(ns_steps=2.0), 'ns_steps'),
    (dict(ns_steps=True), 'ns_steps'),
    (dict(ns_beta=0.0), 'ns_beta'),
    (dict(ns_beta=-0.5), 'ns_beta'),
    (dict(ns_beta=1.5), 'ns_beta'),
    (dict(ns_beta=float('nan')), 'ns_beta'),
    (dict(eps=0.0), 'eps'),
    (dict(eps=-1e-8), 'eps'),
    (dict(output_scale='spectral'), 'output_scale'),
    (dict(normalization='trace'), 'normalization'),
  ],
)
@pytest.mark.parametrize(
  'factory',
  [
    optimflow.scale_by_swan,
    optimflow.scale_by_grad_whitening,
    lambda **kw: optimflow.swan(1e-3, **kw),
  ],
)
def test_bad_hyperparameters(factory, kwargs, match):
  with pytest.raises(ValueError, match=match):
    factory(**kwargs)


def test_bad_grad_norm_eps():
  with pytest.raises(ValueError, match=r'eps=0.0 is out of range'):
    optimflow.scale_by_grad_norm(eps=0.0)


def test_good_edge_hyperparameters():
  optimflow.scale_by_swan(ns_steps=1, ns_beta=1.0)


def test_vector_leaf_on_matrix_branch_raises():
  g = {'layer': {'bias': jnp.ones(3), 'kernel': jnp.ones((3, 3))}}
  for tx in (
    optimflow.scale_by_swan(),
    optimflow.scale_by_grad_whitening(),
    optimflow.scale_by_grad_norm(),
    optimflow.scale_by_grad_norm(axis=0),
  ):
    with pytest.raises(ValueError, match=r"\['layer'\]\['bias'\]"):
      tx.update(g, tx.init(g))
  tx = optimflow.swan(1e-3, matrix_filter=lambda path, leaf: True)
  with pytest.raises(ValueError, match=r"\['layer'\]\['bias'\]"):
    tx.init(g)


# --------------------------------------------------------------------------
# Conformance checks for the paper's centred GradNorm.

_CENTRED = dataclasses.replace(
  catalog.get('swan'),
  name='swan_centred',
  test_kwargs={**catalog.get('swan').test_kwargs, 'center': True},
)


@pytest.mark.parametrize(
  'check',
  [
    conformance.test_jit_equals_eager,
    conformance.test_inject_hyperparams,
    conformance.test_multi_steps,
    conformance.test_checkpoint_round_trip,
    conformance.test_sharding_preserved,
  ],
)
def test_conformance_centred(check):
  check(_CENTRED, {})


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_conformance_centred_dtype(dtype):
  conformance.test_preserves_dtype(_CENTRED, {}, dtype)


@pytest.mark.parametrize(
  'case',
  ['zero_grads', 'zero_params', 'none_leaves', 'masked_node_leaves', 'empty'],
)
def test_conformance_centred_edge_cases(case):
  conformance.test_edge_cases_finite(_CENTRED, {}, case)
