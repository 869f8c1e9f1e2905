"""Muon, AuON, Hybrid-AuON: reference parity, invariants, routing, bad input."""

from __future__ import annotations

import math

import chex
from flax import nnx
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimflow
from optimflow import linalg
from optimflow import orthogonal

A, B, C = linalg.MUON_COEFFS

# --------------------------------------------------------------------------
# Numpy transcriptions of the reference algorithms (spec §3.1 and §3.3), in
# torch layout: a Dense kernel is (out, in), a conv kernel (out, in, h, w).


def ref_newton_schulz5(g, steps=5, eps=1e-7):
  """Keller Jordan's zeropower_via_newtonschulz5, float64 instead of bf16."""
  x = np.asarray(g, np.float64)
  transposed = x.shape[0] > x.shape[1]
  if transposed:
    x = x.T
  x = x / (np.linalg.norm(x) + eps)
  for _ in range(steps):
    a = x @ x.T
    x = A * x + (B * a + C * a @ a) @ x
  return x.T if transposed else x


class RefMuon:
  """KellerJordan/Muon ``Muon`` (single device), in numpy."""

  def __init__(
    self,
    lr,
    momentum=0.95,
    nesterov=True,
    weight_decay=0.0,
    ns_steps=5,
    dtype=np.float32,
  ):
    self.lr, self.beta, self.nesterov = lr, momentum, nesterov
    self.wd, self.steps, self.dtype = weight_decay, ns_steps, dtype
    self.buf = {}

  def step(self, params, grads):
    out = {}
    for k, p in params.items():
      g = grads[k]
      buf = self.buf.setdefault(k, np.zeros_like(g))
      buf += (1 - self.beta) * (g - buf)  # buf.lerp_(g, 1-b)
      u = g + self.beta * (buf - g) if self.nesterov else buf
      u2 = u.reshape(len(u), -1) if u.ndim == 4 else u
      o = ref_newton_schulz5(u2, self.steps).astype(self.dtype)
      o *= max(1, o.shape[-2] / o.shape[-1]) ** 0.5
      out[k] = p * (1 - self.lr * self.wd) - self.lr * o.reshape(p.shape)
    return out


def ref_auon_direction(g, gamma=1.0, normalize=True, ns_steps=0):
  """AuON paper §3.1 (Hybrid §3.2) on one matrix.

  Unnormalised (authors' code): ``G / r`` without Newton-Schulz; with it, our
  documented reading ``||G||_F NS(X) / r``.
  """
  g = np.asarray(g, np.float64)
  x = g / (np.linalg.norm(g) + 1e-7)
  if ns_steps:
    t = x.T if x.shape[0] > x.shape[1] else x
    for _ in range(ns_steps):
      a = t @ t.T
      t = A * t + (B * a + C * a @ a) @ t
    x = t.T if x.shape[0] > x.shape[1] else t
  r = np.sqrt(np.mean(np.cosh(gamma * x) ** 2))
  if normalize:
    return x / (r + 1e-8)
  return g / r if not ns_steps else np.linalg.norm(g) * x / r


def to_torch(x):
  """Flax kernel -> torch layout: (in, out) -> (out, in); conv likewise."""
  x = np.asarray(x)
  return x.T if x.ndim == 2 else np.transpose(x, (3, 2, 0, 1))


def from_torch(x):
  x = np.asarray(x)
  return x.T if x.ndim == 2 else np.transpose(x, (2, 3, 1, 0))


def _cosine(a, b):
  a, b = (
    np.ravel(np.asarray(a, np.float64)),
    np.ravel(np.asarray(b, np.float64)),
  )
  return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


KERNELS = {
  'square': (24, 24),
  'tall': (64, 16),  # fan_in > fan_out
  'wide': (16, 64),  # fan_out > fan_in (Gram variant)
  'conv': (3, 3, 8, 16),  # (h, w, in, out)
}


