"""Markdown tables, machine descriptions and README sections for reports.

Shared by ``python -m optimflow compare`` and ``python -m optimflow bench``:
both write a markdown report, and the README's "Results" section is generated
from their committed outputs with :func:`update_readme_section`.

Examples:
  >>> from optimflow.lab import report
  >>> print(report.markdown_table([{'method': 'lion', 'ms': 1.5}],
  ...                             align='lr'))
  | method | ms |
  |:---|---:|
  | lion | 1.5 |
"""

from __future__ import annotations

import os
import platform
import re
from typing import Any, Optional, Sequence


def markdown_table(
  rows: Sequence[dict[str, Any]], align: Optional[str] = None
) -> str:
  """A GitHub markdown table, one column per key of the first row.

  Args:
    rows: one dict per row, same keys; cells are written with ``str``
      (format numbers before); ``|`` in a cell is escaped.
    align: one letter per column, ``'l'`` or ``'r'`` (default: all left).

  Returns:
    The table (header, rule, rows), without a trailing newline; ``''`` for
    no rows.
  """
  if not rows:
    return ''
  keys = list(rows[0])
  align = align or 'l' * len(keys)
  if len(align) != len(keys) or set(align) - set('lr'):
    raise ValueError(
      f'align={align!r} must hold one of "l"/"r" per column '
      f'({len(keys)} columns).'
    )
  cell = lambda v: str(v).replace('|', '\\|')
  lines = [
    '| ' + ' | '.join(cell(k) for k in keys) + ' |',
    '|' + '|'.join(':---' if a == 'l' else '---:' for a in align) + '|',
  ]
  lines += ['| ' + ' | '.join(cell(r[k]) for k in keys) + ' |' for r in rows]
  return '\n'.join(lines)


def format_table(rows: list[dict[str, Any]], floatfmt: str = '.4g') -> str:
  """A plain-text table: one column per key of the first row.

  Args:
    rows: one dict per row, same keys.
    floatfmt: format of float cells.

  Returns:
    The table as a string (header, rule, rows).

  Examples:
    >>> from optimflow.lab import report
    >>> print(report.format_table([{'method': 'lion', 'acc': 0.97512},
    ...                            {'method': 'adamw', 'acc': 0.9}]))
    method  acc
    ------  ------
    lion    0.9751
    adamw   0.9
  """
  if not rows:
    return ''
  keys = list(rows[0])

  def cell(v):
    return format(v, floatfmt) if isinstance(v, float) else str(v)

  cells = [[cell(r[k]) for k in keys] for r in rows]
  widths = [
    max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)
  ]
  lines = [
    '  '.join(k.ljust(w) for k, w in zip(keys, widths)).rstrip(),
    '  '.join('-' * w for w in widths),
  ]
  lines += [
    '  '.join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells
  ]
  return '\n'.join(lines)


def machine_info() -> dict[str, Any]:
  """Where a measurement ran: CPU, core count, JAX backend and devices.

  Examples:
    >>> from optimflow.lab import report
    >>> info = report.machine_info()
    >>> sorted(info)
    ['backend', 'cpu', 'cpu_count', 'devices', 'jax', 'python']
  """
  import jax  # pylint: disable=g-import-not-at-top

  cpu = platform.processor() or platform.machine()
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          cpu = line.split(':', 1)[1].strip()
          break
  except OSError:
    pass
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:
    cores = os.cpu_count()
  return {
    'cpu': cpu,
    'cpu_count': cores,
    'backend': jax.default_backend(),
    'devices': [str(d.device_kind) for d in jax.devices()],
    'jax': jax.__version__,
    'python': platform.python_version(),
  }


def describe_machine(info: dict[str, Any]) -> str:
  """One line for a report, e.g. ``'2 CPU cores (Intel Xeon), jax 0.10.2
  on cpu'``.

  Examples:
    >>> from optimflow.lab import report
    >>> report.describe_machine({'cpu': 'Xeon', 'cpu_count': 2,
    ...                          'backend': 'cpu', 'devices': ['cpu'],
    ...                          'jax': '0.10.2', 'python': '3.12.3'})
    '2 CPU cores (Xeon), jax 0.10.2 on cpu (1 device: cpu)'
  """
  devices = info['devices']
  kinds = ', '.join(sorted(set(devices)))
  plural = 's' if len(devices) != 1 else ''
  return (
    f'{info["cpu_count"]} CPU cores ({info["cpu"]}), jax {info["jax"]} '
    f'on {info["backend"]} ({len(devices)} device{plural}: {kinds})'
  )


def _markers(name: str) -> tuple[str, str]:
  return f'<!-- {name}:start', f'<!-- {name}:end -->'


def update_readme_section(
  path: str, name: str, text: str, *, check: bool = False
) -> bool:
  """Replaces the text between ``<!-- name:start ... -->`` and
  ``<!-- name:end -->`` in ``path``.

  The start marker line is kept as it is (it may say how the section is
  generated); only the lines between the markers change.

  Args:
    path: the markdown file.
    name: the section's marker name.
    text: the new content.
    check: only compare, write nothing.

  Returns:
    Whether the file already held ``text`` there.

  Raises:
    ValueError: the markers are missing.
  """
  start, end = _markers(name)
  with open(path, encoding='utf-8') as f:
    old = f.read()
  match = re.search(
    re.escape(start) + r'[^\n]*\n(.*?)' + re.escape(end), old, flags=re.S
  )
  if match is None:
    raise ValueError(f'{path} lacks the markers "{start} ... -->" and "{end}"')
  new = old[: match.start(1)] + text.rstrip('\n') + '\n' + old[match.end(1) :]
  if not check and new != old:
    with open(path, 'w', encoding='utf-8') as f:
      f.write(new)
  return new == old
