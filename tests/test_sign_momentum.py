"""Lion and Lion-kappa: fixed points, the box invariant, parity, bad input."""

from __future__ import annotations

import chex
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

LAM = 2.0  # weight decay; the box radius is 1 / LAM = 0.5.


def _soft(c, d):
  return np.sign(c) * np.maximum(np.abs(c) - d, 0.0)


def _ball(c, radius):
  return c * min(1.0, radius / np.linalg.norm(c))


# kappa -> closed-form minimiser of 0.5||x - c||^2 + kappa*(LAM x) / LAM.
CLOSED_FORMS = {
  'sign': lambda c: np.clip(c, -1 / LAM, 1 / LAM),
  'l2': lambda c: _ball(c, 1 / LAM),
  'quadratic': lambda c: c / (1 + LAM),
  ('huber', 0.3): lambda c: np.clip(c / (1 + 0.3 * LAM), -1 / LAM, 1 / LAM),
  ('dead_zone', 0.2): lambda c: np.clip(_soft(c, 0.2), -1 / LAM, 1 / LAM),
}
# Where only the stationarity equation LAM x = grad_kappa(c - x) is known.
STATIONARY_ONLY = [('relativistic', 0.5), ('lp', 3.0), ('lp', 1.5)]
# Tolerances of the fixed point (sign-like kappas chatter at the step size).
TOL = {'sign': 2e-4, ('dead_zone', 0.2): 2e-4}


def _target(seed=0, dim=200):
  return np.random.default_rng(seed).uniform(-1.5, 1.5, dim).astype(np.float32)


def _solve(kappa, c, steps=4000, lr=1e-2, implicit=False):
  """Lion-kappa on f = 0.5||x - c||^2 with a linearly decayed step size."""
  tx = optimflow.lion_kappa(
    optax.linear_schedule(lr, 0.0, steps),
    kappa=kappa,
    weight_decay=LAM,
    implicit_decay=implicit,
  )
  grad = lambda x: x - c

  def step(carry, _):
    x, s = carry
    u, s = tx.update(grad(x), s, x)
    return (optax.apply_updates(x, u), s), None

  x0 = jnp.zeros_like(c)
  (x, _), _ = jax.jit(
    lambda x0: jax.lax.scan(step, (x0, tx.init(x0)), length=steps)
  )(x0)
  return np.asarray(x)


@pytest.mark.parametrize('kappa', list(CLOSED_FORMS), ids=str)
def test_fixed_point_equals_closed_form(kappa):
  c = _target()
  x = _solve(kappa, jnp.asarray(c))
  np.testing.assert_allclose(
    x, CLOSED_FORMS[kappa](c), atol=TOL.get(kappa, 1e-5)
  )


@pytest.mark.parametrize('kappa', STATIONARY_ONLY, ids=str)
def test_fixed_point_is_stationary(kappa):
  c = jnp.asarray(_target(1))
  x = _solve(kappa, c, steps=6000)
  residual = LAM * x - optimflow.kappa_gradient(kappa)(c - x)
  assert np.max(np.abs(residual)) < 1e-4
  # And the constraint of the composite problem holds (an l_q ball for l_p).
  if kappa[0] == 'lp':
    q = kappa[1] / (kappa[1] - 1)
    assert np.sum(np.abs(x) ** q) ** (1 / q) <= 1 / LAM + 1e-4
  else:
    assert np.max(np.abs(x)) <= 1 / LAM


def test_implicit_decay_reaches_same_box():
  c = _target(2)
  x = _solve('sign', jnp.asarray(c), implicit=True)
  np.testing.assert_allclose(x, CLOSED_FORMS['sign'](c), atol=2e-4)


def test_sgd_with_coupled_decay_lands_on_the_shrunk_point():
  """The box is Lion-kappa's: SGD with the same decay as an L2 term shrinks.

  SGD on 0.5||x - c||^2 + 0.5 LAM ||x||^2 contracts by 1 - lr (1 + LAM) = 0.97
  per step towards c / (1 + LAM) (the 'quadratic' kappa's closed form), so
  after 3000 steps only float32 rounding is left (1e-5 on entries <= 1.5).
  """
  c = _target()
  shrunk = c / (1 + LAM)
  loss = lambda x: 0.5 * jnp.sum((x - c) ** 2) + 0.5 * LAM * jnp.sum(x**2)
  tx = optax.sgd(1e-2)
  x = jnp.zeros_like(c)
  state = tx.init(x)
  step = jax.jit(lambda x, s: tx.update(jax.grad(loss)(x), s, x))
  for _ in range(3000):
    u, state = step(x, state)
    x = optax.apply_updates(x, u)
  np.testing.assert_allclose(x, shrunk, atol=1e-5)
  # ... which is not the box: c's entries of size 1 are 1/3 against 1/2.
  assert np.max(np.abs(shrunk - CLOSED_FORMS['sign'](c))) > 0.1


