"""The notebooks: installed code only, one project URL, and a smoke run each.

Each notebook runs with the kernel started in notebooks/, as Jupyter does, so
it can only import the installed package (CI installs it non-editable).
"""

import ast
import importlib.util
import json
from pathlib import Path
import re

import pytest

try:
  import tomllib
except ModuleNotFoundError:  # Python 3.10
  tomllib = pytest.importorskip('tomli')

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / 'notebooks').glob('*.ipynb'))
IDS = [p.name for p in NOTEBOOKS]
#: The project's URL: pyproject.toml [project.urls] is the one place for it.
REPO_URL = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project'][
  'urls'
]['Repository']
OWNER_NAME = REPO_URL.removeprefix('https://github.com/')
BADGE = (
  '[![Open In Colab](https://colab.research.google.com/assets/'
  'colab-badge.svg)](https://colab.research.google.com/github/'
  f'{OWNER_NAME}/blob/main/notebooks/{{name}})'
)
INSTALL_MD = (
  'On Colab the first code cell installs optimflow from `REPO_URL` '
  f'(`{REPO_URL}`, the `Repository` URL in `pyproject.toml`): change it, and '
  "the badge, to your fork's URL if yours differs."
)


def _cells(path):
  with open(path, encoding='utf-8') as f:
    nb = json.load(f)
  return [(c['cell_type'], ''.join(c['source']), c) for c in nb['cells']]


def _python(source):
  """A code cell's Python: IPython magics and shell escapes become ``pass``."""
  lines = source.splitlines()
  for i, line in enumerate(lines):
    body = line.lstrip()
    if body.startswith(('%', '!')):
      lines[i] = line[: len(line) - len(body)] + 'pass'
  return '\n'.join(lines)


def test_project_url_is_the_github_repository():
  assert re.fullmatch(r'https://github\.com/[\w.-]+/[\w.-]+', REPO_URL)
  urls = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']['urls']
  assert urls['Homepage'] == REPO_URL


@pytest.mark.parametrize('path', NOTEBOOKS, ids=IDS)
def test_header_badge_and_install_cell(path):
  cells = _cells(path)
  kind, text, _ = cells[0]
  assert kind == 'markdown'
  assert BADGE.format(name=path.name) in text
  assert INSTALL_MD in text  # one line: what to change for a fork
  kind, install, _ = cells[1]
  assert kind == 'code'
  # The URL in the notebook is pyproject's, and it is the only one.
  assert re.findall(r"REPO_URL = '([^']*)'", install) == [REPO_URL]
  assert "if importlib.util.find_spec('optimflow') is None:" in install
  # Its own checkout first (the kernel runs in notebooks/), else the URL.
  assert "if os.path.exists('../pyproject.toml'):" in install
  assert '%pip install -q "{CHECKOUT}[examples]"' in install
  assert '%pip install -q "optimflow[examples] @ git+{REPO_URL}"' in install
  assert 'sys.path' not in install and 'git clone' not in install
  assert "SMOKE = bool(os.environ.get('OPTIMFLOW_SMOKE'))" in install
  assert not any(c.get('outputs') for k, _, c in cells if k == 'code')


@pytest.mark.parametrize('path', NOTEBOOKS, ids=IDS)
def test_imports_only_the_installed_package(path):
  # No repository-only module (the old top-level examples/, benchmarks/) and
  # no sys.path edits: the notebook must run from the installed package.
  allowed = {
    'dataclasses',
    'importlib',
    'os',
    'flax',
    'jax',
    'matplotlib',
    'numpy',
    'optax',
    'optimflow',
  }
  for kind, source, _ in _cells(path):
    if kind != 'code':
      continue
    assert 'sys.path' not in source
    for node in ast.walk(ast.parse(_python(source))):
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        assert node.level == 0, 'relative import'
        names = [node.module]
      else:
        continue
      for name in names:
        assert name.split('.')[0] in allowed, name
        if name.startswith('optimflow'):
          assert importlib.util.find_spec(name), name


@pytest.mark.slow
@pytest.mark.parametrize('path', NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, monkeypatch):
  nbformat = pytest.importorskip('nbformat')
  nbclient = pytest.importorskip('nbclient')
  nb = nbformat.read(path, as_version=4)
  # The kernel inherits this process's environment.
  monkeypatch.setenv('OPTIMFLOW_SMOKE', '1')
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  client = nbclient.NotebookClient(
    nb,
    timeout=600,
    kernel_name='python3',
    # Started in notebooks/, as Jupyter does: only installed code imports.
    resources={'metadata': {'path': str(path.parent)}},
  )
  client.execute()  # raises CellExecutionError on any error
