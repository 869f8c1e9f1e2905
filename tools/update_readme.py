"""Regenerates the generated parts of README.md and docs/results.md.

A developer script, not a user command (it needs the repository checkout):

  python tools/update_readme.py          # rewrite what is stale
  python tools/update_readme.py --check  # write nothing; exit 1 when stale

- README.md's method table, between ``<!-- methods:start ... -->`` and
  ``<!-- methods:end -->``, from :data:`optimflow.catalog.METHODS`;
- docs/results.md's Results section, between ``<!-- results:start ... -->``
  and ``<!-- results:end -->``, from the runs committed in ``docs/results/``
  (:func:`optimflow.lab.results.results_section`, with links relative to
  ``docs/``).

The tests import this file by path (it is not part of the installed package)
and check that both generated parts are current.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys
from typing import Optional, Sequence

#: The repository root (this file lives in ``tools/``).
ROOT = Path(__file__).resolve().parents[1]
README = ROOT / 'README.md'
RESULTS = ROOT / 'docs' / 'results.md'


def methods_table() -> str:
  """README's method table: one row per catalog entry."""
  from optimflow import catalog  # pylint: disable=g-import-not-at-top

  cell = lambda text: text.replace('|', '\\|')
  rows = [
    '| method | family | what it does | paper |',
    '|---|---|---|---|',
  ]
  for m in catalog.METHODS:
    rows.append(
      f'| `optimflow.{m.name}` | {m.family} | {cell(m.summary)} | '
      f'[{cell(m.paper)}]({m.url}) |'
    )
  return '\n'.join(rows)


def results_markdown() -> str:
  """docs/results.md's Results section, its links relative to ``docs/``.

  The section is rendered from the repository root, so the commands it
  shows read as run there (``--output docs/results/digits``); only the link
  targets are rewritten to be relative to the page.
  """
  from optimflow.lab import results  # pylint: disable=g-import-not-at-top

  old = os.getcwd()
  os.chdir(ROOT)  # results_section reads and links relative to the cwd
  try:
    text = results.results_section()
  finally:
    os.chdir(old)
  prefix = os.path.relpath(ROOT / results.RESULTS_ROOT, RESULTS.parent)
  return text.replace(f']({results.RESULTS_ROOT}/', f']({prefix}/')


def update(
  readme: Path = README, results_md: Path = RESULTS, *, check: bool = False
) -> dict[str, bool]:
  """Rewrites (or with ``check=True`` only compares) both generated parts.

  Args:
    readme: the README holding the ``methods`` markers.
    results_md: the page holding the ``results`` markers (its links are
      relative to the checkout's ``docs/``).
    check: write nothing.

  Returns:
    ``{'method table': current, 'Results': current}``: whether each file
    already held the generated text.

  Raises:
    ValueError: a file lacks its markers.
  """
  from optimflow.lab import report  # pylint: disable=g-import-not-at-top

  return {
    'method table': report.update_readme_section(
      str(readme), 'methods', methods_table(), check=check
    ),
    'Results': report.update_readme_section(
      str(results_md), 'results', results_markdown(), check=check
    ),
  }


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
    prog='tools/update_readme.py', description=__doc__.split('\n\n')[0]
  )
  parser.add_argument('--readme', type=Path, default=README)
  parser.add_argument('--results', type=Path, default=RESULTS)
  parser.add_argument(
    '--check',
    action='store_true',
    help='write nothing; exit 1 when a part is stale',
  )
  args = parser.parse_args(argv)
  state = update(args.readme, args.results, check=args.check)
  paths = {'method table': args.readme, 'Results': args.results}
  for name, current in state.items():
    word = 'current' if current else ('stale' if args.check else 'rewritten')
    print(f'{paths[name]}: {name} {word}')
  return 1 if args.check and not all(state.values()) else 0


if __name__ == '__main__':
  sys.exit(main())
