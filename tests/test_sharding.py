"""Sharded parameters on 8 host devices (conftest.py sets the device count).

Every catalog entry over several steps on a 2x4 ('data', 'model') mesh, with
Explicit axes (sharding in types) and with Auto axes (``jax.jit`` in/out
shardings from :func:`optimflow.sharding.state_shardings`): same numbers as
on one device, parameter and state shardings unchanged, one compilation.
Then the matrix methods' sharded modes, the collectives of the stacked
Newton-Schulz read from the compiled HLO, and the layout helpers.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import optax
import pytest

import optimflow
from optimflow import catalog
from optimflow import linalg
from optimflow import sharding

pytestmark = pytest.mark.skipif(
  len(jax.devices()) < 8, reason='needs 8 host devices (set by conftest.py)'
)

STEPS = 3
TOL = dict(rtol=1e-5, atol=1e-5)
MATRIX_METHODS = ('muon', 'auon', 'hybrid_auon', 'swan')


def _mesh(axis_type):
  return jax.make_mesh((2, 4), ('data', 'model'), axis_types=(axis_type,) * 2)


def _tree(fn):
  """A small transformer-like tree: several same-shape hidden matrices."""
  return {
    'embed': fn((32, 16)),
    'blocks': [
      {
        'attn': {'kernel': fn((16, 16))},
        'up': {'kernel': fn((16, 32)), 'bias': fn((32,))},
        'down': {'kernel': fn((32, 16))},
      }
      for _ in range(2)
    ],
    'conv': {'kernel': fn((3, 3, 4, 8))},
    'ln': {'scale': fn((16,))},
    'head': {'kernel': fn((16, 8))},
    'scalar': fn(()),
  }


def _problem():
  leaves, treedef = jax.tree.flatten(
    _tree(lambda s: s), is_leaf=lambda s: isinstance(s, tuple)
  )
  keys = jax.random.split(jax.random.key(0), 2 * len(leaves))
  params = treedef.unflatten(
    [jax.random.normal(k, s) for k, s in zip(keys, leaves)]
  )
  target = treedef.unflatten(
    [jax.random.normal(k, s) for k, s in zip(keys[len(leaves) :], leaves)]
  )

  def loss(p):
    return sum(
      jnp.sum(jnp.square(a - b))
      for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target))
    )

  return params, loss


def _mixed_specs(params):
  """FSDP-style leaves (block 0) beside 2-D sharded ones (block 1)."""
  mesh = _mesh(AxisType.Explicit)
  specs = sharding.fsdp_specs(params, mesh)
  specs['blocks'][1] = {
    'attn': {'kernel': P('data', 'model')},
    'up': {'kernel': P('data', 'model'), 'bias': P('model')},
    'down': {'kernel': P('model', 'data')},
  }
  specs['conv'] = {'kernel': P(None, None, 'data', 'model')}
  specs['head'] = {'kernel': P(None, 'data')}
  return specs


def _stepper(tx, loss, extra):
  def step(params, state):
    g = jax.grad(loss)(params)
    u, state = tx.update(g, state, params, **extra)
    return optax.apply_updates(params, u), state

  return step


def _extra(entry, loss):
  return {'grad_fn': jax.grad(loss)} if 'grad_fn' in entry.needs else {}


def _single(tx, params, loss, extra):
  step = jax.jit(_stepper(tx, loss, extra))
  state = tx.init(params)
  for _ in range(STEPS):
    params, state = step(params, state)
  return params, state


def _types(tree):
  return jax.tree.map(jax.typeof, tree)


def _run_explicit(tx, params, loss, extra, specs):
  """STEPS jitted steps on the Explicit mesh; checks types and compilation."""
  mesh = _mesh(AxisType.Explicit)
  with jax.set_mesh(mesh):
    params = jax.device_put(params, sharding.named(mesh, specs))
    state = jax.jit(tx.init)(params)  # every leaf placed on the mesh
    p_types, s_types = _types(params), _types(state)
    step = jax.jit(_stepper(tx, loss, extra))
    for _ in range(STEPS):
      params, state = step(params, state)
      assert _types(params) == p_types
      assert _types(state) == s_types
    assert step._cache_size() == 1
  return params, state


def _run_auto(tx, params, loss, extra, specs):
  """STEPS steps under Auto axes, jit shardings from state_shardings."""
  mesh = _mesh(AxisType.Auto)
  p_sh = sharding.named(mesh, specs)
  s_sh = sharding.state_shardings(tx, params, p_sh)
  params = jax.device_put(params, p_sh)
  state = jax.jit(tx.init, out_shardings=s_sh)(params)
  step = jax.jit(
    _stepper(tx, loss, extra),
    in_shardings=(p_sh, s_sh),
    out_shardings=(p_sh, s_sh),
  )
  for _ in range(STEPS):
    params, state = step(params, state)
  for tree, shardings in ((params, p_sh), (state, s_sh)):
    assert all(
      jax.tree.leaves(
        jax.tree.map(
          lambda x, s: x.sharding.is_equivalent_to(s, x.ndim), tree, shardings
        )
      )
    )
  assert step._cache_size() == 1
  return params, state


# --------------------------------------------------------------------------
# Every catalog entry.


ENTRIES = [pytest.param(e, id=e.name) for e in catalog.METHODS]


def _check_against_single(entry, run, specs_fn, **overrides):
  """``run`` (sharded) ends where the single-device run does."""
  params, loss = _problem()
  extra = _extra(entry, loss)
  want = _single(entry.factory(**entry.test_kwargs), params, loss, extra)
  tx = entry.factory(**{**entry.test_kwargs, **overrides})
  got = run(tx, params, loss, extra, specs_fn(params))
  chex.assert_trees_all_close(jax.device_get(got), jax.device_get(want), **TOL)


@pytest.mark.parametrize('entry', ENTRIES)
def test_catalog_explicit_mesh_several_steps(entry):
  _check_against_single(entry, _run_explicit, _mixed_specs)


@pytest.mark.parametrize('entry', ENTRIES)
def test_catalog_auto_mesh_fsdp(entry):
  _check_against_single(
    entry, _run_auto, lambda p: sharding.fsdp_specs(p, _mesh(AxisType.Auto))
  )


@pytest.mark.parametrize('entry', ENTRIES)
def test_state_shardings_match_explicit_init(entry):
  """The helper's state shardings are what Explicit-axes ``init`` produces."""
  params, _ = _problem()
  tx = entry.factory(**entry.test_kwargs)
  mesh = _mesh(AxisType.Explicit)
  specs = _mixed_specs(params)
  with jax.set_mesh(mesh):
    sharded = jax.device_put(params, sharding.named(mesh, specs))
    expected = jax.tree.map(lambda t: t.sharding.spec, _types(tx.init(sharded)))
    got = sharding.state_shardings(tx, sharded)
  assert jax.tree.map(lambda s: s.spec, got) == expected


