"""Tests of optimflow.radial: AdamP / SGDP.

Parity: step-for-step against the reference implementation (PyPI ``adamp``
0.3.0 on torch), in float64 on both sides, over 60 steps, for every option
combination, on a tree of Dense and Conv kernels, biases and a
zero-initialised kernel whose gradients make the projection fire on some
leaves (channel view on one, layer view on another) and not on others.
Invariants: orthogonality of the projected update, firing on f(w/||w||) and
not on least squares, zero rows, low precision, masks, bad input.
"""

from __future__ import annotations

import itertools

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
from optimflow import radial

STEPS = 60
RTOL = 1e-5

# --------------------------------------------------------------------------
# The parity problem (Flax layouts).

SHAPES = {
  'chan': (6, 4),  # Dense kernel, per-channel scale-invariant loss
  'conv': (3, 3, 2, 5),  # Conv kernel, whole-layer scale-invariant loss
  'conv_ls': (2, 2, 3, 4),  # Conv kernel, least squares: never fires
  'dense_ls': (5, 3),  # Dense kernel, least squares
  'zero': (4, 3),  # zero-initialised Dense kernel, least squares
  'bias': (4,),
  'bias2': (5,),
}


def _problem(seed=0):
  """Initial params (float64, Flax layout) and the loss."""
  rng = np.random.default_rng(seed)
  params = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  params['zero'] = np.zeros(SHAPES['zero'])
  data = {
    'a': rng.normal(size=(8, 6)),
    'y': rng.normal(size=(8, 4)),
    'b': rng.normal(size=(7, 90)),
    'z': rng.normal(size=(7,)),
    # Targets roughly along the start (4 w0 + noise): on the way there the
    # gradient stays far from orthogonal to w, so the test never passes.
    'targets': {
      k: 4.0 * params[k] + 0.5 * rng.normal(size=SHAPES[k])
      for k in ('conv_ls', 'dense_ls', 'bias', 'bias2')
    },
    'x': rng.normal(size=(9, 4)),
    'yz': rng.normal(size=(9, 3)),
  }

  def loss(p):
    d = jax.tree.map(jnp.asarray, data)
    w = p['chan']
    w_hat = w / jnp.linalg.norm(w, axis=0, keepdims=True)
    total = 0.5 * jnp.sum((d['a'] @ w_hat - d['y']) ** 2)
    v = p['conv'].reshape(-1)
    total += 0.5 * jnp.sum((d['b'] @ (v / jnp.linalg.norm(v)) - d['z']) ** 2)
    for k, t in d['targets'].items():  # weak: far from converged at step 60
      total += 0.05 * jnp.sum((p[k] - t) ** 2)
    total += 0.5 * jnp.sum((d['x'] @ p['zero'] - d['yz']) ** 2)
    return total

  return params, loss


def _to_torch_layout(x: np.ndarray) -> np.ndarray:
  """Flax (in, out), (kh, kw, in, out) -> torch (out, in), (out, in, kh, kw)."""
  if x.ndim == 2:
    return x.T
  if x.ndim == 4:
    return x.transpose(3, 2, 0, 1)
  return x


def _to_flax_layout(x: np.ndarray) -> np.ndarray:
  if x.ndim == 2:
    return x.T
  if x.ndim == 4:
    return x.transpose(2, 3, 1, 0)
  return x


def _fires(g: np.ndarray, w: np.ndarray, delta=0.1, eps=1e-8):
  """'channel', 'layer' or None, per the reference rule (Flax layout)."""
  if w.ndim < 2:
    return None
  gm = np.moveaxis(g, -1, 0).reshape(w.shape[-1], -1)
  wm = np.moveaxis(w, -1, 0).reshape(w.shape[-1], -1)

  def cos(a, b):
    na = np.maximum(np.linalg.norm(a, axis=1), eps)
    nb = np.maximum(np.linalg.norm(b, axis=1), eps)
    return np.abs(np.sum(a * b, axis=1)) / (na * nb)

  if cos(gm, wm).max() < delta / np.sqrt(gm.shape[1]):
    return 'channel'
  if cos(gm.reshape(1, -1), wm.reshape(1, -1))[0] < delta / np.sqrt(g.size):
    return 'layer'
  return None


