"""Runnable examples, one per paper; importable from the repository root.

Each module keeps its logic in functions (the notebooks import them) and has a
``main`` with ``--smoke`` (or ``OPTIMFLOW_SMOKE=1``) and ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence


def smoke_from_env() -> bool:
  """True when ``OPTIMFLOW_SMOKE`` is set to a non-empty value."""
  return bool(os.environ.get('OPTIMFLOW_SMOKE'))


def parse_args(
  name: str,
  description: str,
  argv: Optional[Sequence[str]] = None,
  parser: Optional[argparse.ArgumentParser] = None,
) -> argparse.Namespace:
  """Parses ``--smoke`` and ``--output`` (default ``runs/<name>``).

  Args:
    name: the example's name (output folder).
    description: the ``--help`` text.
    argv: arguments; ``sys.argv[1:]`` by default.
    parser: a parser with example-specific options to extend.

  Returns:
    The namespace; ``smoke`` is also true when ``OPTIMFLOW_SMOKE`` is set, and
    ``output`` is a created :class:`Path`.
  """
  parser = parser or argparse.ArgumentParser(description=description)
  parser.add_argument(
    '--smoke',
    action='store_true',
    help='tiny run that finishes in seconds (also: OPTIMFLOW_SMOKE=1)',
  )
  parser.add_argument(
    '--output',
    type=Path,
    default=Path('runs') / name,
    help='folder for the figure and results',
  )
  args = parser.parse_args(argv)
  args.smoke = args.smoke or smoke_from_env()
  args.output.mkdir(parents=True, exist_ok=True)
  return args


def save_figure(
  make_figure: Callable[..., Any], path: Path, *args: Any, dpi: int = 110
) -> Path:
  """Saves ``make_figure(*args)`` to ``path`` and closes it (for scripts).

  Switches matplotlib to the Agg backend first, so that ``main`` runs on a
  machine without a display (CI, a server); notebooks call ``make_figure``
  themselves and keep their inline backend.

  Args:
    make_figure: returns a :class:`matplotlib.figure.Figure`.
    path: the PNG to write.
    *args: passed to ``make_figure``.
    dpi: resolution.

  Returns:
    ``path``.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig = make_figure(*args)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


def write_results(
  folder: Path, results: dict[str, Any], *also_written: Path, **json_kwargs: Any
) -> dict[str, Any]:
  """Writes ``folder/results.json``, prints what was written, returns it.

  Args:
    folder: the output folder.
    results: JSON-serialisable results.
    *also_written: other files the example wrote (figures), for the message.
    **json_kwargs: passed to :func:`json.dumps` (e.g. ``default=float``).

  Returns:
    ``results``.
  """
  path = Path(folder) / 'results.json'
  path.write_text(json.dumps(results, indent=2, **json_kwargs))
  print('\nwrote ' + ' and '.join(str(p) for p in (*also_written, path)))
  return results