# --------------------------------------------------------------------------
# Sharded modes of the matrix methods.


@pytest.mark.parametrize('name', MATRIX_METHODS)
def test_stacked_mode_equals_single_device(name):
  _check_against_single(
    catalog.get(name), _run_explicit, _mixed_specs, sharding='stacked'
  )


@pytest.mark.parametrize('name', MATRIX_METHODS)
def test_stacked_mode_auto_axes_with_specs(name):
  mesh = _mesh(AxisType.Auto)
  specs = sharding.fsdp_specs(_problem()[0], mesh)
  mode = sharding.MatrixSharding('stacked', mesh=mesh, specs=specs)
  _check_against_single(
    catalog.get(name), _run_auto, lambda _: specs, sharding=mode
  )


@pytest.mark.parametrize(
  'mode',
  ['gather', 'local', sharding.MatrixSharding('stacked', axes=('model',))],
)
def test_other_modes_equal_single_device(mode):
  _check_against_single(
    catalog.get('muon'), _run_explicit, _mixed_specs, sharding=mode
  )


def test_stacked_mode_data_parallel_and_inject_hyperparams():
  """Replicated parameters; hyperparameters traced inside ``shard_map``."""
  params, loss = _problem()
  kwargs = dict(learning_rate=1e-2, beta=0.9, ns_coeffs=(3.4, -4.7, 2.0))
  want = _single(optimflow.muon(**kwargs), params, loss, {})
  static = catalog.get('muon').static_args
  tx = optax.inject_hyperparams(optimflow.muon, static_args=static)(
    **kwargs, sharding='stacked'
  )
  got = _run_explicit(tx, params, loss, {}, sharding.replicated_specs(params))
  chex.assert_trees_all_close(
    jax.device_get(got[0]), jax.device_get(want[0]), **TOL
  )