def _grads(seed=0):
  keys = jax.random.split(jax.random.key(seed), len(KERNELS))
  return {
    n: jax.random.normal(k, s) for (n, s), k in zip(KERNELS.items(), keys)
  }


# --------------------------------------------------------------------------
# Muon.


@pytest.mark.parametrize('name', list(KERNELS))
def test_beta_zero_gives_reference_ns5_of_gradient(name):
  g = _grads()[name]
  tx = optimflow.scale_by_muon(beta=0.0)
  u, _ = jax.jit(tx.update)({'w': g}, tx.init({'w': g}))
  ref = from_torch(
    ref_newton_schulz5(to_torch(g).reshape(to_torch(g).shape[0], -1)).reshape(
      to_torch(g).shape
    )
  )
  assert _cosine(u['w'], ref) >= 0.9999
  # Keller's width factor: sqrt(max(1, fan_out / fan_in)).
  fan_in = math.prod(g.shape[:-1])
  scale = math.sqrt(max(1.0, g.shape[-1] / fan_in))
  np.testing.assert_allclose(np.asarray(u['w']), scale * ref, atol=2e-4)


def test_batched_groups_equal_per_leaf_reference_mode():
  grads = _grads(1)
  grads['tall2'] = 2 * grads['tall']
  grads['wide2'] = grads['tall'].T  # same matrices as 'tall', transposed leaf
  fast, ref = optimflow.scale_by_muon(), optimflow.scale_by_muon(reference=True)
  u1, s1 = jax.jit(fast.update)(grads, fast.init(grads))
  u2, s2 = jax.jit(ref.update)(grads, ref.init(grads))
  chex.assert_trees_all_close(u1, u2, atol=1e-5)
  chex.assert_trees_all_equal(s1, s2)


def test_muon_reference_mode_matches_keller_jordan_over_50_steps():
  shapes = dict(KERNELS, bias=(16,))
  keys = iter(jax.random.split(jax.random.key(3), 2 * len(shapes)))
  targets = {
    n: np.asarray(jax.random.normal(next(keys), s)) for n, s in shapes.items()
  }
  params = {
    n: np.asarray(0.1 * jax.random.normal(next(keys), s))
    for n, s in shapes.items()
  }

  def grad(p):  # of sum_k (1 + k)/2 ||p_k - t_k||^2
    return {n: (1.0 + i) * (p[n] - targets[n]) for i, n in enumerate(p)}

  lr, wd, adam_lr = 0.02, 0.1, 1e-2
  tx = optimflow.muon(
    lr,
    weight_decay=wd,
    adam_learning_rate=adam_lr,
    adam_b1=0.9,
    adam_b2=0.95,
    adam_eps=1e-10,
    reference=True,
  )
  step = jax.jit(lambda p, s: tx.update(grad(p), s, p))
  jp = jax.tree.map(jnp.asarray, params)
  state = tx.init(jp)
  ref, fp = RefMuon(lr, weight_decay=wd), dict(params)
  m = v = 0.0
  for t in range(1, 51):
    u, state = step(jp, state)
    jp = optax.apply_updates(jp, u)
    g = grad(fp)
    new = ref.step(
      {n: to_torch(fp[n]) for n in KERNELS},
      {n: to_torch(g[n]) for n in KERNELS},
    )
    # MuonWithAuxAdam's AdamW for the bias (bias-corrected; no decay here).
    m = 0.9 * m + 0.1 * g['bias']
    v = 0.95 * v + 0.05 * g['bias'] ** 2
    bias = fp['bias'] - adam_lr * (m / (1 - 0.9**t)) / (
      np.sqrt(v / (1 - 0.95**t)) + 1e-10
    )
    fp = {**{n: from_torch(x) for n, x in new.items()}, 'bias': bias}
  for n in shapes:
    np.testing.assert_allclose(
      np.asarray(jp[n]), fp[n], atol=2e-4, rtol=1e-3, err_msg=n
    )
  # The run moved far from the start: the comparison is not trivial.
  assert np.abs(fp['square'] - params['square']).max() > 0.1


