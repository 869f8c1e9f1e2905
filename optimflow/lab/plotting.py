"""Plots of ``optimflow compare`` results (matplotlib, Agg backend).

Each function takes the dict returned by :func:`optimflow.compare.compare`
(or read back from ``results.json``) and writes one PNG:

* :func:`loss_vs_steps`: train loss against step, mean over seeds (mini-batch
  losses smoothed by a moving average);
* :func:`loss_vs_time`: the same curves against cumulative wall time
  (``curves['wall_s']``: the first, compiling, step counted at the median
  step time);
* :func:`trajectories`: for 2-D functions, one panel per method with the
  iterates of every seed on the contour of the function, start and optimum
  marked, as pytorch-optimizer's visualisations of Rosenbrock and Rastrigin.

Examples:
  >>> import tempfile, pathlib
  >>> from optimflow.lab import runs as compare, plotting
  >>> res = compare.compare('rastrigin', ['lion'], steps=20, progress=False)
  >>> out = pathlib.Path(tempfile.mkdtemp()) / 'traj.png'
  >>> plotting.trajectories(res, out, compare.get_task('rastrigin').load())
  >>> out.stat().st_size > 10_000
  True
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

_FLOOR = 1e-12  # losses are drawn on a log axis


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  return plt


def _smooth(
  loss: np.ndarray, results: dict[str, Any]
) -> tuple[int, np.ndarray]:
  """Moving average of the mini-batch loss (none for 2-D functions)."""
  if results['kind'] == 'function':
    return 1, loss
  width = max(1, len(loss) // 50)
  return width, np.convolve(loss, np.ones(width) / width, mode='valid')


def _mean_loss(r: dict[str, Any]) -> np.ndarray:
  loss = np.asarray(r['curves']['train_loss'], np.float64)
  return np.maximum(np.mean(loss, axis=0), _FLOOR)


def _steps(r: dict[str, Any]) -> np.ndarray:
  """Step numbers of the stored curve points (thinned in results.json)."""
  index = r['curves'].get('index')
  if index is None:
    return np.arange(1, len(r['curves']['train_loss'][0]) + 1)
  return np.asarray(index)


def _styles(n: int):
  plt = _pyplot()
  colors = plt.get_cmap('tab20')(np.linspace(0, 1, max(n, 2)))
  dashes = ['-', '--', ':', '-.']
  return [(colors[i], dashes[i % len(dashes)]) for i in range(n)]


def _loss_plot(results: dict[str, Any], path: Path, against: str) -> None:
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(8, 5))
  for r, (color, dash) in zip(
    results['results'], _styles(len(results['results']))
  ):
    loss = _mean_loss(r)
    width, smooth = _smooth(loss, results)
    if against == 'steps':
      x = _steps(r)[width - 1 :]
    else:
      x = np.mean(np.asarray(r['curves']['wall_s']), axis=0)[width - 1 :]
    ax.plot(
      x, smooth, label=r['method'], color=color, linestyle=dash, linewidth=1.4
    )
  ax.set_yscale('log')
  ax.set_xlabel(
    'step' if against == 'steps' else 'wall time (s, compilation excluded)'
  )
  label = (
    'train loss'
    if results['kind'] == 'function'
    else ('train loss (mini-batch, smoothed)')
  )
  ax.set_ylabel(label + ', mean over seeds')
  ax.set_title(
    f'{results["task"]}: {results["steps"]} steps, '
    f'{len(results["seeds"])} seed(s)'
  )
  ax.grid(alpha=0.3, which='both')
  ax.legend(fontsize=7, ncol=2 if len(results['results']) > 8 else 1)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def loss_vs_steps(results: dict[str, Any], path: Path) -> None:
  """Train loss (mean over seeds) against step, one line per method."""
  _loss_plot(results, path, 'steps')


def loss_vs_time(results: dict[str, Any], path: Path) -> None:
  """Train loss (mean over seeds) against cumulative wall time."""
  _loss_plot(results, path, 'time')


def _function_grid(results: dict[str, Any], problem: Any, n: int = 150):
  """The task's function evaluated on its plot window."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  x0, x1, y0, y1 = results['window']
  xs, ys = np.linspace(x0, x1, n), np.linspace(y0, y1, n)
  gx, gy = np.meshgrid(xs, ys)
  points = jnp.asarray(np.stack([gx.ravel(), gy.ravel()], -1), jnp.float32)
  z = np.asarray(jax.vmap(problem.loss)(points)).reshape(gx.shape)
  return problem, gx, gy, z


def trajectories(results: dict[str, Any], path: Path, problem: Any) -> None:
  """One panel per method: its iterates on the contour of ``problem``
  (the task's :class:`~optimflow.lab.tasks.Problem`)."""
  plt = _pyplot()
  problem, gx, gy, z = _function_grid(results, problem)
  levels_z = np.log1p(z) if results.get('log_contour') else z
  rows = results['results']
  cols = min(4, len(rows))
  nrows = math.ceil(len(rows) / cols)
  fig, axes = plt.subplots(
    nrows, cols, figsize=(2.6 * cols, 2.5 * nrows), squeeze=False
  )
  x0, x1, y0, y1 = results['window']
  optimum = np.asarray(problem.optimum)
  for ax, r in zip(axes.ravel(), rows):
    ax.contourf(gx, gy, levels_z, levels=12, cmap='viridis')
    ax.contour(
      gx, gy, levels_z, levels=12, colors='k', linewidths=0.3, alpha=0.4
    )
    for path_xy in r['trajectories']:
      xy = np.asarray(path_xy, np.float64)
      ax.plot(xy[:, 0], xy[:, 1], color='tab:red', linewidth=0.9, alpha=0.9)
      ax.plot(
        xy[0, 0],
        xy[0, 1],
        'o',
        color='white',
        markersize=4,
        markeredgecolor='k',
      )
      ax.plot(xy[-1, 0], xy[-1, 1], 'o', color='tab:red', markersize=4)
    ax.plot(
      optimum[0],
      optimum[1],
      '*',
      color='gold',
      markersize=11,
      markeredgecolor='k',
    )
    metric = r['test_metric']['mean']
    ax.set_title(f'{r["method"]}: |x - x*| = {metric:.2g}', fontsize=7)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.tick_params(labelsize=6)
  for ax in axes.ravel()[len(rows) :]:
    ax.axis('off')
  fig.suptitle(
    f'{results["task"]}: {results["steps"]} steps (white: start, '
    'red: end, star: optimum)',
    fontsize=10,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