@pytest.mark.parametrize(
  'count,axes',
  [(1, ()), (3, ('model',)), (6, ('data', 'model')), (16, ('data', 'model'))],
)
def test_group_smaller_than_mesh(count, axes):
  """Groups below the device count use fewer axes (padding), one matrix is
  gathered; the numbers never change."""
  assert (
    sharding.matrix._stack_axes(
      count, {'data': 2, 'model': 4}, ('data', 'model')
    )
    == axes
  )
  keys = jax.random.split(jax.random.key(3), count)
  tree = [jax.random.normal(k, (16, 32)) for k in keys]
  fn = lambda x: linalg.orthogonalize(x, 3)
  want = linalg.map_matrices(fn, tree)
  mesh = _mesh(AxisType.Explicit)
  with jax.set_mesh(mesh):
    sharded = jax.device_put(tree, NamedSharding(mesh, P('data', 'model')))
    f = jax.jit(
      lambda t: linalg.map_matrices(
        fn, t, sharding=sharding.MatrixSharding('stacked')
      )
    )
    got = f(sharded)
    assert _types(got) == _types(sharded)
    counts = sharding.collective_counts(f.lower(sharded).compile())
  chex.assert_trees_all_close(jax.device_get(got), want, **TOL)
  if axes:
    assert counts['all-to-all'] > 0
  else:
    assert counts['all-to-all'] == 0 and counts['all-gather'] > 0


def test_single_device_unchanged():
  """Without a mesh every mode is the plain batched computation."""
  tree = {
    'a': jnp.arange(12.0).reshape(3, 4),
    'b': jnp.ones((4, 3)),
    'c': jnp.eye(3),
  }
  fn = lambda x: linalg.orthogonalize(x, 2)
  want = linalg.map_matrices(fn, tree)
  for mode in ('stacked', 'gather', 'local'):
    chex.assert_trees_all_equal(
      linalg.map_matrices(fn, tree, sharding=sharding.MatrixSharding(mode)),
      want,
    )


def test_unknown_stack_axes():
  mesh = _mesh(AxisType.Explicit)
  with jax.set_mesh(mesh):
    tree = jax.device_put(
      [jnp.ones((8, 8))] * 2, NamedSharding(mesh, P('data', 'model'))
    )
    with pytest.raises(ValueError, match=r"\['expert'\] are not axes"):
      linalg.map_matrices(
        lambda x: x, tree, sharding=sharding.MatrixSharding(axes=('expert',))
      )


# --------------------------------------------------------------------------
# Collectives of the stacked Newton-Schulz, from the compiled HLO.


def _compiled_muon(mode, spec, ns_steps=5, count=16, shape=(64, 64)):
  mesh = _mesh(AxisType.Explicit)
  tx = optimflow.scale_by_muon(ns_steps=ns_steps, sharding=mode)
  keys = jax.random.split(jax.random.key(5), count)
  tree = {f'w{i}': jax.random.normal(k, shape) for i, k in enumerate(keys)}
  with jax.set_mesh(mesh):
    tree = jax.device_put(tree, NamedSharding(mesh, spec))
    return jax.jit(tx.update).lower(tree, tx.init(tree)).compile()


@pytest.mark.parametrize(
  'spec,sharded_dims',
  [(P('data', 'model'), 2), (P(('data', 'model')), 1)],
  ids=['2d', 'fsdp'],
)
def test_stacked_collectives(spec, sharded_dims):
  stacked = _compiled_muon('stacked', spec)
  counts = sharding.collective_counts(stacked, executed=True)
  assert sharding.collective_counts(stacked) == counts  # none in a loop
  # One all-to-all per sharded matrix dimension, in and out; nothing inside
  # the iteration.
  assert counts['all-to-all'] == 2 * sharded_dims
  assert counts['all-gather'] == counts['all-reduce'] == 0
  assert counts['collective-permute'] == counts['reduce-scatter'] == 0
  # The same ops for 1 or 5 Newton-Schulz steps.
  assert (
    sharding.collective_counts(_compiled_muon('stacked', spec, 1)) == counts
  )
  moved = sum(sharding.collective_bytes(stacked, executed=True).values())
  for naive in (None, 'local'):
    naive_bytes = sum(
      sharding.collective_bytes(
        _compiled_muon(naive, spec), executed=True
      ).values()
    )
    assert moved < naive_bytes / 2, (naive, moved, naive_bytes)


