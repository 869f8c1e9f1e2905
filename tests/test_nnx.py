"""Flax NNX helpers: grad_fn, train_step, ema_model, SAF / MESA steps."""

from __future__ import annotations

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimflow
from optimflow.lab import tasks
import optimflow.nnx as onnx


class BNNet(nnx.Module):
  """Dense -> BatchNorm -> ReLU -> Dropout -> Dense."""

  def __init__(self, rngs, dropout=0.0):
    self.l1 = nnx.Linear(4, 8, rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.drop = nnx.Dropout(dropout, rngs=rngs)
    self.l2 = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.l2(self.drop(jax.nn.relu(self.bn(self.l1(x)))))


def _ce(logits, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _loss(model, x, y):
  return _ce(model(x), y)


def _batch(n=16, seed=0):
  kx, ky = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, (n, 4)), jax.random.randint(ky, (n,), 0, 3)


def _pure(model):
  return nnx.as_pure(nnx.state(model, nnx.Param))


def _batch_stats(model):
  return nnx.as_pure(nnx.state(model, nnx.BatchStat))


def test_grad_fn_is_the_gradient_and_discards_batch_stats():
  model = BNNet(nnx.Rngs(0))
  x, y = _batch()
  stats = _batch_stats(model)
  grad_fn = onnx.grad_fn(model, _loss, (x, y))
  params = _pure(model)
  g = grad_fn(params)
  chex.assert_trees_all_equal(_batch_stats(model), stats)  # discarded
  chex.assert_trees_all_close(
    g, _pure(nnx.grad(_loss)(model, x, y)), rtol=1e-5, atol=1e-7
  )
  # At other parameters: the gradient of the model with those parameters.
  shifted = jax.tree.map(lambda p: p + 0.1, params)
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  other = nnx.merge(graphdef, shifted, rest, copy=True)
  chex.assert_trees_all_close(
    jax.jit(grad_fn)(shifted),
    _pure(nnx.grad(_loss)(other, x, y)),
    rtol=1e-5,
    atol=1e-7,
  )


def test_grad_fn_builder_plugs_into_tasks_fit():
  data = tasks.load_digits()
  model = tasks.MLP((16,), rngs=nnx.Rngs(0))
  hist = tasks.fit(
    model,
    optimflow.sam(0.05),
    data,
    steps=20,
    batch_size=64,
    progress=False,
    grad_fn_builder=onnx.grad_fn_builder(tasks.loss_fn),
  )
  assert hist.grad_evals_per_step == 2
  assert hist.train_loss[-1] < hist.train_loss[0]
  # The builder the tasks module installs by default is this one.
  model = tasks.MLP((16,), rngs=nnx.Rngs(0))
  batch = (jnp.asarray(data.x_train[:8]), jnp.asarray(data.y_train[:8]))
  ours = onnx.grad_fn(model, tasks.loss_fn, batch)(_pure(model))
  theirs = tasks.grad_fn_builder()(model, batch)(_pure(model))
  chex.assert_trees_all_equal(ours, theirs)


@pytest.mark.parametrize('adaptive', [False, True])
def test_train_step_with_sam_equals_the_pure_computation(adaptive):
  model = BNNet(nnx.Rngs(0))
  x, y = _batch()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = nnx.as_pure(params)

  def pure_loss(p):
    return _loss(nnx.merge(graphdef, p, rest, copy=True), x, y)

  rho = 0.5 if adaptive else 0.05
  tx = optimflow.sam(0.1, rho=rho, momentum=0.9, adaptive=adaptive)
  g = jax.grad(pure_loss)(params)
  e = optimflow.sam_perturbation(g, params, rho, adaptive=adaptive)
  g_sam = jax.grad(pure_loss)(jax.tree.map(jnp.add, params, e))
  expected = jax.tree.map(lambda p, u: p - 0.1 * u, params, g_sam)

  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  loss = onnx.train_step(_loss)(model, optimizer, x, y)
  np.testing.assert_allclose(loss, pure_loss(params), rtol=1e-6)
  chex.assert_trees_all_close(_pure(model), expected, rtol=1e-5, atol=1e-6)


def test_train_step_keeps_batch_stats_of_the_clean_pass():
  model, reference = BNNet(nnx.Rngs(0)), BNNet(nnx.Rngs(0))
  x, y = _batch()
  optimizer = nnx.Optimizer(model, optimflow.sam(0.1, rho=0.5), wrt=nnx.Param)
  onnx.train_step(_loss)(model, optimizer, x, y)
  reference(x)  # one clean forward pass in train mode
  chex.assert_trees_all_close(
    _batch_stats(model), _batch_stats(reference), rtol=1e-6
  )


def test_grad_fn_reuses_the_clean_pass_dropout_mask():
  model = BNNet(nnx.Rngs(0), dropout=0.5)
  x, y = _batch()
  params = _pure(model)
  grad_fn = onnx.grad_fn(model, _loss, (x, y))
  clean = nnx.grad(_loss)(model, x, y)  # advances the dropout RNG
  # grad_fn was built before: same mask, so same gradient at the same params.
  chex.assert_trees_all_close(
    grad_fn(params), _pure(clean), rtol=1e-5, atol=1e-7
  )
  # A fresh grad_fn (new mask) gives another gradient.
  other = onnx.grad_fn(model, _loss, (x, y))(params)
  assert not np.allclose(other['l1']['kernel'], clean['l1']['kernel'][...])


@pytest.mark.parametrize(
  'tx',
  [
    optax.GradientTransformation(*optax.sgd(0.1)[:2]),  # plain, no extra args
    optax.adam(1e-2),
    optimflow.lion(1e-3),
    optimflow.asam(0.05),
  ],
)
def test_train_step_works_with_any_transformation(tx):
  model = BNNet(nnx.Rngs(0))
  x, y = _batch()
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  step = onnx.train_step(_loss)
  losses = [float(step(model, optimizer, x, y)) for _ in range(15)]
  assert losses[-1] < losses[0]


def test_ema_model_has_the_ema_parameters():
  model = BNNet(nnx.Rngs(0))
  x, y = _batch()
  optimizer = nnx.Optimizer(
    model, optimflow.sharpness.sgd_with_param_ema(0.1, decay=0.5), wrt=nnx.Param
  )
  before = _pure(model)
  onnx.train_step(_loss)(model, optimizer, x, y)
  teacher = onnx.ema_model(model, optimizer)
  expected = jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, before, _pure(model))
  chex.assert_trees_all_close(_pure(teacher), expected, rtol=1e-6)
  chex.assert_trees_all_equal(_batch_stats(teacher), _batch_stats(model))
  plain = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  with pytest.raises(ValueError, match=r'needs optimflow.param_ema'):
    onnx.ema_model(model, plain)


