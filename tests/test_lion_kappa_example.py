"""Smoke run of optimflow.lab.examples.lion_kappa: the Lion-kappa constraint claims hold."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from optimflow.lab.examples import lion_kappa


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp('lion_kappa')
  res = lion_kappa.main(['--smoke', '--output', str(out)])
  return res, out


def _row(rows, method):
  (row,) = [r for r in rows if r['method'] == method]
  return row


def test_outputs_written(results):
  res, out = results
  assert (out / 'lion_kappa.png').stat().st_size > 10_000
  saved = json.loads((out / 'results.json').read_text())
  assert saved['smoke'] is True
  assert [r['method'] for r in saved['digits']] == [
    m.name for m in lion_kappa.digits_methods()
  ]
  assert saved['constraint_demo'] == res['constraint_demo']


@pytest.mark.parametrize(
  'method, tol',
  [
    ("lion_kappa 'sign'", 1e-3),  # the worst coordinate sits 8e-4 from the box
    ("lion_kappa 'l2'", 1e-5),
    ("lion_kappa ('huber', 0.5)", 1e-4),
    ("lion_kappa ('dead_zone', 0.3)", 1e-3),
  ],
)
def test_each_kappa_lands_on_its_closed_form(results, method, tol):
  row = _row(results[0]['constraint_demo'], method)
  assert row['max err to closed form'] < tol
  assert row['max_t ||x_t||_inf'] <= 0.5 + 1e-6  # never leaves the box


def test_sign_kappa_reproduces_the_box_and_baselines_do_not(results):
  rows = results[0]['constraint_demo']
  assert _row(rows, "lion_kappa 'sign'")['max dist to box solution'] < 1e-3
  sgd = _row(rows, 'sgd + decay')
  assert sgd['max err to closed form'] < 1e-5  # the l2-shrunk point c/(1+l)
  assert sgd['max dist to box solution'] > 0.3
  assert _row(rows, 'adamw')['max dist to box solution'] > 0.05


def test_entry_bound_holds(results):
  assert results[0]['entry_violation'] <= 1e-5


def test_box_methods_keep_max_abs_weight_below_inverse_decay(results):
  rows = results[0]['digits']
  for row in rows:
    if row['constraint'] == 'max|w| <= 1/lambda':
      assert row['held'] == 'yes'
      assert row['peak max|w|'] <= row['1/lambda'] * (1 + 1e-6)
  assert _row(rows, 'lion')['test acc'] > 0.6


def test_closed_forms():
  c = jnp.array([2.0, -0.2, 0.7, -1.0])
  np.testing.assert_allclose(
    lion_kappa.closed_form(c, 'sign', 2.0), [0.5, -0.2, 0.5, -0.5]
  )
  np.testing.assert_allclose(
    lion_kappa.closed_form(c, ('dead_zone', 0.3), 2.0),
    [0.5, 0.0, 0.4, -0.5],
    atol=1e-7,
  )
  np.testing.assert_allclose(
    lion_kappa.closed_form(c, ('huber', 1.0), 2.0),
    [0.5, -0.2 / 3, 0.7 / 3, -1 / 3],
    rtol=1e-6,
  )
  ball = lion_kappa.closed_form(c, 'l2', 2.0)
  np.testing.assert_allclose(jnp.linalg.norm(ball), 0.5, rtol=1e-6)
  np.testing.assert_allclose(
    ball / jnp.linalg.norm(ball), c / jnp.linalg.norm(c), rtol=1e-6
  )
  with pytest.raises(ValueError, match='closed form'):
    lion_kappa.closed_form(c, ('relativistic', 0.1), 2.0)
