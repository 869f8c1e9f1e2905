"""Smoke run of optimflow.lab.examples.distributed in a subprocess (8 host devices).

The example sets the device count itself before JAX starts, so it runs as
its own process whatever this pytest process was started with.
"""

import json
import math
import os
from pathlib import Path
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]
OPTIMIZERS = ['adamp', 'muon[gather]', 'muon[stacked]']


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp('distributed')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'optimflow.lab.examples.distributed',
      '--smoke',
      '--output',
      str(out),
    ],
    cwd=out,
    env=env,
    capture_output=True,
    text=True,
    timeout=1200,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads((out / 'results.json').read_text()), proc.stdout, out


def test_outputs_written(results):
  res, stdout, out = results
  assert (out / 'distributed.png').stat().st_size > 10_000
  assert res['smoke'] is True and res['devices'] == 8
  assert [(r['layout'], r['optimizer']) for r in res['runs']] == [
    (layout, name)
    for layout in ('data_parallel', 'fsdp')
    for name in OPTIMIZERS
  ]
  assert 'ms/step' in stdout and 'step AG/AR/A2A/CP' in stdout


def test_runs_train_and_compile_once(results):
  for run in results[0]['runs']:
    assert run['compilations'] == 1
    assert len(run['losses']) == 4
    assert all(math.isfinite(v) for v in run['losses'])
    assert run['losses'][-1] < run['losses'][0]
    assert run['ms_per_step'] > 0


def test_layouts_and_modes_change_nothing_but_the_layout(results):
  """Same batches, same maths: the losses agree across layouts and modes."""
  runs = results[0]['runs']
  by = {(r['layout'], r['optimizer']): r['losses'] for r in runs}
  for name in OPTIMIZERS:
    for a, b in zip(by['data_parallel', name], by['fsdp', name]):
      assert a == pytest.approx(b, rel=1e-4)
  for a, b in zip(by['fsdp', 'muon[gather]'], by['fsdp', 'muon[stacked]']):
    assert a == pytest.approx(b, rel=1e-4)


def test_collectives(results):
  runs = {(r['layout'], r['optimizer']): r for r in results[0]['runs']}
  # Data parallel: AdamP's update on replicated state needs no collective.
  assert sum(runs['data_parallel', 'adamp']['update_collectives'].values()) == 0
  # FSDP: the stacked Newton-Schulz reshards by all-to-all only, the
  # gathering mode all-gathers every matrix.
  stacked = runs['fsdp', 'muon[stacked]']['update_collectives']
  gather = runs['fsdp', 'muon[gather]']['update_collectives']
  assert stacked['all-to-all'] > 0 and stacked['all-gather'] == 0
  assert gather['all-gather'] > 0 and gather['all-to-all'] == 0
  assert (
    runs['fsdp', 'muon[stacked]']['update_mb']
    < runs['fsdp', 'muon[gather]']['update_mb']
  )