def _run_parity(make_ours, make_ref, layout='flax'):
  """Runs both for STEPS steps; returns the worst relative error and firings."""
  torch = pytest.importorskip('torch')
  pytest.importorskip('adamp')
  params0, flax_loss = _problem()
  with jax.enable_x64(True):
    if layout == 'flax':
      loss = flax_loss
      ours0 = params0
    else:  # our params in torch layout too; channel_axis=0
      loss = lambda p: flax_loss({k: _to_flax_layout(v) for k, v in p.items()})
      ours0 = {k: _to_torch_layout(v) for k, v in params0.items()}
    flax_grad = jax.jit(jax.grad(flax_loss))
    tx = make_ours()

    @jax.jit
    def step(p, s):
      g = jax.grad(loss)(p)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    ours = jax.tree.map(jnp.asarray, ours0)
    state = tx.init(ours)
    names = sorted(params0)
    ref = [
      torch.tensor(
        np.ascontiguousarray(_to_torch_layout(params0[k])),
        dtype=torch.float64,
        requires_grad=True,
      )
      for k in names
    ]
    opt = make_ref(ref)
    worst = 0.0
    fired = {k: set() for k in names}
    for _ in range(STEPS):
      flax_now = {
        k: _to_flax_layout(r.detach().numpy()) for k, r in zip(names, ref)
      }
      grads = jax.tree.map(np.asarray, flax_grad(flax_now))
      for k in names:
        fired[k].add(_fires(grads[k], flax_now[k]))
      for k, r in zip(names, ref):
        r.grad = torch.tensor(np.ascontiguousarray(_to_torch_layout(grads[k])))
      opt.step()
      ours, state = step(ours, state)
      for k, r in zip(names, ref):
        ref_k = r.detach().numpy()
        ours_k = np.asarray(ours[k])
        if layout == 'flax':
          ours_k = _to_torch_layout(ours_k)
        err = np.linalg.norm(ours_k - ref_k) / np.linalg.norm(ref_k)
        worst = max(worst, err)
  return worst, fired


def _check_firing_coverage(fired):
  """The problem exercises every branch: channel, layer and no projection."""
  assert fired['chan'] == {'channel'}, fired
  assert fired['conv'] == {'layer'}, fired
  assert fired['conv_ls'] == {None} and fired['dense_ls'] == {None}, fired
  assert 'channel' in fired['zero'] and None in fired['zero'], fired


ADAMP_CASES = list(itertools.product([False, True], [0.0, 0.3]))


@pytest.mark.parametrize('nesterov,weight_decay', ADAMP_CASES)
def test_adamp_matches_reference(nesterov, weight_decay):
  adamp_ref = pytest.importorskip('adamp')
  kw = dict(
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    weight_decay=weight_decay,
    delta=0.1,
    wd_ratio=0.1,
    nesterov=nesterov,
  )
  worst, fired = _run_parity(
    lambda: optimflow.adamp(1e-2, **kw),
    lambda ps: adamp_ref.AdamP(
      ps,
      lr=1e-2,
      betas=(kw['b1'], kw['b2']),
      eps=kw['eps'],
      weight_decay=weight_decay,
      delta=0.1,
      wd_ratio=0.1,
      nesterov=nesterov,
    ),
  )
  assert worst <= RTOL, worst
  _check_firing_coverage(fired)


SGDP_CASES = [
  (momentum, dampening, nesterov, wd)
  for momentum, dampening, nesterov in [
    (0.0, 0.0, False),
    (0.0, 0.5, False),
    (0.9, 0.0, False),
    (0.9, 0.5, False),
    (0.9, 0.0, True),
  ]
  for wd in (0.0, 0.3)
]


@pytest.mark.parametrize('momentum,dampening,nesterov,weight_decay', SGDP_CASES)
def test_sgdp_matches_reference(momentum, dampening, nesterov, weight_decay):
  adamp_ref = pytest.importorskip('adamp')
  kw = dict(
    momentum=momentum,
    dampening=dampening,
    nesterov=nesterov,
    weight_decay=weight_decay,
    eps=1e-8,
    delta=0.1,
    wd_ratio=0.1,
  )
  worst, fired = _run_parity(
    lambda: optimflow.sgdp(0.02, **kw),
    lambda ps: adamp_ref.SGDP(ps, lr=0.02, **kw),
  )
  assert worst <= RTOL, worst
  _check_firing_coverage(fired)


