"""Tests of optimflow.lab.tasks: digits data and models, synthetic problems, fit."""

import json

import chex
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optimflow
from optimflow.lab import tasks


@pytest.fixture(scope='module')
def data():
  return tasks.load_digits(seed=0)


def test_digits_shapes_and_ranges(data):
  n_train, n_test = len(data.y_train), len(data.y_test)
  assert n_train + n_test == 1797
  assert n_test == pytest.approx(0.25 * 1797, abs=1)
  chex.assert_shape(data.x_train, (n_train, 8, 8, 1))
  chex.assert_shape(data.x_test, (n_test, 8, 8, 1))
  assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
  assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
  np.testing.assert_array_equal(data.ids_train, np.arange(n_train))
  assert data.ids_train.dtype == np.int32


def test_digits_split_is_stratified_and_seeded(data):
  again = tasks.load_digits(seed=0)
  for a, b in zip(data, again):
    np.testing.assert_array_equal(a, b)
  other = tasks.load_digits(seed=1)
  assert not np.array_equal(data.y_train, other.y_train)
  train_freq = np.bincount(data.y_train, minlength=10) / len(data.y_train)
  test_freq = np.bincount(data.y_test, minlength=10) / len(data.y_test)
  np.testing.assert_allclose(train_freq, test_freq, atol=0.01)


@pytest.mark.parametrize('bad', [0.0, 1.0, -0.1, float('nan')])
def test_digits_rejects_bad_fraction(bad):
  with pytest.raises(ValueError, match='test_fraction'):
    tasks.load_digits(test_fraction=bad)


def test_mlp_forward_shape(data):
  model = tasks.MLP((32, 16), num_classes=7, rngs=nnx.Rngs(0))
  chex.assert_shape(model(data.x_test[:5]), (5, 7))
  assert [l.kernel.shape for l in model.layers] == [(64, 32), (32, 16)]


def test_cnn_forward_shape_and_modes(data):
  model = tasks.CNN((4, 8), rngs=nnx.Rngs(0))
  x = jnp.asarray(data.x_train[:16])
  chex.assert_shape(model(x), (16, 10))
  model.eval()  # fresh running stats (mean 0, var 1) differ from batch stats
  eval_out = model(x)
  model.train()
  assert not np.allclose(eval_out, model(x), atol=1e-3)


def test_cnn_conv_kernels_are_scale_invariant(data):
  model = tasks.CNN(rngs=nnx.Rngs(0))
  x = jnp.asarray(data.x_train[:32])
  model.train()
  before = model(x)
  for conv in model.convs:
    conv.kernel[...] = 3.7 * conv.kernel[...]
  chex.assert_trees_all_close(model(x), before, atol=1e-4)
  assert all(conv.bias is None for conv in model.convs)


def test_loss_and_accuracy_helpers():
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [5.0, 0.0]])
  labels = jnp.array([0, 0, 0])
  expected = np.mean(
    [np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0)), np.log1p(np.exp(-5.0))]
  )
  np.testing.assert_allclose(
    tasks.cross_entropy(logits, labels), expected, rtol=1e-6
  )
  np.testing.assert_allclose(tasks.accuracy(logits, labels), 2 / 3)


def test_synthetic_problems_optima():
  for problem in (tasks.quadratic(20), tasks.rosenbrock(), tasks.rastrigin()):
    grad = jax.grad(problem.loss)(problem.optimum)
    chex.assert_trees_all_close(grad, jnp.zeros_like(grad), atol=1e-5)
    chex.assert_equal_shape([problem.init, problem.optimum])
  assert float(tasks.rosenbrock().loss(tasks.rosenbrock().init)) > 1
  assert float(tasks.rastrigin().optimal_value) == pytest.approx(0.0, abs=1e-6)


def test_box_problem():
  problem = tasks.box(dim=200, radius=0.5, seed=3)
  c = problem.center
  assert float(jnp.abs(c).max()) > 1.0  # some coordinates outside the box
  chex.assert_trees_all_close(problem.optimum, jnp.clip(c, -0.5, 0.5))
  # The box solution is optimal over the box: the projected gradient vanishes.
  x = problem.optimum
  step = jnp.clip(x - 1e-2 * jax.grad(problem.loss)(x), -0.5, 0.5)
  chex.assert_trees_all_close(step, x, atol=1e-6)
  with pytest.raises(ValueError, match='radius'):
    tasks.box(radius=0.0)


def test_batches_cover_each_epoch_once():
  got = list(tasks.batches(10, 3, 7, seed=4))
  assert len(got) == 7 and all(len(b) == 3 for b in got)
  first_epoch = np.concatenate(got[:3])
  assert len(set(first_epoch.tolist())) == 9  # no repeats inside an epoch


