"""Smoke run of optimflow.lab.examples.adamp: outputs, and the weight-norm mechanism."""

import json

import numpy as np
import pytest

from optimflow.lab.examples import adamp as example


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp('adamp')
  return example.main(['--smoke', '--output', str(out)]), out


def _row(rows, method):
  (row,) = [r for r in rows if r['method'] == method]
  return row


def test_outputs_written(results):
  res, out = results
  assert (out / 'adamp.png').stat().st_size > 10_000
  saved = json.loads((out / 'results.json').read_text())
  assert saved['smoke'] is True
  assert [r['method'] for r in saved['rows']] == [
    'sgd',
    'sgdp',
    'adam',
    'adamp',
  ]
  assert saved['rows'] == res['rows']
  for curves in saved['curves'].values():
    for c in curves:
      n_evals = len(c['steps'])
      assert np.shape(c['norms']) == (n_evals, 2)
      assert np.shape(c['effective_step']) == (n_evals - 1, 2)
      assert np.all(np.isfinite(c['effective_step']))


def test_projection_suppresses_norm_growth(results):
  """Even in 30 steps: momentum inflates the second conv kernel's norm by
  >5% (SGD) / >3% (Adam); with the projection it grows less than half as
  much (only to second order in the step)."""
  rows = results[0]['rows']
  key = 'conv1 ||w||/||w0||'
  for plain, projected, growth in (
    ('sgd', 'sgdp', 0.05),
    ('adam', 'adamp', 0.03),
  ):
    plain_growth = _row(rows, plain)[key] - 1
    projected_growth = _row(rows, projected)[key] - 1
    assert plain_growth > growth
    assert 0 <= projected_growth < 0.5 * plain_growth


def test_pair_rows_are_consistent(results):
  pairs = results[0]['pairs']
  assert [(p['pair'], p['kernel']) for p in pairs] == [
    ('sgdp vs sgd', 'conv0'),
    ('sgdp vs sgd', 'conv1'),
    ('adamp vs adam', 'conv0'),
    ('adamp vs adam', 'conv1'),
  ]
  for p in pairs:
    power = 2 if p['pair'].startswith('sgdp') else 1
    np.testing.assert_allclose(
      p['predicted step ratio'], p['norm ratio'] ** power, rtol=1e-12
    )


def test_angle_between():
  a = np.array([1.0, 0.0])
  np.testing.assert_allclose(
    example.angle_between(a, np.array([0.0, 2.0])), np.pi / 2
  )
  assert example.angle_between(a, 3 * a) == 0.0
