"""Sharpness-aware training on digits: SGD, SAM, ASAM, SAF and MESA compared flat.

Claims checked at CPU scale (an MLP 64-256-256-10 on scikit-learn's digits,
SGD with learning rate 0.05 and momentum 0.9, batch 64):

* SAM (Foret et al., 2021) and ASAM (Kwon et al., 2021) reach flatter minima
  than SGD, at twice the cost per step (two forward-backward passes).
* SAF and MESA (Du et al., 2022) reach flatter minima too, at about the cost
  of SGD (SAF: one pass; MESA: one pass plus a forward pass of the EMA
  teacher).

Every method trains until the loss on the whole training set is at most the
target (0.01 by default, checked after each epoch; a cap on epochs stops runs
that do not get there): cross-entropy curvature scales with the loss, so
flatness is compared at matched training loss. Then, for 3 seeds, the table
reports test accuracy, the Hessian's top eigenvalue, the adaptive
average-case L2 sharpness (rho 0.1, 50 samples) and the adaptive worst-case
L-infinity sharpness (rho 0.01, 20 ascent steps), both on 1024 training
examples in batches of m = 128 (Andriushchenko et al., 2023), the forward-
backward passes per step (counted from the traced step) and the median wall
time per step.

Run ``python -m optimflow.lab.examples.sharpness [--smoke] [--output runs/sharpness]``.

References:
  Foret, Kleiner, Mobahi, Neyshabur, `Sharpness-Aware Minimization for
  Efficiently Improving Generalization <https://arxiv.org/abs/2010.01412>`_,
  2021.
  Kwon, Kim, Park, Choi, `ASAM: Adaptive Sharpness-Aware Minimization for
  Scale-Invariant Learning of Deep Neural Networks
  <https://arxiv.org/abs/2102.11600>`_, 2021.
  Du, Zhou, Feng, Tan, Zhou, `Sharpness-Aware Training for Free
  <https://arxiv.org/abs/2205.14083>`_, 2022.
  Andriushchenko, Croce, Müller, Hein, Flammarion, `A Modern Look at the
  Relationship between Sharpness and Generalization
  <https://arxiv.org/abs/2302.07011>`_, 2023.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Optional, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optimflow
from optimflow import diagnostics
from optimflow.lab import tasks
import optimflow.nnx as onnx


@dataclasses.dataclass(frozen=True)
class Config:
  """Sizes of one run of the study."""

  hidden: tuple[int, ...] = (256, 256)
  seeds: tuple[int, ...] = (0, 1, 2)
  target_loss: float = 0.01
  max_epochs: int = 300
  batch_size: int = 64
  learning_rate: float = 0.05
  momentum: float = 0.9
  # SAF / MESA: trajectory term from epoch start + 1 on.
  e_tilde: int = 2
  start_epoch: int = 5
  temperature: float = 5.0
  # Diagnostics (on the first n_sharpness training examples, batches of m).
  n_sharpness: int = 1024
  m: int = 128
  hessian_iters: int = 20
  avg_rho: float = 0.1
  avg_samples: int = 50
  worst_rho: float = 0.01
  worst_iters: int = 20
  # Step timing, methods interleaved: batch sizes, rounds, steps per round.
  timing_batches: tuple[int, ...] = (64, 1024)
  timing_reps: int = 15
  timing_steps: int = 20


FULL = Config()
SMOKE = Config(
  hidden=(32,),
  seeds=(0,),
  target_loss=0.05,
  max_epochs=3,
  e_tilde=1,
  start_epoch=1,
  n_sharpness=128,
  m=64,
  hessian_iters=3,
  avg_samples=3,
  worst_iters=3,
  timing_batches=(64,),
  timing_reps=2,
  timing_steps=3,
)


@dataclasses.dataclass(frozen=True)
class Method:
  """A training method: its transformation and which loss it trains.

  Attributes:
    name: label in tables.
    make_tx: builds the optax transformation.
    loss: ``'ce'`` (plain cross-entropy), ``'saf'`` (cross-entropy plus the
      trajectory KL against the output bank) or ``'mesa'`` (plus the KL
      against the EMA teacher; ``make_tx`` must end in ``param_ema``).
    lam: coefficient of the trajectory term (SAF / MESA).
    extra_forwards: forward passes per step that feed no gradient.
    check_ids: SAF: check the example ids under jit (a host callback, ~0.5
      ms per step on CPU) instead of on the host before the step (free).
  """

  name: str
  make_tx: Callable[[], optax.GradientTransformation]
  loss: str = 'ce'
  lam: float = 0.0
  extra_forwards: int = 0
  check_ids: bool = False


def methods(cfg: Config = FULL) -> tuple[Method, ...]:
  """SGD, SAM (rho .05), ASAM (rho .5), SAF (lambda .3), MESA (lambda .8)."""
  lr, mom = cfg.learning_rate, cfg.momentum
  return (
    Method('sgd', lambda: optax.sgd(lr, momentum=mom)),
    Method('sam rho=.05', lambda: optimflow.sam(lr, rho=0.05, momentum=mom)),
    Method('asam rho=.5', lambda: optimflow.asam(lr, rho=0.5, momentum=mom)),
    Method(
      'saf lam=.3', lambda: optax.sgd(lr, momentum=mom), loss='saf', lam=0.3
    ),
    Method(
      'mesa lam=.8',
      lambda: optimflow.sharpness.sgd_with_param_ema(
        lr, momentum=mom, decay=0.99
      ),
      loss='mesa',
      lam=0.8,
      extra_forwards=1,
    ),
  )


class Trainer:
  """One jitted step for a method, with a uniform call signature.

  ``trainer.step(model, optimizer, x, y, ids, epoch) -> loss``; the SAF bank
  lives in ``trainer.bank`` (``num_classes``: the shape of one example's
  logits, e.g. ``(context, vocab)`` for a language model). ``trainer.passes`` counts the loss evaluations
  traced into the step, i.e. its forward-backward passes (read it after the
  first call).
  """

  def __init__(
    self,
    method: Method,
    cfg: Config,
    num_examples: int,
    num_classes: int | tuple[int, ...] = 10,
  ):
    self.method = method
    self.passes = 0
    self.bank = None
    coefficient = optimflow.saf_schedule(method.lam, start=cfg.start_epoch)

    def counted_ce(logits, y):
      self.passes += 1  # runs while the step is traced
      return tasks.cross_entropy(logits, y)

    if method.loss == 'ce':
      step = onnx.train_step(lambda model, x, y: counted_ce(model(x), y))
      self._step = lambda m, o, x, y, ids, epoch: step(m, o, x, y)
    elif method.loss == 'saf':
      self.bank = optimflow.OutputBank.create(
        num_examples, num_classes, e_tilde=cfg.e_tilde
      )
      step = onnx.train_step(
        onnx.saf_loss(
          counted_ce,
          temperature=cfg.temperature,
          coefficient=coefficient,
          check_ids=method.check_ids,
        ),
        has_aux=True,
        donate_argnums=6,
      )  # the bank: updated in place

      def saf_step(m, o, x, y, ids, epoch):
        if not method.check_ids:
          self.bank.check(ids)  # on the host: ids are concrete here
        value, self.bank = step(m, o, x, y, ids, epoch, self.bank)
        return value

      self._step = saf_step
    elif method.loss == 'mesa':
      step = onnx.mesa_train_step(
        counted_ce, temperature=cfg.temperature, coefficient=coefficient
      )
      self._step = lambda m, o, x, y, ids, epoch: step(m, o, x, y, epoch)
    else:
      raise ValueError(f'unknown loss {method.loss!r}')

  def step(self, model, optimizer, x, y, ids, epoch) -> jax.Array:
    return self._step(model, optimizer, x, y, ids, epoch)


@dataclasses.dataclass
class Run:
  """A trained model and how it got there."""

  model: nnx.Module
  epochs: int
  steps: int
  reached: bool
  train_loss: float
  curve: list[float]
  passes: int
  wall_s: float


def train_to_loss(
  method: Method,
  data: tasks.DigitsData,
  cfg: Config,
  seed: int,
  progress: bool = True,
) -> Run:
  """Trains until the full-train-set loss is ``<= cfg.target_loss``.

  The loss is checked after every epoch (plain cross-entropy, no trajectory
  term); training stops there or after ``cfg.max_epochs`` epochs.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  model = tasks.MLP(cfg.hidden, rngs=nnx.Rngs(seed))
  optimizer = nnx.Optimizer(model, method.make_tx(), wrt=nnx.Param)
  n = len(data.y_train)
  trainer = Trainer(method, cfg, n)
  rng = np.random.default_rng(seed)
  per_epoch = n // cfg.batch_size
  curve = []
  start = time.perf_counter()
  bar = tqdm(
    total=cfg.max_epochs,
    desc=f'{method.name} seed {seed}',
    disable=not progress,
    leave=False,
  )
  reached = False
  for epoch in range(cfg.max_epochs):
    perm = rng.permutation(n)
    for i in range(per_epoch):
      idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
      x, y = jnp.asarray(data.x_train[idx]), jnp.asarray(data.y_train[idx])
      trainer.step(model, optimizer, x, y, idx, epoch)
    train_loss = tasks.evaluate(model, data.x_train, data.y_train)['loss']
    curve.append(train_loss)
    bar.update(1)
    bar.set_postfix(loss=f'{train_loss:.4f}', refresh=False)
    if train_loss <= cfg.target_loss:
      reached = True
      break
  bar.close()
  return Run(
    model=model,
    epochs=epoch + 1,
    steps=(epoch + 1) * per_epoch,
    reached=reached,
    train_loss=train_loss,
    curve=curve,
    passes=trainer.passes,
    wall_s=time.perf_counter() - start,
  )


