"""SAM / ASAM / m-sharpness / SAF output bank / MESA EMA: equations and errors."""

from __future__ import annotations

import functools

import chex
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimflow
from optimflow import sharpness

# --------------------------------------------------------------------------
# A small "network" with a closed-form gradient, for float64 references.

_A = np.array([[0.5, -1.0, 2.0], [1.5, 0.3, -0.7]])  # (2, 3)
_C = np.array([0.2, -0.4, 1.1])


def _np_loss_grad(p):
  """Gradient of sum(tanh(A^T k + b + c)^2) / 2 + sum(k^4) / 4 (numpy)."""
  k, b = p['dense']['kernel'], p['dense']['bias']
  z = np.tanh((_A * k).sum(0) + b + _C)
  dz = z * (1 - z**2)
  return {'dense': {'kernel': _A * dz + k**3, 'bias': dz}}


def _jax_loss(p):
  k, b = p['dense']['kernel'], p['dense']['bias']
  z = jnp.tanh((_A * k).sum(0) + b + _C)
  return 0.5 * jnp.sum(z**2) + 0.25 * jnp.sum(k**4)


def _params(dtype=np.float64):
  rng = np.random.default_rng(0)
  return {
    'dense': {
      'kernel': rng.normal(size=(2, 3)).astype(dtype),
      'bias': rng.normal(size=3).astype(dtype),
    }
  }


def _np_sam_gradient(p, rho, adaptive=False, eta=0.01):
  g = _np_loss_grad(p)
  if adaptive:
    t = {
      'dense': {
        'kernel': np.abs(p['dense']['kernel']) + eta,
        'bias': np.ones(3),
      }
    }
  else:
    t = jax.tree.map(np.ones_like, p)
  tg = jax.tree.map(lambda a, b: a * b, t, g)
  norm = np.sqrt(sum(np.sum(x**2) for x in jax.tree.leaves(tg)))
  e = jax.tree.map(lambda t_, v: rho * t_ * v / norm, t, tg)
  return _np_loss_grad(jax.tree.map(lambda a, b: a + b, p, e)), e


@pytest.mark.parametrize('adaptive', [False, True])
def test_update_equals_reference_formula_float64(adaptive):
  with jax.enable_x64(True):
    p = _params()
    rho = 0.3 if adaptive else 0.05
    expected, _ = _np_sam_gradient(p, rho, adaptive=adaptive)
    tx = optimflow.scale_by_sam(rho, adaptive=adaptive, eta=0.01)
    params = jax.tree.map(jnp.asarray, p)
    grads = jax.grad(_jax_loss)(params)
    got, _ = jax.jit(functools.partial(tx.update, grad_fn=jax.grad(_jax_loss)))(
      grads, tx.init(params), params
    )
    assert jax.tree.leaves(got)[0].dtype == jnp.float64
    chex.assert_trees_all_close(got, expected, rtol=0, atol=1e-10)


def test_asam_alias_is_adaptive_sam():
  params = jax.tree.map(jnp.asarray, _params(np.float32))
  grads = jax.grad(_jax_loss)(params)
  kw = dict(grad_fn=jax.grad(_jax_loss))
  a, _ = optimflow.scale_by_asam(0.5, eta=0.02).update(
    grads, optax.EmptyState(), params, **kw
  )
  b, _ = optimflow.scale_by_sam(0.5, adaptive=True, eta=0.02).update(
    grads, optax.EmptyState(), params, **kw
  )
  chex.assert_trees_all_equal(a, b)


def test_bias_gets_unit_scale_and_mask_overrides_it():
  params = {'kernel': jnp.array([2.0, 0.5]), 'bias': jnp.array([3.0])}
  grads = {'kernel': jnp.array([1.0, 1.0]), 'bias': jnp.array([1.0])}
  e = optimflow.sam_perturbation(grads, params, 1.0, adaptive=True, eta=0.0)
  # T = (2, 0.5, 1): T g = (2, 0.5, 1), e = T^2 g / |T g|.
  n = np.sqrt(4 + 0.25 + 1)
  np.testing.assert_allclose(e['kernel'], [4 / n, 0.25 / n], rtol=1e-6)
  np.testing.assert_allclose(e['bias'], [1 / n], rtol=1e-6)
  everything = optimflow.sam_perturbation(
    grads,
    params,
    1.0,
    adaptive=True,
    eta=0.0,
    adaptive_mask=lambda path, leaf: True,
  )
  n = np.sqrt(4 + 0.25 + 9)
  np.testing.assert_allclose(everything['bias'], [9 / n], rtol=1e-6)
  as_tree = optimflow.sam_perturbation(
    grads,
    params,
    1.0,
    adaptive=True,
    eta=0.0,
    adaptive_mask={'kernel': True, 'bias': True},
  )
  chex.assert_trees_all_close(as_tree, everything)


