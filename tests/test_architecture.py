"""The layout's rules: the library never imports the lab, no import cycles.

``import optimflow`` must stay light (jax, optax, chex, numpy); the lab
(``optimflow.lab``: CLI, tasks, benchmarks, examples) imports the library and
never the reverse; ``optimflow/__main__.py`` is the one entry point that
starts the lab. The import graph is read from the source with ``ast``.
"""

import ast
import os
from pathlib import Path
import subprocess
import sys

import pytest

import optimflow

PACKAGE = Path(optimflow.__file__).resolve().parent
HEAVY = ('optimflow.lab', 'flax', 'matplotlib', 'sklearn', 'tqdm', 'torch')


def _module_name(path: Path, root: Path) -> str:
  parts = list(path.relative_to(root.parent).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts.pop()
  return '.'.join(parts)


def import_graph(root: Path) -> dict[str, set[str]]:
  """Module -> the optimflow modules it imports (at any depth of the file).

  ``from a.b import c`` counts as importing ``a.b.c`` when that is a module
  and ``a.b`` (its ``__init__``) otherwise.
  """
  files = {_module_name(p, root): p for p in root.rglob('*.py')}
  graph: dict[str, set[str]] = {}
  for name, path in files.items():
    tree = ast.parse(path.read_text(encoding='utf-8'))
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    deps = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          up = package.split('.')
          up = up[: len(up) - node.level + 1]
          base = '.'.join(up + ([base] if base else []))
        targets = [
          f'{base}.{a.name}' if f'{base}.{a.name}' in files else base
          for a in node.names
        ]
      else:
        continue
      for t in targets:
        while t and t not in files:
          t = t.rpartition('.')[0]
        if t and t != name:
          deps.add(t)
    graph[name] = deps
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as a list of modules, or None (depth-first search)."""
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(n):
    state[n] = 1
    stack.append(n)
    for m in sorted(graph.get(n, ())):
      if state.get(m) == 1:
        return stack[stack.index(m) :] + [m]
      if m not in state:
        found = visit(m)
        if found:
          return found
    stack.pop()
    state[n] = 2
    return None

  for n in sorted(graph):
    if n not in state:
      found = visit(n)
      if found:
        return found
  return None


def test_import_optimflow_loads_no_lab_or_heavy_dependency():
  code = (
    'import sys, optimflow\n'
    f'heavy = {HEAVY!r}\n'
    'bad = sorted(m for m in sys.modules\n'
    "             if any(m == h or m.startswith(h + '.') for h in heavy))\n"
    'print(bad)\n'
  )
  out = subprocess.run(
    [sys.executable, '-c', code],
    capture_output=True,
    text=True,
    check=True,
    cwd=PACKAGE.parent.parent,
    env={**os.environ, 'PYTHONPATH': str(PACKAGE.parent)},
  )
  assert out.stdout.strip() == '[]', out.stdout


def test_no_import_cycle_among_optimflow_modules():
  graph = import_graph(PACKAGE)
  assert len(graph) > 30
  assert find_cycle(graph) is None, find_cycle(graph)


def test_nothing_outside_the_lab_imports_the_lab():
  graph = import_graph(PACKAGE)
  offenders = {
    name: sorted(d for d in deps if d.startswith('optimflow.lab'))
    for name, deps in graph.items()
    if not name.startswith('optimflow.lab') and name != 'optimflow.__main__'
  }
  assert {k: v for k, v in offenders.items() if v} == {}
  # the one entry point that starts the application
  assert graph['optimflow.__main__'] == {'optimflow.lab.cli'}


def test_the_walker_finds_a_planted_cycle_and_a_planted_lab_import(tmp_path):
  pkg = tmp_path / 'optimflow'
  (pkg / 'lab').mkdir(parents=True)
  (pkg / '__init__.py').write_text('from optimflow import a\n')
  (pkg / 'a.py').write_text('from optimflow.b import f\n')
  (pkg / 'b.py').write_text('import optimflow.c\n')
  (pkg / 'c.py').write_text('def g():\n  from optimflow import a\n')
  (pkg / 'lab' / '__init__.py').write_text('')
  (pkg / 'd.py').write_text('from optimflow.lab import cli\n')
  (pkg / 'lab' / 'cli.py').write_text('')
  graph = import_graph(pkg)
  cycle = find_cycle(graph)
  assert cycle is not None
  assert set(cycle) >= {'optimflow.a', 'optimflow.b', 'optimflow.c'}
  assert 'optimflow.lab.cli' in graph['optimflow.d']
  # and a clean package has none
  (pkg / 'c.py').write_text('def g():\n  return 1\n')
  assert find_cycle(import_graph(pkg)) is None


def test_tests_use_the_installed_copy_under_ci():
  if not os.environ.get('CI'):
    pytest.skip('CI only: locally an editable install is the checkout')
  # (the CI venv may live inside the checkout: compare with its source)
  source = Path(__file__).resolve().parents[1] / 'optimflow'
  installed = Path(optimflow.__file__).resolve().parent
  assert installed != source and 'site-packages' in installed.parts