def time_steps(
  methods_: Sequence[Method],
  data: tasks.DigitsData,
  cfg: Config,
  batch_size: int,
  make_model: Optional[Callable[[], nnx.Module]] = None,
  num_classes: int | tuple[int, ...] = 10,
) -> dict[str, dict[str, float]]:
  """Median milliseconds per training step of each method (and its passes).

  Every step is compiled and warmed up; then the methods run round-robin,
  ``cfg.timing_steps`` steps each per round (synchronised at the end of the
  block) for ``cfg.timing_reps`` rounds, so load drift on a shared machine
  hits all methods alike. Trajectory terms are on (epoch after the start).
  ``make_model`` (default: the study's MLP) and ``num_classes`` (shape of one
  example's logits) let other tasks with ``x_train, y_train`` be timed.

  Returns:
    ``{method name: {'ms': median ms per step, 'passes': fwd+bwd per step}}``.
  """
  n = len(data.y_train)
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(cfg.timing_steps):
    idx = rng.choice(n, min(batch_size, n), replace=False)
    batches.append(
      (jnp.asarray(data.x_train[idx]), jnp.asarray(data.y_train[idx]), idx)
    )
  epoch = cfg.start_epoch + 1
  blocks, passes = {}, {}
  for method in methods_:
    model = (make_model or (lambda: tasks.MLP(cfg.hidden, rngs=nnx.Rngs(0))))()
    optimizer = nnx.Optimizer(model, method.make_tx(), wrt=nnx.Param)
    trainer = Trainer(method, cfg, n, num_classes)

    def block(trainer=trainer, model=model, optimizer=optimizer):
      for x, y, ids in batches:
        value = trainer.step(model, optimizer, x, y, ids, epoch)
      jax.block_until_ready(value)

    block()  # compile
    block()  # warm up
    blocks[method.name] = block
    passes[method.name] = trainer.passes
  times = {name: [] for name in blocks}
  for _ in range(cfg.timing_reps):
    for name, block in blocks.items():
      start = time.perf_counter()
      block()
      times[name].append((time.perf_counter() - start) / cfg.timing_steps)
  return {
    name: {'ms': 1e3 * float(np.median(t)), 'passes': passes[name]}
    for name, t in times.items()
  }


