"""The catalog, the public API and the README agree with each other."""

from __future__ import annotations

import pathlib
import re

import jax.numpy as jnp
import optax
import pytest

import optimflow
from optimflow import catalog

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'


def test_names_unique_and_lookup():
  assert len(set(catalog.names())) == len(catalog.METHODS)
  for name in catalog.names():
    assert catalog.get(name).name == name
  with pytest.raises(KeyError, match='unknown method .*lion'):
    catalog.get('no_such_method')


@pytest.mark.parametrize('entry', catalog.METHODS, ids=lambda m: m.name)
def test_entry_is_public_and_documented(entry):
  # The factory is public; the entry's name is too (for composite entries such
  # as `sam`, whose factory chains `optimflow.sam` before SGD, it names the
  # method's own transformation).
  assert getattr(optimflow, entry.factory.__name__) is entry.factory
  assert entry.factory.__name__ in optimflow.__all__
  assert entry.name in optimflow.__all__
  doc = entry.factory.__doc__ or ''
  assert '>>>' in doc, 'docstring needs a runnable example'
  assert 'References:' in doc and 'arxiv.org' in doc
  assert entry.url.startswith('https://arxiv.org/abs/')
  assert entry.kind in ('transformation', 'extra_args', 'solver')
  if entry.kind == 'extra_args':
    assert entry.needs, 'extra_args entries name what update needs'


@pytest.mark.parametrize('entry', catalog.METHODS, ids=lambda m: m.name)
def test_defaults_build(entry):
  tx = entry.build()
  assert isinstance(tx, optax.GradientTransformationExtraArgs)
  tx.init({'w': jnp.zeros((3, 2)), 'b': jnp.zeros(2)})


def test_catalog_is_data_only():
  # Rendering the table is tools/update_readme.py's job.
  for name in ('markdown_table', 'update_readme'):
    assert not hasattr(catalog, name), name


def test_readme_is_short_and_links_the_rest():
  text = README.read_text()
  assert len(text.splitlines()) < 200
  for target in (
    'docs/results.md',
    'docs/guide.md',
    'notebooks/',
    'optimflow/lab/examples/',
  ):
    assert f']({target})' in text, target
    assert (ROOT / target).exists(), target
  assert 'python -m optimflow readme' not in text


def test_readme_has_the_two_setup_commands():
  text = README.read_text()
  commands = [
    line
    for line in text.splitlines()
    if line.startswith('pip install ".[all]" && ')
  ]
  assert commands == [
    'pip install ".[all]" && python -m optimflow compare --task digits',
    'pip install ".[all]" && pytest -n 2',
  ]
  assert 'minutes on 2 CPU cores' in text
  ci = ROOT / '.ci' / 'run'
  if ci.exists():  # the README's test command is what CI runs
    runs = [
      line.split()
      for line in ci.read_text().splitlines()
      if line.split()[:1] == ['pytest']
    ]
    assert runs and all(r[:3] == ['pytest', '-n', '2'] for r in runs), runs


def _readme_blocks():
  text = README.read_text()
  quick = re.search(r'## Quick start\n\n```python\n(.*?)```', text, re.S)
  sam = re.search(
    r'### Sharpness-aware methods take `grad_fn`\n.*?```python\n(.*?)```',
    text,
    re.S,
  )
  return quick.group(1), sam.group(1)


def test_readme_quick_start_runs():
  block, sam_block = _readme_blocks()
  namespace: dict = {}
  exec(compile(block, 'README quick start', 'exec'), namespace)  # noqa: S102
  x = jnp.ones((8, 64))
  y = jnp.arange(8) % 10
  first = float(
    namespace['train_step'](namespace['model'], namespace['optimizer'], x, y)
  )
  for _ in range(20):
    last = float(
      namespace['train_step'](namespace['model'], namespace['optimizer'], x, y)
    )
  assert last < first
  # The grad_fn example runs in the same session, after the quick start.
  exec(compile(sam_block, 'README grad_fn', 'exec'), namespace)  # noqa: S102
  ns = namespace
  assert ns['w'].shape == (3,) and float(ns['w'].min()) > 0  # moved to 3
  assert ns['state'] is not None
  losses = [
    float(ns['sam_step'](ns['model'], ns['optimizer'], ns['x'], ns['y']))
    for _ in range(20)
  ]
  assert losses[-1] < float(ns['loss'])
  assert isinstance(ns['optimizer'].tx, optax.GradientTransformationExtraArgs)