@pytest.mark.parametrize(
  'shape_scale,expected',
  [
    ('keller', lambda fi, fo: math.sqrt(max(1, fo / fi))),
    ('moonlight', lambda fi, fo: 0.2 * math.sqrt(max(fi, fo))),
    (None, lambda fi, fo: 1.0),
  ],
)
def test_shape_scale_options(shape_scale, expected):
  grads = {'wide': _grads()['wide'], 'tall': _grads()['tall']}
  plain = optimflow.scale_by_muon(beta=0.0, shape_scale=None)
  scaled = optimflow.scale_by_muon(beta=0.0, shape_scale=shape_scale)
  u0, _ = plain.update(grads, plain.init(grads))
  u1, _ = scaled.update(grads, scaled.init(grads))
  for n, g in grads.items():
    factor = expected(*g.shape)
    chex.assert_trees_all_close(u1[n], factor * u0[n], rtol=1e-6)


def test_nesterov_and_momentum_directions():
  g1, g2 = _grads(4)['square'], _grads(5)['square']
  for nesterov in (True, False):
    tx = optimflow.scale_by_muon(beta=0.9, nesterov=nesterov)
    state = tx.init({'w': g1})
    _, state = tx.update({'w': g1}, state)
    u, state = tx.update({'w': g2}, state)
    m = 0.9 * (0.1 * g1) + 0.1 * g2
    chex.assert_trees_all_close(state.mu['w'], m, rtol=1e-6)
    direction = 0.1 * g2 + 0.9 * m if nesterov else m
    expected = linalg.orthogonalize(direction)
    chex.assert_trees_all_close(u['w'], expected, atol=1e-5)


def test_bf16_params_use_float32_iteration():
  g = _grads()['wide']
  g16 = g.astype(jnp.bfloat16)
  tx = optimflow.scale_by_muon(beta=0.0, mu_dtype=jnp.float32)
  u, state = tx.update({'w': g16}, tx.init({'w': g16}))
  assert u['w'].dtype == jnp.bfloat16 and state.mu['w'].dtype == jnp.float32
  exact = 2.0 * linalg.orthogonalize(g16.astype(jnp.float32))
  # Within bf16 rounding of the float32 result (a bf16 iteration is ~1e-2).
  chex.assert_trees_all_close(
    u['w'].astype(jnp.float32), exact, atol=4e-3, rtol=1e-2
  )


def test_scanned_layers_with_dimension_numbers():
  x = jax.random.normal(jax.random.key(6), (3, 16, 32))
  dims = linalg.flax_dimension_numbers(3, num_batch_axes=1)
  tx = optimflow.scale_by_muon(beta=0.0, dimension_numbers=dims)
  u, _ = tx.update({'w': x}, tx.init({'w': x}))
  per_layer = jnp.stack([linalg.orthogonalize(m) * math.sqrt(2) for m in x])
  chex.assert_trees_all_close(u['w'], per_layer, atol=1e-5)


# --------------------------------------------------------------------------
# AuON and Hybrid-AuON.


@settings(max_examples=30, deadline=None)
@given(
  hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
    elements=st.floats(-10, 10, width=32),
  ),
  st.floats(0.0, 3.0),
)
def test_cosh_rms_bounds(x, gamma):
  """For ||X||_F = 1: 1 <= r <= sqrt(1 + sinh(gamma)^2 / N)."""
  norm = np.linalg.norm(x)
  if norm == 0:
    return
  x = x / norm
  r = float(orthogonal.cosh_rms(jnp.asarray(x), gamma).squeeze())
  exact = math.sqrt(np.mean(np.cosh(gamma * x.astype(np.float64)) ** 2))
  assert r >= 1.0
  assert r <= math.sqrt(1 + math.sinh(gamma) ** 2 / x.size) * (1 + 1e-6)
  assert r == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize('name', ['square', 'wide', 'tall'])