def test_adamw_decoupled_decay_is_not_lion_kappas_fixed_point():
  """AdamW with the same decoupled decay has no fixed point off the box.

  Lion-kappa's sign fixed point keeps the interior coordinates, x_i = c_i for
  |c_i| < 1 / LAM (test_fixed_point_equals_closed_form, to 2e-4). AdamW's
  update there is m / (sqrt(v) + eps) + LAM x with |LAM x| < 1, while at rest
  m / sqrt(v) = sign(x - c) has modulus 1, so x cannot rest at c: its
  interior coordinates end away from c, by far more than the 2e-4 chatter of
  a sign method (measured 0.07 at this step size; asserted 10x Lion's 2e-4).
  Its iterates still stay near the box (Xie & Li 2024: AdamW's limit points
  satisfy ||x||_inf <= 1 / LAM), within one step size here.
  """
  c = _target()
  lr = 1e-2
  tx = optax.adamw(lr, weight_decay=LAM)
  grad = lambda x: x - c  # the decay is decoupled: no L2 term in the loss
  x = jnp.zeros_like(c)
  state = tx.init(x)
  step = jax.jit(lambda x, s: tx.update(grad(x), s, x))
  for _ in range(3000):
    u, state = step(x, state)
    x = optax.apply_updates(x, u)
  x = np.asarray(x)
  interior = np.abs(c) < 1 / LAM - 0.05
  assert interior.sum() > 20
  assert np.max(np.abs(x - c)[interior]) > 10 * TOL['sign']
  assert np.max(np.abs(x)) <= 1 / LAM + lr


# --------------------------------------------------------------------------
# The box invariant, for arbitrary gradients.

_BOUNDED_KAPPAS = [
  'sign',
  ('huber', 0.5),
  ('dead_zone', 0.1),
  ('relativistic', 0.2),
]


@settings(max_examples=25, deadline=None)
@given(
  grads=hnp.arrays(
    np.float32, (12, 6), elements=st.floats(-1e3, 1e3, width=32)
  ),
  x0=hnp.arrays(np.float32, (6,), elements=st.floats(-5, 5, width=32)),
  lr=st.floats(1e-3, 0.5),
  lam_lr=st.floats(0.01, 1.0),
  kappa_index=st.integers(0, len(_BOUNDED_KAPPAS) - 1),
  implicit=st.booleans(),
)
def test_box_invariant(grads, x0, lr, lam_lr, kappa_index, implicit):
  """||x_t||_inf - 1/lam <= r^t (||x_0||_inf - 1/lam), r = 1 - eta lam.

  With implicit decay the rate is r = 1 / (1 + eta lam).
  """
  lam = lam_lr / lr  # so that eta * lam = lam_lr <= 1
  tx = optimflow.lion_kappa(
    lr,
    kappa=_BOUNDED_KAPPAS[kappa_index],
    weight_decay=lam,
    implicit_decay=implicit,
  )
  rate = 1 / (1 + lr * lam) if implicit else 1 - lr * lam
  x = jnp.asarray(x0)
  state = tx.init(x)
  gap0 = float(np.max(np.abs(x0))) - 1 / lam
  tol = 1e-5 * max(float(np.max(np.abs(x0))), 1 / lam)
  for t, g in enumerate(grads, start=1):
    u, state = tx.update(jnp.asarray(g), state, x)
    x = optax.apply_updates(x, u)
    gap = float(jnp.max(jnp.abs(x))) - 1 / lam
    assert gap <= rate**t * gap0 + tol * t


@settings(max_examples=15, deadline=None)
@given(
  grads=hnp.arrays(
    np.float32, (10, 5), elements=st.floats(-1e3, 1e3, width=32)
  ),
  x0=hnp.arrays(np.float32, (5,), elements=st.floats(-5, 5, width=32)),
)
def test_ball_invariant_l2(grads, x0):
  lr, lam = 0.1, 4.0
  tx = optimflow.lion_kappa(lr, kappa='l2', weight_decay=lam)
  x, state = jnp.asarray(x0), tx.init(jnp.asarray(x0))
  gap0 = float(np.linalg.norm(x0)) - 1 / lam
  for t, g in enumerate(grads, start=1):
    u, state = tx.update(jnp.asarray(g), state, x)
    x = optax.apply_updates(x, u)
    gap = float(jnp.linalg.norm(x)) - 1 / lam
    assert gap <= (1 - lr * lam) ** t * gap0 + 1e-5 * t


# --------------------------------------------------------------------------
# Parity.


def _random_tree(key):
  k1, k2, k3 = jax.random.split(key, 3)
  return {
    'kernel': jax.random.normal(k1, (5, 3)),
    'bias': jax.random.normal(k2, (3,)),
    'conv': jax.random.normal(k3, (3, 3, 2, 4)),
  }


