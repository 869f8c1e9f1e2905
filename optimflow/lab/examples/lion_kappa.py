"""Lion-kappa: weight decay turns Lion into constrained optimisation.

Chen, Liu, Liang, Liu (2023) show that Lion-kappa with decoupled weight decay
lambda, ``x <- x - eta (grad_kappa(c_t) + lambda x)``, solves

    min_x f(x) + kappa*(lambda x) / lambda,

so each kappa fixes its own constraint or regulariser. This example checks the
claim at CPU scale:

(a) Constraint demo. On ``f(x) = 0.5 ||x - c||^2`` with ``c ~ U[-1.5, 1.5]^200``,
    ``lambda = 2`` and a learning rate decayed linearly from 1e-2 over 2000
    steps (one ``lax.scan``), each kappa lands on its closed form:

    ==================== ==========================================
    kappa                solution
    ==================== ==========================================
    ``'sign'`` (Lion)    ``clip(c, -1/lambda, 1/lambda)`` (box)
    ``'l2'``             ``c min(1, 1/(lambda ||c||))`` (ball)
    ``('huber', d)``     ``clip(c / (1 + d lambda), +-1/lambda)``
    ``('dead_zone', d)`` ``clip(soft_d(c), +-1/lambda)``
    ==================== ==========================================

    while AdamW and SGD with the same lambda land elsewhere (SGD on the
    l2-shrunk point ``c / (1 + lambda)``). A second phase starts outside the
    box and checks the entry bound
    ``||x_t||_inf - 1/lambda <= (1 - eta lambda)^t (||x_0||_inf - 1/lambda)``.

(b) Digits. An MLP trained with AdamW, Lion and two Lion-kappa variants: the
    box-type methods keep ``max|w| <= 1/lambda`` at every evaluation, the
    ``'l2'`` variant keeps each leaf's Frobenius norm ``<= 1/lambda``.

Run ``python -m optimflow.lab.examples.lion_kappa [--smoke] [--output runs/lion_kappa]``.

References:
  Chen, Liu, Liang, Liu, `Lion Secretly Solves Constrained Optimization: As
  Lyapunov Predicts <https://arxiv.org/abs/2310.05898>`_, 2023.
  Chen et al., `Symbolic Discovery of Optimization Algorithms
  <https://arxiv.org/abs/2302.06675>`_, 2023.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optimflow
from optimflow.lab import tasks
from optimflow.sign_momentum import KappaSpec

# Steps of part (b): full run and smoke run.
FULL_STEPS = 1500
SMOKE_STEPS = 40

# The kappa variants of the constraint demo.
KAPPAS: dict[str, KappaSpec] = {
  'sign': 'sign',
  'l2': 'l2',
  'huber': ('huber', 0.5),
  'dead_zone': ('dead_zone', 0.3),
}


def soft_threshold(x: jax.Array, delta: float) -> jax.Array:
  """``sign(x) max(|x| - delta, 0)``."""
  return jnp.sign(x) * jnp.maximum(jnp.abs(x) - delta, 0.0)


def closed_form(
  center: jax.Array, kappa: KappaSpec, weight_decay: float
) -> jax.Array:
  """Minimiser of ``0.5||x - c||^2 + kappa*(lambda x)/lambda`` for ``kappa``.

  Args:
    center: ``c``.
    kappa: ``'sign'``, ``'l2'``, ``'quadratic'``, ``('huber', d)`` or
      ``('dead_zone', d)``.
    weight_decay: ``lambda > 0``.

  Returns:
    The solution, same shape as ``center``.
  """
  r = 1.0 / weight_decay
  name, d = (kappa, None) if isinstance(kappa, str) else kappa
  if name in ('sign', 'l1'):
    return jnp.clip(center, -r, r)
  if name == 'l2':
    return center * jnp.minimum(1.0, r / jnp.linalg.norm(center))
  if name == 'quadratic':
    return center / (1.0 + weight_decay)
  if name == 'huber':
    return jnp.clip(center / (1.0 + d * weight_decay), -r, r)
  if name == 'dead_zone':
    return jnp.clip(soft_threshold(center, d), -r, r)
  raise ValueError(f'no closed form for kappa={kappa!r}')


def run_quadratic(
  tx: optax.GradientTransformation,
  problem: tasks.Problem,
  steps: int,
  coords: Sequence[int] = (0, 1),
  init: Optional[jax.Array] = None,
):
  """Runs ``tx`` on ``problem`` for ``steps`` steps in one ``lax.scan``.

  Args:
    tx: the transformation.
    problem: a problem from :mod:`optimflow.lab.tasks.synthetic`.
    steps: number of steps.
    coords: two coordinates whose path is recorded (for plots).
    init: starting point; ``problem.init`` by default.

  Returns:
    ``(x_final, path, inf_norms)``: the last iterate, the ``(steps + 1, 2)``
    path of ``coords`` and ``||x_t||_inf`` for ``t = 1..steps``.
  """
  x0 = problem.init if init is None else init
  idx = jnp.asarray(coords)

  @jax.jit
  def run(x0):
    def step(carry, _):
      x, state = carry
      u, state = tx.update(jax.grad(problem.loss)(x), state, x)
      x = optax.apply_updates(x, u)
      return (x, state), (x[idx], jnp.max(jnp.abs(x)))

    (x, _), (path, norms) = jax.lax.scan(step, (x0, tx.init(x0)), length=steps)
    return x, jnp.concatenate([x0[idx][None], path]), norms

  return run(x0)


@dataclasses.dataclass
class ConstraintDemo:
  """Results of :func:`constraint_demo`.

  Attributes:
    rows: one dict per method (for the table).
    center: ``c``.
    weight_decay: ``lambda``.
    coords: the two coordinates of ``paths``.
    paths: method -> ``(steps + 1, 2)`` path of ``coords``.
    targets: method -> the closed-form solution it is compared to.
    entry_violation: max over ``t`` of ``||x_t||_inf - bound_t`` in the entry
      phase (``<= 0`` up to rounding when the bound holds).
  """

  rows: list[dict[str, Any]]
  center: np.ndarray
  weight_decay: float
  coords: tuple[int, int]
  paths: dict[str, np.ndarray]
  targets: dict[str, np.ndarray]
  entry_violation: float


def constraint_demo(
  dim: int = 200,
  weight_decay: float = 2.0,
  learning_rate: float = 1e-2,
  steps: int = 2000,
  seed: int = 0,
  entry_steps: int = 500,
) -> ConstraintDemo:
  """Part (a): each Lion-kappa lands on its closed form; AdamW/SGD do not.

  Args:
    dim: dimension of the quadratic.
    weight_decay: ``lambda`` (box radius ``1/lambda``).
    learning_rate: initial learning rate, decayed linearly to 0.
    steps: number of steps.
    seed: seed of ``c``.
    entry_steps: steps of the entry phase (constant learning rate, start at
      ``3 * ones``).

  Returns:
    A :class:`ConstraintDemo`.
  """
  problem = tasks.box(dim, 1.0 / weight_decay, scale=1.5, seed=seed)
  c = problem.center
  box_solution = problem.optimum
  shrunk = closed_form(c, 'quadratic', weight_decay)
  # One coordinate outside the box and one inside, for the 2-D picture.
  coords = (
    int(jnp.argmin(jnp.abs(c - 1.1))),
    int(jnp.argmin(jnp.abs(c + 0.3))),
  )
  sched = optax.linear_schedule(learning_rate, 0.0, steps)

  methods: dict[str, tuple[optax.GradientTransformation, jax.Array, str]] = {}
  for name, kappa in KAPPAS.items():
    label = f'lion_kappa {kappa!r}'
    methods[label] = (
      optimflow.lion_kappa(sched, kappa=kappa, weight_decay=weight_decay),
      closed_form(c, kappa, weight_decay),
      name,
    )
  methods['adamw'] = (
    optax.adamw(sched, weight_decay=weight_decay),
    shrunk,
    'c/(1+lambda)',
  )
  methods['sgd + decay'] = (
    optax.chain(optax.add_decayed_weights(weight_decay), optax.sgd(sched)),
    shrunk,
    'c/(1+lambda)',
  )

  rows, paths, targets = [], {}, {}
  for label, (tx, target, target_name) in methods.items():
    x, path, norms = run_quadratic(tx, problem, steps, coords)
    paths[label] = np.asarray(path)
    targets[label] = np.asarray(target)
    rows.append(
      {
        'method': label,
        'closed form': target_name,
        'max err to closed form': float(jnp.max(jnp.abs(x - target))),
        'max dist to box solution': float(jnp.max(jnp.abs(x - box_solution))),
        'max_t ||x_t||_inf': float(jnp.max(norms)),
      }
    )

  # Entry phase: constant eta, x0 = 3 * ones, any gradient.
  x0 = jnp.full((dim,), 3.0, jnp.float32)
  tx = optimflow.lion(learning_rate, weight_decay=weight_decay)
  _, _, norms = run_quadratic(tx, problem, entry_steps, coords, init=x0)
  t = jnp.arange(1, entry_steps + 1)
  r = 1.0 / weight_decay
  bound = r + (1.0 - learning_rate * weight_decay) ** t * (3.0 - r)
  entry_violation = float(jnp.max(norms - bound))
  return ConstraintDemo(
    rows, np.asarray(c), weight_decay, coords, paths, targets, entry_violation
  )


@dataclasses.dataclass(frozen=True)
class DigitsMethod:
  """A method of part (b): name, transformation factory and its constraint."""

  name: str
  learning_rate: float
  weight_decay: float
  make: Callable[[float, float], optax.GradientTransformation]
  constraint: str  # 'box' (max|w| <= 1/lambda), 'ball' (per-leaf ||W||_F) or ''


def digits_methods(weight_decay: float = 3.5) -> tuple[DigitsMethod, ...]:
  """AdamW, Lion and two Lion-kappa variants for the digits MLP.

  AdamW (lr 3e-3), Lion and Huber-kappa (lr 1e-3, 3x smaller as the Lion
  authors advise) share ``weight_decay``, so their box is the same; the
  default 3.5 puts the box (radius 0.286) just outside the MLP's initial
  weights (truncated LeCun normal, max 0.284), so the box constraint holds
  from the start and becomes active during training. The ``'l2'``
  kappa bounds each leaf's Frobenius norm by ``1/lambda``, a far smaller set
  at the same lambda, so it gets ``lambda = 0.08`` (radius 12.5, just above
  the initial norms) and a learning rate matched to its unit-norm per-leaf
  step.
  """
  return (
    DigitsMethod(
      'adamw',
      3e-3,
      weight_decay,
      lambda lr, wd: optax.adamw(lr, weight_decay=wd),
      '',
    ),
    DigitsMethod(
      'lion',
      1e-3,
      weight_decay,
      lambda lr, wd: optimflow.lion(lr, weight_decay=wd),
      'box',
    ),
    DigitsMethod(
      "lion_kappa ('huber', 0.01)",
      1e-3,
      weight_decay,
      lambda lr, wd: optimflow.lion_kappa(
        lr, kappa=('huber', 0.01), weight_decay=wd
      ),
      'box',
    ),
    DigitsMethod(
      "lion_kappa 'l2'",
      3e-2,
      0.08,
      lambda lr, wd: optimflow.lion_kappa(lr, kappa='l2', weight_decay=wd),
      'ball',
    ),
  )


def weight_stats(model: nnx.Module) -> dict[str, float]:
  """``max|w|`` and the largest per-leaf Frobenius norm of ``model``'s params."""
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  return {
    'max_abs_w': max(float(jnp.max(jnp.abs(w))) for w in leaves),
    'max_leaf_norm': max(float(jnp.linalg.norm(w)) for w in leaves),
  }


