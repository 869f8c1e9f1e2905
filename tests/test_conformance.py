"""The conformance suite: every catalog entry against optax's own properties.

A method gets all of these checks by adding one entry to
``optimflow/catalog.py``. ``test_kwargs`` of the entry set the hyperparameters
for the toy problems; ``variants`` add extra configurations.
"""

from __future__ import annotations

import functools
import inspect
import math

import chex
from flax import serialization
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import optax
import pytest

from optimflow import catalog

# --------------------------------------------------------------------------
# Configurations: (entry, variant) pairs.


def _variant_id(variant) -> str:
  return ','.join(f'{k}={v}' for k, v in variant.items())


CONFIGS = []
for _entry in catalog.METHODS:
  for _variant in ({}, *_entry.variants):
    _id = _entry.name + (f'[{_variant_id(_variant)}]' if _variant else '')
    CONFIGS.append(pytest.param(_entry, _variant, id=_id))


def _kwargs(entry, variant, **overrides):
  return {**entry.test_kwargs, **variant, **overrides}


def _build(entry, variant, **overrides):
  return entry.factory(**_kwargs(entry, variant, **overrides))


def _extra(entry, loss):
  """Extra keyword arguments ``update`` needs (e.g. SAM's ``grad_fn``)."""
  extra = {}
  if 'grad_fn' in entry.needs:
    extra['grad_fn'] = jax.grad(loss)
  return extra


# --------------------------------------------------------------------------
# Problems.


def _parabola():
  target = jnp.array([1.0, -1.0, 1.0])
  loss = lambda p: jnp.sum((p['x'] - target) ** 2)
  return {'x': jnp.array([-1.0, 10.0, 1.0])}, {'x': target}, loss


def _rosenbrock():
  def loss(p):
    x, y = p['xy'][0], p['xy'][1]
    return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2

  return {'xy': jnp.zeros(2)}, {'xy': jnp.ones(2)}, loss


def _matrix_parabola():
  key_w, key_b = jax.random.split(jax.random.key(0))
  target = {
    'w': jax.random.normal(key_w, (4, 3)) * 0.5,
    'b': jax.random.normal(key_b, (3,)) * 0.5,
  }
  loss = lambda p: sum(
    jnp.sum((a - b) ** 2)
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target))
  )
  return jax.tree.map(jnp.zeros_like, target), target, loss


def _mixed(dtype=jnp.float32, *, zero_params=False, at_target=False):
  """A tree with Dense and Conv kernels, a bias and a scalar leaf."""
  keys = jax.random.split(jax.random.key(1), 8)
  shapes = {
    'dense': {'kernel': (8, 4), 'bias': (4,)},
    'conv': {'kernel': (3, 3, 2, 4)},
    'scale': (),
  }
  leaves, treedef = jax.tree.flatten(
    shapes, is_leaf=lambda s: isinstance(s, tuple)
  )
  params = treedef.unflatten(
    [jax.random.normal(k, s, dtype) for k, s in zip(keys, leaves)]
  )
  target = treedef.unflatten(
    [jax.random.normal(k, s, dtype) for k, s in zip(keys[4:], leaves)]
  )
  if zero_params:
    params = jax.tree.map(jnp.zeros_like, params)
  if at_target:
    params = target

  def loss(p):
    return sum(
      jnp.sum((a.astype(jnp.float32) - b.astype(jnp.float32)) ** 2)
      for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(target))
    )

  return params, loss


def _run(tx, params, loss, steps, extra_fn=None):
  """``steps`` jitted optimizer steps under ``lax.scan``; returns params."""
  extra = extra_fn or (lambda: {})

  def step(carry, _):
    p, s = carry
    g = jax.grad(loss)(p)
    u, s = tx.update(g, s, p, **extra())
    return (optax.apply_updates(p, u), s), None

  @jax.jit
  def run(p):
    (p, _), _ = jax.lax.scan(step, (p, tx.init(p)), length=steps)
    return p

  return run(params)


def _steps(tx, params, loss, entry, n, state=None):
  """``n`` eager steps; returns the list of (updates, state)."""
  state = tx.init(params) if state is None else state
  out = []
  for _ in range(n):
    g = jax.grad(loss)(params)
    u, state = tx.update(g, state, params, **_extra(entry, loss))
    params = optax.apply_updates(params, u)
    out.append((u, state))
  return out


# --------------------------------------------------------------------------
# Convergence.