@functools.lru_cache(maxsize=None)
def _pure_loss(graphdef: Any) -> Callable[[Any, Any], jax.Array]:
  """``loss(params, (x, y))`` for models of one architecture (cached, so the
  diagnostics compile once per architecture)."""

  def loss(params, batch):
    x, y = batch
    return tasks.cross_entropy(nnx.merge(graphdef, params)(x), y)

  return loss


def flatness(
  model: nnx.Module, data: tasks.DigitsData, cfg: Config, seed: int = 0
) -> dict[str, float]:
  """Hessian top eigenvalue and adaptive sharpness on training examples."""
  graphdef, params = nnx.split(model)
  params = nnx.as_pure(params)
  loss = _pure_loss(graphdef)
  n = min(cfg.n_sharpness, len(data.y_train))
  x, y = jnp.asarray(data.x_train[:n]), jnp.asarray(data.y_train[:n])
  batches = [
    (x[i : i + cfg.m], y[i : i + cfg.m]) for i in range(0, n - cfg.m + 1, cfg.m)
  ]
  key = jax.random.key(seed)
  return {
    'lambda_max': float(
      diagnostics.hessian_top_eigenvalue(
        loss, params, (x, y), iters=cfg.hessian_iters, key=key
      )
    ),
    'avg_l2': float(
      diagnostics.sharpness(
        loss,
        params,
        batches,
        kind='average',
        norm='l2',
        rho=cfg.avg_rho,
        n_iters=cfg.avg_samples,
        key=key,
      )
    ),
    'worst_linf': float(
      diagnostics.sharpness(
        loss,
        params,
        batches,
        kind='worst',
        norm='linf',
        rho=cfg.worst_rho,
        n_iters=cfg.worst_iters,
      )
    ),
  }


