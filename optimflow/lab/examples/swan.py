"""SWAN: stateless training of a character-level transformer, against Adam.

Ma, Gong, Scetbon, Meeds (2024) claim that SGD on gradients that are first
standardised per output unit (GradNorm) and then whitened,
``(G G^T)^{-1/2} G`` (GradWhitening), trains language models as well as Adam
with no optimizer state on the hidden matrices (about half of Adam's
end-to-end memory) and reaches Adam's loss with about half the tokens at
350M/1.3B parameters. This example checks the claim at CPU scale on the
char-LM task (:mod:`optimflow.lab.tasks.charlm`: Python's documentation text, a
small pre-LayerNorm GPT):

* Adam (``optax.adamw``), SWAN (:func:`optimflow.swan`) and, for reference,
  Muon (:func:`optimflow.muon`) train the same model from the same
  initialisations for the same number of steps, with the same
  warmup-cosine schedule shape, over three seeds. Embeddings, head, norms and
  biases use AdamW with Adam's learning rate in every run.
* Reported: validation loss curves, the tokens each method needs to reach
  Adam's final validation loss (mean over seeds), optimizer-state bytes, and
  the memory of the compiled training step from
  ``jax.jit(step).lower(...).compile().memory_analysis()`` (arguments, temporaries
  and the resulting peak), for the example's model and, compiled only, for a
  19M-parameter model with the benchmark's hidden sizes (6 blocks, d = 512),
  where parameters and optimizer state are a larger share of the step.

Measured (400 steps of 32 x 64 characters, seeds 0-2; validation loss in
nats/char, mean over seeds; figure in ``docs/results/examples/swan.png``):

  method  peak lr  final loss      tokens to Adam's final   optimizer state
  Adam    3e-3     1.577 +- 0.025  819k (by definition)     3349 KiB
  SWAN    1e-2     1.355 +- 0.013  410k = 0.50 x Adam's    277 KiB
  Muon    0.05     1.408 +- 0.003  532k = 0.65 x Adam's    1813 KiB

SWAN reaches Adam's final loss with half the tokens, the paper's 2x, and ends
below Muon. Token counts are read at the 20-step evaluations (41k-token
resolution). With the paper's ten constant Higham steps
(``ns_steps=10, ns_beta=0.5``, the default until the scaled schedule) the
same runs ended at 1.431 and needed 532k tokens: those steps leave the
smallest singular values of the gradient half whitened (see
:func:`optimflow.scale_by_grad_whitening`).

Memory of the compiled training step: SWAN's step needs 0.98x Adam's at the
example's size (activations dominate) and 0.88x for the 19M model (Muon:
1.00x and 1.00x). There SWAN's state is 1.5 MiB against Adam's 145.5 MiB
(AdamW's moments on the embeddings, head, norms and biases only), but on CPU
the whitening's stacked same-shape matrices add about 70 MiB of temporaries
(as Muon's iteration does), so the paper's "about 50%" is not reached at this
size.

Peak learning rates come from a short sweep (seed 0, 200 steps, same
schedule shape; validation loss at step 200): Adam over ``{1e-3, 3e-3,
1e-2}`` (2.203, 2.062, 2.203: 3e-3), SWAN over ``{3e-3, 1e-2, 3e-2}``
(1.658, 1.538, 1.929: 1e-2), Muon over ``{0.01, 0.02, 0.05, 0.1}``
(1.889, 1.737, 1.702, 2.052: 0.05); every optimum is inside its grid.

Run ``python -m optimflow.lab.examples.swan [--smoke] [--output runs/swan]``.

References:
  Ma, Gong, Scetbon, Meeds, `SWAN: SGD with Normalization and Whitening
  Enables Stateless LLM Training <https://arxiv.org/abs/2412.13148>`_, 2024.
  Jordan et al., `Muon: An optimizer for hidden layers in neural networks
  <https://kellerjordan.github.io/posts/muon/>`_, 2024.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optimflow
from optimflow.lab import tasks
from optimflow.lab.tasks import charlm

METHODS = ('adam', 'swan', 'muon')


@dataclasses.dataclass(frozen=True)
class Config:
  """Sizes and hyperparameters of a run.

  Attributes:
    context: characters per window.
    d_model: model width.
    num_layers: transformer blocks.
    num_heads: attention heads.
    batch_size: windows per step.
    steps: optimizer steps per run.
    warmup: linear warmup steps of the schedule.
    eval_every: steps between validation evaluations.
    seeds: model initialisations / batch orders.
    max_chars: corpus prefix (``None``: all of it).
    learning_rates: peak learning rate per method (the AdamW branch of SWAN
      and Muon uses ``learning_rates['adam']``).
  """

  context: int = 64
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  batch_size: int = 32
  steps: int = 400
  warmup: int = 20
  eval_every: int = 20
  seeds: tuple[int, ...] = (0, 1, 2)
  max_chars: Optional[int] = None
  learning_rates: tuple[tuple[str, float], ...] = (
    ('adam', 3e-3),
    ('swan', 1e-2),
    ('muon', 0.05),
  )

  @property
  def tokens_per_step(self) -> int:
    return self.batch_size * self.context

  def lr(self, method: str) -> float:
    return dict(self.learning_rates)[method]


FULL = Config()
SMOKE = Config(
  d_model=32,
  num_heads=2,
  num_layers=1,
  batch_size=8,
  steps=12,
  warmup=2,
  eval_every=4,
  seeds=(0,),
  max_chars=20_000,
  context=32,
)


def schedule(peak: float, cfg: Config) -> optax.Schedule:
  """Linear warmup to ``peak``, cosine decay to ``peak / 10``."""
  return optax.warmup_cosine_decay_schedule(
    0.0, peak, cfg.warmup, cfg.steps, end_value=peak / 10
  )


def make_optimizer(
  method: str, cfg: Config, lr: Optional[float] = None
) -> optax.GradientTransformation:
  """The transformation of ``method`` (``'adam'``, ``'swan'``, ``'muon'``).

  Args:
    method: one of :data:`METHODS`.
    cfg: the run's configuration.
    lr: peak learning rate of the method's main branch (default
      ``cfg.lr(method)``).

  Returns:
    AdamW (b2 = 0.95, no decay) for ``'adam'``; for ``'swan'`` and ``'muon'``
    the hidden matrices get the method and everything else that same AdamW.
  """
  lr = cfg.lr(method) if lr is None else lr
  adam_lr = schedule(cfg.lr('adam'), cfg)
  if method == 'adam':
    return optax.adamw(schedule(lr, cfg), b1=0.9, b2=0.95, weight_decay=0.0)
  if method == 'swan':
    return optimflow.swan(
      schedule(lr, cfg), adam_learning_rate=adam_lr, adam_b2=0.95
    )
  if method == 'muon':
    return optimflow.muon(
      schedule(lr, cfg), adam_learning_rate=adam_lr, adam_b2=0.95
    )
  raise ValueError(f'unknown method {method!r}; choose from {METHODS}')


def make_model(cfg: Config, seed: int = 0) -> charlm.CharTransformer:
  return charlm.CharTransformer(
    context=cfg.context,
    d_model=cfg.d_model,
    num_layers=cfg.num_layers,
    num_heads=cfg.num_heads,
    rngs=nnx.Rngs(seed),
  )


def load_data(cfg: Config) -> charlm.CharLMData:
  return charlm.load_charlm(context=cfg.context, max_chars=cfg.max_chars)


def train(
  method: str,
  cfg: Config,
  data: charlm.CharLMData,
  seed: int,
  *,
  lr: Optional[float] = None,
  progress: bool = True,
) -> tasks.History:
  """One run of ``method`` (see :func:`make_optimizer`) with ``seed``."""
  return tasks.fit(
    make_model(cfg, seed),
    make_optimizer(method, cfg, lr),
    data,
    steps=cfg.steps,
    batch_size=cfg.batch_size,
    seed=seed,
    eval_every=cfg.eval_every,
    loss=charlm.loss_fn,
    progress=progress,
    desc=f'{method} seed {seed}',
  )


def mean_curve(
  histories: Sequence[tasks.History],
) -> tuple[np.ndarray, np.ndarray]:
  """``(eval_steps, validation loss averaged over the runs)``."""
  return (
    np.asarray(histories[0].eval_steps),
    np.mean([h.test_loss for h in histories], axis=0),
  )


def tokens_to_reach(
  histories: Sequence[tasks.History], target: float, tokens_per_step: int
) -> float:
  """Tokens at the first evaluation where the seed-mean validation loss is
  ``<= target``; ``nan`` when it never gets there.

  Examples:
    >>> import numpy as np
    >>> from types import SimpleNamespace as H
    >>> runs = [H(eval_steps=np.array([10, 20, 30]),
    ...           test_loss=np.array([3.0, 2.0, 1.5]))]
    >>> tokens_to_reach(runs, 2.0, 100), tokens_to_reach(runs, 1.0, 100)
    (2000.0, nan)
  """
  steps, loss = mean_curve(histories)
  hit = np.nonzero(loss <= target)[0]
  return float(steps[hit[0]] * tokens_per_step) if hit.size else math.nan


# ---------------------------------------------------------------------------
# Memory of the compiled training step.


def step_memory(
  cfg: Config, method: str, *, lr: Optional[float] = None
) -> dict[str, float]:
  """Bytes of parameters, optimizer state and the compiled training step.

  The step (loss, gradient, ``tx.update``, ``apply_updates``) is jitted with
  parameters and state donated, lowered on abstract arrays and compiled (not
  run); ``memory_analysis()`` gives its argument, output, alias and
  temporary bytes; ``peak = argument + output - alias + temp`` bounds what
  is live at once (the CPU backend's own ``peak_memory_in_bytes`` leaves the
  temporaries out, so it is not used).

  Args:
    cfg: model and batch sizes.
    method: one of :data:`METHODS`.
    lr: passed to :func:`make_optimizer`.

  Returns:
    A dict of byte counts: ``params``, ``opt_state``, ``argument``,
    ``output``, ``alias``, ``temp``, ``peak``.
  """
  tx = make_optimizer(method, cfg, lr)
  model = nnx.eval_shape(lambda: make_model(cfg))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = nnx.as_pure(params)
  opt_state = jax.eval_shape(tx.init, params)
  batch = jax.ShapeDtypeStruct((cfg.batch_size, cfg.context), jnp.int32)

  def loss(p, x, y):
    return charlm.loss_fn(nnx.merge(graphdef, p, rest), x, y)

  def step(p, s, x, y):
    value, grads = jax.value_and_grad(loss)(p, x, y)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, value

  compiled = (
    jax.jit(step, donate_argnums=(0, 1))
    .lower(params, opt_state, batch, batch)
    .compile()
  )
  stats = compiled.memory_analysis()
  nbytes = lambda t: int(
    sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(t))
  )
  out = dict(
    params=nbytes(params),
    opt_state=nbytes(opt_state),
    argument=int(stats.argument_size_in_bytes),
    output=int(stats.output_size_in_bytes),
    alias=int(stats.alias_size_in_bytes),
    temp=int(stats.temp_size_in_bytes),
  )
  out['peak'] = out['argument'] + out['output'] - out['alias'] + out['temp']
  return out


#: The benchmark's hidden sizes (6 blocks, d = 512; 19M parameters with the
#: 96-symbol vocabulary, 23M with the benchmark's 8192-token embedding).
LARGE = dataclasses.replace(
  FULL, d_model=512, num_layers=6, num_heads=8, batch_size=8, context=128
)


def memory_rows(cfg: Config, label: str) -> list[dict[str, Any]]:
  """:func:`step_memory` of every method, in MiB, with ratios to Adam."""
  mem = {m: step_memory(cfg, m) for m in METHODS}
  mib = lambda b: b / 2**20
  rows = []
  for m in METHODS:
    r = mem[m]
    rows.append(
      {
        'model': label,
        'method': m,
        'params MiB': mib(r['params']),
        'opt state MiB': mib(r['opt_state']),
        'state / params': r['opt_state'] / r['params'],
        'temp MiB': mib(r['temp']),
        'peak MiB': mib(r['peak']),
        'peak / adam': r['peak'] / mem['adam']['peak'],
      }
    )
  return rows


# ---------------------------------------------------------------------------
# The experiment.


@dataclasses.dataclass
class Results:
  """What :func:`run` measured.

  Attributes:
    cfg: the configuration.
    histories: method -> one :class:`optimflow.lab.tasks.History` per seed.
    rows: the results table (one row per method).
    memory: the memory table (:func:`memory_rows`).
    target: Adam's final validation loss, mean over seeds.
  """

  cfg: Config
  histories: dict[str, list[tasks.History]]
  rows: list[dict[str, Any]]
  memory: list[dict[str, Any]]
  target: float


def run(
  cfg: Config = FULL, *, progress: bool = True, large_memory: bool = True
) -> Results:
  """Trains every method on every seed and measures memory.

  Args:
    cfg: sizes, steps, seeds and learning rates.
    progress: tqdm bars.
    large_memory: also compile (not run) the :data:`LARGE` model's step.

  Returns:
    :class:`Results`.
  """
  data = load_data(cfg)
  histories = {
    m: [train(m, cfg, data, s, progress=progress) for s in cfg.seeds]
    for m in METHODS
  }
  target = float(mean_curve(histories['adam'])[1][-1])
  adam_tokens = tokens_to_reach(histories['adam'], target, cfg.tokens_per_step)
  rows = []
  for m in METHODS:
    hs = histories[m]
    tokens = tokens_to_reach(hs, target, cfg.tokens_per_step)
    final = [h.test_loss[-1] for h in hs]
    rows.append(
      {
        'method': m,
        'lr': cfg.lr(m),
        'final valid loss': float(np.mean(final)),
        'std': float(np.std(final)),
        'bits/char': charlm.bits_per_char(float(np.mean(final))),
        'tokens to adam final': tokens,
        'token speed-up vs adam': adam_tokens / tokens,
        'opt state KiB': hs[0].opt_state_bytes / 2**10,
        'ms/step': float(np.mean([h.ms_per_step for h in hs])),
      }
    )
  memory = memory_rows(
    cfg, f'd{cfg.d_model} L{cfg.num_layers} b{cfg.batch_size}x{cfg.context}'
  )
  if large_memory:
    memory += memory_rows(
      LARGE,
      f'd{LARGE.d_model} L{LARGE.num_layers} '
      f'b{LARGE.batch_size}x{LARGE.context} (compiled '
      'only)',
    )
  return Results(cfg, histories, rows, memory, target)


def make_figure(results: Results):
  """Validation loss against tokens (mean and range over seeds), memory."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax, ax_mem) = plt.subplots(1, 2, figsize=(12, 4.5))
  plot_curves(results, ax)
  plot_memory(results, ax_mem)
  fig.tight_layout()
  return fig


