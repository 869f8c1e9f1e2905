"""Hessian top eigenvalue and (adaptive) sharpness measures."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optimflow import diagnostics

# --------------------------------------------------------------------------
# Hessian top eigenvalue.


def test_top_eigenvalue_of_a_known_quadratic():
  rng = np.random.default_rng(0)
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  eig = np.array([5.0, 2.0, 1.0, 0.5, -0.3, 0.1])
  a = jnp.asarray(q @ np.diag(eig) @ q.T, jnp.float32)
  b = jnp.asarray(rng.normal(size=6), jnp.float32)

  def loss(p, batch):  # params as a tree, the matrix as the "batch"
    w = jnp.concatenate([p['u'], p['v'].ravel()])
    return 0.5 * w @ batch @ w + b @ w

  params = {'u': jnp.ones(2), 'v': jnp.zeros((2, 2))}
  got = diagnostics.hessian_top_eigenvalue(
    loss, params, a, iters=60, key=jax.random.key(1)
  )
  np.testing.assert_allclose(got, 5.0, rtol=1e-4)
  # Same answer at another point (the Hessian of a quadratic is constant).
  far = {'u': jnp.full(2, 10.0), 'v': jnp.full((2, 2), -3.0)}
  np.testing.assert_allclose(
    diagnostics.hessian_top_eigenvalue(loss, far, a, iters=60), 5.0, rtol=1e-4
  )


def test_top_eigenvalue_of_cross_entropy_matches_dense_hessian():
  x, y = _data()
  params = _mlp_params(jax.random.key(0))
  flat, unravel = jax.flatten_util.ravel_pytree(params)
  hessian = jax.jit(jax.hessian(lambda f: _loss(unravel(f), (x, y))))(flat)
  eig = np.linalg.eigvalsh(np.asarray(hessian, np.float64))
  top = eig[np.argmax(np.abs(eig))]
  got = diagnostics.hessian_top_eigenvalue(_loss, params, (x, y), iters=50)
  np.testing.assert_allclose(got, top, rtol=1e-3)


def test_top_eigenvalue_rejects_bad_iters():
  with pytest.raises(ValueError, match='iters=0'):
    diagnostics.hessian_top_eigenvalue(
      lambda p, b: p @ p, jnp.ones(2), None, iters=0
    )


# --------------------------------------------------------------------------
# Sharpness on a small ReLU network.


def _data(n=32):
  kx, _ = jax.random.split(jax.random.key(5))
  x = jax.random.normal(kx, (n, 4))
  y = jnp.arange(n) % 3
  return x, y


def _mlp_params(key):
  k1, k2, k3, k4 = jax.random.split(key, 4)
  return {
    'l1': {
      'kernel': jax.random.normal(k1, (4, 5)) * 0.8,
      'bias': jax.random.normal(k2, (5,)) * 0.3,
    },
    'l2': {
      'kernel': jax.random.normal(k3, (5, 3)) * 0.8,
      'bias': jax.random.normal(k4, (3,)) * 0.3,
    },
  }


def _loss(p, batch):
  x, y = batch
  h = jax.nn.relu(x @ p['l1']['kernel'] + p['l1']['bias'])
  logits = h @ p['l2']['kernel'] + p['l2']['bias']
  logp = jax.nn.log_softmax(logits)
  return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


def _rescaled(p, alpha):
  """W1 a, b1 a, W2 / a: the same ReLU network."""
  return {
    'l1': {
      'kernel': p['l1']['kernel'] * alpha,
      'bias': p['l1']['bias'] * alpha,
    },
    'l2': {'kernel': p['l2']['kernel'] / alpha, 'bias': p['l2']['bias']},
  }


MEASURES = [
  dict(kind='worst', norm='linf', rho=0.05),
  dict(kind='worst', norm='l2', rho=0.1),
  dict(kind='average', norm='l2', rho=0.1),
  dict(kind='average', norm='linf', rho=0.1),
]


@pytest.mark.parametrize(
  'measure', MEASURES, ids=lambda m: f'{m["kind"]}-{m["norm"]}'
)
def test_adaptive_sharpness_is_invariant_to_relu_rescaling(measure):
  params = _mlp_params(jax.random.key(0))
  batches = [_data()]
  key = jax.random.key(7)
  alpha = 4.0  # a power of two: the rescaling is exact in floating point
  rescaled = _rescaled(params, alpha)
  np.testing.assert_array_equal(
    _loss(params, batches[0]), _loss(rescaled, batches[0])
  )
  s = diagnostics.sharpness(_loss, params, batches, key=key, **measure)
  s_rescaled = diagnostics.sharpness(
    _loss, rescaled, batches, key=key, **measure
  )
  assert float(s) > 1e-4
  np.testing.assert_array_equal(s, s_rescaled)
  # The non-adaptive measure sees a different network.
  plain = diagnostics.sharpness(
    _loss, params, batches, key=key, adaptive=False, **measure
  )
  plain_rescaled = diagnostics.sharpness(
    _loss, rescaled, batches, key=key, adaptive=False, **measure
  )
  assert abs(float(plain) - float(plain_rescaled)) > 0.05 * abs(float(plain))


@pytest.mark.parametrize('adaptive', [True, False])
@pytest.mark.parametrize('norm', ['linf', 'l2'])
def test_worst_case_is_at_least_average_case(adaptive, norm):
  params = _mlp_params(jax.random.key(1))
  x, y = _data()
  batches = [(x, y), (-x, y)]
  kw = dict(norm=norm, rho=0.05, adaptive=adaptive, n_iters=10)
  worst = diagnostics.sharpness(_loss, params, batches, kind='worst', **kw)
  average = diagnostics.sharpness(
    _loss, params, batches, kind='average', key=jax.random.key(2), **kw
  )
  if norm == 'l2':
    # Average-L2 samples N(0, rho^2) per coordinate (norm ~ rho sqrt(d)); the
    # comparable ball has radius rho sqrt(d).
    d = sum(x.size for x in jax.tree.leaves(params))
    worst = diagnostics.sharpness(
      _loss,
      params,
      batches,
      kind='worst',
      norm='l2',
      rho=0.05 * np.sqrt(d),
      adaptive=adaptive,
      n_iters=10,
    )
  assert float(worst) >= float(average)
  assert float(worst) > 0


def test_worst_linf_finds_the_best_vertex_of_a_convex_loss():
  """For a convex loss the maximum over the box is at a vertex."""
  rng = np.random.default_rng(3)
  m = rng.normal(size=(4, 4))
  a = jnp.asarray(m @ m.T + np.eye(4), jnp.float32)
  w = jnp.asarray(rng.normal(size=4), jnp.float32)
  loss = lambda p, batch: 0.5 * p @ batch @ p
  rho = 0.2
  for adaptive in (True, False):
    scale = np.abs(np.asarray(w)) if adaptive else np.ones(4)
    best = max(
      float(loss(w + rho * scale * np.array(s, np.float32), a))
      for s in itertools.product((-1.0, 1.0), repeat=4)
    ) - float(loss(w, a))
    got = diagnostics.sharpness(
      loss, w, [a], rho=rho, kind='worst', norm='linf', adaptive=adaptive
    )
    np.testing.assert_allclose(got, best, rtol=1e-5)


@pytest.mark.parametrize(
  'measure', MEASURES, ids=lambda m: f'{m["kind"]}-{m["norm"]}'
)
def test_sharpness_vanishes_as_rho_goes_to_zero(measure):
  params = _mlp_params(jax.random.key(0))
  batches = [_data()]
  kw = {**measure, 'key': jax.random.key(3)}
  values = []
  for rho in (0.1, 0.01, 0.001):
    kw['rho'] = rho
    values.append(
      abs(float(diagnostics.sharpness(_loss, params, batches, **kw)))
    )
  assert values[0] > values[1] > values[2]
  assert values[2] < 1e-2 * values[0]
  kw['rho'] = 0.0
  assert float(diagnostics.sharpness(_loss, params, batches, **kw)) == 0.0


def test_sharpness_bad_input():
  params, batches = _mlp_params(jax.random.key(0)), [_data()]
  with pytest.raises(ValueError, match="kind='max'"):
    diagnostics.sharpness(_loss, params, batches, rho=0.1, kind='max')
  with pytest.raises(ValueError, match="norm='l1'"):
    diagnostics.sharpness(_loss, params, batches, rho=0.1, norm='l1')
  with pytest.raises(ValueError, match='rho=-0.1'):
    diagnostics.sharpness(_loss, params, batches, rho=-0.1)
  with pytest.raises(ValueError, match='key=jax.random.key'):
    diagnostics.sharpness(_loss, params, batches, rho=0.1, kind='average')
  with pytest.raises(ValueError, match='batches is empty'):
    diagnostics.sharpness(_loss, params, [], rho=0.1)
  with pytest.raises(ValueError, match='n_iters=0'):
    diagnostics.sharpness(_loss, params, batches, rho=0.1, n_iters=0)


def test_checkpoints_follow_the_apgd_schedule():
  # p = 0, .22, .41, .57, .70, .80, .87, .93, .99 (x 100, rounded up)
  assert diagnostics.measures._checkpoints(100) == [
    22,
    41,
    57,
    70,
    80,
    87,
    93,
    99,
  ]
  assert diagnostics.measures._checkpoints(20) == [5, 9, 12, 14, 16, 18, 19, 20]
