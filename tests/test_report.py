"""Tests of optimflow.lab.report and tools/update_readme.py.

The tools script is not installed (CI tests the installed package), so it is
imported by path from the checkout next to tests/.
"""

import importlib.util
import json
import os
from pathlib import Path
import re
import subprocess
import sys

import pytest

from optimflow import catalog
from optimflow.lab import report
from optimflow.lab import results
from optimflow.lab import runs as compare

ROOT = Path(__file__).resolve().parents[1]


def _load_tool():
  spec = importlib.util.spec_from_file_location(
    'update_readme', ROOT / 'tools' / 'update_readme.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


tool = _load_tool()


def test_markdown_table_escapes_and_aligns():
  table = report.markdown_table(
    [{'a': 'x|y', 'b': 1}, {'a': 'z', 'b': 22}], align='lr'
  )
  assert table.splitlines() == [
    '| a | b |',
    '|:---|---:|',
    '| x\\|y | 1 |',
    '| z | 22 |',
  ]
  assert report.markdown_table([]) == ''
  with pytest.raises(ValueError, match='align'):
    report.markdown_table([{'a': 1}], align='lr')


def test_update_readme_section(tmp_path):
  path = tmp_path / 'README.md'
  path.write_text(
    'head\n<!-- results:start (how) -->\nold\n<!-- results:end -->\ntail\n'
  )
  assert not report.update_readme_section(
    str(path), 'results', 'new', check=True
  )
  assert 'old' in path.read_text()  # check mode writes nothing
  assert not report.update_readme_section(str(path), 'results', 'new\n')
  assert path.read_text() == (
    'head\n<!-- results:start (how) -->\nnew\n<!-- results:end -->\ntail\n'
  )
  assert report.update_readme_section(str(path), 'results', 'new', check=True)
  with pytest.raises(ValueError, match='lacks the markers'):
    report.update_readme_section(str(path), 'other', 'x')


def test_results_section_from_committed_style_runs(tmp_path):
  folder = tmp_path / 'rosenbrock'
  folder.mkdir()
  res = compare.compare('rosenbrock', ['lion', 'adam'], steps=5, progress=False)
  compare.write_outputs(res, folder)
  bench_dir = tmp_path / 'bench'
  bench_dir.mkdir()
  row = dict(
    case='lion',
    tree='tiny',
    median_ms=1.0,
    state_bytes=2**20,
    baseline='optax.lion',
    note='',
    ratio=0.9,
    bytes_moved=10,
    matmul_flops=0,
    floor_exact=True,
    floor_ms=0.5,
    bound='memory',
    ratio_to_floor=2.0,
  )
  (bench_dir / 'bench.json').write_text(
    json.dumps(
      {
        'command': 'python -m optimflow bench --trees tiny',
        'reps': 3,
        'machine': res['machine'],
        'trees': [
          {
            'tree': 'tiny',
            'n_params': 10,
            'param_bytes': 40,
            'rates': {
              'copy_bytes_per_s': 1e10,
              'matmul_flops_per_s': 1e11,
              'copy_buffer_bytes': 2**25,
              'matmul_size': 512,
            },
            'rows': [row],
          }
        ],
      }
    )
  )
  text = results.results_section(str(tmp_path))
  assert '### compare: rosenbrock' in text and 'digits' not in text
  assert (
    f'`python -m optimflow compare --task rosenbrock --methods '
    f'lion,adam --steps 5 --seeds 1 --output {folder}`'
  ) in text
  assert f']({folder}/trajectories.png)' in text
  assert '| lion |' in text and '| adam |' in text
  assert '### bench: update step time and the floors' in text
  assert '#### tiny: 0.0M parameters' in text
  assert (
    '| lion | 1 | 0.90x | optax.lion | 0.5 | memory | 2.00x | 1.0 |' in text
  )


def test_plain_text_table():
  # report.format_table is what `list` and the compare summary print.
  text = report.format_table(
    [{'name': 'lion', 'x': 0.123456}, {'name': 'a', 'x': 2}]
  )
  assert text.splitlines() == [
    'name  x',
    '----  ------',
    'lion  0.1235',
    'a     2',
  ]
  assert report.format_table([]) == ''


@pytest.mark.skipif(
  not os.path.isdir(ROOT / results.RESULTS_ROOT), reason='no committed runs'
)
def test_docs_results_section_is_current():
  assert tool.update(check=True)['Results'], (
    'docs/results.md is stale: run python tools/update_readme.py'
  )
  text = (ROOT / 'docs' / 'results.md').read_text()
  # Links are relative to docs/; the commands read as run from the root.
  assert '](results/digits/results.md)' in text
  assert '--output docs/results/digits`' in text
  assert '](docs/results/' not in text
  for target in re.findall(r'\]\((results/[^)]+)\)', text):
    assert (ROOT / 'docs' / target).exists(), target


def _copy_generated(tmp_path):
  readme, page = tmp_path / 'README.md', tmp_path / 'results.md'
  readme.write_text((ROOT / 'README.md').read_text())
  page.write_text((ROOT / 'docs' / 'results.md').read_text())
  return readme, page


@pytest.mark.skipif(
  not os.path.isdir(ROOT / results.RESULTS_ROOT), reason='no committed runs'
)
def test_update_readme_detects_stale_parts_and_check_writes_nothing(
  tmp_path, capsys
):
  readme, page = _copy_generated(tmp_path)
  argv = ['--readme', str(readme), '--results', str(page)]
  assert tool.main(argv + ['--check']) == 0
  out = capsys.readouterr().out
  assert 'method table current' in out and 'Results current' in out
  # Make both generated parts stale: drop a table row and a Results heading.
  text, results_text = readme.read_text(), page.read_text()
  lion_row = next(
    line
    for line in text.splitlines()
    if line.startswith('| `optimflow.lion` |')
  )
  stale = text.replace(lion_row + '\n', '')
  stale_results = results_text.replace(
    '### compare: digits', '### compare: digitz', 1
  )
  assert stale != text and stale_results != results_text
  readme.write_text(stale)
  page.write_text(stale_results)
  assert tool.main(argv + ['--check']) == 1
  out = capsys.readouterr().out
  assert 'method table stale' in out and 'Results stale' in out
  assert readme.read_text() == stale  # --check writes nothing
  assert page.read_text() == stale_results
  assert tool.main(argv) == 0
  assert 'rewritten' in capsys.readouterr().out
  assert readme.read_text() == text
  assert page.read_text() == results_text


def test_update_readme_runs_as_a_script_from_anywhere(tmp_path):
  readme, page = _copy_generated(tmp_path)
  readme.write_text(
    readme.read_text().replace('| `optimflow.lion` |', '| `x` |', 1)
  )
  before = readme.read_text()
  proc = subprocess.run(
    [
      sys.executable,
      str(ROOT / 'tools' / 'update_readme.py'),
      '--check',
      '--readme',
      str(readme),
      '--results',
      str(page),
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert proc.returncode == 1, proc.stderr
  assert f'{readme}: method table stale' in proc.stdout
  assert readme.read_text() == before


def test_readme_table_is_current():
  assert report.update_readme_section(
    str(ROOT / 'README.md'), 'methods', tool.methods_table(), check=True
  ), 'README method table is stale: run `python tools/update_readme.py`'
  text = (ROOT / 'README.md').read_text()
  for entry in catalog.METHODS:
    assert f'| `optimflow.{entry.name}` |' in text