def test_equals_optax_contrib_sam_opaque_mode():
  """Five steps of SAM + SGD(momentum) equal optax.contrib.sam's (opaque)."""
  with jax.enable_x64(True):
    rho, lr = 0.05, 0.1
    ours = optax.chain(optimflow.scale_by_sam(rho), optax.sgd(lr, momentum=0.9))
    theirs = optax.contrib.sam(
      optax.sgd(lr, momentum=0.9),
      optax.chain(optax.contrib.normalize(), optax.sgd(rho)),
      sync_period=2,
      opaque_mode=True,
    )
    p1 = p2 = jax.tree.map(jnp.asarray, _params())
    s1, s2 = ours.init(p1), theirs.init(p2)
    grad = jax.grad(_jax_loss)
    for _ in range(5):
      u1, s1 = ours.update(grad(p1), s1, p1, grad_fn=grad)
      u2, s2 = theirs.update(grad(p2), s2, p2, grad_fn=lambda p, i: grad(p))
      chex.assert_trees_all_close(u1, u2, rtol=0, atol=1e-12)
      p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)


_tree_strategy = st.lists(
  st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=6, max_size=6
)


@settings(max_examples=30, deadline=None)
@given(g=_tree_strategy, w=_tree_strategy, rho=st.floats(1e-3, 2.0))
def test_perturbation_has_norm_rho(g, w, rho):
  grads = {'kernel': jnp.array(g[:4]).reshape(2, 2), 'bias': jnp.array(g[4:])}
  params = {'kernel': jnp.array(w[:4]).reshape(2, 2), 'bias': jnp.array(w[4:])}

  def check(e, scale, tg_norm):
    """||e / scale|| = rho when ||T g|| is above the eps floor; never more."""
    scaled = jax.tree.map(lambda a, b: a / b, e, scale)
    n = float(
      np.sqrt(
        sum(
          np.sum(np.square(x, dtype=np.float64))
          for x in jax.tree.leaves(scaled)
        )
      )
    )
    if tg_norm > 1e-6:
      np.testing.assert_allclose(n, rho, rtol=1e-4)
    else:  # floored norm (1e-12) or float32 underflow: shorter, finite
      assert n <= rho * (1 + 1e-5)

  ones = jax.tree.map(jnp.ones_like, params)
  check(
    optimflow.sam_perturbation(grads, params, rho),
    ones,
    float(np.linalg.norm(np.asarray(g, np.float64))),
  )
  # ASAM: the neighbourhood is ||T^{-1} e|| = rho.
  eta = 0.01
  t = {'kernel': jnp.abs(params['kernel']) + eta, 'bias': jnp.ones(2)}
  tg = np.concatenate(
    [
      np.asarray(t['kernel'] * grads['kernel']).ravel(),
      np.asarray(grads['bias']),
    ]
  ).astype(np.float64)
  check(
    optimflow.sam_perturbation(grads, params, rho, adaptive=True, eta=eta),
    t,
    float(np.linalg.norm(tg)),
  )


@pytest.mark.parametrize('adaptive', [False, True])
def test_zero_gradient_gives_zero_perturbation(adaptive):
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.zeros(2)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  e = optimflow.sam_perturbation(zeros, params, 0.1, adaptive=adaptive)
  chex.assert_trees_all_equal(e, zeros)
  seen = []
  tx = optimflow.scale_by_sam(0.1, adaptive=adaptive)

  def grad_fn(p):
    seen.append(p)
    return zeros

  u, _ = tx.update(zeros, tx.init(params), params, grad_fn=grad_fn)
  chex.assert_trees_all_equal(seen[0], params)
  chex.assert_tree_all_finite(u)


def test_updates_keep_gradient_dtype():
  params = {'w': jnp.ones(3, jnp.bfloat16)}
  grads = {'w': jnp.array([1.0, -2.0, 3.0], jnp.bfloat16)}
  u, _ = optimflow.scale_by_sam(0.1).update(
    grads,
    optax.EmptyState(),
    params,
    grad_fn=lambda p: {'w': p['w'].astype(jnp.float32) * 2},
  )
  assert u['w'].dtype == jnp.bfloat16