def test_channel_axis_zero_matches_reference_on_torch_layout():
  adamp_ref = pytest.importorskip('adamp')
  worst, fired = _run_parity(
    lambda: optimflow.adamp(
      1e-2, weight_decay=0.3, nesterov=True, channel_axis=0
    ),
    lambda ps: adamp_ref.AdamP(ps, lr=1e-2, weight_decay=0.3, nesterov=True),
    layout='torch',
  )
  assert worst <= RTOL, worst
  _check_firing_coverage(fired)
  worst, _ = _run_parity(
    lambda: optimflow.sgdp(
      0.02, momentum=0.9, weight_decay=0.3, channel_axis=0
    ),
    lambda ps: adamp_ref.SGDP(ps, lr=0.02, momentum=0.9, weight_decay=0.3),
    layout='torch',
  )
  assert worst <= RTOL, worst


def test_wrong_channel_axis_changes_the_test():
  """Axis 0 on a Flax kernel tests input rows: the channel view no longer
  fires, the layer view takes over, and the update keeps a radial part in
  each output channel."""
  params, loss = _problem()
  w = jnp.asarray(params['chan'], jnp.float32)
  g = jax.jit(jax.grad(loss))(jax.tree.map(jnp.asarray, params))['chan']
  u = jax.random.normal(jax.random.key(0), w.shape)
  project = jax.jit(optimflow.radial_projection, static_argnums=(5,))
  right, fired_right = project(u, g, w, 0.1, 1e-8, -1)
  wrong, fired_wrong = project(u, g, w, 0.1, 1e-8, 0)
  assert bool(fired_right) and bool(fired_wrong)
  assert _fires(np.asarray(g), np.asarray(w)) == 'channel'
  assert _fires(np.asarray(g).T, np.asarray(w).T) == 'layer'
  per_channel = lambda x: np.abs(np.asarray(jnp.sum(x * w, axis=0)))
  assert per_channel(right).max() < 1e-5
  assert per_channel(wrong).max() > 1e-2
  assert abs(float(jnp.vdot(wrong, w))) < 1e-5


# --------------------------------------------------------------------------
# Cosine semantics (current torch) and zero rows.


def test_cosine_eps_clamps_each_norm_like_current_torch():
  """torch>=1.12: <x, y> / (max(|x|, eps) max(|y|, eps)); 1.9: max(|x||y|, eps).

  Two aligned rows of norm 1e-5: current torch says cos = 1 (no projection),
  the old formula would say 1e-10 / 1e-8 = 0.01 < delta / sqrt(2) (project).
  """
  torch = pytest.importorskip('torch')
  row = np.array([[1e-5, 0.0]])
  cos = torch.nn.functional.cosine_similarity(
    torch.tensor(row), torch.tensor(row), dim=1, eps=1e-8
  )
  np.testing.assert_allclose(cos.numpy(), [1.0], rtol=1e-12)
  with jax.enable_x64(True):
    w = jnp.asarray(row.T)  # one channel of length 2 (Flax layout)
    _, fired = optimflow.radial_projection(w, w, w, delta=0.1, eps=1e-8)
    assert not bool(fired)
    # A row of norm 1e-9 against a unit row: both formulas give 0.1.
    small = jnp.array([[1e-9], [0.0]])
    unit = jnp.array([[1.0], [0.0]])
    _, fired = optimflow.radial_projection(unit, small, unit, delta=0.2)
    assert bool(fired)  # 0.1 < 0.2 / sqrt(2)
    _, fired = optimflow.radial_projection(unit, small, unit, delta=0.1)
    assert not bool(fired)  # 0.1 > 0.1 / sqrt(2)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16, jnp.float16])
