"""Methods side by side on a built-in task: the engine of ``optimflow compare``.

A *task* is either a network trained with :func:`optimflow.lab.tasks.fit`
(``digits``: the MLP; ``digits-cnn``: the BatchNorm CNN; ``charlm``: the
character-level transformer) or a 2-D test function minimised from a fixed
start (``rosenbrock``, ``rastrigin``; the trajectories are plotted on the
contour, as pytorch-optimizer's visualisations do). A *method* is a catalog
entry or one of the optax baselines in :data:`BASELINES`; network tasks build
it with the entry's ``defaults``, 2-D functions with its ``test_kwargs`` (the
settings the conformance suite checks on Rosenbrock), both updated by
``--set`` overrides.

:func:`compare` runs every method for every seed and returns a JSON-ready dict;
:func:`results_table` and :func:`results_markdown` render it and
:func:`write_outputs` writes ``results.json``, ``results.md`` and the plots.
Runs are deterministic given the seed: the seed fixes the model
initialisation and the batch order (networks) or the start point (2-D
functions: seed 0 is the canonical start, others add Gaussian noise of scale
0.1). Only the timing fields (``ms_per_step``, ``step_time_s``) vary between
two runs.

Examples:
  >>> from optimflow.lab import runs as compare
  >>> res = compare.compare('rosenbrock', ['lion', 'adam'], steps=50, seeds=1,
  ...                       progress=False)
  >>> [r['method'] for r in res['results']], res['metric']['name']
  (['lion', 'adam'], 'distance to optimum')
  >>> print(compare.results_table(res).splitlines()[0])
  method  train loss  dist to opt  ms/step  state bytes  grad evals/step
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from pathlib import Path
import time
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optimflow import catalog
from optimflow.lab import counting
from optimflow.lab import report

Factory = Callable[..., optax.GradientTransformation]
HyperSet = Literal['network', 'function']


@dataclasses.dataclass(frozen=True)
class Baseline:
  """An optax optimizer to compare against.

  Attributes:
    factory: the optax alias.
    network: hyperparameters for the network tasks (tuned on the digits MLP).
    function: hyperparameters for the 2-D functions.
  """

  factory: Factory
  network: Mapping[str, Any]
  function: Mapping[str, Any]


#: Optax baselines. Names that clash with a catalog entry carry ``optax.``.
BASELINES: dict[str, Baseline] = {
  'sgd': Baseline(optax.sgd, dict(learning_rate=0.1), dict(learning_rate=1e-3)),
  'momentum': Baseline(
    optax.sgd,
    dict(learning_rate=0.05, momentum=0.9),
    dict(learning_rate=1e-3, momentum=0.9),
  ),
  'adam': Baseline(
    optax.adam, dict(learning_rate=1e-3), dict(learning_rate=1e-2)
  ),
  'adamw': Baseline(
    optax.adamw,
    dict(learning_rate=1e-3, weight_decay=1e-2),
    dict(learning_rate=1e-2, weight_decay=1e-4),
  ),
  'optax.lion': Baseline(
    optax.lion,
    dict(learning_rate=3e-4, weight_decay=1e-2),
    dict(learning_rate=1e-2, weight_decay=1e-4),
  ),
  'optax.muon': Baseline(
    optax.contrib.muon,
    dict(learning_rate=0.02, adam_learning_rate=3e-3),
    dict(learning_rate=1e-2),
  ),
}

TRAINABLE_KINDS = ('transformation', 'extra_args')


def catalog_methods() -> list[str]:
  """Catalog entries the compare command can train, in catalog order."""
  return [
    m.name
    for m in catalog.METHODS
    if m.kind in TRAINABLE_KINDS and set(m.needs) <= {'grad_fn'}
  ]


def valid_methods() -> list[str]:
  """Every name ``--methods`` accepts (besides ``all``); old catalog names
  (:data:`optimflow.catalog.RENAMED`) still run, with a deprecation warning."""
  return catalog_methods() + list(BASELINES) + list(catalog.RENAMED)


def default_methods() -> list[str]:
  """What runs without ``--methods``: every trainable entry, then adamw."""
  return catalog_methods() + ['adamw']


# ---------------------------------------------------------------------------
# Methods.


@dataclasses.dataclass(frozen=True)
class Spec:
  """A method ready to train.

  Attributes:
    name: catalog name or baseline name.
    source: ``'catalog'`` or ``'optax'``.
    hyperparameters: the keyword arguments it was built with.
    tx: the transformation.
    needs: extra keyword arguments its ``update`` takes (``'grad_fn'``).
  """

  name: str
  source: str
  hyperparameters: dict[str, Any]
  tx: optax.GradientTransformation
  needs: tuple[str, ...] = ()


def _factory(name: str) -> Factory:
  if name in BASELINES:
    return BASELINES[name].factory
  return catalog.get(name).factory


def hyperparameter_names(name: str) -> Optional[list[str]]:
  """Keyword arguments method ``name`` accepts; None when it takes any."""
  params = inspect.signature(_factory(name)).parameters.values()
  if any(p.kind is p.VAR_KEYWORD for p in params):
    return None
  return [
    p.name
    for p in params
    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
  ]


def method_spec(
  name: str,
  hyper: HyperSet = 'network',
  overrides: Optional[Mapping[str, Any]] = None,
) -> Spec:
  """Builds method ``name`` for a task whose hyperparameter set is ``hyper``.

  Args:
    name: a catalog entry or a :data:`BASELINES` key.
    hyper: ``'network'`` (catalog ``defaults``) or ``'function'`` (catalog
      ``test_kwargs``, the 2-D settings).
    overrides: keyword arguments replacing those (``--set``).

  Returns:
    A :class:`Spec`.

  Raises:
    ValueError: unknown method, a method the command cannot train, an
      unknown hyperparameter or a value the factory rejects.
  """
  overrides = dict(overrides or {})
  if name not in valid_methods():
    raise ValueError(
      f'unknown method {name!r}; valid methods: ' + ', '.join(valid_methods())
    )
  accepted = hyperparameter_names(name)
  unknown = sorted(set(overrides) - set(accepted or overrides))
  if unknown:
    raise ValueError(
      f'{name} has no hyperparameter {", ".join(unknown)}; '
      f'valid: {", ".join(accepted)}'
    )
  if name in BASELINES:
    base = BASELINES[name]
    source, needs = 'optax', ()
    kwargs = dict(base.network if hyper == 'network' else base.function)
  else:
    entry = catalog.get(name)
    source, needs = 'catalog', tuple(entry.needs)
    kwargs = dict(entry.defaults if hyper == 'network' else entry.test_kwargs)
  kwargs.update(overrides)
  try:
    tx = _factory(name)(**kwargs)
    _trace_once(tx, needs)
  except (TypeError, ValueError) as e:
    raise ValueError(f'{name}({_kwargs_text(kwargs)}): {e}') from None
  return Spec(name, source, kwargs, tx, needs)


def _trace_once(tx: optax.GradientTransformation, needs: Sequence[str]):
  """Traces ``init`` and ``update`` on a small tree (no compute), so a value
  of the wrong type fails before any training starts."""
  params = {
    'w': jax.ShapeDtypeStruct((4, 3), jnp.float32),
    'b': jax.ShapeDtypeStruct((3,), jnp.float32),
  }
  extra = {'grad_fn': lambda p: p} if 'grad_fn' in needs else {}

  def update(p):
    return tx.update(p, tx.init(p), p, **extra)

  jax.eval_shape(update, params)


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
  return ', '.join(f'{k}={v!r}' for k, v in kwargs.items())


# ---------------------------------------------------------------------------
# Tasks.


@dataclasses.dataclass
class Run:
  """What one (method, seed) run records.

  Attributes:
    train_loss: loss at each step, before the update (mini-batch for
      networks).
    step_time_s: wall time of each step (the first includes compilation).
    final_train_loss: full-train-set loss (networks) or ``f(x)`` at the end.
    test_metric: the task's metric at the end.
    eval_steps: steps at which the metric was measured.
    metric_curve: the metric at ``eval_steps``.
    opt_state_bytes: bytes of the optimizer state.
    grad_evals_per_step: gradient evaluations per step (2 for SAM), counted
      when they run (:mod:`optimflow.lab.counting`), averaged over the steps.
    trajectory: 2-D functions: the iterates ``x_0 .. x_steps``.
  """

  train_loss: np.ndarray
  step_time_s: np.ndarray
  final_train_loss: float
  test_metric: float
  eval_steps: np.ndarray
  metric_curve: np.ndarray
  opt_state_bytes: int
  grad_evals_per_step: int | float
  trajectory: Optional[np.ndarray] = None

  @property
  def ms_per_step(self) -> float:
    """Mean wall time of the steps after the first (compilation excluded)."""
    rest = self.step_time_s[1:]
    return float(1e3 * rest.mean()) if rest.size else float('nan')

  @property
  def wall_s(self) -> np.ndarray:
    """Cumulative wall time after each step, the first (compiling) step
    counted at the median of the others."""
    times = np.array(self.step_time_s, np.float64)
    if times.size > 1:
      times[0] = np.median(times[1:])
    return np.cumsum(times)


@dataclasses.dataclass(frozen=True)
class Metric:
  """The task's test metric: full name, table header, direction."""

  name: str
  short: str
  higher_is_better: bool