def test_weight_decay_after_sam_is_not_in_the_perturbation():
  params = {'w': jnp.array([1.0, -2.0])}
  loss = lambda p: jnp.sum(p['w'] ** 4)
  grads = jax.grad(loss)(params)
  wd = 0.1
  tx = optax.chain(optimflow.scale_by_sam(0.2), optax.add_decayed_weights(wd))
  u, _ = tx.update(grads, tx.init(params), params, grad_fn=jax.grad(loss))
  e = optimflow.sam_perturbation(grads, params, 0.2)
  expected = jax.grad(loss)({'w': params['w'] + e['w']})['w'] + wd * params['w']
  np.testing.assert_allclose(u['w'], expected, rtol=1e-6)


def test_sam_is_the_documented_chain():
  params = jax.tree.map(jnp.asarray, _params(np.float32))
  grad = jax.grad(_jax_loss)
  a = optimflow.sam(0.1, rho=0.05, momentum=0.9, weight_decay=1e-3)
  b = optax.chain(
    optimflow.scale_by_sam(0.05),
    optax.add_decayed_weights(1e-3),
    optax.sgd(0.1, momentum=0.9),
  )
  sa, sb = a.init(params), b.init(params)
  for _ in range(3):
    ua, sa = a.update(grad(params), sa, params, grad_fn=grad)
    ub, sb = b.update(grad(params), sb, params, grad_fn=grad)
    chex.assert_trees_all_close(ua, ub, rtol=1e-6)
    params = optax.apply_updates(params, ua)


# --------------------------------------------------------------------------
# m-sharpness.


def _regression():
  kx, ky = jax.random.split(jax.random.key(3))
  batch = {'x': jax.random.normal(kx, (8, 3)), 'y': jax.random.normal(ky, (8,))}
  params = {'kernel': jnp.array([0.5, -1.0, 0.2]), 'bias': jnp.array(0.3)}

  def loss(p, b):
    pred = jnp.tanh(b['x'] @ p['kernel'] + p['bias'])
    return jnp.mean((pred - b['y']) ** 2)

  return params, batch, loss


@pytest.mark.parametrize('adaptive', [False, True])
def test_m_sharpness_with_m_equal_batch_is_plain_sam(adaptive):
  params, batch, loss = _regression()
  grad = jax.grad(loss)
  tx = optimflow.scale_by_sam(0.1, adaptive=adaptive)
  expected, _ = tx.update(
    grad(params, batch),
    tx.init(params),
    params,
    grad_fn=lambda p: grad(p, batch),
  )
  for m in (None, 8):
    got = optimflow.sam_gradient(
      loss, params, batch, 0.1, m=m, adaptive=adaptive
    )
    chex.assert_trees_all_close(got, expected, rtol=1e-6, atol=1e-7)


def test_m_sharpness_averages_per_chunk_sam_gradients():
  params, batch, loss = _regression()
  grad = jax.grad(loss)
  chunks = [jax.tree.map(lambda x: x[i : i + 2], batch) for i in range(0, 8, 2)]
  per_chunk = []
  for c in chunks:
    e = optimflow.sam_perturbation(grad(params, c), params, 0.1)
    per_chunk.append(grad(jax.tree.map(jnp.add, params, e), c))
  expected = jax.tree.map(lambda *g: sum(g) / 4, *per_chunk)
  got = jax.jit(lambda p: optimflow.sam_gradient(loss, p, batch, 0.1, m=2))(
    params
  )
  chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-7)
  whole = optimflow.sam_gradient(loss, params, batch, 0.1)
  assert not np.allclose(got['kernel'], whole['kernel'], rtol=1e-3)


def test_m_sharpness_rejects_bad_chunks():
  params, batch, loss = _regression()
  with pytest.raises(ValueError, match='m=3 does not divide the batch size 8'):
    optimflow.sam_gradient(loss, params, batch, 0.1, m=3)
  with pytest.raises(ValueError, match='m=0'):
    optimflow.sam_gradient(loss, params, batch, 0.1, m=0)
  with pytest.raises(ValueError, match='rho'):
    optimflow.sam_gradient(loss, params, batch, 0.0)


# --------------------------------------------------------------------------
# SAF: output bank, trajectory KL, schedule.