def test_zero_kernel_is_finite_and_decay_uses_wd_ratio(dtype):
  w = {'kernel': jnp.zeros((4, 3), dtype), 'bias': jnp.zeros(3, dtype)}
  g = {
    'kernel': jnp.arange(12.0).reshape(4, 3).astype(dtype) - 5,
    'bias': jnp.ones(3, dtype),
  }
  for tx, plain in [
    (optimflow.adamp(0.1, weight_decay=0.5), optax.adam(0.1)),
    (
      optimflow.sgdp(0.1, momentum=0.9, weight_decay=0.5),
      optax.sgd(0.1, momentum=0.9),
    ),
  ]:
    u, _ = jax.jit(tx.update)(g, tx.init(w), w)
    chex.assert_tree_all_finite(u)
    chex.assert_trees_all_equal_dtypes(u, g)
    # cos = 0 passes the test, but w_hat = 0: the projection is a no-op.
    # (optax.adam itself gives NaN in float16 on zero gradients: eps
    # underflows; compare with it in float32.)
    g32, w32 = (optax.tree.cast(t, jnp.float32) for t in (g, w))
    expected, _ = plain.update(g32, plain.init(w32), w32)
    # Moments are stored in the params' dtype (as optax does): ~1% in fp16.
    chex.assert_trees_all_close(
      optax.tree.cast(u, jnp.float32),
      expected,
      rtol=2e-2 if dtype != jnp.float32 else 2e-5,
    )
  # The zero kernel fired; a unit kernel with a parallel gradient does not:
  # their decays differ by wd_ratio.
  ones = {'kernel': jnp.ones((4, 3)), 'bias': jnp.ones(3)}
  zero_g = jax.tree.map(jnp.zeros_like, ones)
  tx = optimflow.sgdp(1.0, weight_decay=0.5, wd_ratio=0.1)
  u, _ = tx.update(zero_g, tx.init(ones), ones)  # g = 0: cos 0, fires
  chex.assert_trees_all_close(
    u, {'kernel': -0.05 * ones['kernel'], 'bias': -0.5 * ones['bias']}
  )
  u, _ = tx.update(ones, tx.init(ones), ones)  # g || w: never fires
  chex.assert_trees_all_close(
    u, {'kernel': -1.5 * ones['kernel'], 'bias': -1.5 * ones['bias']}
  )


def test_projection_runs_in_float32_for_low_precision():
  key = jax.random.split(jax.random.key(0), 3)
  w, g, u = (jax.random.normal(k, (16, 8)) for k in key)
  g = g - w * jnp.sum(g * w, 0) / jnp.sum(w * w, 0)  # per channel orthogonal
  for dtype in (jnp.bfloat16, jnp.float16):
    low = [x.astype(dtype) for x in (u, g, w)]
    got, fired = optimflow.radial_projection(*low)
    want, _ = optimflow.radial_projection(*(x.astype(jnp.float32) for x in low))
    assert got.dtype == jnp.float32 and bool(fired)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# --------------------------------------------------------------------------
# Invariants.


def _orthogonal_per_channel(g, w):
  return g - w * jnp.sum(
    g * w, axis=tuple(range(w.ndim - 1)), keepdims=True
  ) / jnp.sum(w * w, axis=tuple(range(w.ndim - 1)), keepdims=True)


@settings(max_examples=20, deadline=None)
@given(
  shape=st.sampled_from([(7, 3), (3, 3, 4, 5), (2, 6), (5, 1)]),
  seed=st.integers(0, 2**16),
  layer=st.booleans(),
)
def test_projected_update_is_orthogonal_to_weight(shape, seed, layer):
  kw, kg, ku = jax.random.split(jax.random.key(seed), 3)
  w = jax.random.normal(kw, shape)
  g = jax.random.normal(kg, shape)
  u = jax.random.normal(ku, shape)
  red = tuple(range(w.ndim - 1))
  if layer:  # orthogonal to the whole leaf only
    g = g - w * jnp.vdot(g, w) / jnp.vdot(w, w)
  else:
    g = _orthogonal_per_channel(g, w)
  p, fired = jax.jit(optimflow.radial_projection)(u, g, w)
  assert bool(fired)
  channel_fired = _channel_test_fires(g, w)
  if channel_fired:
    inner = jnp.sum(p * w, axis=red)
    scale = jnp.linalg.norm(u.reshape(-1, shape[-1]), axis=0) * jnp.linalg.norm(
      w.reshape(-1, shape[-1]), axis=0
    )
  else:
    inner = jnp.vdot(p, w)
    scale = jnp.linalg.norm(u) * jnp.linalg.norm(w)
  np.testing.assert_array_less(np.abs(inner), 1e-5 * np.asarray(scale))
  assert channel_fired or layer