def test_gspmd_partitions_the_iteration():
  """Left to the compiler ('local', optax's way), Newton-Schulz on 2-D
  sharded matrices all-reduces partial products: the cost the stacked mode
  avoids."""
  compiled = _compiled_muon('local', P('data', 'model'))
  per_run = sharding.collective_counts(compiled, executed=True)
  assert per_run['all-reduce'] >= 5  # at least once per Newton-Schulz step
  assert (
    per_run['all-reduce'] > sharding.collective_counts(compiled)['all-reduce']
  )


def test_collective_counts_parse_async_and_tuples():
  hlo = """
  %ag-start = (f32[2,4]{1,0}, f32[16,4]{1,0}) all-gather-start(%p), dims={0}
  %ag-done = f32[16,4]{1,0} all-gather-done(%ag-start)
  %ar = (f32[4]{0}, /*index=1*/bf16[8]{0}) all-reduce(%a, %b), to_apply=%add
  ROOT %a2a = f32[8,2]{1,0} all-to-all(%c), dimensions={0}
  %cp = f32[3]{0} collective-permute(%d), source_target_pairs={{0,1}}
  %f = f32[3]{0} fusion(%all-reduce.1), kind=kLoop
  """
  assert sharding.collective_counts(hlo) == {
    'all-gather': 1,
    'all-reduce': 1,
    'all-to-all': 1,
    'collective-permute': 1,
    'reduce-scatter': 0,
  }
  assert sharding.collective_bytes(hlo) == {
    'all-gather': 256,
    'all-reduce': 32,
    'all-to-all': 64,
    'collective-permute': 12,
    'reduce-scatter': 0,
  }


# --------------------------------------------------------------------------
# Layout helpers and bad input.


def test_fsdp_specs():
  mesh = _mesh(AxisType.Explicit)
  tree = {
    'a': jnp.ones((8, 24)),
    'b': jnp.ones((3, 5)),
    'c': jnp.ones(()),
    'd': jnp.ones((16, 16)),
    'e': jnp.ones((4, 6)),
  }
  specs = sharding.fsdp_specs(tree, mesh)
  assert specs == {
    'a': P(None, ('data', 'model')),
    'b': P(None, None),
    'c': P(),
    'd': P(('data', 'model'), None),
    'e': P(None, None),
  }
  assert sharding.fsdp_specs(tree, mesh, 'model')['e'] == P('model', None)
  assert sharding.fsdp_specs(tree, mesh, min_size=200)['a'] == P(None, None)
  with pytest.raises(ValueError, match="axes=.*'expert'"):
    sharding.fsdp_specs(tree, mesh, ('expert',))


def test_state_shardings_masked_and_missing_mesh():
  mesh = _mesh(AxisType.Auto)
  params = {'w': jnp.ones((8, 4)), 'b': jnp.ones(4)}
  tx = optax.chain(
    optax.masked(optax.adam(1e-3), {'w': True, 'b': False}),
    optax.add_decayed_weights(1e-4),
  )
  specs = {'w': P('data', None), 'b': P('model')}
  sh = sharding.state_shardings(tx, params, sharding.named(mesh, specs))
  assert sh[0].inner_state[0].mu['w'].spec == P('data', None)
  assert sh[0].inner_state[0].count.spec == P()
  with pytest.raises(ValueError, match='param_shardings has 1 leaves'):
    sharding.state_shardings(tx, params, [NamedSharding(mesh, P())])


@pytest.mark.parametrize(
  'factory',
  [optimflow.muon, optimflow.auon, optimflow.hybrid_auon, optimflow.swan],
)
def test_bad_sharding_argument(factory):
  with pytest.raises(ValueError, match="sharding='fsdp' is not supported"):
    factory(1e-2, sharding='fsdp')
  with pytest.raises(ValueError, match="mode='all' is not supported"):
    sharding.MatrixSharding('all')