@pytest.mark.parametrize('e_tilde', [1, 2, 3])
def test_output_bank_returns_logits_from_e_tilde_epochs_ago(e_tilde):
  n, c = 6, 4
  bank = optimflow.OutputBank.create(n, c, e_tilde=e_tilde)
  assert (bank.num_examples, bank.e_tilde) == (n, e_tilde)
  record = jax.jit(lambda b, ids, ep, z: b.record(ids, ep, z))
  reference = jax.jit(lambda b, ids, ep: b.reference(ids, ep))
  history = {}
  rng = np.random.default_rng(0)
  for epoch in range(8):
    for ids in (np.array([4, 0, 2]), np.array([1, 5, 3])):  # two batches
      if epoch >= e_tilde:
        np.testing.assert_array_equal(
          reference(bank, ids, epoch), history[epoch - e_tilde][ids]
        )
      z = rng.normal(size=(3, c)).astype(np.float32)
      history.setdefault(epoch, np.zeros((n, c), np.float32))[ids] = z
      bank = record(bank, ids, epoch, z)
  assert record._cache_size() == 1  # epochs and ids do not recompile


def test_output_bank_holds_per_position_logits():
  bank = optimflow.OutputBank.create(5, (4, 7), e_tilde=2)  # (context, vocab)
  assert bank.logits.shape == (5, 3, 4, 7)
  z = jnp.arange(2 * 4 * 7, dtype=jnp.float32).reshape(2, 4, 7)
  bank = bank.record(jnp.array([3, 1]), 1, z)
  np.testing.assert_array_equal(bank.reference(jnp.array([1, 3]), 3), z[::-1])
  with pytest.raises(ValueError, match='num_classes=0'):
    optimflow.OutputBank.create(5, (4, 0))


def test_output_bank_rejects_out_of_range_ids():
  bank = optimflow.OutputBank.create(5, 3)
  with pytest.raises(
    IndexError, match=r'out of the output bank range \[0, 5\)'
  ):
    bank.reference(jnp.array([1, 5]), 3)
  with pytest.raises(IndexError, match=r'got \[-1\]'):
    bank.record(np.array([-1, 0]), 0, jnp.zeros((2, 3)))
  jitted = jax.jit(lambda b, ids: b.reference(ids, 2))
  with pytest.raises(Exception, match='out of the output bank range'):
    jax.block_until_ready(jitted(bank, jnp.array([0, 7])))
  with pytest.raises(ValueError, match='e_tilde=0'):
    optimflow.OutputBank.create(5, 3, e_tilde=0)
  bank.check(np.arange(5))  # the host-side check for data loaders
  with pytest.raises(IndexError, match=r'got \[5, 6\]'):
    bank.check(np.arange(7))
  # check=False skips the check (jax then clips/drops out-of-range indices).
  bank.reference(jnp.array([9]), 2, check=False)


def test_trajectory_kl_equals_formula_and_stops_reference_gradient():
  rng = np.random.default_rng(1)
  z = rng.normal(size=(5, 4))
  ref = rng.normal(size=(5, 4))
  tau = 3.0
  p = np.exp(ref / tau) / np.exp(ref / tau).sum(-1, keepdims=True)
  q = np.exp(z / tau) / np.exp(z / tau).sum(-1, keepdims=True)
  expected = tau**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))
  got = optimflow.trajectory_kl(jnp.asarray(z), jnp.asarray(ref), tau)
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  d_ref = jax.grad(lambda r: optimflow.trajectory_kl(jnp.asarray(z), r, tau))(
    jnp.asarray(ref)
  )
  chex.assert_trees_all_equal(d_ref, jnp.zeros_like(d_ref))
  d_z = jax.grad(lambda x: optimflow.trajectory_kl(x, jnp.asarray(ref), tau))(
    jnp.asarray(z)
  )
  np.testing.assert_allclose(d_z, tau * (q - p) / 5, rtol=1e-4, atol=1e-7)


def test_saf_schedule_is_strict_and_jittable():
  coef = optimflow.saf_schedule(0.5, start=3, end=6)
  got = [float(jax.jit(coef)(e)) for e in range(8)]
  assert got == [0, 0, 0, 0, 0.5, 0.5, 0, 0]
  with pytest.raises(ValueError, match='end=3'):
    optimflow.saf_schedule(0.5, start=3, end=3)
  with pytest.raises(ValueError, match='lam=-0.1'):
    optimflow.saf_schedule(-0.1)


