"""optimflow.linalg: matrix views, grouping, Newton-Schulz iterations."""

from __future__ import annotations

import chex
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optimflow import linalg

A, B, C = linalg.MUON_COEFFS
# A convergent quintic (the degree-5 Newton-Schulz / Pade coefficients):
# p(s) = (15 s - 10 s^3 + 3 s^5) / 8 has p(1) = 1, p'(1) = p''(1) = 0.
CONVERGENT = (15 / 8, -10 / 8, 3 / 8)


def _with_singular_values(key, m, n, s, batch=()):
  """Random ``U diag(s) V^T`` of shape ``batch + (m, n)``."""
  ku, kv = jax.random.split(key)
  k = min(m, n)
  u, _ = jnp.linalg.qr(jax.random.normal(ku, batch + (m, k)))
  v, _ = jnp.linalg.qr(jax.random.normal(kv, batch + (n, k)))
  return (u * s) @ jnp.swapaxes(v, -1, -2)


def _singular_values(x):
  return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


# --------------------------------------------------------------------------
# Newton-Schulz.


@pytest.mark.parametrize('method', ['plain', 'gram'])
@pytest.mark.parametrize('shape', [(24, 24), (16, 64), (64, 16)])
def test_ns5_singular_values_in_documented_band(method, shape):
  """5 steps map s in [1e-3, 1] into [0.47, 1.20], s >= 1e-2 into [0.68, 1.13].

  The band is the range of the scalar map s -> a s + b s^3 + c s^5 iterated
  five times (0.4705..1.2024 and 0.6818..1.1344), so the matrix iteration
  must land inside it up to float32 rounding.
  """
  k = min(shape)
  s = jnp.geomspace(1e-3, 1.0, k)
  x = _with_singular_values(jax.random.key(0), *shape, s)
  ns = linalg.newton_schulz if method == 'plain' else linalg.gram_newton_schulz
  out = _singular_values(ns(x, 5))
  assert out.min() >= 0.4705 - 1e-3 and out.max() <= 1.2024 + 1e-3
  big = _singular_values(
    ns(
      _with_singular_values(
        jax.random.key(1), *shape, jnp.geomspace(1e-2, 1.0, k)
      ),
      5,
    )
  )
  assert big.min() >= 0.6818 - 1e-3 and big.max() <= 1.1344 + 1e-3


