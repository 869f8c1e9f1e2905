"""AdamP / SGDP: projection keeps scale-invariant weights from growing.

Heo et al. (2021) observe that on scale-invariant weights (a conv kernel
followed by BatchNorm: ``f(c w) = f(w)`` for ``c > 0``) the gradient is
orthogonal to ``w``, so plain gradient steps can only *increase* ``||w||``
(Pythagoras), and momentum adds a radial component that increases it much
faster. Because the function depends on ``w / ||w||`` only, what matters is
the *effective* step, the angle ``w`` turns per step, which is the step size
divided by ``||w||`` (by ``||w||^2`` for the gradient of SGD): norm growth
makes the effective step decay prematurely. SGDP and AdamP remove the radial
part of the update on such weights, which suppresses the norm growth and
keeps the effective step from decaying.

This example checks the mechanism at CPU scale: the digits CNN of
:mod:`optimflow.lab.tasks` (bias-free 3x3 convs followed by BatchNorm, so both
conv kernels are scale-invariant) trained with SGD vs SGDP and Adam vs AdamP
(same hyperparameters within each pair, no weight decay, 3 seeds). It
records, at every evaluation point,

* ``||w||`` of each conv kernel (relative to its initial norm), and
* the measured effective step: the angle between ``w`` at consecutive
  evaluation points divided by the steps between them (radians per step),

and reports test accuracy. Accuracy differences on 8x8 digits are expected to
be within seed noise: the claim tested here is the weight-norm mechanism,
not an accuracy gain at this scale.

Run ``python -m optimflow.lab.examples.adamp [--smoke] [--output runs/adamp]``.

References:
  Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, `AdamP: Slowing Down the Slowdown for
  Momentum Optimizers on Scale-invariant Weights
  <https://arxiv.org/abs/2006.08217>`_, ICLR 2021.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

from flax import nnx
import jax
import numpy as np
import optax

import optimflow
from optimflow.lab import tasks

FULL_STEPS = 800
SMOKE_STEPS = 30
SEEDS = (0, 1, 2)
SMOKE_SEEDS = (0,)


@dataclasses.dataclass(frozen=True)
class Method:
  """An optimizer of the comparison: name, factory and the pair it belongs to."""

  name: str
  learning_rate: float
  make: Callable[[float], optax.GradientTransformation]
  pair: str  # 'sgd' or 'adam'
  projected: bool


def methods() -> tuple[Method, ...]:
  """SGD vs SGDP and Adam vs AdamP, same hyperparameters within each pair.

  SGD: Nesterov momentum 0.9, lr 0.1 (the reference README's setting, without
  its 1e-5 decay); Adam: lr 3e-3. No weight decay anywhere, so the norm
  changes come from the updates alone.
  """
  return (
    Method(
      'sgd',
      0.1,
      lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
      'sgd',
      False,
    ),
    Method(
      'sgdp',
      0.1,
      lambda lr: optimflow.sgdp(lr, momentum=0.9, nesterov=True),
      'sgd',
      True,
    ),
    Method('adam', 3e-3, lambda lr: optax.adam(lr), 'adam', False),
    Method('adamp', 3e-3, lambda lr: optimflow.adamp(lr), 'adam', True),
  )


def conv_kernels(model: tasks.CNN) -> list[np.ndarray]:
  """The scale-invariant conv kernels of the digits CNN (float64 copies)."""
  return [np.asarray(conv.kernel[...], np.float64) for conv in model.convs]


def angle_between(a: np.ndarray, b: np.ndarray) -> float:
  """Angle in radians between two arrays seen as vectors."""
  cos = np.vdot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
  return float(np.arccos(np.clip(cos, -1.0, 1.0)))


@dataclasses.dataclass
class Run:
  """One training run: history and the conv-kernel measurements.

  Attributes:
    method: the method's name.
    seed: the seed (initialisation and batch order).
    history: what :func:`optimflow.lab.tasks.fit` recorded.
    steps: evaluation steps, with 0 (initialisation) first.
    norms: ``(len(steps), n_kernels)`` kernel norms.
    effective_step: ``(len(steps) - 1, n_kernels)`` angle turned per step
      between consecutive evaluation points (radians).
  """

  method: str
  seed: int
  history: tasks.History
  steps: np.ndarray
  norms: np.ndarray
  effective_step: np.ndarray

  @property
  def relative_norms(self) -> np.ndarray:
    """Norms divided by their initial values."""
    return self.norms / self.norms[0]


def train(
  method: Method,
  seed: int,
  steps: int,
  eval_every: int,
  data: tasks.DigitsData,
  progress: bool = True,
) -> Run:
  """Trains the digits CNN with ``method`` and measures its conv kernels."""
  model = tasks.CNN(rngs=nnx.Rngs(seed))
  snapshots = [conv_kernels(model)]

  def record(model):
    snapshots.append(conv_kernels(model))
    return {}

  hist = tasks.fit(
    model,
    method.make(method.learning_rate),
    data,
    steps=steps,
    seed=seed,
    eval_every=eval_every,
    progress=progress,
    desc=f'{method.name} seed {seed}',
    eval_fn=record,
  )
  eval_steps = np.concatenate([[0], hist.eval_steps])
  norms = np.array([[np.linalg.norm(w) for w in snap] for snap in snapshots])
  gaps = np.diff(eval_steps)[:, None]
  angles = np.array(
    [
      [angle_between(a, b) for a, b in zip(s0, s1)]
      for s0, s1 in zip(snapshots[:-1], snapshots[1:])
    ]
  )
  return Run(method.name, seed, hist, eval_steps, norms, angles / gaps)


def compare(
  steps: int = FULL_STEPS,
  seeds: Sequence[int] = SEEDS,
  eval_every: Optional[int] = None,
  progress: bool = True,
) -> dict[str, list[Run]]:
  """Runs every method of :func:`methods` for every seed.

  Returns:
    ``{method name: [Run per seed]}``.
  """
  data = tasks.load_digits(seed=0)
  eval_every = eval_every or max(1, steps // 40)
  return {
    m.name: [train(m, s, steps, eval_every, data, progress) for s in seeds]
    for m in methods()
  }


def _late(values: np.ndarray) -> np.ndarray:
  """Mean over the last quarter of the evaluation points (axis 0)."""
  return values[-max(1, len(values) // 4) :].mean(0)


def summarize(runs: dict[str, list[Run]]) -> list[dict[str, Any]]:
  """One row per method: accuracy, final kernel norms, late effective step.

  Columns: test accuracy (mean and std over seeds), final ``||w|| / ||w_0||``
  of each conv kernel and its effective step (angle per step) averaged over
  the last quarter of training; both averaged over seeds.
  """
  rows = []
  for name, rs in runs.items():
    acc = np.array([r.history.final['test_accuracy'] for r in rs])
    row = {
      'method': name,
      'seeds': len(rs),
      'test acc': float(acc.mean()),
      'acc std': float(acc.std()),
    }
    final_rel = np.mean([r.relative_norms[-1] for r in rs], axis=0)
    late = np.mean([_late(r.effective_step) for r in rs], axis=0)
    for k, v in enumerate(final_rel):
      row[f'conv{k} ||w||/||w0||'] = float(v)
    for k, v in enumerate(late):
      row[f'conv{k} late step (rad)'] = float(v)
    rows.append(row)
  return rows


def pair_rows(runs: dict[str, list[Run]]) -> list[dict[str, Any]]:
  """Projected vs plain, per pair and kernel: norms and effective steps.

  ``norm ratio`` is the plain method's final ``||w||`` over the projected
  one's (mean over seeds). If the projection changed nothing but the norm,
  the effective step would grow by ``norm ratio ** 2`` for SGD (its angular
  step is ``eta ||grad_w_hat|| / ||w||^2``) and by ``norm ratio`` for Adam
  (its step length does not scale with the gradient): that is the
  ``predicted`` column. ``measured`` is the ratio of the late effective steps
  (projected over plain); it also includes the gradients' differences
  between the two trajectories.
  """
  rows = []
  for m in methods():
    if not m.projected:
      continue
    plain = next(p for p in methods() if p.pair == m.pair and not p.projected)
    a, b = runs[plain.name], runs[m.name]
    ratio = np.mean([r.norms[-1] for r in a], axis=0) / np.mean(
      [r.norms[-1] for r in b], axis=0
    )
    measured = np.mean([_late(r.effective_step) for r in b], axis=0) / np.mean(
      [_late(r.effective_step) for r in a], axis=0
    )
    power = 2 if m.pair == 'sgd' else 1
    for k in range(len(ratio)):
      rows.append(
        {
          'pair': f'{m.name} vs {plain.name}',
          'kernel': f'conv{k}',
          'norm ratio': float(ratio[k]),
          'predicted step ratio': float(ratio[k] ** power),
          'measured step ratio': float(measured[k]),
        }
      )
  return rows


def _plot_per_kernel(
  ax,
  runs: dict[str, list[Run]],
  curve: Callable[[Run], tuple[np.ndarray, np.ndarray]],
  ylabel: str,
  title: str,
) -> None:
  """One line per method and kernel: ``curve(run) -> (x, (n, kernels))``,
  averaged over seeds; kernel 0 solid, kernel 1 dashed."""
  for i, (name, rs) in enumerate(runs.items()):
    x = curve(rs[0])[0]
    y = np.mean([curve(r)[1] for r in rs], axis=0)
    for k in range(y.shape[1]):
      ax.plot(
        x,
        y[:, k],
        color=f'C{i}',
        ls=('-', '--')[k % 2],
        label=f'{name} conv{k}',
      )
  ax.set_xlabel('step')
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(fontsize=7, ncol=2)


def plot_norms(ax, runs: dict[str, list[Run]]) -> None:
  """Mean relative norm of the conv kernels over seeds (one line per kernel)."""
  _plot_per_kernel(
    ax,
    runs,
    lambda r: (r.steps, r.relative_norms),
    '||w|| / ||w_0||',
    'norm of the scale-invariant conv kernels',
  )


def plot_effective_step(ax, runs: dict[str, list[Run]]) -> None:
  """Mean angle turned per step by the conv kernels (log scale)."""
  _plot_per_kernel(
    ax,
    runs,
    lambda r: (r.steps[1:], r.effective_step),
    'angle per step (rad)',
    'effective step size of the conv kernels',
  )
  ax.set_yscale('log')


def plot_accuracy(ax, runs: dict[str, list[Run]]) -> None:
  """Mean test accuracy over seeds."""
  lowest = 1.0
  for i, (name, rs) in enumerate(runs.items()):
    acc = np.mean([r.history.test_accuracy for r in rs], axis=0)
    ax.plot(rs[0].history.eval_steps, acc, color=f'C{i}', label=name)
    lowest = min(lowest, float(np.median(acc)))
  ax.set_xlabel('step')
  ax.set_ylabel('test accuracy')
  ax.set_ylim(max(0.0, lowest - 0.2), 1.0)
  ax.set_title('digits CNN: test accuracy (mean of seeds)')
  ax.legend(fontsize=8)


def make_figure(runs: dict[str, list[Run]]):
  """Three panels: kernel norms, effective step, accuracy."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
  plot_norms(axes[0], runs)
  plot_effective_step(axes[1], runs)
  plot_accuracy(axes[2], runs)
  fig.tight_layout()
  return fig


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Runs the comparison, prints the table, writes results.json and the PNG."""
  from optimflow.lab import examples  # pylint: disable=g-import-not-at-top

  args = examples.parse_args('adamp', __doc__.splitlines()[0], argv)
  steps = SMOKE_STEPS if args.smoke else FULL_STEPS
  seeds = SMOKE_SEEDS if args.smoke else SEEDS
  runs = compare(steps=steps, seeds=seeds)
  rows = summarize(runs)
  pairs = pair_rows(runs)
  print(
    f'digits CNN (BatchNorm), {steps} steps, seeds {list(seeds)}, '
    f'backend {jax.default_backend()}'
  )
  print(tasks.format_table(rows))
  print(
    '\nprojected vs plain (late effective step = mean over the last quarter)'
  )
  print(tasks.format_table(pairs))
  png = args.output / 'adamp.png'
  examples.save_figure(make_figure, png, runs)
  results = {
    'rows': rows,
    'pairs': pairs,
    'steps': steps,
    'seeds': list(seeds),
    'smoke': args.smoke,
    'curves': {
      name: [
        {
          'seed': r.seed,
          'steps': r.steps.tolist(),
          'norms': r.norms.tolist(),
          'effective_step': r.effective_step.tolist(),
          'test_accuracy': r.history.test_accuracy.tolist(),
        }
        for r in rs
      ]
      for name, rs in runs.items()
    },
  }
  return examples.write_results(args.output, results, png)


if __name__ == '__main__':
  main()