def plot_curves(results: Results, ax) -> None:
  """Validation loss vs tokens on ``ax``, Adam's final loss dashed."""
  tps = results.cfg.tokens_per_step
  for m, hs in results.histories.items():
    tokens = np.asarray(hs[0].eval_steps) * tps
    losses = np.stack([h.test_loss for h in hs])
    ax.plot(tokens, losses.mean(0), label=f'{m} (lr {results.cfg.lr(m):g})')
    ax.fill_between(tokens, losses.min(0), losses.max(0), alpha=0.2)
  ax.axhline(
    results.target, color='gray', ls='--', lw=1, label="Adam's final loss"
  )
  ax.set_xlabel('training tokens')
  ax.set_ylabel('validation loss (nats/char)')
  ax.set_title(f'char-LM, {len(results.cfg.seeds)} seeds')
  lo = min(min(h.test_loss) for hs in results.histories.values() for h in hs)
  ax.set_ylim(lo - 0.05, lo + 1.0)
  ax.legend()


def plot_memory(results: Results, ax) -> None:
  """Step memory per method as a fraction of Adam's, stacked by component.

  One group of bars per model size; each bar stacks parameters, optimizer
  state and the step's temporaries (activations, gradients, workspaces),
  divided by Adam's total for that model.
  """
  models = list(dict.fromkeys(r['model'] for r in results.memory))
  width = 0.8 / len(METHODS)
  parts = (
    ('params MiB', 'params'),
    ('opt state MiB', 'optimizer state'),
    ('temp MiB', 'step temporaries'),
  )
  for g, model in enumerate(models):
    rows = {r['method']: r for r in results.memory if r['model'] == model}
    total = lambda r: sum(r[k] for k, _ in parts)
    scale = total(rows['adam'])
    for i, m in enumerate(METHODS):
      x = g + (i - (len(METHODS) - 1) / 2) * width
      bottom = 0.0
      for c, (key, label) in enumerate(parts):
        h = rows[m][key] / scale
        ax.bar(
          x,
          h,
          width * 0.9,
          bottom=bottom,
          color=f'C{c}',
          label=label if g == 0 and i == 0 else None,
        )
        bottom += h
      ax.text(
        x, bottom + 0.01, m, ha='center', va='bottom', fontsize=7, rotation=90
      )
  ax.set_xticks(range(len(models)), models, fontsize=8)
  ax.set_ylim(0, 1.3)
  ax.set_ylabel("fraction of Adam's step memory")
  ax.set_title('memory_analysis() of the jitted training step')
  ax.legend(fontsize=8, loc='upper right')


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Runs the comparison, prints the tables, writes results.json and the PNG."""
  from optimflow.lab import examples  # pylint: disable=g-import-not-at-top

  args = examples.parse_args('swan', __doc__.splitlines()[0], argv)
  cfg = SMOKE if args.smoke else FULL
  results = run(cfg, large_memory=not args.smoke)
  print(
    f'\nchar-LM: {cfg.steps} steps x {cfg.tokens_per_step} tokens, '
    f'seeds {list(cfg.seeds)}; target = Adam final valid loss '
    f'{results.target:.4f}'
  )
  print(tasks.format_table(results.rows))
  print('\nmemory of the compiled training step')
  print(tasks.format_table(results.memory))
  png = args.output / 'swan.png'
  examples.save_figure(make_figure, png, results, dpi=120)
  out = {
    'config': dataclasses.asdict(cfg),
    'target': results.target,
    'rows': results.rows,
    'memory': results.memory,
    'curves': {
      m: {
        'tokens': (np.asarray(hs[0].eval_steps) * cfg.tokens_per_step).tolist(),
        'valid_loss': [h.test_loss.tolist() for h in hs],
      }
      for m, hs in results.histories.items()
    },
    'smoke': args.smoke,
  }
  return examples.write_results(args.output, out, png, default=float)


if __name__ == '__main__':
  main()