def _run(data, seed=0, tx=None, steps=40, **kwargs):
  model = tasks.MLP((64,), rngs=nnx.Rngs(0))
  tx = tx or optax.adam(3e-3)
  return tasks.fit(
    model,
    tx,
    data,
    steps=steps,
    batch_size=64,
    seed=seed,
    progress=False,
    **kwargs,
  )


def test_fit_decreases_loss_and_records(data):
  calls = []

  def eval_fn(model):
    calls.append(model.head.kernel.shape)
    return {'head_norm': jnp.linalg.norm(model.head.kernel[...])}

  hist = _run(data, eval_every=10, eval_fn=eval_fn)
  assert calls == [(64, 10)] * 4 and len(hist.eval_extra['head_norm']) == 4
  assert hist.train_loss[:5].mean() > 2 * hist.train_loss[-5:].mean()
  assert hist.final['test_accuracy'] > 0.8
  np.testing.assert_array_equal(hist.eval_steps, [10, 20, 30, 40])
  assert hist.test_accuracy[-1] == hist.final['test_accuracy']
  assert hist.test_loss[-1] < hist.test_loss[0]
  assert hist.grad_evals_per_step == 1
  # Adam: count + two moments of 64*64+64 + 64*10+10 parameters.
  n = 64 * 64 + 64 + 64 * 10 + 10
  assert hist.opt_state_bytes == 2 * 4 * n + 4
  assert len(hist.step_time_s) == 40 and np.all(hist.step_time_s > 0)
  assert np.isfinite(hist.ms_per_step)
  json.dumps(hist.to_dict())
  assert hist.smoothed_train_loss()[0] == pytest.approx(hist.train_loss[0])


def test_fit_is_deterministic_given_seed(data):
  a, b = _run(data, seed=3), _run(data, seed=3)
  np.testing.assert_array_equal(a.train_loss, b.train_loss)
  assert a.final == b.final
  c = _run(data, seed=4)
  assert not np.array_equal(a.train_loss, c.train_loss)


def test_fit_lion_state_is_half_of_adam(data):
  lion = _run(data, tx=optimflow.lion(1e-3, weight_decay=1e-2), steps=5)
  adam = _run(data, tx=optax.adam(1e-3), steps=5)
  assert 2 * (lion.opt_state_bytes - 4) == adam.opt_state_bytes - 4


def _ascent_then_grad(rho=0.05):
  """A minimal SAM: gradient at params + rho g / ||g||, via grad_fn."""

  def init(params):
    del params
    return optax.EmptyState()

  def update(grads, state, params=None, *, grad_fn, **extra):
    del extra
    norm = optax.tree.norm(grads)
    perturbed = jax.tree.map(
      lambda p, g: p + rho * g / (norm + 1e-12), params, grads
    )
    return grad_fn(perturbed), state

  return optax.GradientTransformationExtraArgs(init, update)


def test_params_grad_fn_matches_nnx_grad_and_keeps_batch_stats(data):
  model = tasks.CNN((4, 8), rngs=nnx.Rngs(1))
  x, y = jnp.asarray(data.x_train[:32]), jnp.asarray(data.y_train[:32])
  stats_before = nnx.state(model, nnx.BatchStat)
  grad_fn = tasks.grad_fn_builder()(model, (x, y))
  got = grad_fn(nnx.as_pure(nnx.state(model, nnx.Param)))
  chex.assert_trees_all_equal(nnx.state(model, nnx.BatchStat), stats_before)
  want = nnx.as_pure(nnx.state(nnx.grad(tasks.loss_fn)(model, x, y), nnx.Param))
  chex.assert_trees_all_close(got, want, atol=1e-6)


def test_fit_passes_grad_fn_to_extra_args_methods(data):
  tx = optax.chain(_ascent_then_grad(0.05), optax.adam(3e-3))
  hist = _run(data, tx=tx, steps=30, grad_fn_builder=tasks.grad_fn_builder())
  assert hist.grad_evals_per_step == 2
  assert hist.train_loss[-5:].mean() < hist.train_loss[:5].mean()
  with pytest.raises(TypeError, match='grad_fn'):
    _run(data, tx=tx, steps=2)


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(steps=0), 'steps'),
    (dict(steps=5, batch_size=0), 'batch_size'),
    (dict(steps=5, eval_every=0), 'eval_every'),
  ],
)
def test_fit_rejects_bad_arguments(data, kwargs, match):
  model = tasks.MLP((8,), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=match):
    tasks.fit(model, optax.sgd(0.1), data, progress=False, **kwargs)


def test_format_table_aligns_columns():
  text = tasks.format_table([{'a': 'xyz', 'b': 1.23456}, {'a': 'q', 'b': 2}])
  lines = text.splitlines()
  assert lines[0] == 'a    b' and lines[1] == '---  -----'
  assert lines[2] == 'xyz  1.235' and lines[3] == 'q    2'
  assert tasks.format_table([]) == ''