@pytest.mark.parametrize(
  'kwargs',
  [
    {},  # paper AuON
    dict(gamma=1.5, normalize=False),  # authors' code
    dict(ns_steps=1),  # Hybrid-AuON (paper)
    dict(ns_steps=5, gamma=1.5, normalize=False),
  ],
)
def test_auon_matches_reference(name, kwargs):
  g = _grads(7)[name]
  tx = optimflow.scale_by_auon(beta=0.0, shape_scale=None, **kwargs)
  u, _ = jax.jit(tx.update)({'w': g}, tx.init({'w': g}))
  ref = ref_auon_direction(g, **kwargs)
  np.testing.assert_allclose(
    np.asarray(u['w']), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max()
  )


def test_paper_auon_is_frobenius_normalised_momentum():
  g = _grads(8)['square']
  u, _ = optimflow.scale_by_auon(beta=0.0, shape_scale=None).update(
    {'w': g}, optimflow.scale_by_auon().init({'w': g})
  )
  n = g.size
  assert (
    1 / math.sqrt(1 + math.sinh(1) ** 2 / n)
    <= float(jnp.linalg.norm(u['w']))
    <= 1.0
  )
  assert _cosine(u['w'], g) > 0.99999


def test_hybrid_auon_is_auon_with_one_ns_step():
  params = {'w': jnp.zeros((16, 64)), 'b': jnp.zeros(64)}
  grads = {'w': _grads(9)['wide'], 'b': jnp.ones(64)}
  h = optimflow.hybrid_auon(0.1, adam_learning_rate=1e-3)
  a = optimflow.auon(0.1, ns_steps=1, adam_learning_rate=1e-3)
  uh, _ = h.update(grads, h.init(params), params)
  ua, _ = a.update(grads, a.init(params), params)
  chex.assert_trees_all_close(uh, ua)


# --------------------------------------------------------------------------
# Routing through optax.partition.


def _net():
  return {
    'embed': {'embedding': jnp.ones((50, 8))},
    'block': {
      'attn': {'query': jnp.ones((8, 8))},
      'mlp': {'kernel': jnp.ones((8, 32)), 'bias': jnp.ones(32)},
      'ln': {'scale': jnp.ones(8)},
    },
    'lm_head': {'kernel': jnp.ones((8, 50))},
    'multihead': {'kernel': jnp.ones((8, 8))},
    'temperature': jnp.ones(()),
  }


def test_default_routing():
  labels = orthogonal.matrix_labels()(_net())
  assert labels == {
    'embed': {'embedding': 'other'},
    'block': {
      'attn': {'query': 'matrix'},
      'mlp': {'kernel': 'matrix', 'bias': 'other'},
      'ln': {'scale': 'other'},
    },
    'lm_head': {'kernel': 'other'},
    'multihead': {'kernel': 'matrix'},
    'temperature': 'other',
  }
  custom = orthogonal.matrix_labels(
    orthogonal.default_matrix_filter(exclude=('mlp',))
  )(_net())
  assert custom['block']['mlp']['kernel'] == 'other'
  assert custom['lm_head']['kernel'] == 'matrix'


def test_muon_updates_each_branch_as_documented():
  params = _net()
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  tx = optimflow.muon(0.02, adam_learning_rate=1e-3, weight_decay=0.1)
  u, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  # AdamW's first step is -lr * sign(g) (and no decay by default).
  chex.assert_trees_all_close(
    u['embed']['embedding'], jnp.full((50, 8), -1e-3), rtol=1e-4
  )
  chex.assert_trees_all_close(
    u['block']['mlp']['bias'], jnp.full(32, -1e-3), rtol=1e-4
  )
  # Muon: -lr (2 * NS5(G / ||G||) + wd p) for the (8, 32) kernel.
  ns = 2.0 * linalg.orthogonalize(grads['block']['mlp']['kernel'])
  chex.assert_trees_all_close(
    u['block']['mlp']['kernel'], -0.02 * (ns + 0.1), atol=1e-6
  )