def run_study(
  cfg: Config = FULL,
  data: Optional[tasks.DigitsData] = None,
  progress: bool = True,
  only: Optional[Sequence[str]] = None,
) -> list[dict[str, Any]]:
  """Trains every method for every seed; one row per (method, seed)."""
  data = tasks.load_digits() if data is None else data
  rows = []
  for method in methods(cfg):
    if only is not None and method.name not in only:
      continue
    for seed in cfg.seeds:
      run = train_to_loss(method, data, cfg, seed, progress=progress)
      test = tasks.evaluate(run.model, data.x_test, data.y_test)
      rows.append(
        {
          'method': method.name,
          'seed': seed,
          'reached': run.reached,
          'epochs': run.epochs,
          'steps': run.steps,
          'train_loss': run.train_loss,
          'test_acc': test['accuracy'],
          **flatness(run.model, data, cfg, seed),
          'passes': run.passes,
          'extra_fwd': method.extra_forwards,
          'wall_s': run.wall_s,
          'curve': run.curve,
        }
      )
  return rows


MEASURES = ('test_acc', 'lambda_max', 'avg_l2', 'worst_linf', 'epochs')


def summarize(
  rows: list[dict[str, Any]], step_ms: dict[int, dict[str, float]]
) -> list[dict[str, Any]]:
  """Mean and standard deviation over seeds, one row per method.

  ``step_ms[batch_size]`` are the timings of :func:`time_steps`.
  """
  out = []
  for name in dict.fromkeys(r['method'] for r in rows):
    group = [r for r in rows if r['method'] == name]
    row = {
      'method': name,
      'seeds': len(group),
      'reached': sum(r['reached'] for r in group),
    }
    for k in MEASURES:
      v = np.array([r[k] for r in group], np.float64)
      row[k] = float(v.mean())
      row[k + '_std'] = float(v.std())
    row['train_loss'] = float(np.mean([r['train_loss'] for r in group]))
    row['passes'] = group[0]['passes']
    row['extra_fwd'] = group[0]['extra_fwd']
    for batch, timed in step_ms.items():
      ms = timed[name]['ms']
      row[f'ms_per_step_b{batch}'] = ms
      row[f'x_sgd_b{batch}'] = ms / timed[rows[0]['method']]['ms']
    out.append(row)
  return out