def test_ns_acts_on_singular_values_as_the_scalar_polynomial():
  s = np.array([1.0, 0.7, 0.3, 0.05, 1e-3])
  x = _with_singular_values(jax.random.key(2), 5, 9, jnp.asarray(s))
  expected = s.copy()
  for _ in range(3):
    expected = A * expected + B * expected**3 + C * expected**5
  got = np.sort(_singular_values(linalg.newton_schulz(x, 3)))[::-1]
  np.testing.assert_allclose(got, np.sort(expected)[::-1], rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize('shape', [(8, 8), (8, 32), (32, 8), (3, 12, 48)])
@pytest.mark.parametrize('steps', [1, 2, 5, 7])
def test_gram_variant_agrees_with_plain_iteration(shape, steps):
  x = jax.random.normal(jax.random.key(3), shape)
  x = linalg.frobenius_normalize(x)
  plain = linalg.newton_schulz(x, steps)
  gram = linalg.gram_newton_schulz(x, steps)
  chex.assert_shape(gram, shape)
  chex.assert_trees_all_close(gram, plain, atol=2e-5, rtol=1e-4)


def test_gram_variant_agrees_on_rank_deficient_and_ill_conditioned_input():
  s = jnp.array([1.0, 0.5, 1e-4, 1e-6, 0.0, 0.0])
  x = _with_singular_values(jax.random.key(4), 6, 48, s)
  chex.assert_trees_all_close(
    linalg.gram_newton_schulz(x, 5), linalg.newton_schulz(x, 5), atol=2e-5
  )


def test_per_step_coefficient_table():
  x = linalg.frobenius_normalize(jax.random.normal(jax.random.key(5), (6, 20)))
  table = jnp.array([[A, B, C], CONVERGENT, [A, B, C]])
  manual = x
  for a, b, c in np.asarray(table):
    g = manual @ manual.T
    manual = a * manual + (b * g + c * g @ g) @ manual
  for ns in (linalg.newton_schulz, linalg.gram_newton_schulz):
    chex.assert_trees_all_close(ns(x, 3, table), manual, atol=2e-5)


@pytest.mark.parametrize('shape', [(12, 12), (10, 40), (40, 10)])
def test_polar_factor_of_well_conditioned_matrix_is_approached(shape):
  k = min(shape)
  x = _with_singular_values(
    jax.random.key(6), *shape, jnp.linspace(0.5, 1.0, k)
  )
  polar = linalg.polar_factor(x)
  # Polar factor: semi-orthogonal, and x = polar @ (symmetric PSD factor).
  eye = jnp.eye(k)
  small = polar.T @ polar if shape[0] >= shape[1] else polar @ polar.T
  chex.assert_trees_all_close(small, eye, atol=1e-5)
  # A convergent quintic reaches it; Muon's 5 steps get within its band.
  converged = linalg.orthogonalize(x, 6, CONVERGENT, eps=0.0)
  chex.assert_trees_all_close(converged, polar, atol=1e-5)
  ns5 = np.asarray(linalg.orthogonalize(x), np.float64)
  cosine = np.sum(ns5 * polar) / (np.linalg.norm(ns5) * np.linalg.norm(polar))
  assert cosine > 0.97  # singular values 0.68..1.13 instead of 1


@pytest.mark.parametrize('method', ['auto', 'plain', 'gram'])
def test_zero_matrix_stays_zero(method):
  out = linalg.orthogonalize(jnp.zeros((2, 4, 12)), method=method)
  chex.assert_trees_all_equal(out, jnp.zeros((2, 4, 12)))


def test_orthogonalize_is_scale_invariant_and_batched():
  x = jax.random.normal(jax.random.key(7), (3, 8, 24))
  ortho = jax.jit(linalg.orthogonalize)
  chex.assert_trees_all_close(ortho(1e3 * x), ortho(x), atol=1e-5)
  per_matrix = jnp.stack([ortho(m) for m in x])
  chex.assert_trees_all_close(ortho(x), per_matrix, atol=1e-6)


def test_gram_is_cheaper_rule():
  assert linalg.gram_is_cheaper(512, 2048, 5)
  assert linalg.gram_is_cheaper(2048, 512, 5)
  assert not linalg.gram_is_cheaper(512, 512, 5)
  assert not linalg.gram_is_cheaper(512, 700, 5)
  assert not linalg.gram_is_cheaper(512, 2048, 1)


@pytest.mark.parametrize('steps', [0, -1, 2.5, True, '5'])
def test_bad_steps_rejected(steps):
  with pytest.raises(ValueError, match='steps'):
    linalg.newton_schulz(jnp.eye(3), steps)


def test_bad_coefficients_rejected():
  with pytest.raises(ValueError, match='ns_coeffs'):
    linalg.newton_schulz(jnp.eye(3), 5, (1.0, 2.0))
  with pytest.raises(ValueError, match='5 rows'):
    linalg.gram_newton_schulz(jnp.eye(3), 5, jnp.ones((4, 3)))
  with pytest.raises(ValueError, match='method'):
    linalg.orthogonalize(jnp.eye(3), method='svd')


# --------------------------------------------------------------------------
# Matrix views.


def test_flax_dimension_numbers():
  assert linalg.flax_dimension_numbers(2) == linalg.DimensionNumbers((0,), (1,))
  assert linalg.flax_dimension_numbers(4, 1) == linalg.DimensionNumbers(
    (1, 2), (3,)
  )
  with pytest.raises(ValueError, match='batch axes'):
    linalg.flax_dimension_numbers(2, 1)


@st.composite
def _shapes_and_dims(draw):
  ndim = draw(st.integers(2, 5))
  shape = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
  axes = draw(st.permutations(range(ndim)))
  n_red = draw(st.integers(1, ndim - 1))
  n_out = draw(st.integers(1, ndim - n_red))
  red, out = tuple(axes[:n_red]), tuple(axes[n_red : n_red + n_out])
  return shape, linalg.DimensionNumbers(red, out)


@settings(max_examples=25, deadline=None)
@given(_shapes_and_dims(), st.sampled_from(['wide', 'keep']))
def test_matrix_view_round_trip_and_layout(case, orient):
  shape, dims = case
  x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
  view = linalg.matrix_view(shape, dims, orient=orient)
  mats = np.asarray(view.to_matrices(jnp.asarray(x)))
  assert mats.shape == (view.batch,) + view.matrix_shape
  assert view.batch * view.fan_in * view.fan_out == x.size
  if orient == 'wide':
    assert mats.shape[1] <= mats.shape[2]
  np.testing.assert_array_equal(view.from_matrices(jnp.asarray(mats)), x)
  # Entry (b, i, o) of the (batch, fan_in, fan_out) view is the element whose
  # batch / reduction / output multi-indices flatten (C order) to b, i, o.
  red, out = tuple(dims.reduction_axis), tuple(dims.output_axis)
  bat = tuple(a for a in range(len(shape)) if a not in red + out)
  expected = np.transpose(x, bat + red + out).reshape(
    view.batch, view.fan_in, view.fan_out
  )
  if view.transposed:
    expected = np.swapaxes(expected, 1, 2)
  np.testing.assert_array_equal(mats, expected)


def test_matrix_view_of_conv_and_scanned_kernels():
  conv = linalg.matrix_view((3, 3, 16, 8))
  assert (conv.batch, conv.fan_in, conv.fan_out) == (1, 144, 8)
  assert conv.matrix_shape == (8, 144) and conv.transposed
  scanned = linalg.matrix_view(
    (4, 32, 8), linalg.flax_dimension_numbers(3, 1), orient='keep'
  )
  assert (scanned.batch, scanned.matrix_shape) == (4, (32, 8))


def test_matrix_view_errors_name_the_path():
  with pytest.raises(ValueError, match=r"\['b'\].*2 dimensions"):
    linalg.matrix_view((5,), path="['b']")
  with pytest.raises(ValueError, match='disjoint'):
    linalg.matrix_view((3, 4), linalg.DimensionNumbers(0, 0))
  with pytest.raises(ValueError, match='out of range'):
    linalg.matrix_view((3, 4), linalg.DimensionNumbers(0, 2))


def test_resolve_dimension_numbers_forms():
  tree = {
    'a': jnp.ones((2, 3)),
    'b': {'c': jnp.ones(4), 'd': jnp.ones((2, 2, 2))},
  }
  dn = linalg.DimensionNumbers(1, 2)
  assert linalg.resolve_dimension_numbers(None, tree) == [
    linalg.DimensionNumbers((0,), (1,)),
    None,
    linalg.DimensionNumbers((0, 1), (2,)),
  ]
  assert linalg.resolve_dimension_numbers(dn, tree) == [dn, dn, dn]
  prefix = {'a': None, 'b': dn}
  assert linalg.resolve_dimension_numbers(prefix, tree) == [None, dn, dn]
  fn = lambda t: jax.tree.map(lambda x: dn if x.ndim == 3 else None, t)
  assert linalg.resolve_dimension_numbers(fn, tree) == [None, None, dn]


# --------------------------------------------------------------------------
# Grouping.


def _tree():
  keys = iter(jax.random.split(jax.random.key(8), 8))
  return {
    'q': jax.random.normal(next(keys), (16, 16)),
    'k': jax.random.normal(next(keys), (16, 16)),
    'up': jax.random.normal(next(keys), (16, 48)),
    'down': jax.random.normal(next(keys), (48, 16)),
    'conv': jax.random.normal(next(keys), (3, 3, 2, 8)),
    'scan': jax.random.normal(next(keys), (2, 16, 16)),
    'half': jax.random.normal(next(keys), (16, 16)).astype(jnp.bfloat16),
    'none': None,
    'masked': optax.MaskedNode(),
  }


def test_batched_groups_equal_per_leaf_results():
  tree = _tree()
  calls = []

  def fn(x):
    calls.append(x.shape)
    return linalg.orthogonalize(x)

  grouped = jax.jit(lambda t: linalg.map_matrices(fn, t))(tree)
  # q, k and half (bf16, computed in float32) share one call, up and down
  # (down seen transposed) another; scan is one (32, 16) matrix by default,
  # seen as (16, 32); conv is (18, 8), seen as (8, 18).
  assert sorted(calls) == sorted(
    [(3, 16, 16), (2, 16, 48), (1, 16, 32), (1, 8, 18)]
  )
  calls.clear()
  per_leaf = jax.jit(lambda t: linalg.map_matrices(fn, t, group=False))(tree)
  assert len(calls) == 7
  chex.assert_trees_all_close(grouped, per_leaf, atol=1e-6)
  chex.assert_trees_all_equal_shapes_and_dtypes(grouped, tree)
  assert grouped['none'] is None and isinstance(
    grouped['masked'], optax.MaskedNode
  )
  # Each leaf equals its own orthogonalisation computed by hand.
  ortho = jax.jit(linalg.orthogonalize)
  chex.assert_trees_all_close(
    grouped['down'], ortho(tree['down'].T).T, atol=1e-6
  )
  conv = ortho(tree['conv'].reshape(18, 8))
  chex.assert_trees_all_close(
    grouped['conv'], conv.reshape(3, 3, 2, 8), atol=1e-6
  )


@pytest.mark.parametrize(
  'ns', [linalg.newton_schulz, linalg.gram_newton_schulz]
)
@pytest.mark.parametrize('backends', [('cpu',), ()])
def test_stacks_run_matrixwise_on_cpu_and_batched_elsewhere(
  ns, backends, monkeypatch
):
  monkeypatch.setattr(linalg.grouped, 'MATRIXWISE_BACKENDS', backends)
  x = linalg.frobenius_normalize(
    jax.random.normal(jax.random.key(11), (2, 3, 8, 20))
  )
  # Fresh lambdas: jit's trace cache would otherwise reuse the first trace.
  jaxpr = str(jax.make_jaxpr(lambda y: ns(y))(x))
  # Batched: the Gram matrices are one (2, 3, 8, 8) array; matrixwise: (8, 8).
  assert ('f32[2,3,8,8]' in jaxpr) == (backends == ())
  stacked = jax.jit(lambda y: ns(y))(x)
  one_by_one = jnp.stack([jnp.stack([ns(m) for m in row]) for row in x])
  chex.assert_trees_all_close(stacked, one_by_one, atol=1e-6)


def test_map_matrices_scanned_layers_are_separate_matrices():
  x = jax.random.normal(jax.random.key(9), (3, 8, 24))
  dims = linalg.flax_dimension_numbers(3, num_batch_axes=1)
  out = linalg.map_matrices(linalg.orthogonalize, {'w': x}, {'w': dims})['w']
  chex.assert_trees_all_close(
    out, jnp.stack([linalg.orthogonalize(m) for m in x]), atol=1e-6
  )


def test_map_matrices_float32_for_bf16_and_finalize():
  x = jax.random.normal(jax.random.key(10), (8, 8)).astype(jnp.bfloat16)
  seen = []
  out = linalg.map_matrices(
    lambda m: seen.append(m.dtype) or m,
    {'w': x},
    finalize=lambda view, y: 2 * y,
  )
  assert seen == [jnp.float32] and out['w'].dtype == jnp.bfloat16
  chex.assert_trees_all_equal(out['w'], 2 * x)


def test_map_matrices_passes_through_none_dims_and_names_bad_leaf():
  tree = {'w': jnp.ones((4, 4)), 'b': jnp.ones(4)}
  out = linalg.map_matrices(
    lambda m: 0 * m, tree, {'w': linalg.DimensionNumbers(), 'b': None}
  )
  chex.assert_trees_all_equal(out, {'w': jnp.zeros((4, 4)), 'b': jnp.ones(4)})
  with pytest.raises(ValueError, match=r"\['b'\]"):
    linalg.map_matrices(lambda m: m, tree)


def test_map_matrices_takes_a_layout_object_not_a_mode_name():
  # linalg never imports sharding: a mode name must be wrapped by the caller.
  tree = {'w': jnp.ones((2, 3))}
  with pytest.raises(ValueError, match=r"MatrixSharding\('stacked'\)"):
    linalg.map_matrices(lambda x: x, tree, sharding='stacked')
  from optimflow import sharding  # pylint: disable=g-import-not-at-top

  out = linalg.map_matrices(
    lambda x: 2 * x, tree, sharding=sharding.MatrixSharding('stacked')
  )
  assert float(out['w'][0, 0]) == 2.0