@pytest.mark.parametrize(
  'kwargs',
  [
    dict(learning_rate=1e-3, weight_decay=0.0),
    dict(learning_rate=1e-3, weight_decay=1e-3),
    dict(learning_rate=3e-4, b1=0.95, b2=0.98, weight_decay=0.1),
    dict(
      learning_rate=optax.cosine_decay_schedule(1e-3, 100),
      weight_decay=1e-2,
      mask=lambda p: {k: k != 'bias' for k in p},
    ),
    dict(learning_rate=1e-3, weight_decay=1e-2, mu_dtype=jnp.bfloat16),
  ],
)
def test_lion_bit_identical_to_optax(kwargs):
  ours, theirs = optimflow.lion(**kwargs), optax.lion(**kwargs)
  params = _random_tree(jax.random.key(0))
  p1, s1, p2, s2 = params, ours.init(params), params, theirs.init(params)
  step = lambda tx: jax.jit(tx.update)
  up1, up2 = step(ours), step(theirs)
  for t in range(100):
    g = _random_tree(jax.random.key(t + 1))
    u1, s1 = up1(g, s1, p1)
    u2, s2 = up2(g, s2, p2)
    p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
  chex.assert_trees_all_equal(p1, p2)
  chex.assert_trees_all_equal(s1[0].mu, s2[0].mu)


def test_lion_default_weight_decay_differs_from_optax():
  assert optimflow.lion.__defaults__[2] == 0.0  # weight_decay
  params = {'w': jnp.ones(3)}
  zero = {'w': jnp.zeros(3)}
  u, _ = optimflow.lion(0.1).update(
    zero, optimflow.lion(0.1).init(params), params
  )
  chex.assert_trees_all_equal(u['w'], jnp.zeros(3))


@pytest.mark.parametrize('wd', [0.0, 0.1])
@pytest.mark.parametrize('betas', [(0.9, 0.99), (0.95, 0.98)])
def test_lion_parity_with_lion_pytorch(wd, betas):
  torch = pytest.importorskip('torch')
  lion_pytorch = pytest.importorskip('lion_pytorch')
  rng = np.random.default_rng(0)
  init = rng.normal(size=(7, 5)).astype(np.float32)
  grads = rng.normal(size=(100, 7, 5)).astype(np.float32)
  lr = 1e-2

  w = torch.nn.Parameter(torch.tensor(init))
  opt = lion_pytorch.Lion([w], lr=lr, betas=betas, weight_decay=wd)
  tx = optimflow.lion(lr, b1=betas[0], b2=betas[1], weight_decay=wd)
  x = jnp.asarray(init)
  state = tx.init(x)
  update = jax.jit(tx.update)
  for g in grads:
    w.grad = torch.tensor(g)
    opt.step()
    u, state = update(jnp.asarray(g), state, x)
    x = optax.apply_updates(x, u)
  np.testing.assert_allclose(
    np.asarray(x), w.detach().numpy(), rtol=1e-5, atol=1e-6
  )


# --------------------------------------------------------------------------
# The kappa functions and the transform.


@pytest.mark.parametrize(
  'kappa',
  [
    'sign',
    'l2',
    'quadratic',
    ('huber', 0.1),
    ('dead_zone', 0.1),
    ('relativistic', 0.1),
    ('lp', 3.0),
    ('lp', 1.0),
  ],
  ids=str,
)
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_kappa_gradient_zero_and_dtype(kappa, dtype):
  grad = optimflow.kappa_gradient(kappa)
  zero = grad(jnp.zeros((4, 3), dtype))
  chex.assert_trees_all_equal(zero, jnp.zeros((4, 3), dtype))
  y = jax.random.normal(jax.random.key(0), (4, 3)).astype(dtype)
  out = grad(y)
  assert out.dtype == dtype
  chex.assert_tree_all_finite(out)
  # An odd function: grad_kappa(-y) = -grad_kappa(y).
  chex.assert_trees_all_close(grad(-y), -out)


def test_kappa_norms():
  y = jax.random.normal(jax.random.key(0), (50,)) * 1e30  # no overflow
  np.testing.assert_allclose(
    jnp.linalg.norm(optimflow.kappa_gradient('l2')(y)), 1.0, rtol=1e-6
  )
  chex.assert_trees_all_close(
    optimflow.kappa_gradient(('lp', 2.0))(y),
    optimflow.kappa_gradient('l2')(y),
    rtol=1e-5,
  )
  # Dual norm: ||grad_kappa(y)||_q = 1 for kappa = ||.||_p.
  p = 3.0
  q = p / (p - 1)
  g = optimflow.kappa_gradient(('lp', p))(y)
  np.testing.assert_allclose(
    jnp.sum(jnp.abs(g) ** q) ** (1 / q), 1.0, rtol=1e-5
  )
  assert (
    jnp.max(jnp.abs(optimflow.kappa_gradient(('relativistic', 1.0))(y))) <= 1.0
  )