def test_saf_loss_records_the_forward_logits_and_uses_the_reference():
  model = BNNet(nnx.Rngs(0))
  x, y = _batch(8)
  ids = jnp.arange(8)[::-1]
  bank = optimflow.OutputBank.create(8, 3, e_tilde=1)
  coef = optimflow.saf_schedule(2.0, start=1)
  step = onnx.train_step(
    onnx.saf_loss(_ce, temperature=2.0, coefficient=coef), has_aux=True
  )
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  values, logits = [], []
  for epoch in range(3):
    probe = BNNet(nnx.Rngs(0))
    nnx.update(probe, nnx.state(model))
    logits.append(probe(x))  # the logits the step's forward pass sees
    value, bank = step(model, optimizer, x, y, ids, epoch, bank)
    np.testing.assert_allclose(
      bank.reference(ids, epoch + 1), logits[-1], rtol=1e-5, atol=1e-6
    )
    values.append(float(value))
  # Epochs 0, 1: coefficient 0 -> plain CE. Epoch 2: CE + 2 KL(epoch 1 ref).
  np.testing.assert_allclose(values[0], _ce(logits[0], y), rtol=1e-5)
  np.testing.assert_allclose(values[1], _ce(logits[1], y), rtol=1e-5)
  expected = _ce(logits[2], y) + 2.0 * optimflow.trajectory_kl(
    logits[2], logits[1], 2.0
  )
  np.testing.assert_allclose(values[2], expected, rtol=1e-5)


def test_saf_loss_checks_ids_under_jit_unless_told_not_to():
  model = BNNet(nnx.Rngs(0))
  x, y = _batch(4)
  bank = optimflow.OutputBank.create(6, 3, e_tilde=1)
  bad = jnp.array([0, 1, 2, 9])
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  checked = onnx.train_step(onnx.saf_loss(_ce), has_aux=True)
  with pytest.raises(Exception, match='out of the output bank range'):
    jax.block_until_ready(checked(model, optimizer, x, y, bad, 0, bank))
  unchecked = onnx.train_step(onnx.saf_loss(_ce, check_ids=False), has_aux=True)
  value, _ = unchecked(model, optimizer, x, y, bad, 0, bank)
  assert np.isfinite(float(value))


def test_train_step_donates_the_bank_when_told():
  model = BNNet(nnx.Rngs(0))
  x, y = _batch(4)
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  ids = jnp.arange(4)
  for donate, deleted in (((), False), (6, True)):
    step = onnx.train_step(
      onnx.saf_loss(_ce, check_ids=False), has_aux=True, donate_argnums=donate
    )
    bank = optimflow.OutputBank.create(4, 3, e_tilde=1)
    _, new_bank = step(model, optimizer, x, y, ids, 0, bank)
    assert bank.logits.is_deleted() == deleted
    assert not new_bank.logits.is_deleted()


def test_mesa_step_adds_the_kl_to_the_ema_teacher():
  model = BNNet(nnx.Rngs(0))
  x, y = _batch()
  optimizer = nnx.Optimizer(
    model, optimflow.sharpness.sgd_with_param_ema(0.1, decay=0.5), wrt=nnx.Param
  )
  step = onnx.mesa_train_step(
    _ce, temperature=3.0, coefficient=optimflow.saf_schedule(0.8, start=0)
  )
  step(model, optimizer, x, y, 0)  # epoch 0: no KL; teacher != student after
  teacher = onnx.ema_model(model, optimizer)
  probe = BNNet(nnx.Rngs(0))
  nnx.update(probe, nnx.state(model))
  t_logits = teacher(x)
  expected = _ce(probe(x), y) + 0.8 * optimflow.trajectory_kl(
    probe(x), t_logits, 3.0
  )
  value = step(model, optimizer, x, y, 1)
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  assert float(optimflow.trajectory_kl(probe(x), t_logits, 3.0)) > 0


def test_bad_temperature():
  with pytest.raises(ValueError, match='temperature=0'):
    onnx.saf_loss(_ce, temperature=0)
  with pytest.raises(ValueError, match='temperature=-1'):
    onnx.mesa_train_step(_ce, temperature=-1)
