"""Command line: ``python -m optimflow compare`` and ``python -m optimflow list``.

``compare`` trains a small built-in task with several methods and seeds and
reports, per method, the final train loss, test accuracy, milliseconds per step
(compilation excluded), optimizer-state bytes and gradient evaluations per step
(mean +- std over seeds). It writes ``results.json`` and ``curves.png`` (train
loss against step) to ``--output``::

  python -m optimflow compare --task digits --methods lion,adamw --steps 300

Methods are catalog names (built with their ``defaults``; those of kind
``'extra_args'`` get ``grad_fn`` from :func:`optimflow.tasks.grad_fn_builder`)
or the optax baselines in :data:`BASELINES`. ``list`` prints the catalog.

Bad input (unknown task or method, non-positive counts, an output folder that
cannot be written) ends with a one-line message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence

import numpy as np
import optax

from optimflow import catalog

# Optax baselines: name -> (factory, its hyperparameters), tuned for the
# digits MLP.
BASELINES: dict[str, tuple[Callable[..., optax.GradientTransformation],
                           dict[str, Any]]] = {
    'sgd': (optax.sgd, dict(learning_rate=0.1)),
    'momentum': (optax.sgd, dict(learning_rate=0.05, momentum=0.9)),
    'adam': (optax.adam, dict(learning_rate=1e-3)),
    'adamw': (optax.adamw, dict(learning_rate=1e-3, weight_decay=1e-2)),
}

TRAINABLE_KINDS = ('transformation', 'extra_args')


@dataclasses.dataclass(frozen=True)
class Task:
  """A built-in task: its data, a model factory and a loss."""

  name: str
  load: Callable[[], Any]
  model: Callable[[int], Any]  # seed -> NNX model
  summary: str


def _digits_task() -> Task:
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from optimflow import tasks  # pylint: disable=g-import-not-at-top

  return Task('digits', tasks.load_digits,
              lambda seed: tasks.MLP(rngs=nnx.Rngs(seed)),
              'scikit-learn digits, MLP 64-128-128-10')


TASKS: dict[str, Callable[[], Task]] = {'digits': _digits_task}


def default_methods() -> list[str]:
  """Every trainable catalog entry, then ``adamw``."""
  return [m.name for m in catalog.METHODS if m.kind in TRAINABLE_KINDS] + [
      'adamw']


def valid_methods() -> list[str]:
  return [m.name for m in catalog.METHODS if m.kind in TRAINABLE_KINDS] + list(
      BASELINES)


@dataclasses.dataclass(frozen=True)
class Spec:
  """A method ready to train: transformation and what its update needs."""

  name: str
  source: str  # 'catalog' or 'optax'
  hyperparameters: dict[str, Any]
  tx: optax.GradientTransformation
  needs: tuple[str, ...] = ()


def method_spec(name: str) -> Spec:
  """Builds the method called ``name`` (catalog entry or optax baseline)."""
  if name in BASELINES:
    factory, kwargs = BASELINES[name]
    return Spec(name, 'optax', dict(kwargs), factory(**kwargs))
  entry = catalog.get(name)
  if entry.kind not in TRAINABLE_KINDS:
    raise ValueError(f'method {name!r} is a {entry.kind}, not an optimizer '
                     'the compare command can train')
  unsupported = set(entry.needs) - {'grad_fn'}
  if unsupported:
    raise ValueError(f'method {name!r} needs {sorted(unsupported)}, which '
                     'the compare command cannot provide')
  return Spec(name, 'catalog', dict(entry.defaults), entry.build(),
              tuple(entry.needs))


class _Parser(argparse.ArgumentParser):
  """Reports every error as one line on stderr and exits with status 2."""

  def error(self, message: str) -> NoReturn:
    self.exit(2, f'{self.prog}: error: {message}\n')


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'expected a positive integer, got {text!r}') from None
  if value < 1:
    raise argparse.ArgumentTypeError(
        f'expected a positive integer, got {value}')
  return value


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog='optimflow', description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest='command', required=True,
                              parser_class=_Parser)
  compare = sub.add_parser('compare', help='train a task with several methods')
  compare.add_argument('--task', default='digits',
                       help=f'one of: {", ".join(TASKS)} (default digits)')
  compare.add_argument('--methods', default=None,
                       help='comma-separated catalog names or optax baselines '
                            f'({", ".join(BASELINES)}); default: every '
                            'trainable catalog entry and adamw')
  compare.add_argument('--steps', type=_positive_int, default=500,
                       help='optimizer steps per run (default 500)')
  compare.add_argument('--seeds', type=_positive_int, default=1,
                       help='number of seeds 0..K-1 (default 1)')
  compare.add_argument('--batch-size', type=_positive_int, default=128)
  compare.add_argument('--output', type=Path, default=Path('runs/compare'),
                       help='folder for results.json and curves.png '
                            '(default runs/compare)')
  compare.add_argument('--no-progress', action='store_true',
                       help='hide the progress bars')
  compare.set_defaults(subparser=compare)
  sub.add_parser('list', help='print the catalog')
  return parser


def _parse_methods(parser, text: Optional[str]) -> list[str]:
  if text is None:
    return default_methods()
  names = list(dict.fromkeys(n.strip() for n in text.split(',') if n.strip()))
  if not names:
    parser.error('--methods is empty; valid methods: '
                 + ', '.join(valid_methods()))
  unknown = [n for n in names if n not in valid_methods()]
  if unknown:
    parser.error(f'unknown method(s) {", ".join(unknown)}; valid methods: '
                 + ', '.join(valid_methods()))
  return names


def _check_output(parser, folder: Path) -> None:
  try:
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / '.write_test'
    probe.write_text('')
    probe.unlink()
  except OSError as e:
    parser.error(f'cannot write to output folder {str(folder)!r}: '
                 f'{e.strerror or e}')


def _summary(values: Sequence[float]) -> dict[str, Any]:
  arr = np.asarray(values, np.float64)
  std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
  return {'mean': float(arr.mean()), 'std': std, 'values': arr.tolist()}


def _cell(stat: dict[str, Any], fmt: str) -> str:
  if len(stat['values']) == 1:
    return format(stat['mean'], fmt)
  return f'{format(stat["mean"], fmt)} ± {format(stat["std"], fmt)}'


def compare(task_name: str, method_names: Sequence[str], *, steps: int,
            seeds: int, batch_size: int = 128, progress: bool = True
            ) -> dict[str, Any]:
  """Trains ``task_name`` with each method and seed.

  Args:
    task_name: a key of :data:`TASKS`.
    method_names: catalog names or :data:`BASELINES` keys.
    steps: steps per run.
    seeds: runs per method, seeds ``0..seeds-1`` (model init and batch order).
    batch_size: examples per step.
    progress: tqdm bar per run.

  Returns:
    The content of ``results.json``: settings and, per method, summaries
    (mean, std, per-seed values) of every column and the loss curves.
  """
  from optimflow import tasks  # pylint: disable=g-import-not-at-top

  task = TASKS[task_name]()
  data = task.load()
  results = []
  for name in method_names:
    spec = method_spec(name)
    builder = (tasks.grad_fn_builder(tasks.loss_fn)
               if 'grad_fn' in spec.needs else None)
    hists = []
    for seed in range(seeds):
      hists.append(tasks.fit(task.model(seed), spec.tx, data, steps=steps,
                             batch_size=batch_size, seed=seed,
                             progress=progress, desc=f'{name} seed {seed}',
                             grad_fn_builder=builder))
    results.append({
        'method': name,
        'source': spec.source,
        'hyperparameters': spec.hyperparameters,
        'train_loss': _summary([h.final['train_loss'] for h in hists]),
        'test_accuracy': _summary([h.final['test_accuracy'] for h in hists]),
        'ms_per_step': _summary([h.ms_per_step for h in hists]),
        'opt_state_bytes': hists[0].opt_state_bytes,
        'grad_evals_per_step': hists[0].grad_evals_per_step,
        'curves': {
            'steps': hists[0].steps.tolist(),
            'train_loss': [h.train_loss.tolist() for h in hists],
            'eval_steps': hists[0].eval_steps.tolist(),
            'test_accuracy': [h.test_accuracy.tolist() for h in hists],
        },
    })
  return {'task': task_name, 'task_summary': task.summary, 'steps': steps,
          'seeds': list(range(seeds)), 'batch_size': batch_size,
          'methods': list(method_names), 'results': results}


def results_table(results: dict[str, Any]) -> str:
  """The printed table: one row per method."""
  from optimflow.tasks import format_table  # pylint: disable=g-import-not-at-top

  rows = [{
      'method': r['method'],
      'train loss': _cell(r['train_loss'], '.4f'),
      'test acc': _cell(r['test_accuracy'], '.4f'),
      'ms/step': _cell(r['ms_per_step'], '.2f'),
      'state bytes': str(r['opt_state_bytes']),
      'grad evals/step': str(r['grad_evals_per_step']),
  } for r in results['results']]
  return format_table(rows)


def plot_curves(results: dict[str, Any], path: Path) -> None:
  """Train loss (smoothed, mean over seeds) against step, one line a method."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for r in results['results']:
    loss = np.mean(np.asarray(r['curves']['train_loss']), axis=0)
    width = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(width) / width, mode='valid')
    ax.plot(r['curves']['steps'][width - 1:], smooth, label=r['method'])
  ax.set_yscale('log')
  ax.set_xlabel('step')
  ax.set_ylabel('train loss (mini-batch, smoothed)')
  ax.set_title(f'{results["task"]}: {len(results["seeds"])} seed(s)')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _list() -> int:
  from optimflow.tasks import format_table  # pylint: disable=g-import-not-at-top

  print(format_table([{'name': m.name, 'family': m.family, 'kind': m.kind,
                       'paper': m.paper} for m in catalog.METHODS]))
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Entry point of ``python -m optimflow`` and the ``optimflow`` script."""
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    import flax  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    parser.error('the command line needs the examples extra: '
                 'pip install "optimflow[examples]"')
  if args.command == 'list':
    return _list()
  compare_parser = args.subparser
  if args.task not in TASKS:
    compare_parser.error(f'unknown task {args.task!r}; valid tasks: '
                         + ', '.join(TASKS))
  methods = _parse_methods(compare_parser, args.methods)
  _check_output(compare_parser, args.output)
  results = compare(args.task, methods, steps=args.steps, seeds=args.seeds,
                    batch_size=args.batch_size, progress=not args.no_progress)
  print(results_table(results))
  (args.output / 'results.json').write_text(
      json.dumps(results, indent=1, default=repr))
  plot_curves(results, args.output / 'curves.png')
  print(f'wrote {args.output / "results.json"} and '
        f'{args.output / "curves.png"}')
  return 0