@dataclasses.dataclass(frozen=True)
class NetworkTask:
  """A network trained with :func:`optimflow.lab.tasks.fit`.

  Attributes:
    name: task name (``--task``).
    summary: one line for reports.
    load: ``() -> data`` with ``x_train, y_train, x_test, y_test``.
    model: ``seed -> nnx.Module``.
    loss: ``loss(model, x, y)``.
    metric: the test metric.
    metric_from: ``(test_loss, test_accuracy) -> metric``.
    steps: default steps.
    batch_size: default batch size.
  """

  name: str
  summary: str
  load: Callable[[], Any]
  model: Callable[[int], Any]
  loss: Callable[..., jax.Array]
  metric: Metric
  metric_from: Callable[[np.ndarray, np.ndarray], np.ndarray]
  steps: int = 500
  batch_size: int = 128
  hyper: HyperSet = 'network'

  def run(
    self,
    spec: Spec,
    seed: int,
    *,
    data: Any,
    steps: int,
    batch_size: int,
    progress: bool,
  ) -> Run:
    """Trains a fresh model with ``spec`` for ``steps`` steps."""
    from optimflow.lab import tasks  # pylint: disable=g-import-not-at-top

    builder = (
      tasks.grad_fn_builder(self.loss) if 'grad_fn' in spec.needs else None
    )
    hist = tasks.fit(
      self.model(seed),
      spec.tx,
      data,
      steps=steps,
      batch_size=batch_size,
      seed=seed,
      progress=progress,
      desc=f'{spec.name} seed {seed}',
      grad_fn_builder=builder,
      loss=self.loss,
    )
    curve = self.metric_from(hist.test_loss, hist.test_accuracy)
    return Run(
      train_loss=hist.train_loss,
      step_time_s=hist.step_time_s,
      final_train_loss=hist.final['train_loss'],
      test_metric=float(curve[-1]),
      eval_steps=hist.eval_steps,
      metric_curve=curve,
      opt_state_bytes=hist.opt_state_bytes,
      grad_evals_per_step=hist.grad_evals_per_step,
    )