def display_rows(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The summary as printable rows (mean±std strings)."""
  fmt = lambda r, k, f: f'{r[k]:{f}}±{r[k + "_std"]:{f}}'

  def timing(r):
    cells = {}
    for b in _timed_batches(r):
      cells[f'ms/step b{b}'] = f'{r[f"ms_per_step_b{b}"]:.2f}'
      cells[f'x sgd b{b}'] = f'{r[f"x_sgd_b{b}"]:.2f}'
    return cells

  return [
    {
      'method': r['method'],
      'reached': f'{r["reached"]}/{r["seeds"]}',
      'epochs': fmt(r, 'epochs', '.0f'),
      'train loss': f'{r["train_loss"]:.4f}',
      'test acc': fmt(r, 'test_acc', '.4f'),
      'lambda_max': fmt(r, 'lambda_max', '.2f'),
      'avg-L2 (adapt.)': fmt(r, 'avg_l2', '.4f'),
      'worst-Linf (adapt.)': fmt(r, 'worst_linf', '.4f'),
      'fwd+bwd/step': f'{r["passes"]}' + (' +1 fwd' if r['extra_fwd'] else ''),
      **timing(r),
    }
    for r in summary
  ]


def _timed_batches(row: dict[str, Any]) -> list[int]:
  return sorted(
    int(k[len('x_sgd_b') :]) for k in row if k.startswith('x_sgd_b')
  )


def claims(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Each paper claim, checked on the means over seeds.

  Flatness: all three measures below SGD's ("partly" if some are). Cost:
  the counted passes, and the wall-time ratio to SGD at the smallest timed
  batch (the training batch, where per-step overhead dominates on CPU) and
  at the largest (where the passes' compute dominates).
  """
  by = {r['method'].split()[0]: r for r in summary}
  sgd = by['sgd']
  out = []
  for name in ('sam', 'asam', 'saf', 'mesa'):
    if name not in by:
      continue
    r = by[name]
    flatter = {k: r[k] < sgd[k] for k in ('lambda_max', 'avg_l2', 'worst_linf')}
    out.append(
      {
        'claim': f'{name} flatter than sgd',
        'holds': 'yes'
        if all(flatter.values())
        else ('partly' if any(flatter.values()) else 'no'),
        'detail': ', '.join(f'{k} {r[k]:.3g} vs {sgd[k]:.3g}' for k in flatter),
      }
    )
  batches = _timed_batches(sgd)
  for name, passes, low, high in (
    ('saf', 1, 0.0, 1.15),
    ('mesa', 1, 0, 1.5),
    ('sam', 2, 1.6, 2.4),
    ('asam', 2, 1.6, 2.4),
  ):
    if name not in by:
      continue
    r = by[name]
    ratios = {b: r[f'x_sgd_b{b}'] for b in batches}
    ok = [low <= v <= high for v in ratios.values()]
    holds = 'yes' if all(ok) else ('partly' if any(ok) else 'no')
    out.append(
      {
        'claim': f'{name} costs ~{passes}x sgd per step',
        'holds': holds if r['passes'] == passes else 'no',
        'detail': f'{r["passes"]} fwd+bwd/step; wall time '
        + ', '.join(f'{v:.2f}x at batch {b}' for b, v in ratios.items())
        + f' (target {low:g}..{high:g}x)',
      }
    )
  return out


def make_figure(rows: list[dict[str, Any]], summary: list[dict[str, Any]]):
  """Train-loss curves (first seed) and bars of the measures."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
  ax = axes[0, 0]
  first = rows[0]['seed']
  for r in rows:
    if r['seed'] == first:
      ax.semilogy(
        np.arange(1, len(r['curve']) + 1), r['curve'], label=r['method']
      )
  ax.set_xlabel('epoch')
  ax.set_ylabel('train loss (full set)')
  ax.set_title(f'training to the target loss (seed {first})')
  ax.legend(fontsize=8)
  names = [r['method'] for r in summary]
  titles = {
    'test_acc': 'test accuracy',
    'lambda_max': 'Hessian lambda_max',
    'avg_l2': 'adaptive average-L2 sharpness',
    'worst_linf': 'adaptive worst-Linf sharpness',
    f'x_sgd_b{_timed_batches(summary[0])[-1]}': 'step time / sgd (largest timed batch)',
  }
  for ax, key in zip(axes.ravel()[1:], titles):
    ax.bar(
      names,
      [r[key] for r in summary],
      yerr=[r.get(key + '_std', 0.0) for r in summary],
      capsize=3,
      color=['tab:gray'] + ['tab:blue'] * (len(names) - 1),
    )
    ax.set_title(titles[key])
    ax.tick_params(axis='x', labelrotation=30, labelsize=8)
    if key == 'test_acc':
      low = min(r[key] for r in summary)
      ax.set_ylim(max(0.0, low - 0.02), 1.0)
  fig.tight_layout()
  return fig


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Runs the study, prints the tables, writes results.json and the PNG."""
  from optimflow.lab import examples  # pylint: disable=g-import-not-at-top

  args = examples.parse_args('sharpness', __doc__.splitlines()[0], argv)
  cfg = SMOKE if args.smoke else FULL
  print(
    f'digits MLP 64-{"-".join(map(str, cfg.hidden))}-10, SGD lr '
    f'{cfg.learning_rate} momentum {cfg.momentum}, batch '
    f'{cfg.batch_size}; train until full train loss <= '
    f'{cfg.target_loss} (cap {cfg.max_epochs} epochs), seeds '
    f'{list(cfg.seeds)}'
  )
  data = tasks.load_digits()
  rows = run_study(cfg, data)
  step_ms = {
    b: time_steps(methods(cfg), data, cfg, b) for b in cfg.timing_batches
  }
  summary = summarize(rows, step_ms)
  print(tasks.format_table(display_rows(summary)))
  checked = claims(summary)
  print()
  print(tasks.format_table(checked))
  png = args.output / 'sharpness.png'
  examples.save_figure(make_figure, png, rows, summary)
  results = {
    'config': dataclasses.asdict(cfg),
    'rows': rows,
    'summary': summary,
    'claims': checked,
    'smoke': args.smoke,
  }
  return examples.write_results(args.output, results, png)


if __name__ == '__main__':
  main()