# --------------------------------------------------------------------------
# MESA: parameter EMA.


def test_param_ema_matches_its_recurrence_and_passes_updates():
  decay = 0.8
  tx = optax.chain(optax.sgd(0.1, momentum=0.5), optimflow.param_ema(decay))
  params = {'w': jnp.array([1.0, -2.0]), 'b': jnp.array(0.5)}
  state = tx.init(params)
  ema = jax.tree.map(np.asarray, params)
  ref_tx = optax.sgd(0.1, momentum=0.5)
  ref_state = ref_tx.init(params)
  rng = np.random.default_rng(0)
  for _ in range(6):
    g = jax.tree.map(
      lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params
    )
    u, state = jax.jit(tx.update)(g, state, params)
    ref_u, ref_state = ref_tx.update(g, ref_state, params)
    chex.assert_trees_all_close(u, ref_u)  # updates unchanged
    params = optax.apply_updates(params, u)
    ema = jax.tree.map(
      lambda e, p: decay * e + (1 - decay) * np.asarray(p), ema, params
    )
    chex.assert_trees_all_close(optax.tree.get(state, 'ema'), ema, rtol=1e-6)
  assert int(optax.tree.get(state, 'count')) == 6


def test_param_ema_with_dtype_and_without_params():
  tx = optimflow.param_ema(0.9, ema_dtype=jnp.float32)
  state = tx.init({'w': jnp.ones(2, jnp.bfloat16)})
  assert state.ema['w'].dtype == jnp.float32
  with pytest.raises(ValueError, match='param_ema needs params'):
    tx.update({'w': jnp.ones(2, jnp.bfloat16)}, state)


# --------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
  'factory,kwargs,match',
  [
    (optimflow.scale_by_sam, dict(rho=0.0), r'rho=0.0 is out of range'),
    (optimflow.scale_by_sam, dict(rho=-1.0), r'rho=-1.0 is out of range'),
    (optimflow.scale_by_sam, dict(rho=0.1, eta=-0.01), r'eta=-0.01'),
    (optimflow.scale_by_sam, dict(rho=0.1, eps=0.0), r'eps=0.0'),
    (optimflow.scale_by_asam, dict(rho=0.0), r'rho=0.0'),
    (optimflow.sam, dict(learning_rate=0.1, rho=-0.5), r'rho=-0.5'),
    (optimflow.sam, dict(learning_rate=0.1, momentum=1.0), r'momentum=1.0'),
    (optimflow.param_ema, dict(decay=1.0), r'decay=1.0 .* \[0, 1\)'),
    (optimflow.param_ema, dict(decay=-0.1), r'decay=-0.1'),
    (
      optimflow.trajectory_kl,
      dict(
        logits=jnp.zeros((1, 2)),
        reference_logits=jnp.zeros((1, 2)),
        temperature=0.0,
      ),
      r'temperature=0.0',
    ),
  ],
)
def test_bad_hyperparameters_raise(factory, kwargs, match):
  with pytest.raises(ValueError, match=match):
    factory(**kwargs)


@pytest.mark.parametrize(
  'tx',
  [optimflow.scale_by_sam(0.1), optimflow.scale_by_asam(), optimflow.sam(0.1)],
)
def test_missing_grad_fn_names_the_keyword_and_how_to_build_it(tx):
  params = {'w': jnp.ones(2)}
  with pytest.raises(
    ValueError, match='needs the keyword argument grad_fn'
  ) as e:
    tx.update(params, tx.init(params), params)
  assert 'jax.grad(loss_fn)(p, batch)' in str(e.value)
  assert 'optimflow.nnx.grad_fn' in str(e.value)


def test_inject_hyperparams_traces_rho_without_error():
  params = jax.tree.map(jnp.asarray, _params(np.float32))
  grad = jax.grad(_jax_loss)
  tx = optax.inject_hyperparams(sharpness.scale_by_sam)(rho=0.05)
  u, state = jax.jit(functools.partial(tx.update, grad_fn=grad))(
    grad(params), tx.init(params), params
  )
  expected, _ = sharpness.scale_by_sam(0.05).update(
    grad(params), optax.EmptyState(), params, grad_fn=grad
  )
  chex.assert_trees_all_close(u, expected, rtol=1e-6)
  assert float(optax.tree.get(state, 'rho')) == pytest.approx(0.05)
