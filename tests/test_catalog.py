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


def test_readme_table_is_current():
  assert catalog.update_readme(str(README), check=True), (
      'README method table is stale: run `python -m optimflow readme`')
  text = README.read_text()
  for entry in catalog.METHODS:
    assert f'`optimflow.{entry.name}`' in text


def test_readme_has_the_two_setup_commands():
  text = README.read_text()
  assert 'pip install ".[all]" && python -m optimflow compare --task digits' in text
  assert 'pip install ".[all]" && pytest' in text


def test_readme_quick_start_runs():
  block = re.search(r'## Quick start\n\n```python\n(.*?)```', README.read_text(),
                    re.S).group(1)
  namespace: dict = {}
  exec(compile(block, 'README quick start', 'exec'), namespace)  # noqa: S102
  x = jnp.ones((8, 64))
  y = jnp.arange(8) % 10
  first = float(namespace['train_step'](namespace['model'],
                                        namespace['optimizer'], x, y))
  for _ in range(20):
    last = float(namespace['train_step'](namespace['model'],
                                         namespace['optimizer'], x, y))
  assert last < first