@dataclasses.dataclass
class DigitsDemo:
  """Results of :func:`digits_demo`: table rows and histories by method."""

  rows: list[dict[str, Any]]
  histories: dict[str, tasks.History]
  methods: tuple[DigitsMethod, ...]


def digits_demo(
  steps: int = FULL_STEPS,
  weight_decay: float = 3.5,
  seed: int = 0,
  progress: bool = True,
) -> DigitsDemo:
  """Part (b): train the digits MLP with each of :func:`digits_methods`.

  Args:
    steps: optimizer steps per method.
    weight_decay: lambda shared by AdamW, Lion and Huber-kappa.
    seed: seed of the model initialisation and batch order.
    progress: show tqdm bars.

  Returns:
    A :class:`DigitsDemo`; each row has test accuracy, ``max|w|``, the
    largest leaf norm, the constraint radius ``1/lambda``, the fraction of
    weights within 1% of the box and whether the method's own constraint held
    at every evaluation.
  """
  data = tasks.load_digits(seed=0)
  methods = digits_methods(weight_decay)
  rows, histories = [], {}
  for m in methods:
    model = tasks.MLP(rngs=nnx.Rngs(seed))
    hist = tasks.fit(
      model,
      m.make(m.learning_rate, m.weight_decay),
      data,
      steps=steps,
      seed=seed,
      eval_every=max(1, steps // 15),
      progress=progress,
      desc=m.name,
      eval_fn=weight_stats,
    )
    histories[m.name] = hist
    radius = 1.0 / m.weight_decay
    key = {'box': 'max_abs_w', 'ball': 'max_leaf_norm'}.get(m.constraint)
    held = (max(hist.eval_extra[key]) <= radius * (1 + 1e-6)) if key else None
    weights = jnp.concatenate(
      [w.ravel() for w in jax.tree.leaves(nnx.state(model, nnx.Param))]
    )
    at_box = float(jnp.mean(jnp.abs(weights) >= 0.99 * radius))
    rows.append(
      {
        'method': m.name,
        'lr': m.learning_rate,
        'lambda': m.weight_decay,
        'test acc': hist.final['test_accuracy'],
        'train loss': hist.final['train_loss'],
        'max|w|': hist.eval_extra['max_abs_w'][-1],
        'peak max|w|': max(hist.eval_extra['max_abs_w']),
        'max ||W||_F': hist.eval_extra['max_leaf_norm'][-1],
        '1/lambda': radius,
        'frac at box': at_box,
        'constraint': {
          'box': 'max|w| <= 1/lambda',
          'ball': '||W||_F <= 1/lambda',
        }.get(m.constraint, '-'),
        'held': '-' if held is None else ('yes' if held else 'NO'),
      }
    )
  return DigitsDemo(rows, histories, methods)


def plot_constraint_demo(ax, demo: ConstraintDemo) -> None:
  """Draws part (a) on ``ax``: 2-D paths, the box, the closed forms (x)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  r = 1.0 / demo.weight_decay
  ax.add_patch(
    plt.Rectangle(
      (-r, -r),
      2 * r,
      2 * r,
      fill=False,
      ls='--',
      color='gray',
      label='box |x| <= 1/lambda',
    )
  )
  i, j = demo.coords
  for k, (label, xy) in enumerate(demo.paths.items()):
    color = f'C{k}'
    ax.plot(xy[:, 0], xy[:, 1], color=color, lw=1, alpha=0.8, label=label)
    ax.plot(*demo.targets[label][[i, j]], 'x', color=color, ms=10, mew=2)
  ax.plot(
    demo.center[i], demo.center[j], 'k*', ms=12, label='c (unconstrained)'
  )
  ax.set_xlabel(f'x[{i}]')
  ax.set_ylabel(f'x[{j}]')
  ax.set_title('(a) 2-D projection; x = closed form')
  ax.legend(fontsize=7, loc='upper left')
  ax.set_aspect('equal')


def plot_digits(ax_acc, ax_w, digits: DigitsDemo) -> None:
  """Draws part (b): test accuracy on ``ax_acc``, max|w| on ``ax_w``."""
  for m in digits.methods:
    hist = digits.histories[m.name]
    ax_acc.plot(hist.eval_steps, hist.test_accuracy, label=m.name)
    if m.constraint != 'ball':  # the l2 ball bounds norms, not max|w|
      ax_w.plot(
        hist.eval_steps,
        hist.eval_extra['max_abs_w'],
        label=f'{m.name} (lambda={m.weight_decay:g})',
      )
  lam = digits.methods[0].weight_decay
  ax_w.axhline(
    1.0 / lam, color='gray', ls='--', label=f'1/lambda, lambda={lam:g}'
  )
  ax_acc.set_title('(b) digits MLP: test accuracy')
  ax_acc.set_xlabel('step')
  ax_acc.set_ylim(0, 1)
  ax_acc.legend(fontsize=8)
  ax_w.set_title('(b) max |w| (box methods and AdamW)')
  ax_w.set_xlabel('step')
  ax_w.legend(fontsize=8)


def make_figure(demo: ConstraintDemo, digits: DigitsDemo):
  """The three-panel figure of both parts."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
  plot_constraint_demo(axes[0], demo)
  plot_digits(axes[1], axes[2], digits)
  fig.tight_layout()
  return fig


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Runs both parts, prints the tables, writes results.json and the PNG."""
  from optimflow.lab import examples  # pylint: disable=g-import-not-at-top

  args = examples.parse_args('lion_kappa', __doc__.splitlines()[0], argv)
  demo = constraint_demo()
  print(
    '(a) f = 0.5||x - c||^2, c ~ U[-1.5, 1.5]^200, lambda = 2, '
    'eta 1e-2 -> 0 over 2000 steps'
  )
  print(tasks.format_table(demo.rows))
  print(
    f'entry phase (x0 = 3, constant eta): max_t ||x_t||_inf - bound_t = '
    f'{demo.entry_violation:.3g}'
  )
  steps = SMOKE_STEPS if args.smoke else FULL_STEPS
  digits = digits_demo(steps=steps)
  print(f'\n(b) digits MLP, {steps} steps')
  print(tasks.format_table(digits.rows))
  png = args.output / 'lion_kappa.png'
  examples.save_figure(make_figure, png, demo, digits)
  results = {
    'constraint_demo': demo.rows,
    'entry_violation': demo.entry_violation,
    'digits': digits.rows,
    'smoke': args.smoke,
  }
  return examples.write_results(args.output, results, png)


if __name__ == '__main__':
  main()