@pytest.mark.parametrize('problem', [_parabola, _rosenbrock, _matrix_parabola])
@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_converges(entry, variant, problem):
  params, solution, loss = problem()
  tx = _build(entry, variant)
  final = _run(tx, params, loss, 10_000, lambda: _extra(entry, loss))
  chex.assert_tree_all_finite(final)
  chex.assert_trees_all_close(final, solution, rtol=3e-2, atol=3e-2)


# --------------------------------------------------------------------------
# Tracing, compilation and composition.


@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_jit_equals_eager(entry, variant):
  params, loss = _mixed()
  tx = _build(entry, variant)
  state = tx.init(params)
  g = jax.grad(loss)(params)
  extra = _extra(entry, loss)
  eager = tx.update(g, state, params, **extra)
  jitted = jax.jit(functools.partial(tx.update, **extra))(g, state, params)
  chex.assert_trees_all_close(eager, jitted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_no_recompilation(entry, variant):
  params, loss = _mixed()
  tx = _build(entry, variant)
  extra = _extra(entry, loss)
  update = jax.jit(functools.partial(tx.update, **extra))
  state = tx.init(params)
  g = jax.grad(loss)(params)
  _, state = update(g, state, params)
  _, state = update(g, state, params)
  _, state = update(g, state, params)
  assert update._cache_size() == 1


@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_unknown_extra_args_ignored(entry, variant):
  params, loss = _mixed()
  tx = _build(entry, variant)
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  extra = _extra(entry, loss)
  g = jax.grad(loss)(params)

  @jax.jit
  def update(g, s, p):
    return tx.update(g, s, p, unexpected_extra_arg_nobody_knows=1, **extra)

  u, _ = update(g, tx.init(params), params)
  chex.assert_trees_all_close(
    u, tx.update(g, tx.init(params), params, **extra)[0], rtol=1e-5, atol=1e-6
  )


@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_inject_hyperparams(entry, variant):
  params, loss = _mixed()
  kwargs = _kwargs(entry, variant)
  tx = entry.factory(**kwargs)
  wrapped = optax.inject_hyperparams(
    entry.factory, static_args=entry.static_args
  )(**kwargs)
  plain = _steps(tx, params, loss, entry, 3)
  injected = _steps(wrapped, params, loss, entry, 3)
  # Injected hyperparameters are float32 arrays: b2 = 0.999 becomes
  # 0.99900001, which moves 1 - b2 by 1.3e-5 relative; hence rtol 1e-4.
  for (u1, _), (u2, _) in zip(plain, injected):
    chex.assert_trees_all_close(u1, u2, rtol=1e-4, atol=1e-7)
  chex.assert_trees_all_close(
    plain[-1][1], injected[-1][1].inner_state, rtol=1e-4, atol=1e-7
  )


@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_schedule_as_learning_rate(entry, variant):
  if 'learning_rate' not in inspect.signature(entry.factory).parameters:
    pytest.skip('no learning_rate argument')
  params, loss = _mixed()
  lr = _kwargs(entry, variant)['learning_rate']
  constant = _steps(_build(entry, variant), params, loss, entry, 3)
  scheduled = _steps(
    _build(entry, variant, learning_rate=optax.constant_schedule(lr)),
    params,
    loss,
    entry,
    3,
  )
  for (u1, _), (u2, _) in zip(constant, scheduled):
    chex.assert_trees_all_close(u1, u2, rtol=1e-6, atol=0)
  # A decaying schedule changes the step size.
  decayed = _steps(
    _build(entry, variant, learning_rate=optax.linear_schedule(lr, 0.0, 2)),
    params,
    loss,
    entry,
    3,
  )
  chex.assert_trees_all_close(
    decayed[-1][0], jax.tree.map(jnp.zeros_like, decayed[-1][0]), atol=0
  )


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_preserves_dtype(entry, variant, dtype):
  params, loss = _mixed(dtype)
  tx = _build(entry, variant)
  g = jax.tree.map(lambda x: x.astype(dtype), jax.grad(loss)(params))
  state = tx.init(params)
  for _ in range(2):
    u, state = jax.jit(functools.partial(tx.update, **_extra(entry, loss)))(
      g, state, params
    )
  chex.assert_trees_all_equal_dtypes(u, g)
  chex.assert_trees_all_equal_shapes(u, g)
  chex.assert_tree_all_finite(u)


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_state_stable_under_cond(entry, variant, dtype):
  params, loss = _mixed(dtype)
  tx = _build(entry, variant)
  g = jax.tree.map(lambda x: x.astype(dtype), jax.grad(loss)(params))
  extra = _extra(entry, loss)

  @jax.jit
  def maybe_update(pred, state):
    return jax.lax.cond(
      pred, lambda s: tx.update(g, s, params, **extra)[1], lambda s: s, state
    )

  state = tx.init(params)
  new = maybe_update(True, state)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, new)