def _channel_test_fires(g, w):
  return _fires(np.asarray(g, np.float64), np.asarray(w, np.float64)) == (
    'channel'
  )


def test_fires_on_scale_invariant_loss_not_on_least_squares():
  key = jax.random.split(jax.random.key(3), 4)
  x = jax.random.normal(key[0], (32, 10))
  y = jax.random.normal(key[1], (32, 6))
  w = jax.random.normal(key[2], (10, 6))
  least_squares = lambda w: 0.5 * jnp.sum((x @ w - y) ** 2)
  invariant = lambda w: least_squares(w / jnp.linalg.norm(w))
  u = jax.random.normal(key[3], w.shape)
  _, fired = optimflow.radial_projection(u, jax.grad(invariant)(w), w)
  assert bool(fired)
  _, fired = optimflow.radial_projection(u, jax.grad(least_squares)(w), w)
  assert not bool(fired)
  # Through the optimizer: orthogonal updates on the invariant loss; plain
  # Adam where nothing fires.
  tx = optimflow.adamp(1e-2)
  state = tx.init(w)
  w_inv, w_ls = w, w
  state_ls, adam, adam_state = (
    tx.init(w),
    optax.adam(1e-2),
    optax.adam(1e-2).init(w),
  )
  update = jax.jit(tx.update)
  for _ in range(5):
    upd, state = update(jax.grad(invariant)(w_inv), state, w_inv)
    assert abs(float(jnp.vdot(upd, w_inv))) < 1e-5 * float(
      jnp.linalg.norm(upd) * jnp.linalg.norm(w_inv)
    )
    w_inv = w_inv + upd
    g = jax.grad(least_squares)(w_ls)
    upd, state_ls = update(g, state_ls, w_ls)
    ref, adam_state = jax.jit(adam.update)(g, adam_state, w_ls)
    # optax's 1 - b2**t loses ~2e-5 in float32; ours is exact to ~1e-7.
    chex.assert_trees_all_close(upd, ref, rtol=5e-5, atol=1e-9)
    w_ls = w_ls + upd
  # Scale invariance keeps the norm from growing (it grows only to 2nd order).
  assert float(jnp.linalg.norm(w_inv)) < float(jnp.linalg.norm(w)) * 1.001


def test_one_dimensional_leaves_are_never_projected():
  w = jnp.array([1.0, 2.0])
  g = jnp.array([2.0, -1.0])  # orthogonal: would pass the test
  u, fired = optimflow.radial_projection(g, g, w)
  assert not bool(fired)
  np.testing.assert_array_equal(u, g)


def test_masks():
  w = {'k': jnp.array([[1.0], [2.0]]), 'b': jnp.array([0.5])}
  g = {'k': jnp.array([[2.0], [-1.0]]), 'b': jnp.array([1.0])}
  full = optimflow.adamp(0.1, weight_decay=0.2)
  no_k = optimflow.adamp(0.1, weight_decay=0.2, mask={'k': False, 'b': True})
  by_fn = optimflow.adamp(
    0.1, weight_decay=0.2, mask=lambda p: jax.tree.map(lambda x: x.ndim < 2, p)
  )
  adamw = optax.adamw(0.1, weight_decay=0.2)
  u_full, _ = full.update(g, full.init(w), w)
  u_no_k, _ = no_k.update(g, no_k.init(w), w)
  u_fn, _ = by_fn.update(g, by_fn.init(w), w)
  u_adamw, _ = adamw.update(g, adamw.init(w), w)
  # rtol: optax's float32 1 - b2**t is off by ~1e-5 (see above).
  chex.assert_trees_all_close(u_no_k, u_adamw, rtol=2e-5)
  chex.assert_trees_all_close(u_fn, u_adamw, rtol=2e-5)
  assert (
    abs(float(jnp.vdot(u_full['k'] + 0.1 * 0.2 * 0.1 * w['k'], w['k']))) < 1e-6
  )
  decay_only_b = optimflow.adamp(
    0.1, weight_decay=0.2, weight_decay_mask={'k': False, 'b': True}
  )
  u_d, _ = decay_only_b.update(g, decay_only_b.init(w), w)
  np.testing.assert_allclose(
    u_d['k'], u_full['k'] + 0.1 * 0.2 * 0.1 * w['k'], rtol=1e-6
  )
  np.testing.assert_allclose(u_d['b'], u_full['b'], rtol=1e-6)


