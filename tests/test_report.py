"""Tests of optimflow.report: markdown tables and the README's Results."""

import json
import os
from pathlib import Path

import pytest

from optimflow import compare
from optimflow import report

ROOT = Path(__file__).resolve().parents[1]


def test_markdown_table_escapes_and_aligns():
  table = report.markdown_table([{'a': 'x|y', 'b': 1}, {'a': 'z', 'b': 22}],
                                align='lr')
  assert table.splitlines() == ['| a | b |', '|:---|---:|', '| x\\|y | 1 |',
                                '| z | 22 |']
  assert report.markdown_table([]) == ''
  with pytest.raises(ValueError, match='align'):
    report.markdown_table([{'a': 1}], align='lr')


def test_update_readme_section(tmp_path):
  path = tmp_path / 'README.md'
  path.write_text('head\n<!-- results:start (how) -->\nold\n'
                  '<!-- results:end -->\ntail\n')
  assert not report.update_readme_section(str(path), 'results', 'new',
                                          check=True)
  assert 'old' in path.read_text()  # check mode writes nothing
  assert not report.update_readme_section(str(path), 'results', 'new\n')
  assert path.read_text() == ('head\n<!-- results:start (how) -->\nnew\n'
                              '<!-- results:end -->\ntail\n')
  assert report.update_readme_section(str(path), 'results', 'new',
                                      check=True)
  with pytest.raises(ValueError, match='lacks the markers'):
    report.update_readme_section(str(path), 'other', 'x')


def test_results_section_from_committed_style_runs(tmp_path):
  folder = tmp_path / 'rosenbrock'
  folder.mkdir()
  res = compare.compare('rosenbrock', ['lion', 'adam'], steps=5,
                        progress=False)
  compare.write_outputs(res, folder)
  bench_dir = tmp_path / 'bench'
  bench_dir.mkdir()
  row = dict(case='lion', tree='tiny', median_ms=1.0, state_bytes=2 ** 20,
             baseline='optax.lion', note='', ratio=0.9, bytes_moved=10,
             matmul_flops=0, floor_exact=True, floor_ms=0.5, bound='memory',
             ratio_to_floor=2.0)
  (bench_dir / 'bench.json').write_text(json.dumps({
      'command': 'python -m optimflow bench --trees tiny', 'reps': 3,
      'machine': res['machine'],
      'trees': [{'tree': 'tiny', 'n_params': 10, 'param_bytes': 40,
                 'rates': {'copy_bytes_per_s': 1e10,
                           'matmul_flops_per_s': 1e11,
                           'copy_buffer_bytes': 2 ** 25, 'matmul_size': 512},
                 'rows': [row]}]}))
  text = report.results_section(str(tmp_path))
  assert '### compare: rosenbrock' in text and 'digits' not in text
  assert (f'`python -m optimflow compare --task rosenbrock --methods '
          f'lion,adam --steps 5 --seeds 1 --output {folder}`') in text
  assert f']({folder}/trajectories.png)' in text
  assert '| lion |' in text and '| adam |' in text
  assert '### bench: update step time and the floors' in text
  assert '#### tiny: 0.0M parameters' in text
  assert '| lion | 1 | 0.90x | optax.lion | 0.5 | memory | 2.00x | 1.0 |' in text


@pytest.mark.skipif(not os.path.isdir(ROOT / report.RESULTS_ROOT),
                    reason='no committed runs')
def test_readme_results_section_is_current(monkeypatch):
  monkeypatch.chdir(ROOT)
  assert report.update_readme_section(
      'README.md', 'results', report.results_section(), check=True), (
          'README.md is stale: run python -m optimflow readme')