def test_custom_kappa_callable():
  tx = optimflow.scale_by_lion_kappa(kappa=lambda y: 2 * y, b1=0.5)
  g = jnp.array([1.0, -2.0])
  u, state = tx.update(g, tx.init(g))
  chex.assert_trees_all_close(u, g)  # 2 * (0.5 * 0 + 0.5 * g)
  chex.assert_trees_all_close(state.mu, 0.01 * g)


def test_direction_uses_old_momentum_then_updates_it():
  b1, b2 = 0.9, 0.99
  tx = optimflow.scale_by_lion_kappa('quadratic', b1=b1, b2=b2)
  g1, g2 = jnp.array([1.0]), jnp.array([-3.0])
  _, s = tx.update(g1, tx.init(g1))
  u, s = tx.update(g2, s)
  m1 = (1 - b2) * g1
  chex.assert_trees_all_close(u, b1 * m1 + (1 - b1) * g2)
  chex.assert_trees_all_close(s.mu, b2 * m1 + (1 - b2) * g2)
  assert int(s.count) == 2


def test_mu_dtype_and_update_dtype():
  tx = optimflow.lion(1e-3, mu_dtype=jnp.bfloat16)
  params = {'w': jnp.ones((3, 2))}
  state = tx.init(params)
  assert state[0].mu['w'].dtype == jnp.bfloat16
  u, state = tx.update({'w': jnp.ones((3, 2))}, state, params)
  assert u['w'].dtype == jnp.float32
  assert state[0].mu['w'].dtype == jnp.bfloat16


def test_implicit_decay_formula():
  lr, lam = 0.1, 3.0
  tx = optimflow.lion_kappa(
    lr, kappa='quadratic', b1=0.0, weight_decay=lam, implicit_decay=True
  )
  x, g = jnp.array([2.0, -1.0]), jnp.array([0.5, 4.0])
  u, _ = tx.update(g, tx.init(x), x)
  chex.assert_trees_all_close(x + u, (x - lr * g) / (1 + lr * lam))


def test_implicit_decay_respects_mask():
  lr, lam = 0.1, 3.0
  params = {'w': jnp.ones(2), 'b': jnp.ones(2)}
  mask = {'w': True, 'b': False}
  tx = optimflow.lion_kappa(
    lr,
    kappa='quadratic',
    b1=0.0,
    weight_decay=lam,
    implicit_decay=True,
    mask=mask,
  )
  g = {'w': jnp.ones(2), 'b': jnp.ones(2)}
  u, _ = tx.update(g, tx.init(params), params)
  chex.assert_trees_all_close(
    u['w'], -lr * (1 + lam) / (1 + lr * lam) * jnp.ones(2)
  )
  chex.assert_trees_all_close(u['b'], -lr * jnp.ones(2))


# --------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize(
  'kwargs,match',
  [
    (dict(b1=1.5), r'b1=1\.5 .*\[0, 1\]'),
    (dict(b1=-0.1), r'b1=-0\.1'),
    (dict(b2=1.0), r'b2=1\.0 .*\[0, 1\)'),
    (dict(b2=float('nan')), r'b2=nan'),
    (dict(weight_decay=-1e-3), r'weight_decay=-0\.001 .*\[0, inf\]'),
    (dict(learning_rate=-1.0), r'learning_rate=-1\.0'),
    (dict(kappa='l3'), r"kappa='l3' is not supported.*'sign'"),
    (dict(kappa=('huber', 0.0)), r'kappa huber delta=0\.0 .*\(0, inf\]'),
    (dict(kappa=('dead_zone', -1.0)), r'kappa dead_zone delta=-1\.0'),
    (dict(kappa=('relativistic', 0)), r'kappa relativistic delta=0'),
    (dict(kappa=('lp', 0.5)), r'kappa p=0\.5 .*\[1, inf\]'),
    (dict(kappa='huber'), r"kappa='huber' needs a parameter"),
    (dict(kappa=('cubic', 1.0)), r"kappa=\('cubic', 1\.0\) is not supported"),
  ],
)
def test_bad_hyperparameters_raise(kwargs, match):
  kwargs = {'learning_rate': 1e-3, **kwargs}
  with pytest.raises(ValueError, match=match):
    optimflow.lion_kappa(**kwargs)


def test_bad_lion_arguments_raise():
  with pytest.raises(ValueError, match='b2'):
    optimflow.lion(1e-3, b2=-0.5)
  with pytest.raises(ValueError, match='weight_decay'):
    optimflow.lion(1e-3, weight_decay=-1.0)