def test_traced_hyperparameters():
  """delta, wd_ratio, momentum... may be traced: one compile for all values."""
  w = jnp.array([[1.0], [2.0]])
  g = jnp.array([[2.1], [-1.0]])  # |cos| = 0.019

  @jax.jit
  def run(delta, wd_ratio, momentum):
    tx = optimflow.sgdp(
      1.0, momentum=momentum, weight_decay=1.0, delta=delta, wd_ratio=wd_ratio
    )
    return tx.update(g, tx.init(w), w)[0]

  fired = run(0.1, 0.5, 0.5)  # fires: decay lambda * 0.5 / (1 - 0.5)
  not_fired = run(0.01, 0.5, 0.5)  # 0.019 > 0.01 / sqrt(2): plain SGD
  proj = g - w * jnp.vdot(g, w) / jnp.vdot(w, w)
  np.testing.assert_allclose(fired, -(proj + w), rtol=1e-6)
  np.testing.assert_allclose(not_fired, -(g + 2.0 * w), rtol=1e-6)
  assert run._cache_size() == 1


# --------------------------------------------------------------------------
# Bad input.


BAD = [
  (optimflow.adamp, dict(delta=0.0), 'delta'),
  (optimflow.adamp, dict(delta=-1.0), 'delta'),
  (optimflow.adamp, dict(wd_ratio=-0.1), 'wd_ratio'),
  (optimflow.adamp, dict(wd_ratio=1.5), 'wd_ratio'),
  (optimflow.adamp, dict(eps=0.0), 'eps'),
  (optimflow.adamp, dict(b1=1.0), 'b1'),
  (optimflow.adamp, dict(b2=-0.1), 'b2'),
  (optimflow.adamp, dict(weight_decay=-1.0), 'weight_decay'),
  (optimflow.adamp, dict(learning_rate=-1.0), 'learning_rate'),
  (optimflow.adamp, dict(channel_axis=1.5), 'channel_axis'),
  (optimflow.sgdp, dict(momentum=1.0), 'momentum'),
  (optimflow.sgdp, dict(momentum=-0.1), 'momentum'),
  (optimflow.sgdp, dict(dampening=1.5), 'dampening'),
  (optimflow.sgdp, dict(nesterov=True), 'momentum'),
  (
    optimflow.sgdp,
    dict(nesterov=True, momentum=0.9, dampening=0.1),
    'dampening',
  ),
  (optimflow.sgdp, dict(eps=-1e-8), 'eps'),
  (optimflow.sgdp, dict(delta=0.0), 'delta'),
  (optimflow.sgdp, dict(wd_ratio=2.0), 'wd_ratio'),
]


@pytest.mark.parametrize(
  'factory,kwargs,name', BAD, ids=[f'{f.__name__}-{k}' for f, k, _ in BAD]
)
def test_bad_input_raises(factory, kwargs, name):
  kwargs = {'learning_rate': 0.1, **kwargs}
  with pytest.raises(ValueError, match=name):
    factory(**kwargs)


def test_channel_axis_out_of_range_and_missing_params():
  tx = optimflow.adamp(0.1, channel_axis=2)
  w = jnp.ones((3, 2))
  with pytest.raises(ValueError, match='channel_axis'):
    tx.update(w, tx.init(w), w)
  with pytest.raises(ValueError, match='params'):
    tx.update(w, tx.init(w))


def test_scale_by_building_blocks_compose():
  w = {'k': jnp.ones((3, 2))}
  g = {'k': jnp.arange(6.0).reshape(3, 2)}
  for alias, block in [
    (
      optimflow.adamp(0.1, weight_decay=0.1),
      radial.scale_by_adamp(weight_decay=0.1),
    ),
    (
      optimflow.sgdp(0.1, momentum=0.9, weight_decay=0.1),
      radial.scale_by_sgdp(momentum=0.9, weight_decay=0.1),
    ),
  ]:
    u1, _ = alias.update(g, alias.init(w), w)
    u2, _ = block.update(g, block.init(w), w)
    chex.assert_trees_all_close(u1, jax.tree.map(lambda x: -0.1 * x, u2))
