"""Command line: ``python -m optimflow {compare,bench,list}``.

``compare`` trains a built-in task with several methods and seeds and prints,
per method, the final train loss, the task's test metric, milliseconds per
step (compilation excluded), optimizer-state bytes and gradient evaluations
per step (mean ± std over seeds). It writes ``results.json``, ``results.md``
and PNG plots (loss against steps and against wall time; for the 2-D
functions, the trajectories on the contour) to ``--output``::

  python -m optimflow compare --task digits --methods all --steps 300
  python -m optimflow compare --task rosenbrock --methods lion,adam \\
      --set lion.learning_rate=3e-3 --seeds 3

``bench`` times every catalog entry's jitted update against optax and the
PyTorch peers on a transformer-shaped and a ResNet-shaped tree, next to the
memory-bandwidth and matmul floors measured in the same run (see
:mod:`optimflow.lab.bench`). ``list`` prints the catalog (it needs only the
library: no flax).

Bad input (unknown task, method, tree or case, malformed ``--set``,
non-positive counts, a batch larger than the task's training set, an output
folder that cannot be written) ends with a one-line message on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
import sys
from typing import Any, NoReturn, Optional, Sequence

from optimflow import catalog
from optimflow.lab import runs as compare_lib
from optimflow.lab.runs import BASELINES
from optimflow.lab.runs import TASKS
from optimflow.lab.runs import compare
from optimflow.lab.runs import default_methods
from optimflow.lab.runs import method_spec
from optimflow.lab.runs import results_table
from optimflow.lab.runs import valid_methods

__all__ = (
  'BASELINES',
  'TASKS',
  'build_parser',
  'compare',
  'default_methods',
  'main',
  'method_spec',
  'parse_set',
  'results_table',
  'valid_methods',
)


class _Parser(argparse.ArgumentParser):
  """Reports every error as one line on stderr and exits with status 2."""

  def error(self, message: str) -> NoReturn:
    message = ' '.join(str(message).split())
    self.exit(2, f'{self.prog}: error: {message}\n')


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
      f'expected a positive integer, got {text!r}'
    ) from None
  if value < 1:
    raise argparse.ArgumentTypeError(
      f'expected a positive integer, got {value}'
    )
  return value


_WORDS = {'true': True, 'false': False, 'none': None, 'null': None}


def parse_set(text: str) -> tuple[str, str, Any]:
  """Parses ``--set method.key=value`` into ``(method, key, value)``.

  The method is everything before the last dot of the left-hand side (so
  ``optax.lion.learning_rate=1e-3`` names ``optax.lion``); the value is a
  Python literal (``1e-3``, ``0.9``, ``('huber', 0.1)``, ``None``,
  ``true``), else the plain string.

  Raises:
    ValueError: no ``=``, no dot, or an empty part.

  Examples:
    >>> from optimflow.lab.cli import parse_set
    >>> parse_set("lion_kappa.kappa=('huber', 0.1)")
    ('lion_kappa', 'kappa', ('huber', 0.1))
    >>> parse_set('optax.lion.learning_rate=1e-3')
    ('optax.lion', 'learning_rate', 0.001)
    >>> parse_set('swan.output_scale=unit_rms')
    ('swan', 'output_scale', 'unit_rms')
  """
  lhs, eq, rhs = text.partition('=')
  method, dot, key = lhs.rpartition('.')
  method, key, rhs = method.strip(), key.strip(), rhs.strip()
  if not eq or not dot or not method or not key or not rhs:
    raise ValueError(
      f'malformed --set {text!r}: expected method.key=value, '
      'e.g. lion.learning_rate=3e-4'
    )
  if rhs.lower() in _WORDS:
    return method, key, _WORDS[rhs.lower()]
  try:
    value = ast.literal_eval(rhs)
  except (ValueError, SyntaxError):
    value = rhs
  return method, key, value


def _task_lines() -> str:
  lines = []
  for name in TASKS:
    try:
      task = compare_lib.get_task(name)
      lines.append(
        f'  {name:<11} {task.summary} ({task.steps} steps; '
        f'metric: {task.metric.name})'
      )
    except ImportError:  # flax missing: main() reports it
      lines.append(f'  {name}')
  return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
  """The argument parser of ``python -m optimflow``."""
  fmt = argparse.RawDescriptionHelpFormatter
  text = (
    __doc__.replace('``', '')
    .replace('::', ':')
    .replace(':mod:`optimflow.lab.bench`', 'optimflow/lab/bench/')
  )
  parser = _Parser(prog='optimflow', description=text, formatter_class=fmt)
  sub = parser.add_subparsers(
    dest='command', required=True, parser_class=_Parser, metavar='COMMAND'
  )
  epilog = (
    'tasks:\n' + _task_lines() + '\n\n'
    'methods: catalog entries (built with their defaults on networks, '
    'their test_kwargs on 2-D functions; `python -m optimflow list`):\n  '
    + ', '.join(compare_lib.catalog_methods())
    + '\n'
    'optax baselines:\n  ' + ', '.join(BASELINES) + '\n'
    '"all" runs every one of them; without --methods the catalog entries '
    'and adamw run.\n\n'
    'outputs in --output: results.json (settings, machine, per method '
    'summaries, curves per seed, trajectories), results.md (the table, '
    'hyperparameters, plots), loss_vs_steps.png, loss_vs_time.png and, for '
    '2-D functions, trajectories.png.\n\n'
    'examples:\n'
    '  python -m optimflow compare --task digits --methods all --steps 300\n'
    '  python -m optimflow compare --task charlm --methods muon,adamw '
    '--set muon.learning_rate=0.01\n'
    '  python -m optimflow compare --task rastrigin --methods all --seeds 3'
  )
  cmp = sub.add_parser(
    'compare',
    help='train a task with several methods, side by side',
    description='Train a built-in task with several methods and seeds; '
    'print a table and write results.json, results.md and plots.',
    epilog=epilog,
    formatter_class=fmt,
  )
  cmp.add_argument(
    '--task',
    default='digits',
    help=f'one of: {", ".join(TASKS)} (default digits)',
  )
  cmp.add_argument(
    '--methods',
    default=None,
    help='comma-separated catalog names and optax baselines, '
    'or "all" (default: every trainable catalog entry and '
    'adamw)',
  )
  cmp.add_argument(
    '--set',
    action='append',
    default=[],
    dest='overrides',
    metavar='METHOD.KEY=VALUE',
    help='override a hyperparameter of one method (repeatable), '
    'e.g. --set lion.learning_rate=1e-4 --set '
    '"lion_kappa.kappa=(\'huber\', 0.1)"; the value is a '
    'Python literal or a plain string',
  )
  cmp.add_argument(
    '--steps',
    type=_positive_int,
    default=None,
    help="optimizer steps per run (default: the task's)",
  )
  cmp.add_argument(
    '--seeds',
    type=_positive_int,
    default=1,
    help='runs per method, seeds 0..K-1 (default 1); the seed '
    'fixes the initialisation and batch order, or the 2-D '
    'start point (seed 0: the canonical one)',
  )
  cmp.add_argument(
    '--batch-size',
    type=_positive_int,
    default=None,
    help='examples per step on network tasks, at most the training '
    "set's size (default: the task's: 128, charlm 32)",
  )
  cmp.add_argument(
    '--tune-lr',
    action='store_true',
    help='2-D functions only: run each method with 9 learning '
    'rates (1/100 to 100 times its default, log grid) and keep '
    "the one with the lowest final loss, as pytorch-optimizer's "
    'trajectory plots do',
  )
  cmp.add_argument(
    '--output',
    type=Path,
    default=Path('runs/compare'),
    help='folder for the outputs (default runs/compare)',
  )
  cmp.add_argument(
    '--no-progress',
    action='store_true',
    help='hide the progress bars (one per run, live loss)',
  )
  cmp.set_defaults(subparser=cmp)

  bench = sub.add_parser(
    'bench',
    help='step time and state bytes against optax, PyTorch peers '
    'and the hardware floors',
    description='Time the jitted update of every catalog entry, its optax '
    'equivalents and (when torch is installed) the PyTorch peers on '
    'parameter trees, round-robin in one run, next to two floors measured '
    'in the same run: memory bandwidth (bytes the update must move / '
    'measured copy bandwidth) and matmul (matmul FLOPs / measured matmul '
    'rate). Writes bench.json and bench.md to --output.',
    formatter_class=fmt,
  )
  bench.add_argument(
    '--trees',
    default='transformer,resnet',
    help='comma-separated parameter trees (default '
    'transformer,resnet; tiny-transformer and tiny-resnet '
    'for smoke runs)',
  )
  bench.add_argument(
    '--cases',
    default='all',
    help='comma-separated case names or "all" (baselines of '
    'the chosen cases are added)',
  )
  bench.add_argument(
    '--reps',
    type=_positive_int,
    default=10,
    help='timed round-robin repetitions (default 10)',
  )
  bench.add_argument(
    '--no-torch', action='store_true', help='skip the PyTorch peers'
  )
  bench.add_argument(
    '--apply',
    action='store_true',
    help='time update + apply_updates with parameters and '
    "state donated (a training step's optimizer part) "
    'instead of the update alone',
  )
  bench.add_argument(
    '--output',
    type=Path,
    default=Path('runs/bench'),
    help='folder for bench.json and bench.md (default runs/bench)',
  )
  bench.set_defaults(subparser=bench)

  lst = sub.add_parser('list', help='print the catalog (name, family, paper)')
  lst.set_defaults(subparser=lst)

  return parser


def _methods(parser, text: Optional[str]) -> list[str]:
  if text is None:
    return default_methods()
  names = list(dict.fromkeys(n.strip() for n in text.split(',') if n.strip()))
  if not names:
    parser.error(
      '--methods is empty; valid methods: all, ' + ', '.join(valid_methods())
    )
  if 'all' in names:  # every method once: no deprecated alias
    every = [n for n in valid_methods() if n not in catalog.RENAMED]
    names = list(
      dict.fromkeys(
        n for name in names for n in (every if name == 'all' else [name])
      )
    )
  unknown = [n for n in names if n not in valid_methods()]
  if unknown:
    parser.error(
      f'unknown method(s) {", ".join(unknown)}; valid methods: '
      'all, ' + ', '.join(valid_methods())
    )
  return names


def _overrides(parser, texts: Sequence[str]) -> dict[str, dict[str, Any]]:
  out: dict[str, dict[str, Any]] = {}
  for text in texts:
    try:
      method, key, value = parse_set(text)
    except ValueError as e:
      parser.error(str(e))
    out.setdefault(method, {})[key] = value
  return out


def check_output(parser: argparse.ArgumentParser, folder: Path) -> None:
  """``parser.error`` unless ``folder`` can be created and written."""
  try:
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / '.write_test'
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    parser.error(
      f'cannot write to output folder {str(folder)!r}: {e.strerror or e}'
    )


def _list() -> int:
  from optimflow.lab import report  # pylint: disable=g-import-not-at-top

  print(
    report.format_table(
      [
        {'name': m.name, 'family': m.family, 'kind': m.kind, 'paper': m.paper}
        for m in catalog.METHODS
      ]
    )
  )
  return 0


def _check_batch_size(parser, task, batch_size: Optional[int]) -> None:
  """``parser.error`` when ``batch_size`` exceeds the task's training set."""
  if batch_size is None or not isinstance(task, compare_lib.NetworkTask):
    return
  n_train = len(task.load().x_train)
  if batch_size > n_train:
    parser.error(
      f'--batch-size {batch_size} is larger than the {task.name} training '
      f'set ({n_train} examples); use at most {n_train}'
    )


