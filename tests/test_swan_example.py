"""Smoke run of optimflow.lab.examples.swan: outputs, and SWAN's memory claims hold."""

import json
import math

from flax import nnx
import jax
import numpy as np
import pytest

import optimflow
from optimflow.lab.examples import swan


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp('swan')
  return swan.main(['--smoke', '--output', str(out)]), out


def _row(rows, method):
  (row,) = [r for r in rows if r['method'] == method]
  return row


def test_outputs_written(results):
  res, out = results
  assert (out / 'swan.png').stat().st_size > 10_000
  saved = json.loads((out / 'results.json').read_text())
  assert saved['smoke'] is True
  assert [r['method'] for r in saved['rows']] == list(swan.METHODS)
  assert set(saved['curves']) == set(swan.METHODS)
  assert len(saved['curves']['swan']['valid_loss']) == len(swan.SMOKE.seeds)


def test_every_method_learns(results):
  res, _ = results
  for m in swan.METHODS:
    row = _row(res['rows'], m)
    assert math.isfinite(row['final valid loss'])
    assert row['final valid loss'] < math.log(96)  # below uniform guessing
  # Adam reaches its own final loss, by construction, at its last evaluation
  # or before.
  adam = _row(res['rows'], 'adam')
  assert adam['tokens to adam final'] <= swan.SMOKE.steps * (
    swan.SMOKE.tokens_per_step
  )


def _non_matrix_bytes(cfg):
  model = swan.make_model(cfg)
  params = nnx.as_pure(nnx.state(model, nnx.Param))
  labels = optimflow.orthogonal.matrix_labels()(params)
  return sum(
    x.nbytes
    for x, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels))
    if lab == 'other'
  )


def test_swan_state_is_adamw_on_non_matrix_leaves_only(results):
  res, _ = results
  mem = {r['method']: r for r in res['memory']}
  other = _non_matrix_bytes(swan.SMOKE) / 2**20
  # SWAN: nothing on the hidden matrices; AdamW's two moments on the rest.
  np.testing.assert_allclose(mem['swan']['opt state MiB'], 2 * other, rtol=1e-3)
  # Adam: two moments of everything; Muon: one more moment per matrix.
  np.testing.assert_allclose(mem['adam']['state / params'], 2.0, rtol=1e-3)
  assert (
    mem['swan']['opt state MiB']
    < mem['muon']['opt state MiB']
    < mem['adam']['opt state MiB']
  )
  assert mem['swan']['peak / adam'] < 1.0
