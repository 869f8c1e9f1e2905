"""Markdown tables, machine descriptions and README sections for reports.

Shared by ``python -m optimflow compare`` and ``python -m optimflow bench``:
both write a markdown report, and the README's "Results" section is generated
from their committed outputs with :func:`update_readme_section`.

Examples:
  >>> from optimflow import report
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


def markdown_table(rows: Sequence[dict[str, Any]],
                   align: Optional[str] = None) -> str:
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
    raise ValueError(f'align={align!r} must hold one of "l"/"r" per column '
                     f'({len(keys)} columns).')
  cell = lambda v: str(v).replace('|', '\\|')
  lines = ['| ' + ' | '.join(cell(k) for k in keys) + ' |',
           '|' + '|'.join(':---' if a == 'l' else '---:' for a in align) + '|']
  lines += ['| ' + ' | '.join(cell(r[k]) for k in keys) + ' |' for r in rows]
  return '\n'.join(lines)


def machine_info() -> dict[str, Any]:
  """Where a measurement ran: CPU, core count, JAX backend and devices.

  Examples:
    >>> from optimflow import report
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
    >>> from optimflow import report
    >>> report.describe_machine({'cpu': 'Xeon', 'cpu_count': 2,
    ...                          'backend': 'cpu', 'devices': ['cpu'],
    ...                          'jax': '0.10.2', 'python': '3.12.3'})
    '2 CPU cores (Xeon), jax 0.10.2 on cpu (1 device: cpu)'
  """
  devices = info['devices']
  kinds = ', '.join(sorted(set(devices)))
  plural = 's' if len(devices) != 1 else ''
  return (f'{info["cpu_count"]} CPU cores ({info["cpu"]}), jax {info["jax"]} '
          f'on {info["backend"]} ({len(devices)} device{plural}: {kinds})')


def _markers(name: str) -> tuple[str, str]:
  return f'<!-- {name}:start', f'<!-- {name}:end -->'


def update_readme_section(path: str, name: str, text: str, *,
                          check: bool = False) -> bool:
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
  match = re.search(re.escape(start) + r'[^\n]*\n(.*?)' + re.escape(end), old,
                    flags=re.S)
  if match is None:
    raise ValueError(f'{path} lacks the markers "{start} ... -->" and '
                     f'"{end}"')
  new = old[:match.start(1)] + text.rstrip('\n') + '\n' + old[match.end(1):]
  if not check and new != old:
    with open(path, 'w', encoding='utf-8') as f:
      f.write(new)
  return new == old


#: Where the committed runs of the README's "Results" section live.
RESULTS_ROOT = 'docs/results'
#: Where the committed runs ran (the README says so).
MACHINE = ('a shared 2-core CPU box (AMD EPYC, other jobs running at the '
           'same time)')
#: compare runs shown in the README, in order, and the plots shown for each.
README_RUNS = {
    'digits': ('loss_vs_steps.png',),
    'digits-cnn': (),
    'charlm': ('loss_vs_time.png',),
    'rosenbrock': ('trajectories.png',),
    'rastrigin': ('trajectories.png',),
}


def results_section(root: str = RESULTS_ROOT,
                    machine: str = MACHINE) -> str:
  """The README's "Results" section, from the runs committed under ``root``.

  Each ``root/<task>/results.json`` of :data:`README_RUNS` gives its command,
  settings, table and chosen plots; ``root/bench/bench.json`` and
  ``root/bench-apply/bench.json`` (``bench --apply``) give the bench tables. Missing runs are skipped.

  Args:
    root: the folder of the runs.
    machine: how to describe where they ran (the JSON files hold the
      measured details).

  Returns:
    The markdown of the section.
  """
  import json  # pylint: disable=g-import-not-at-top
  from optimflow import bench  # pylint: disable=g-import-not-at-top
  from optimflow import compare  # pylint: disable=g-import-not-at-top

  parts = [f'Generated by `python -m optimflow readme` from the runs '
           f'committed in [`{root}/`]({root}/), each made by the command '
           f'shown, on {machine}: wall times are noisy (ratios within one '
           'bench run are the reliable part); losses and accuracies are '
           'deterministic given the seed.']
  for task, plots in README_RUNS.items():
    folder = f'{root}/{task}'
    path = os.path.join(folder, 'results.json')
    if not os.path.exists(path):
      continue
    with open(path, encoding='utf-8') as f:
      res = json.load(f)
    text = [f'### compare: {task}', '',
            compare.summary_markdown(res, folder)]
    if plots:
      text += [''] + [f'![{compare.PLOTS[p]}]({folder}/{p})' for p in plots]
    text += ['', f'Hyperparameters and all plots: [`{folder}/results.md`]'
             f'({folder}/results.md).']
    parts.append('\n'.join(text))
  for folder, title in (('bench', 'update step time and the floors'),
                        ('bench-apply', 'training-step time (update + '
                         'apply_updates)')):
    path = os.path.join(root, folder, 'bench.json')
    if os.path.exists(path):
      with open(path, encoding='utf-8') as f:
        parts.append(f'### bench: {title}\n\n'
                     + bench.markdown(json.load(f), heading='####').rstrip())
  return '\n\n'.join(parts)