@dataclasses.dataclass(frozen=True)
class FunctionTask:
  """A 2-D test function minimised from a fixed start.

  Attributes:
    name: task name.
    summary: one line for reports.
    problem: ``() -> optimflow.lab.tasks.Problem``.
    window: ``(xmin, xmax, ymin, ymax)`` of the contour plot.
    log_contour: draw the contour of ``log(1 + f)`` (Rosenbrock's valley).
    steps: default steps.
  """

  name: str
  summary: str
  problem: Callable[[], Any]
  window: tuple[float, float, float, float]
  log_contour: bool = False
  steps: int = 1000
  batch_size: Optional[int] = None
  hyper: HyperSet = 'function'
  metric: Metric = Metric('distance to optimum', 'dist to opt', False)

  def load(self) -> Any:
    return self.problem()

  def start(self, problem: Any, seed: int) -> jax.Array:
    """Seed 0: the problem's start; others: plus N(0, 0.1^2) noise."""
    if seed == 0:
      return problem.init
    noise = jax.random.normal(jax.random.key(seed), problem.init.shape)
    return problem.init + 0.1 * noise

  def run(
    self,
    spec: Spec,
    seed: int,
    *,
    data: Any,
    steps: int,
    batch_size: Optional[int],
    progress: bool,
  ) -> Run:
    """Runs ``steps`` updates of ``spec`` from :meth:`start`."""
    del batch_size
    return minimize(
      data,
      spec,
      self.start(data, seed),
      steps=steps,
      progress=progress,
      desc=f'{spec.name} seed {seed}',
    )