@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_multi_steps(entry, variant):
  params, loss = _mixed()
  tx = _build(entry, variant)
  multi = optax.MultiSteps(tx, every_k_schedule=4)
  extra = _extra(entry, loss)
  keys = jax.random.split(jax.random.key(2), 4)
  grads = [
    jax.tree.map(lambda x, k=k: jax.random.normal(k, x.shape), params)
    for k in keys
  ]
  state = multi.init(params)
  update = jax.jit(functools.partial(multi.update, **extra))
  for i, g in enumerate(grads):
    u, state = update(g, state, params)
    if i < 3:
      chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, u))
  mean = jax.tree.map(lambda *g: sum(g) / 4, *grads)
  expected, _ = tx.update(mean, tx.init(params), params, **extra)
  chex.assert_trees_all_close(u, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_init_accepts_shape_dtype_struct(entry, variant):
  params, _ = _mixed()
  tx = _build(entry, variant)
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params
  )
  expected = jax.eval_shape(tx.init, params)
  got = jax.eval_shape(tx.init, abstract)
  chex.assert_trees_all_equal_shapes_and_dtypes(expected, got)
  # Called directly (not traced) on abstract leaves, it must not fail either.
  direct = tx.init(abstract)
  chex.assert_trees_all_equal_shapes_and_dtypes(
    expected,
    jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), direct),
  )


@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_sharding_preserved(entry, variant):
  """State types (shape, dtype, sharding) are the same before and after update.

  Uses an Explicit-axes mesh of 8 host devices (see conftest.py), where the
  sharding is part of each array's type, as optax's sharding tests do.
  """
  if len(jax.devices()) < 8:
    pytest.skip('needs 8 host devices (set by conftest.py)')
  mesh = jax.make_mesh(
    (2, 4), ('data', 'model'), axis_types=(AxisType.Explicit,) * 2
  )
  specs = {
    'dense': {'kernel': P('data', 'model'), 'bias': P('model')},
    'conv': {'kernel': P(None, None, 'data', 'model')},
    'scale': P(),
  }
  params, loss = _mixed()
  tx = _build(entry, variant)
  extra = _extra(entry, loss)
  single, _ = tx.update(
    jax.grad(loss)(params), tx.init(params), params, **extra
  )
  with jax.set_mesh(mesh):
    shardings = jax.tree.map(
      lambda s: NamedSharding(mesh, s),
      specs,
      is_leaf=lambda s: isinstance(s, P),
    )
    params = jax.device_put(params, shardings)
    state = tx.init(params)
    g = jax.jit(jax.grad(loss))(params)
    update = jax.jit(functools.partial(tx.update, **extra))
    u, new_state = update(g, state, params)
    _, newer_state = update(g, new_state, params)
    types = lambda t: jax.tree.map(jax.typeof, t)
    assert types(new_state) == types(state)
    assert types(newer_state) == types(state)
    assert types(u) == types(params)
    assert update._cache_size() == 1
    _, eager_state = tx.update(g, state, params, **extra)
    assert types(eager_state) == types(state)
  # Same numbers as on one device.
  chex.assert_trees_all_close(u, single, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------
# Edge cases: never NaN.


def _edge_trees():
  zero_grads, zero_grads_loss = _mixed(at_target=True)
  zero_params, zero_params_loss = _mixed(zero_params=True)
  scalars = {'a': jnp.array(1.5), 'b': jnp.array(-0.5)}
  scalars_loss = lambda p: (p['a'] - 1.0) ** 2 + (p['b'] + 2.0) ** 2
  with_none = {'w': jnp.ones((3, 2)), 'frozen': None}
  with_none_loss = lambda p: jnp.sum(p['w'] ** 2)
  with_masked = {'w': jnp.ones((3, 2)), 'masked': optax.MaskedNode()}
  return {
    'zero_grads': (zero_grads, zero_grads_loss),
    'zero_params': (zero_params, zero_params_loss),
    'scalar_leaves': (scalars, scalars_loss),
    'empty': ({}, lambda p: jnp.zeros([])),
    'none_leaves': (with_none, with_none_loss),
    'masked_node_leaves': (with_masked, with_none_loss),
  }


@pytest.mark.parametrize('case', list(_edge_trees()))
@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_edge_cases_finite(entry, variant, case):
  params, loss = _edge_trees()[case]
  tx = _build(entry, variant)
  extra = _extra(entry, loss)
  update = jax.jit(functools.partial(tx.update, **extra))
  state = tx.init(params)
  for _ in range(3):
    g = jax.grad(loss)(params)
    u, state = update(g, state, params)
    chex.assert_tree_all_finite((u, state))
    params = optax.apply_updates(params, u)
  chex.assert_tree_all_finite(params)
  assert jax.tree.structure(u) == jax.tree.structure(g)


# --------------------------------------------------------------------------
# Checkpointing.


@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_checkpoint_round_trip(entry, variant):
  params, loss = _mixed()
  tx = _build(entry, variant)
  extra = _extra(entry, loss)

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p, **extra)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for _ in range(3):
    params, state = step(params, state)
  blob = serialization.to_bytes(state)
  restored = serialization.from_bytes(tx.init(params), blob)
  chex.assert_trees_all_equal(restored, state)
  p1, s1, p2, s2 = params, state, params, restored
  for _ in range(3):
    p1, s1 = step(p1, s1)
    p2, s2 = step(p2, s2)
  chex.assert_trees_all_equal(p1, p2)
  chex.assert_trees_all_equal(s1, s2)


