"""Smoke run of optimflow.lab.examples.orthogonal: outputs written, runs sane."""

import json
import math

import pytest

from optimflow.lab.examples import orthogonal as example

METHODS = ['adamw', 'muon', 'auon', 'hybrid_auon']


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp('orthogonal')
  return example.main(['--smoke', '--output', str(out)]), out


def test_outputs_written(results):
  res, out = results
  assert (out / 'orthogonal.png').stat().st_size > 10_000
  saved = json.loads((out / 'results.json').read_text())
  assert saved['smoke'] is True
  assert [r['method'] for r in saved['summary']] == METHODS
  assert len(saved['runs']) == len(METHODS) * len(example.SMOKE.seeds)
  assert saved['summary'] == res['summary']


def test_every_method_trains(results):
  for run in results[0]['runs']:
    hist = run['history']
    assert len(hist['train_loss']) == example.SMOKE.steps
    assert all(math.isfinite(v) for v in hist['train_loss'])
    # From about log(96) = 4.56 nats at the start, the loss must go down.
    assert hist['train_loss'][0] > 4.0
    assert hist['final']['test_loss'] < hist['train_loss'][0]
    assert run['update_ms'] > 0 and hist['ms_per_step'] > 0


def test_state_bytes_follow_the_methods(results):
  rows = {r['method']: r for r in results[0]['summary']}
  # One momentum per hidden matrix instead of AdamW's two moments.
  assert rows['muon']['state MB'] < rows['adamw']['state MB']
  assert rows['auon']['state MB'] == rows['muon']['state MB']
  assert rows['hybrid_auon']['state MB'] == rows['muon']['state MB']
