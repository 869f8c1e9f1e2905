"""Tests of ``python -m optimflow bench`` and optimflow.lab.bench (floors, trees)."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from optimflow import catalog
from optimflow import linalg
from optimflow.lab import bench
from optimflow.lab import cli
from optimflow.lab.bench import cases as st
from optimflow.lab.bench import floors


def _tree():
  return {'k': jnp.ones((16, 8)), 'b': jnp.zeros((8,))}


P = 4 * (16 * 8 + 8)  # bytes of _tree()


@pytest.mark.parametrize(
  'tx, moved',
  [
    (optax.sgd(0.1), 2 * P),  # read g, write u
    (optax.sgd(0.1, momentum=0.9), 4 * P),  # + trace read and write
    (optax.lion(0.1, weight_decay=0.1), 5 * P + 2 * 4),  # + params, count
    (optax.adamw(0.1, weight_decay=0.1), 7 * P + 2 * 4),
    (optax.adam(0.1), 6 * P + 2 * 4),  # adam never reads the params
  ],
)
def test_bytes_moved_counts_reads_and_writes(tx, moved):
  params = _tree()
  cost = floors.update_cost(jax.jit(tx.update), params, tx.init(params), params)
  assert cost.bytes_moved == moved
  assert cost.matmul_flops == 0 and cost.exact


def test_pass_through_state_is_free():
  def update(g, state, p):
    return jax.tree.map(lambda x: -x, g), state

  cost = floors.update_cost(
    update, _tree(), {'big': jnp.ones((1000,))}, _tree()
  )
  assert cost.bytes_moved == 2 * P


@pytest.mark.parametrize(
  'shape, steps', [((8, 32), 5), ((16, 16), 3), ((3, 16, 8), 2)]
)
def test_matmul_flops_of_newton_schulz(shape, steps):
  *batch, m, n = shape
  m, n = min(m, n), max(m, n)  # runs on the wide orientation
  per_step = 2 * m * m * n + 2 * m**3 + 2 * m * m * n  # XX^T, A^2, (.)X
  want = math.prod(batch) * steps * per_step
  x = jnp.ones(shape)
  cost = floors.update_cost(lambda x: linalg.newton_schulz(x, steps), x)
  assert cost.matmul_flops == want and cost.exact


def test_matmul_flops_cond_and_while():
  a = jnp.ones((4, 6))
  b = jnp.ones((6, 5))
  dot = 2 * 4 * 6 * 5

  def branches(p, a, b):
    return jax.lax.cond(p, lambda: (a @ b) @ b.T, lambda: 2.0 * a)

  cost = floors.update_cost(branches, True, a, b)
  assert cost.matmul_flops == dot + 2 * 4 * 5 * 6 and cost.exact

  def loop(a, b):
    return jax.lax.while_loop(
      lambda c: c[1] < 3, lambda c: (c[0] @ b @ b.T, c[1] + 1), (a, 0)
    )[0]

  cost = floors.update_cost(loop, a, b)
  assert cost.matmul_flops == dot + 2 * 4 * 5 * 6 and not cost.exact


def test_floor_is_the_roofline_bound():
  rates = floors.Rates(
    copy_bytes_per_s=1e9,
    matmul_flops_per_s=1e10,
    copy_buffer_bytes=1,
    matmul_size=1,
  )
  assert floors.floor_seconds(floors.Cost(3e9, 1e10), rates) == (3.0, 'memory')
  assert floors.floor_seconds(floors.Cost(1e9, 4e10), rates) == (4.0, 'matmul')


def test_measured_rates_are_positive():
  rates = floors.measure_rates(1 << 20, matmul_sizes=(64, 128), reps=2)
  assert rates.copy_bytes_per_s > 0 and math.isfinite(rates.copy_bytes_per_s)
  assert rates.matmul_flops_per_s > 0 and rates.matmul_size in (64, 128)


def test_trees():
  count = lambda t: sum(x.size for x in jax.tree.leaves(t))
  resnet = jax.eval_shape(st.resnet_tree)
  assert count(resnet) == 11_689_512  # torchvision's resnet18
  assert resnet['stage1_block0']['conv1']['kernel'].shape == (3, 3, 64, 128)
  assert resnet['stage1_block0']['proj']['kernel'].shape == (1, 1, 64, 128)
  assert 'proj' not in resnet['stage1_block1']
  assert count(jax.eval_shape(st.transformer_tree)) == 23_097_344
  assert st.tree_bytes(st.TREES['tiny-resnet']()) < 1 << 20


def test_catalog_entries_without_rows_get_cases(monkeypatch):
  fakes = (
    dataclasses.replace(catalog.get('lion'), name='fake_lion'),
    dataclasses.replace(
      catalog.get('sam'), name='fake_sam', optax_equivalent='contrib.sam'
    ),
    dataclasses.replace(catalog.get('lion'), name='fake_solver', kind='solver'),
  )
  monkeypatch.setattr(catalog, 'METHODS', catalog.METHODS + fakes)
  monkeypatch.setattr(st, 'CASES', dict(st.CASES))
  assert bench.register_catalog_cases(st) == ['fake_lion', 'fake_sam']
  for m in catalog.METHODS:
    if m.kind in ('transformation', 'extra_args'):
      assert bench.runner._has_row(m.name, st.CASES), m.name
  assert st.CASES['fake_lion'].baseline == 'optax.lion'
  assert st.CASES['fake_sam'].baseline == 'optax.contrib.sam'
  assert 'stand-in' in st.CASES['fake_sam'].note
  assert bench.register_catalog_cases(st) == []  # idempotent
  params = _tree()
  for name in ('fake_lion', 'fake_sam'):  # both run as plain updates
    tx, grads, state = st.jax_inputs(st.CASES[name], params)
    updates, _ = tx.update(grads, state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)


def test_extra_args_cases_run_with_a_stand_in_grad_fn():
  sam = catalog.get('sam')
  tx = bench.runner._catalog_tx(sam)
  params = _tree()
  grads = jax.tree.map(lambda x: x + 1.0, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  want, _ = sam.build().update(
    grads,
    sam.build().init(params),
    params,
    grad_fn=lambda w: jax.tree.map(lambda g, x: g + 1e-3 * x, grads, w),
  )
  chex_close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6)
  jax.tree.map(chex_close, updates, want)


def test_plan_adds_baselines():
  p = bench.plan(['tiny-resnet', 'tiny-transformer'], 'adamp,lion', torch=False)
  assert p.trees == ['tiny-resnet', 'tiny-transformer']
  assert set(p.names) == {'adamp', 'lion', 'optax.adamw', 'optax.lion'}
  for name in ('adamp', 'lion'):
    assert p.names.index(st.CASES[name].baseline) < p.names.index(name)
  everything = bench.plan(['resnet'], torch=False).names
  assert set(everything) == set(st.CASES)


def test_smoke_run_writes_files_and_table(tmp_path, capsys):
  cases = 'sgdp,muon'
  torch_peer = 'torch:adamp.SGDP'
  if torch_peer in st.TORCH_CASES:
    cases += ',' + torch_peer
  assert (
    cli.main(
      [
        'bench',
        '--trees',
        'tiny-resnet',
        '--cases',
        cases,
        '--reps',
        '2',
        '--output',
        str(tmp_path),
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert (
    '| case | median ms | vs baseline | baseline | floor ms | bound | '
    'vs floor | state MB |'
  ) in out
  res = json.loads((tmp_path / 'bench.json').read_text())
  assert (tmp_path / 'bench.md').read_text().startswith('# bench')
  (tree,) = res['trees']
  assert tree['tree'] == 'tiny-resnet' and tree['rates']['matmul_size']
  rows = {r['case']: r for r in tree['rows']}
  assert set(cases.split(',')) <= set(rows)
  sgdp, base = rows['sgdp'], rows['optax.sgd_momentum']
  assert sgdp['baseline'] == 'optax.sgd_momentum'
  assert sgdp['ratio'] == pytest.approx(sgdp['median_ms'] / base['median_ms'])
  assert sgdp['bound'] == 'memory' and sgdp['matmul_flops'] == 0
  assert sgdp['bytes_moved'] == 5 * tree['param_bytes']  # g, w, buf r/w, u
  assert rows['muon']['matmul_flops'] > 0
  for r in tree['rows']:
    assert r['ratio_to_floor'] == pytest.approx(r['median_ms'] / r['floor_ms'])
  if torch_peer in rows:  # PyTorch peers get their baseline's floor
    assert rows[torch_peer]['floor_ms'] == sgdp['floor_ms']


def test_apply_mode_times_a_training_step(tmp_path, capsys):
  p = bench.plan(
    ['tiny-transformer'], 'lion,sgd_with_param_ema', torch=False, apply=True
  )
  assert p.command(2).endswith('--reps 2 --no-torch --apply')
  params = st.TREES['tiny-transformer']()
  _, state_bytes = st.jax_stepper(st.CASES['lion'], params, apply=True)
  assert state_bytes == st.jax_stepper(st.CASES['lion'], params)[1]
  assert (
    cli.main(
      [
        'bench',
        '--trees',
        'tiny-transformer',
        '--cases',
        'lion,sgd_with_param_ema',
        '--reps',
        '2',
        '--apply',
        '--no-torch',
        '--output',
        str(tmp_path),
      ]
    )
    == 0
  )
  res = json.loads((tmp_path / 'bench.json').read_text())
  assert res['apply'] and res['command'].endswith(
    f'--apply --output {tmp_path}'
  )
  assert 'timed: update + `apply_updates`' in capsys.readouterr().out
  rows = {r['case'] for r in res['trees'][0]['rows']}
  assert rows == {
    'lion',
    'optax.lion',
    'sgd_with_param_ema',
    'optax.sgd_momentum',
  }