# --------------------------------------------------------------------------
# Hardening (issue 19): plain inject_hyperparams, non-finite input, zero-size
# axes and a fuzz over shapes, dtypes and non-finite positions.


@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_inject_hyperparams_plain(entry, variant):
  """``optax.inject_hyperparams(factory)(...)`` with no ``static_args``.

  Integer hyperparameters (``ns_steps``, ``channel_axis``) and ``ns_beta``
  arrive as arrays, traced under ``jit``: they must still work.
  """
  params, loss = _mixed()
  kwargs = _kwargs(entry, variant)
  tx = entry.factory(**kwargs)
  wrapped = optax.inject_hyperparams(entry.factory)(**kwargs)
  plain = _steps(tx, params, loss, entry, 2)
  update = jax.jit(functools.partial(wrapped.update, **_extra(entry, loss)))
  state = wrapped.init(params)
  p = params
  for u1, _ in plain:
    u2, state = update(jax.grad(loss)(p), state, p)
    # Hyperparameters become float32 arrays (b2 = 0.999 -> 0.99900001):
    # the same 1e-4 relative as test_inject_hyperparams.
    chex.assert_trees_all_close(u1, u2, rtol=1e-4, atol=1e-7)
    p = optax.apply_updates(p, u1)


def _non_finite_grads(grads):
  """NaN, +inf and -inf at one entry of three different leaves."""
  leaves, treedef = jax.tree.flatten(grads)
  bad = [jnp.nan, jnp.inf, -jnp.inf]
  out, hit = [], []
  for i, g in enumerate(leaves):
    if i < len(bad) and g.size:
      g = g.reshape(-1).at[g.size // 2].set(bad[i]).reshape(g.shape)
      hit.append(i)
    out.append(g)
  return treedef.unflatten(out), hit


@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_non_finite_in_non_finite_out(entry, variant):
  """A leaf whose gradient holds NaN or inf gets a non-finite update.

  Never a silent 0 (Muon's old norm guard) or a finite sign (Lion's
  ``sign(inf)``): optax users and ``optax.apply_if_finite`` must see it.
  """
  params, loss = _mixed()
  grads, hit = _non_finite_grads(jax.grad(loss)(params))
  assert len(hit) == 3
  tx = _build(entry, variant)
  extra = {'grad_fn': lambda p: grads} if 'grad_fn' in entry.needs else {}
  u, _ = jax.jit(functools.partial(tx.update, **extra))(
    grads, tx.init(params), params
  )
  paths = [jax.tree_util.keystr(k) for k, _ in jax.tree.leaves_with_path(u)]
  for i, leaf in enumerate(jax.tree.leaves(u)):
    if i in hit:
      assert not bool(jnp.isfinite(leaf).all()), paths[i]


def _zero_size_tree():
  return {
    'dense': {'kernel': jnp.ones((0, 5)), 'bias': jnp.ones((0,))},
    'scan': {'kernel': jnp.ones((2, 0, 3))},
    'out0': {'kernel': jnp.ones((4, 0))},
    'w': jnp.linspace(-1.0, 1.0, 12).reshape(3, 4),
  }


@pytest.mark.parametrize('entry,variant', CONFIGS)
def test_zero_size_axes_pass_through(entry, variant):
  params = _zero_size_tree()
  loss = lambda p: sum(jnp.sum(jnp.square(x - 0.5)) for x in jax.tree.leaves(p))
  tx = _build(entry, variant)
  update = jax.jit(functools.partial(tx.update, **_extra(entry, loss)))
  state = tx.init(params)
  for _ in range(2):
    g = jax.grad(loss)(params)
    u, state = update(g, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(u, g)
    chex.assert_tree_all_finite((u, state))
    params = optax.apply_updates(params, u)


@pytest.mark.parametrize('entry', catalog.METHODS, ids=catalog.names())
def test_float64_under_x64(entry):
  with jax.enable_x64(True):
    params, loss = _mixed(jnp.float64)
    tx = _build(entry, {})
    g = jax.grad(loss)(params)
    u, _ = tx.update(g, tx.init(params), params, **_extra(entry, loss))
    chex.assert_trees_all_equal_dtypes(u, g)
    chex.assert_trees_all_equal_shapes(u, g)
    chex.assert_tree_all_finite(u)


_FUZZ_DTYPES = (jnp.float16, jnp.bfloat16, jnp.float32)
_FUZZ_BAD = (float('nan'), float('inf'), float('-inf'))
#: Examples of the fuzz; each is one catalog entry on a tree of 1-3 leaves,
#: jitted once (about 1 s each on 2 cores: 25 examples stay under 60 s).
FUZZ_EXAMPLES = 25


@st.composite
def _fuzz_case(draw):
  entry = draw(st.sampled_from(catalog.METHODS))
  leaves = []
  for _ in range(draw(st.integers(1, 3))):
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.integers(0, 9)) for _ in range(ndim))
    dtype = draw(st.sampled_from(_FUZZ_DTYPES))
    size = math.prod(shape)
    bad = []
    if size:
      bad = draw(
        st.lists(
          st.tuples(st.integers(0, size - 1), st.sampled_from(_FUZZ_BAD)),
          max_size=2,
        )
      )
    leaves.append((shape, dtype, bad))
  return entry, leaves, draw(st.integers(0, 2**16))


