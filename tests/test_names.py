"""One name per method; optimizer names descend; old names still work.

Issue 13 (one name everywhere, common arguments in the same order, old names
deprecated for one release) and issue 19 point 2 (``optimflow.sam`` climbed:
a name that reads as an optimizer takes ``learning_rate`` and descends).
"""

import inspect
import warnings

import jax
import jax.numpy as jnp
import optax
import pytest

import optimflow
from optimflow import catalog


def _loss(w):
  return jnp.sum((w - 3.0) ** 2)


def _run(tx, steps=60):
  w = jnp.zeros(4)
  state = tx.init(w)
  losses = [float(_loss(w))]
  for _ in range(steps):
    u, state = tx.update(jax.grad(_loss)(w), state, w, grad_fn=jax.grad(_loss))
    w = optax.apply_updates(w, u)
    losses.append(float(_loss(w)))
  return losses


@pytest.mark.parametrize('entry', catalog.METHODS, ids=catalog.names())
def test_catalog_name_is_the_public_factory(entry):
  assert entry.factory.__name__ == entry.name
  assert getattr(optimflow, entry.name) is entry.factory
  assert 'learning_rate' == next(
    iter(inspect.signature(entry.factory).parameters)
  )


@pytest.mark.parametrize(
  'make',
  [
    lambda: optimflow.sam(learning_rate=0.05),
    lambda: optimflow.sam(0.05, rho=0.1),
    lambda: optimflow.asam(learning_rate=0.05),
    lambda: optimflow.sgd_with_param_ema(learning_rate=0.05),
  ],
  ids=['sam-keyword', 'sam-positional', 'asam', 'sgd_with_param_ema'],
)
def test_optimizer_names_descend_on_a_parabola(make):
  # Before the rename optimflow.sam(0.05) was the gradient-emitting block and
  # climbed 27 -> 246 -> 2225 -> 20049 here; sam(learning_rate=...) was a
  # TypeError. Loss 36 at w = 0; SGD+momentum with lr 0.05 contracts it
  # (momentum 0.9 oscillates, so the loss is not monotone).
  losses = _run(make())
  assert losses[-1] < 1e-2 * losses[0]
  assert losses[10] < losses[0]


def test_building_blocks_say_they_emit_a_gradient():
  for block in (optimflow.scale_by_sam, optimflow.scale_by_asam):
    assert 'not a descent method' in block.__doc__
  # followed by an optimizer, the block is SAM
  tx = optax.chain(optimflow.scale_by_sam(0.05), optax.sgd(0.05, momentum=0.9))
  ref = optimflow.sam(0.05, rho=0.05, momentum=0.9)
  assert _run(tx, 5) == pytest.approx(_run(ref, 5), rel=1e-6)


@pytest.mark.parametrize('old,new', [('sam_sgd', 'sam'), ('asam_sgd', 'asam')])
def test_old_factory_names_warn_and_resolve(old, new):
  with pytest.warns(DeprecationWarning, match=f'optimflow.{new}'):
    factory = getattr(optimflow, old)
  assert factory is getattr(optimflow, new)


def test_old_catalog_name_warns_and_resolves():
  with pytest.warns(DeprecationWarning, match='sgd_with_param_ema'):
    entry = catalog.get('param_ema')
  assert entry is catalog.get('sgd_with_param_ema')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    catalog.get('sam')  # current names do not warn


def test_unknown_attribute_is_an_attribute_error():
  with pytest.raises(AttributeError, match='no attribute'):
    optimflow.no_such_method  # noqa: B018


def test_nnx_is_reachable_from_the_package():
  # the sam error message recommends optimflow.nnx.grad_fn
  assert callable(optimflow.nnx.grad_fn)
  assert callable(optimflow.nnx.train_step)


def _common_order(a, b):
  pa = list(inspect.signature(a).parameters)
  pb = list(inspect.signature(b).parameters)
  common = [p for p in pa if p in pb]
  return common, [p for p in pb if p in pa]


@pytest.mark.parametrize(
  'a,b',
  [
    (optimflow.auon, optimflow.hybrid_auon),
    (optimflow.muon, optimflow.auon),
    (optimflow.muon, optimflow.swan),
    (optimflow.scale_by_muon, optimflow.scale_by_auon),
    (optimflow.adamp, optimflow.sgdp),
    (optimflow.lion, optimflow.lion_kappa),
    (optimflow.sam, optimflow.asam),
    (optimflow.scale_by_sam, optimflow.scale_by_asam),
  ],
  ids=lambda f: f.__name__,
)
def test_a_family_takes_its_common_arguments_in_one_order(a, b):
  order_a, order_b = _common_order(a, b)
  assert order_a == order_b