def minimize(
  problem: Any,
  spec: Spec,
  x0: jax.Array,
  *,
  steps: int,
  progress: bool = False,
  desc: Optional[str] = None,
) -> Run:
  """Minimises ``problem.loss`` from ``x0`` with ``spec``; records the path.

  Each step is one jitted call (value, gradient, update), synchronised and
  timed; methods needing ``grad_fn`` get ``jax.grad(problem.loss)``. Gradient
  evaluations are counted when they run (a scan or cond inside the method is
  counted right).

  Args:
    problem: an :class:`optimflow.lab.tasks.Problem`.
    spec: the method.
    x0: start point.
    steps: number of updates.
    progress: tqdm bar with the live loss.
    desc: label of the bar.

  Returns:
    A :class:`Run` whose metric is ``||x - optimum||`` (measured every step)
    and whose ``trajectory`` holds ``x_0 .. x_steps``.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  loss, tx = problem.loss, spec.tx
  evals = counting.GradEvals()

  @jax.jit
  def step(x, state):
    scope = evals.scope()  # counts gradients when they run, not when traced
    value, grads = scope.wrap(jax.value_and_grad(loss))(x)
    extra = {}
    if 'grad_fn' in spec.needs:
      extra['grad_fn'] = scope.wrap(jax.grad(loss))
    updates, state = tx.update(grads, state, x, **extra)
    return optax.apply_updates(x, updates), state, value, scope.count()

  x = jnp.asarray(x0, jnp.float32)
  state = tx.init(x)
  path = np.zeros((steps + 1,) + x.shape, np.float64)
  path[0] = np.asarray(x)
  losses = np.zeros(steps)
  times = np.zeros(steps)
  bar = tqdm(
    total=steps, desc=desc, disable=not progress, leave=False, mininterval=0.25
  )
  for i in range(steps):
    start = time.perf_counter()
    x, state, value, n_grads = step(x, state)
    losses[i] = float(value)
    evals.add(n_grads)
    times[i] = time.perf_counter() - start
    path[i + 1] = np.asarray(x)
    if progress and ((i + 1) % 50 == 0 or i + 1 == steps):
      bar.set_postfix(loss=f'{losses[i]:.4g}', refresh=False)
    bar.update(1)
  bar.close()
  from optimflow.lab.tasks import tree_bytes  # pylint: disable=g-import-not-at-top

  distance = np.linalg.norm(path[1:] - np.asarray(problem.optimum), axis=-1)
  return Run(
    train_loss=losses,
    step_time_s=times,
    final_train_loss=float(loss(x)),
    test_metric=float(distance[-1]),
    eval_steps=np.arange(1, steps + 1),
    metric_curve=distance,
    opt_state_bytes=tree_bytes(state),
    grad_evals_per_step=counting.per_step(evals.total, steps),
    trajectory=path,
  )


Task = NetworkTask | FunctionTask


def _accuracy(loss, acc):
  del loss
  return np.asarray(acc, np.float64)


def _bits_per_char(loss, acc):
  del acc
  return np.asarray(loss, np.float64) / math.log(2.0)


_TEST_ACCURACY = Metric('test accuracy', 'test acc', True)


def _digits(cnn: bool) -> NetworkTask:
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from optimflow.lab import tasks  # pylint: disable=g-import-not-at-top

  if cnn:
    return NetworkTask(
      'digits-cnn',
      'scikit-learn digits, CNN conv16-BN-conv32-BN (no conv '
      'bias: scale-invariant kernels) + Dense head',
      tasks.load_digits,
      lambda seed: tasks.CNN(rngs=nnx.Rngs(seed)),
      tasks.loss_fn,
      _TEST_ACCURACY,
      _accuracy,
      steps=300,
    )
  return NetworkTask(
    'digits',
    'scikit-learn digits, MLP 64-128-128-10',
    tasks.load_digits,
    lambda seed: tasks.MLP(rngs=nnx.Rngs(seed)),
    tasks.loss_fn,
    _TEST_ACCURACY,
    _accuracy,
    steps=500,
  )


#: Char-LM size: small enough for a CPU (about 0.1M parameters).
CHARLM = dict(
  context=64, d_model=64, num_layers=2, num_heads=4, max_chars=200_000
)


def _charlm() -> NetworkTask:
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from optimflow.lab.tasks import charlm  # pylint: disable=g-import-not-at-top

  cfg = CHARLM
  return NetworkTask(
    'charlm',
    f'character LM on the Python docs ({cfg["max_chars"]:,} '
    f'characters), pre-LN transformer {cfg["num_layers"]}x'
    f'd{cfg["d_model"]}, context {cfg["context"]}',
    functools.partial(
      charlm.load_charlm, context=cfg['context'], max_chars=cfg['max_chars']
    ),
    lambda seed: charlm.CharTransformer(
      context=cfg['context'],
      d_model=cfg['d_model'],
      num_layers=cfg['num_layers'],
      num_heads=cfg['num_heads'],
      rngs=nnx.Rngs(seed),
    ),
    charlm.loss_fn,
    Metric('validation bits per character', 'valid bpc', False),
    _bits_per_char,
    steps=300,
    batch_size=32,
  )


def _rosenbrock() -> FunctionTask:
  from optimflow.lab.tasks import synthetic  # pylint: disable=g-import-not-at-top

  return FunctionTask(
    'rosenbrock',
    'Rosenbrock (x, y) from (-1.5, 2), minimum at (1, 1)',
    synthetic.rosenbrock,
    window=(-2.0, 2.0, -1.0, 3.0),
    log_contour=True,
    steps=2000,
  )


def _rastrigin() -> FunctionTask:
  from optimflow.lab.tasks import synthetic  # pylint: disable=g-import-not-at-top

  return FunctionTask(
    'rastrigin',
    'Rastrigin 2-D from (2.7, -3.2), global minimum at 0',
    synthetic.rastrigin,
    window=(-4.5, 4.5, -4.5, 4.5),
    steps=1000,
  )


TASKS: dict[str, Callable[[], Task]] = {
  'digits': functools.partial(_digits, cnn=False),
  'digits-cnn': functools.partial(_digits, cnn=True),
  'charlm': _charlm,
  'rosenbrock': _rosenbrock,
  'rastrigin': _rastrigin,
}


def get_task(name: str) -> Task:
  """The task called ``name``; ``ValueError`` lists the valid ones."""
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; valid tasks: ' + ', '.join(TASKS))
  return TASKS[name]()


# ---------------------------------------------------------------------------
# Running and results.


def _summary(values: Sequence[float]) -> dict[str, Any]:
  arr = np.asarray(values, np.float64)
  std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
  return {'mean': float(arr.mean()), 'std': std, 'values': arr.tolist()}


def build_specs(
  method_names: Sequence[str],
  hyper: HyperSet,
  overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
) -> list[Spec]:
  """Specs of ``method_names`` (``ValueError`` on any bad name or value)."""
  overrides = dict(overrides or {})
  stray = sorted(set(overrides) - set(method_names))
  if stray:
    raise ValueError(
      f'--set names {", ".join(stray)}, which is not among '
      f'the methods run ({", ".join(method_names)})'
    )
  return [method_spec(n, hyper, overrides.get(n)) for n in method_names]


#: Learning-rate search of ``--tune-lr``: these factors times the method's
#: learning rate (its 2-D default or its ``--set`` value).
LR_FACTORS = tuple(float(f) for f in 10.0 ** np.linspace(-2, 2, 9))


def _final_loss(runs: Sequence[Run]) -> float:
  value = float(np.mean([r.final_train_loss for r in runs]))
  return value if math.isfinite(value) else math.inf


def tune_learning_rate(
  task: Task,
  spec: Spec,
  run_seeds: Callable,
  *,
  overrides: Optional[Mapping[str, Any]] = None,
  progress: bool = False,
) -> tuple[Spec, list[Run], dict[str, Any]]:
  """Picks ``spec``'s learning rate from :data:`LR_FACTORS` by final loss.

  As pytorch-optimizer's trajectory plots do, every learning rate of the
  grid runs for every seed and the one with the lowest mean final loss
  (ties: the smaller learning rate) is kept; its runs are returned, so
  nothing is run twice.

  Args:
    task: the task (its ``hyper`` builds the method).
    spec: the method as built without the search.
    run_seeds: ``spec -> list of Run`` (all seeds).
    overrides: the method's ``--set`` values (kept during the search).
    progress: one tqdm bar over the grid.

  Returns:
    The chosen spec, its runs and a record ``{'learning_rates',
    'final_loss', 'chosen'}``.

  Raises:
    ValueError: the method's learning rate is not a number.
  """
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top

  base = spec.hyperparameters.get('learning_rate')
  if isinstance(base, bool) or not isinstance(base, (int, float)):
    raise ValueError(
      f'--tune-lr needs a numeric learning_rate for {spec.name}, got {base!r}'
    )
  grid = [float(f'{base * f:.3g}') for f in LR_FACTORS]
  best = None
  losses = []
  for lr in tqdm(
    grid, desc=f'{spec.name} lr search', disable=not progress, leave=False
  ):
    candidate = method_spec(
      spec.name, task.hyper, {**(overrides or {}), 'learning_rate': lr}
    )
    runs = run_seeds(candidate)
    losses.append(_final_loss(runs))
    if best is None or losses[-1] < best[0]:
      best = (losses[-1], candidate, runs)
  record = {
    'learning_rates': grid,
    'final_loss': losses,
    'chosen': best[1].hyperparameters['learning_rate'],
  }
  return best[1], best[2], record


def compare(
  task_name: str,
  method_names: Sequence[str],
  *,
  steps: Optional[int] = None,
  seeds: int = 1,
  batch_size: Optional[int] = None,
  overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
  tune_lr: bool = False,
  progress: bool = True,
  methods_arg: Optional[str] = None,
) -> dict[str, Any]:
  """Runs every method on ``task_name`` for seeds ``0 .. seeds-1``.

  Args:
    task_name: a key of :data:`TASKS`.
    method_names: catalog names or :data:`BASELINES` keys.
    steps: steps per run (default: the task's).
    seeds: runs per method.
    batch_size: examples per step for network tasks (default: the task's).
    overrides: ``{method: {hyperparameter: value}}`` (``--set``).
    tune_lr: 2-D functions only: pick each method's learning rate with
      :func:`tune_learning_rate`.
    progress: one tqdm bar per run (per method during a search).
    methods_arg: what ``--methods`` said (e.g. ``'all'``), recorded for the
      command line in ``results.md``; default: the names.

  Returns:
    The content of ``results.json``: the task, settings, machine and per
    method the summaries (mean, std, per-seed values) of final train loss,
    test metric and ms per step, state bytes, gradient evaluations per step,
    the curves (per seed) and, for 2-D functions, the trajectories (and the
    learning-rate search when ``tune_lr``).

  Raises:
    ValueError: bad names, values or counts; ``tune_lr`` on a network task.
  """
  task = get_task(task_name)
  specs = build_specs(method_names, task.hyper, overrides)
  if tune_lr and not isinstance(task, FunctionTask):
    raise ValueError(
      f'--tune-lr is for the 2-D functions, not {task_name} '
      '(use --set method.learning_rate=... there)'
    )
  steps = task.steps if steps is None else steps
  if batch_size is None:
    batch_size = task.batch_size
  for name, value in (('steps', steps), ('seeds', seeds)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f'{name}={value!r}: expected a positive integer')
  data = task.load()
  results = []
  for spec in specs:
    run_seeds = lambda spec, progress=progress: [
      task.run(
        spec,
        seed,
        data=data,
        steps=steps,
        batch_size=batch_size,
        progress=progress,
      )
      for seed in range(seeds)
    ]
    search = None
    if tune_lr:
      spec, runs, search = tune_learning_rate(
        task,
        spec,
        functools.partial(run_seeds, progress=False),
        overrides=(overrides or {}).get(spec.name),
        progress=progress,
      )
    else:
      runs = run_seeds(spec)
    entry = {
      'method': spec.name,
      'source': spec.source,
      'hyperparameters': spec.hyperparameters,
      'train_loss': _summary([r.final_train_loss for r in runs]),
      'test_metric': _summary([r.test_metric for r in runs]),
      'ms_per_step': _summary([r.ms_per_step for r in runs]),
      'compile_s': [float(r.step_time_s[0]) for r in runs],
      'opt_state_bytes': runs[0].opt_state_bytes,
      'grad_evals_per_step': runs[0].grad_evals_per_step,
      'curves': {
        'train_loss': [r.train_loss.tolist() for r in runs],
        'step_time_s': [r.step_time_s.tolist() for r in runs],
        'wall_s': [r.wall_s.tolist() for r in runs],
        'eval_steps': runs[0].eval_steps.tolist(),
        'test_metric': [r.metric_curve.tolist() for r in runs],
      },
    }
    if runs[0].trajectory is not None:
      entry['trajectories'] = [r.trajectory.tolist() for r in runs]
    if search is not None:
      entry['lr_search'] = search
    results.append(entry)
  out = {
    'task': task.name,
    'task_summary': task.summary,
    'kind': 'function' if isinstance(task, FunctionTask) else 'network',
    'metric': dataclasses.asdict(task.metric),
    'steps': steps,
    'seeds': list(range(seeds)),
    'batch_size': batch_size,
    'methods': [s.name for s in specs],
    'methods_arg': (
      methods_arg
      if methods_arg is not None
      else ','.join(s.name for s in specs)
    ),
    'overrides': {k: dict(v) for k, v in (overrides or {}).items()},
    'tune_lr': bool(tune_lr),
    'machine': report.machine_info(),
    'results': results,
  }
  if isinstance(task, FunctionTask):
    out['window'] = list(task.window)
    out['log_contour'] = task.log_contour
  return out


#: Fields that hold wall times; everything else is deterministic.
TIMING_FIELDS = ('ms_per_step', 'compile_s', 'step_time_s', 'wall_s')


def without_timing(results: dict[str, Any]) -> dict[str, Any]:
  """A copy of ``results`` without wall times and the machine description.

  Two runs with the same arguments give equal copies.
  """
  out = {k: v for k, v in results.items() if k != 'machine'}
  out['results'] = []
  for r in results['results']:
    r = {k: v for k, v in r.items() if k not in TIMING_FIELDS}
    r['curves'] = {
      k: v for k, v in r['curves'].items() if k not in TIMING_FIELDS
    }
    out['results'].append(r)
  return out


def _cell(stat: dict[str, Any], fmt: str) -> str:
  if len(stat['values']) == 1:
    return format(stat['mean'], fmt)
  return f'{format(stat["mean"], fmt)} ± {format(stat["std"], fmt)}'


def table_rows(results: dict[str, Any]) -> list[dict[str, str]]:
  """One row per method: the columns of the printed and markdown tables."""
  metric = results['metric']['short']
  return [
    {
      'method': r['method'],
      'train loss': _cell(r['train_loss'], '.4g'),
      metric: _cell(r['test_metric'], '.4g'),
      'ms/step': _cell(r['ms_per_step'], '.3g'),
      'state bytes': str(r['opt_state_bytes']),
      'grad evals/step': str(r['grad_evals_per_step']),
    }
    for r in results['results']
  ]


def results_table(results: dict[str, Any]) -> str:
  """The table printed on stdout."""
  from optimflow.lab.tasks import format_table  # pylint: disable=g-import-not-at-top

  return format_table(table_rows(results))


PLOTS = {
  'loss_vs_steps.png': 'train loss against step',
  'loss_vs_time.png': 'train loss against wall time',
  'trajectories.png': 'trajectories on the contour (2-D functions)',
}


def command_line(results: dict[str, Any], output: Optional[Path] = None) -> str:
  """The ``python -m optimflow compare`` command that reproduces ``results``.

  Examples:
    >>> from optimflow.lab import runs as compare
    >>> compare.command_line({'task': 'rosenbrock', 'methods': ['lion'],
    ...                       'methods_arg': 'lion',
    ...                       'steps': 10, 'seeds': [0, 1], 'batch_size': None,
    ...                       'overrides': {'lion': {'b1': 0.8}},
    ...                       'tune_lr': True}, 'out')
    'python -m optimflow compare --task rosenbrock --methods lion --steps 10 --seeds 2 --set lion.b1=0.8 --tune-lr --output out'
  """
  parts = [
    'python -m optimflow compare',
    f'--task {results["task"]}',
    '--methods ' + results.get('methods_arg', ','.join(results['methods'])),
  ]
  parts += [f'--steps {results["steps"]}', f'--seeds {len(results["seeds"])}']
  task = TASKS[results['task']]()
  if results['batch_size'] not in (None, task.batch_size):
    parts.append(f'--batch-size {results["batch_size"]}')
  for method, kwargs in results.get('overrides', {}).items():
    for key, value in kwargs.items():
      text = f'{method}.{key}={value!r}'
      parts.append(f'--set {text!r}' if ' ' in text else f'--set {text}')
  if results.get('tune_lr'):
    parts.append('--tune-lr')
  if output is not None:
    parts.append(f'--output {output}')
  return ' '.join(parts)


def summary_markdown(
  results: dict[str, Any], output: Optional[Path] = None
) -> str:
  """The command, the settings and the table (``results.md`` and README)."""
  seeds = results['seeds']
  batch = (
    f', batch {results["batch_size"]}' if results['kind'] == 'network' else ''
  )
  metric = results['metric']
  return '\n'.join(
    [
      f'`{command_line(results, output)}`',
      '',
      f'{results["task_summary"]}. {results["steps"]} steps, '
      f'{len(seeds)} seed(s) ({", ".join(map(str, seeds))}){batch}; '
      f'mean ± std over seeds. Machine: '
      f'{report.describe_machine(results["machine"])}. Columns: final '
      f'train loss, {metric["name"]} '
      f'({"higher" if metric["higher_is_better"] else "lower"} is better), '
      'wall time per step (compilation excluded), optimizer state bytes, '
      'gradient evaluations per step.',
      '',
      report.markdown_table(table_rows(results), align='lrrrrr'),
    ]
  )


def results_markdown(
  results: dict[str, Any],
  *,
  plots: Sequence[str] = (),
  output: Optional[Path] = None,
) -> str:
  """``results.md``: command, settings, the table, hyperparameters, plots."""
  if results.get('tune_lr'):
    heading = (
      'Hyperparameters (learning rate: the best of '
      f'{len(LR_FACTORS)} on a log grid from 1/100 to 100 times '
      'the default, by mean final loss):'
    )
  else:
    heading = 'Hyperparameters:'
  lines = [
    f'# {results["task"]}: {len(results["methods"])} methods',
    '',
    summary_markdown(results, output),
    '',
    heading,
    '',
  ]
  for r in results['results']:
    lines.append(
      f'- `{r["method"]}` ({r["source"]}): '
      f'{_kwargs_text(r["hyperparameters"]) or "(defaults)"}'
    )
  if plots:
    lines.append('')
    for name in plots:
      lines.append(f'![{PLOTS.get(name, name)}]({name})')
  return '\n'.join(lines) + '\n'


#: ``results.json`` keeps at most this many points of a per-step curve.
MAX_POINTS = 200


def _round(value: Any, digits: int = 6) -> Any:
  if isinstance(value, float):
    return float(f'{value:.{digits}g}') if math.isfinite(value) else value
  if isinstance(value, list):
    return [_round(v, digits) for v in value]
  return value


def storable(
  results: dict[str, Any], max_points: int = MAX_POINTS
) -> dict[str, Any]:
  """What ``results.json`` holds: ``results`` with curves thinned to
  ``max_points`` steps and rounded (the metric to 6 significant digits, loss,
  wall time and trajectories to 4: plenty for plots).

  Per-step series longer than ``max_points`` (train loss, cumulative wall
  time; on 2-D functions also the metric and the trajectories) keep evenly
  spaced steps, always the last; ``curves['index']`` lists the steps kept
  (1-based; trajectories keep ``x_0`` too). Per-step times are left out
  (``wall_s`` holds them, ``compile_s`` the first step's). The summaries in
  the table are computed before thinning.
  """
  steps = results['steps']
  index = np.arange(1, steps + 1)
  if steps > max_points:
    index = np.unique(np.linspace(1, steps, max_points).round().astype(int))
  pick = lambda curve, digits=4: [
    _round([c[i - 1] for i in index], digits) for c in curve
  ]
  out = dict(results, results=[])
  for r in results['results']:
    curves = dict(r['curves'], index=index.tolist())
    del curves['step_time_s']
    for key in ('train_loss', 'wall_s'):
      curves[key] = pick(r['curves'][key])
    if len(r['curves']['eval_steps']) == steps:
      curves['eval_steps'] = index.tolist()
      curves['test_metric'] = pick(r['curves']['test_metric'], 6)
    else:
      curves['test_metric'] = _round(curves['test_metric'])
    r = dict(r, curves=curves)
    if 'trajectories' in r:
      r['trajectories'] = [
        _round([t[0]] + [t[i] for i in index], 4) for t in r['trajectories']
      ]
    out['results'].append(r)
  return out


def write_outputs(results: dict[str, Any], folder: Path) -> list[Path]:
  """Writes ``results.json``, the PNG plots and ``results.md`` to ``folder``.

  Returns:
    The paths written.
  """
  import json  # pylint: disable=g-import-not-at-top

  from optimflow.lab import plotting  # pylint: disable=g-import-not-at-top

  folder = Path(folder)
  written = []
  path = folder / 'results.json'
  path.write_text(
    json.dumps(storable(results), separators=(',', ':'), default=repr) + '\n'
  )
  written.append(path)
  plots = ['loss_vs_steps.png', 'loss_vs_time.png']
  plotting.loss_vs_steps(results, folder / plots[0])
  plotting.loss_vs_time(results, folder / plots[1])
  if results['kind'] == 'function':
    plots.append('trajectories.png')
    plotting.trajectories(
      results, folder / plots[2], get_task(results['task']).load()
    )
  written += [folder / p for p in plots]
  path = folder / 'results.md'
  path.write_text(results_markdown(results, plots=plots, output=folder))
  written.append(path)
  return written