@settings(
  max_examples=FUZZ_EXAMPLES,
  deadline=None,
  derandomize=True,
  suppress_health_check=[HealthCheck.too_slow],
)
@given(_fuzz_case())
def test_fuzz_shapes_dtypes_non_finite(case):
  """Updates of the gradient's dtype and shape, finite for finite input.

  A leaf holding NaN or inf gets a non-finite update; a ``ValueError`` is
  allowed only if it names the leaf. No catalog entry needs an exception.
  """
  entry, specs, seed = case
  keys = jax.random.split(jax.random.key(seed), 2 * len(specs))
  params, grads, bad_leaves = {}, {}, set()
  for i, (shape, dtype, bad) in enumerate(specs):
    name = f'leaf{i}'
    params[name] = jax.random.normal(keys[2 * i], shape, dtype)
    g = jax.random.normal(keys[2 * i + 1], shape, dtype)
    for index, value in bad:
      g = g.reshape(-1).at[index].set(value).reshape(shape)
      bad_leaves.add(name)
    grads[name] = g
  tx = entry.build(**entry.test_kwargs)
  extra = {'grad_fn': lambda p: grads} if 'grad_fn' in entry.needs else {}
  try:
    u, _ = jax.jit(functools.partial(tx.update, **extra))(
      grads, tx.init(params), params
    )
  except ValueError as e:
    assert any(name in str(e) for name in params), str(e)
    return
  chex.assert_trees_all_equal_dtypes(u, grads)
  chex.assert_trees_all_equal_shapes(u, grads)
  for name, leaf in u.items():
    finite = bool(jnp.isfinite(leaf).all())
    if name in bad_leaves:
      assert not finite, (entry.name, name, specs)
    elif not bad_leaves:
      assert finite, (entry.name, name, specs)
