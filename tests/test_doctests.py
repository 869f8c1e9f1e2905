"""Runs the ``>>>`` examples of every module of the installed optimflow.

The modules are found by walking the imported package (so CI runs the
docstrings of the copy it installed, not the checkout's files).
"""

import doctest
import importlib
import pkgutil

import pytest

import optimflow

MODULES = sorted(
  m.name for m in pkgutil.walk_packages(optimflow.__path__, 'optimflow.')
)


@pytest.mark.parametrize('name', MODULES)
def test_docstring_examples(name):
  module = importlib.import_module(name)
  finder = doctest.DocTestFinder(exclude_empty=True)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
  for test in finder.find(module, name):
    runner.run(test)
  result = runner.summarize(verbose=False)
  assert result.failed == 0, f'{result.failed} failing example(s) in {name}'
