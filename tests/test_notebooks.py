"""Executes every notebooks/*.ipynb in smoke mode; any error fails the test."""

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'notebooks').glob('*.ipynb'))
BADGE = ('[![Open In Colab](https://colab.research.google.com/assets/'
         'colab-badge.svg)](https://colab.research.google.com/github/optimflow/'
         'optimflow/blob/main/notebooks/{name})')


@pytest.mark.slow
@pytest.mark.parametrize('path', NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(path, monkeypatch):
  nb = nbformat.read(path, as_version=4)
  assert nb.cells[0].cell_type == 'markdown'
  assert BADGE.format(name=path.name) in nb.cells[0].source
  assert "SMOKE = bool(os.environ.get('OPTIMFLOW_SMOKE'))" in nb.cells[1].source
  assert not any(c.get('outputs') for c in nb.cells if c.cell_type == 'code')
  # The kernel inherits this process's environment.
  monkeypatch.setenv('OPTIMFLOW_SMOKE', '1')
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(
      [str(ROOT), *filter(None, [os.environ.get('PYTHONPATH')])]))
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name='python3',
      resources={'metadata': {'path': str(ROOT)}})
  client.execute()  # raises CellExecutionError on any error