def _compare(parser, args) -> int:
  if args.task not in TASKS:
    parser.error(
      f'unknown task {args.task!r}; valid tasks: ' + ', '.join(TASKS)
    )
  methods = _methods(parser, args.methods)
  overrides = _overrides(parser, args.overrides)
  task = compare_lib.get_task(args.task)
  if args.tune_lr and not isinstance(task, compare_lib.FunctionTask):
    parser.error(
      f'--tune-lr is for the 2-D functions, not {args.task}; '
      'use --set METHOD.learning_rate=VALUE'
    )
  try:  # every method is built before anything trains
    compare_lib.build_specs(methods, task.hyper, overrides)
  except ValueError as e:
    parser.error(str(e))
  _check_batch_size(parser, task, args.batch_size)
  check_output(parser, args.output)
  results = compare(
    args.task,
    methods,
    steps=args.steps,
    seeds=args.seeds,
    batch_size=args.batch_size,
    overrides=overrides,
    tune_lr=args.tune_lr,
    progress=not args.no_progress,
    methods_arg=None
    if args.methods is None
    else ','.join(n.strip() for n in args.methods.split(',') if n.strip()),
  )
  print(results_table(results))
  written = compare_lib.write_outputs(results, args.output)
  print('wrote ' + ', '.join(str(p) for p in written))
  return 0


def _bench(parser, args) -> int:
  from optimflow.lab import bench  # pylint: disable=g-import-not-at-top

  try:
    plan = bench.plan(
      args.trees.split(','),
      args.cases,
      torch=not args.no_torch,
      apply=args.apply,
    )
  except (ValueError, ImportError) as e:
    parser.error(str(e))
  check_output(parser, args.output)
  result = bench.run(plan, reps=args.reps, progress=True, output=args.output)
  print(bench.markdown(result))
  written = bench.write_outputs(result, args.output)
  print('wrote ' + ', '.join(str(p) for p in written))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of ``python -m optimflow`` and the ``optimflow`` script."""
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command == 'list':
    return _list()
  if args.command == 'bench':
    return _bench(args.subparser, args)
  try:  # the compare tasks train Flax models; list and bench need no flax
    import flax  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    args.subparser.error(
      'compare needs flax and the other tools of the examples extra: '
      'pip install "optimflow[examples]"'
    )
  return _compare(args.subparser, args)


if __name__ == '__main__':
  sys.exit(main())