def test_nnx_optimizer_paths_route_like_plain_dicts():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.embed = nnx.Embed(20, 8, rngs=rngs)
      self.hidden = nnx.Linear(8, 8, rngs=rngs)
      self.head = nnx.Linear(8, 20, rngs=rngs)

    def __call__(self, x):
      return self.head(jax.nn.relu(self.hidden(self.embed(x))))

  model = Net(nnx.Rngs(0))
  labels = orthogonal.matrix_labels()(nnx.state(model, nnx.Param))
  assert labels['hidden']['kernel'].get_value() == 'matrix'
  assert labels['embed']['embedding'].get_value() == 'other'
  assert labels['head']['kernel'].get_value() == 'other'
  opt = nnx.Optimizer(
    model, optimflow.muon(0.05, adam_learning_rate=2e-2), wrt=nnx.Param
  )
  x = jnp.arange(6) % 20
  loss = lambda m: jnp.mean(jax.nn.logsumexp(m(x), -1) - m(x)[jnp.arange(6), x])
  before = loss(model)

  @nnx.jit
  def step(model, opt):
    opt.update(model, nnx.grad(loss)(model))

  for _ in range(30):
    step(model, opt)
  assert loss(model) < 0.5 * before


def test_dimension_number_tree_routes_none_to_adamw():
  params = {
    'w': jnp.ones((8, 8)),
    'scan': jnp.ones((2, 8, 16)),
    'b': jnp.ones(8),
  }
  dims = {'w': None, 'scan': linalg.flax_dimension_numbers(3, 1), 'b': None}
  labels = orthogonal.matrix_labels(dimension_numbers=dims)(params)
  assert labels == {'w': 'other', 'scan': 'matrix', 'b': 'other'}
  tx = optimflow.muon(0.02, dimension_numbers=dims)
  u, _ = tx.update(params, tx.init(params), params)
  chex.assert_tree_all_finite(u)


# --------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
  'factory', [optimflow.scale_by_muon, lambda **k: optimflow.muon(0.02, **k)]
)
@pytest.mark.parametrize(
  'kwargs,match',
  [
    (dict(ns_steps=0), 'ns_steps'),
    (dict(ns_steps=2.5), 'ns_steps'),
    (dict(ns_steps=True), 'ns_steps'),
    (dict(beta=1.0), 'beta'),
    (dict(beta=-0.1), 'beta'),
    (dict(shape_scale='spectral'), 'shape_scale'),
    (dict(ns_coeffs=(1.0, 2.0)), 'ns_coeffs'),
    (dict(eps=-1.0), 'eps'),
  ],
)
def test_bad_hyperparameters(factory, kwargs, match):
  with pytest.raises(ValueError, match=match):
    factory(**kwargs)


@pytest.mark.parametrize(
  'factory,kwargs,match',
  [
    (optimflow.auon, dict(ns_steps=-1), 'ns_steps'),
    (optimflow.auon, dict(gamma=-1.0), 'gamma'),
    (optimflow.hybrid_auon, dict(ns_steps=0), 'ns_steps'),
    (optimflow.auon, dict(beta=1.5), 'beta'),
    (optimflow.muon, dict(adam_b2=1.0), 'adam_b2'),
    (optimflow.muon, dict(learning_rate=-1.0), 'learning_rate'),
  ],
)
def test_bad_alias_hyperparameters(factory, kwargs, match):
  kwargs = {'learning_rate': 0.02, **kwargs}
  with pytest.raises(ValueError, match=match):
    factory(**kwargs)


def test_vector_sent_to_matrix_branch_names_its_path():
  params = {'layer': {'bias': jnp.ones(4), 'kernel': jnp.ones((4, 4))}}
  tx = optimflow.muon(0.02, matrix_filter=lambda path, x: True)
  with pytest.raises(ValueError, match=r"\['layer'\]\['bias'\]"):
    tx.init(params)
  bare = optimflow.scale_by_muon()
  with pytest.raises(ValueError, match=r"\['layer'\]\['bias'\]"):
    bare.update(params, bare.init(params))
