"""Data-parallel and FSDP training on 8 simulated devices: AdamP and Muon.

The char-LM transformer (:class:`optimflow.lab.tasks.charlm.CharTransformer`)
trains on a 1-D mesh of 8 host CPU devices (``--xla_force_host_platform_
device_count=8``, set here before JAX starts when this file runs as a
script) in two layouts:

* **data parallel**: parameters and optimizer state replicated, the batch
  split over the devices;
* **FSDP** (ZeRO-3 style): every parameter, and therefore every moment, split
  along its largest divisible axis (:func:`optimflow.sharding.fsdp_specs`);
  the compiler gathers weights for the forward pass and reduce-scatters
  gradients.

The mesh axis is Explicit (sharding in types): the forward and backward pass
run in an ``auto_axes`` region where the compiler places the FSDP
collectives, and the optimizer update sees each parameter's layout in its
type, so the state keeps its parameters' shardings step after step (one
compilation). Optimizers: AdamP, and Muon with its Newton-Schulz work
distributed three ways (:class:`optimflow.sharding.MatrixSharding`):
``gather`` (every device gathers every matrix and orthogonalises all of them),
``local`` (the compiler partitions the iteration, as for ``optax.contrib.muon``)
and ``stacked`` (same-shape matrices stacked, the stack split over the
devices, each device orthogonalises whole matrices of its own).

Printed per run: milliseconds per training step (compile excluded), the
collective ops the compiled step and the optimizer update alone execute per
call (count and MB of results per device, read from the HLO, ops inside
loops times their trip counts), and the losses. With 8
simulated devices on a shared CPU the step times are noisy and say little
about real accelerators; the collective counts and bytes are exact.

Run ``python examples/distributed.py [--smoke] [--output runs/distributed]``.
"""

from __future__ import annotations

import os

if __name__ == '__main__':  # before JAX starts: 8 host devices
  _FLAG = '--xla_force_host_platform_device_count=8'
  if 'xla_force_host_platform_device_count' not in os.environ.get(
    'XLA_FLAGS', ''
  ):
    os.environ['XLA_FLAGS'] = (
      os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG
    ).strip()

# pylint: disable=g-import-not-at-top,wrong-import-position
import dataclasses
import time
from typing import Any, Callable, Optional, Sequence

from flax import nnx
import jax
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
from tqdm import tqdm

import optimflow
from optimflow import sharding
from optimflow.lab.tasks import charlm
from optimflow.lab.tasks import training

DEVICES = 8
LAYOUTS = ('data_parallel', 'fsdp')


@dataclasses.dataclass(frozen=True)
class Config:
  """Sizes of one run."""

  steps: int = 40
  context: int = 64
  batch_size: int = 64
  d_model: int = 128
  num_layers: int = 2
  num_heads: int = 4
  max_chars: Optional[int] = 200_000
  seed: int = 0


FULL = Config()
SMOKE = Config(
  steps=4,
  context=16,
  batch_size=16,
  d_model=32,
  num_layers=1,
  num_heads=2,
  max_chars=20_000,
)
#: Optimizers of the smoke run (each run compiles twice).
SMOKE_OPTIMIZERS = ('adamp', 'muon[gather]', 'muon[stacked]')


def optimizers() -> dict[str, Callable[[], optax.GradientTransformation]]:
  """The optimizers compared, by name."""
  muon = lambda mode: optimflow.muon(
    0.02, adam_learning_rate=3e-3, sharding=mode
  )
  return {
    'adamp': lambda: optimflow.adamp(3e-3, weight_decay=1e-2),
    'muon[gather]': lambda: muon('gather'),
    'muon[local]': lambda: muon('local'),
    'muon[stacked]': lambda: muon('stacked'),
  }


def make_mesh() -> jax.sharding.Mesh:
  """A 1-D Explicit mesh ``('data',)`` over 8 devices."""
  if len(jax.devices()) < DEVICES:
    raise RuntimeError(
      f'{len(jax.devices())} devices: run this file as a script, or set '
      f'XLA_FLAGS=--xla_force_host_platform_device_count={DEVICES} before '
      'JAX starts.'
    )
  return jax.make_mesh((DEVICES,), ('data',), axis_types=(AxisType.Explicit,))


def param_specs(params: Any, layout: str, mesh) -> Any:
  """Specs of the parameters in ``layout``."""
  if layout == 'fsdp':
    return sharding.fsdp_specs(params, mesh, 'data')
  return sharding.replicated_specs(params)


def _loss_and_grads(graphdef, params, rest, x, y):
  def loss(p):
    return charlm.loss_fn(nnx.merge(graphdef, p, rest), x, y)

  return jax.value_and_grad(loss)(params)


def train_step(
  model: nnx.Module, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array
) -> jax.Array:
  """One step. Forward and backward in an ``auto_axes`` region (the compiler
  places the data-parallel / FSDP collectives); gradients come back in the
  parameters' layouts, and the update runs with Explicit types."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  specs = jax.tree.map(lambda a: jax.typeof(a).sharding.spec, params)
  loss, grads = jax.sharding.auto_axes(
    lambda p, r, x, y: _loss_and_grads(graphdef, p, r, x, y),
    out_sharding=(P(), specs),
  )(params, rest, x, y)
  optimizer.update(model, grads)
  return loss


@dataclasses.dataclass
class Run:
  """One (layout, optimizer) run."""

  layout: str
  optimizer: str
  losses: list[float]
  ms_per_step: float
  compilations: int
  step_collectives: dict[str, int]
  step_mb: float
  update_collectives: dict[str, int]
  update_mb: float

  def row(self) -> dict[str, Any]:
    short = lambda c: '/'.join(str(c[k]) for k in sharding.COLLECTIVES[:4])
    return {
      'layout': self.layout,
      'optimizer': self.optimizer,
      'ms/step': self.ms_per_step,
      'step AG/AR/A2A/CP': short(self.step_collectives),
      'step MB': self.step_mb,
      'update AG/AR/A2A/CP': short(self.update_collectives),
      'update MB': self.update_mb,
      'first loss': self.losses[0],
      'last loss': self.losses[-1],
    }


def _mb(compiled) -> float:
  return (
    sum(sharding.collective_bytes(compiled, executed=True).values()) / 2**20
  )


def train(
  config: Config, layout: str, name: str, data: charlm.CharLMData, mesh
) -> Run:
  """Trains one configuration; returns its losses, times and collectives."""
  model = charlm.CharTransformer(
    context=config.context,
    d_model=config.d_model,
    num_layers=config.num_layers,
    num_heads=config.num_heads,
    rngs=nnx.Rngs(config.seed),
  )
  tx = optimizers()[name]()
  with jax.set_mesh(mesh):
    params = nnx.state(model, nnx.Param)
    specs = param_specs(params, layout, mesh)
    nnx.update(model, jax.device_put(params, sharding.named(mesh, specs)))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def step(state, x, y):
      model, optimizer = nnx.merge(graphdef, state)
      loss = train_step(model, optimizer, x, y)
      return nnx.state((model, optimizer)), loss

    batch_sharding = NamedSharding(mesh, P('data', None))
    sampler = charlm.batch_sampler(
      data.train_ids, config.batch_size, config.context, seed=config.seed
    )
    batches = [
      jax.device_put(b, batch_sharding)
      for b in (next(sampler) for _ in range(config.steps))
    ]
    step_hlo = step.lower(state, *batches[0]).compile()
    update_hlo = _update_hlo(tx, nnx.state(model, nnx.Param).to_pure_dict())
    losses, times = [], []
    for x, y in tqdm(batches, desc=f'{layout:13s} {name:13s}', leave=False):
      t0 = time.perf_counter()
      state, loss = step(state, x, y)
      losses.append(float(loss))  # waits for the step
      times.append(time.perf_counter() - t0)
    compilations = step._cache_size()
  return Run(
    layout=layout,
    optimizer=name,
    losses=losses,
    ms_per_step=1e3 * float(np.median(times[1:] or times)),
    compilations=compilations,
    step_collectives=sharding.collective_counts(step_hlo, executed=True),
    step_mb=_mb(step_hlo),
    update_collectives=sharding.collective_counts(update_hlo, executed=True),
    update_mb=_mb(update_hlo),
  )


def _update_hlo(tx: optax.GradientTransformation, params: Any):
  """The compiled optimizer update alone, on the sharded parameters."""
  state = jax.eval_shape(tx.init, params)
  return jax.jit(tx.update).lower(params, state, params).compile()


def compare(
  config: Config = FULL,
  layouts: Sequence[str] = LAYOUTS,
  names: Optional[Sequence[str]] = None,
) -> list[Run]:
  """Every layout with every optimizer on the same batches."""
  mesh = make_mesh()
  data = charlm.load_charlm(context=config.context, max_chars=config.max_chars)
  names = list(optimizers()) if names is None else list(names)
  return [
    train(config, layout, name, data, mesh)
    for layout in tqdm(layouts, desc='layouts')
    for name in names
  ]


def make_figure(runs: Sequence[Run]):
  """Loss curves, step time and collective MB per run."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  for run in runs:
    style = '-' if run.layout == 'fsdp' else '--'
    axes[0].plot(run.losses, style, label=f'{run.layout} {run.optimizer}')
  axes[0].set(xlabel='step', ylabel='train loss (nats)', title='char LM')
  axes[0].legend(fontsize=7)
  labels = [f'{r.layout}\n{r.optimizer}' for r in runs]
  xs = np.arange(len(runs))
  axes[1].bar(xs, [r.ms_per_step for r in runs])
  axes[1].set(ylabel='ms / step', title='step time (8 host devices, noisy)')
  axes[2].bar(xs - 0.2, [r.step_mb for r in runs], 0.4, label='step')
  axes[2].bar(xs + 0.2, [r.update_mb for r in runs], 0.4, label='update')
  axes[2].set(
    ylabel='MB of collective results / device',
    title='collectives (compiled HLO)',
  )
  axes[2].legend()
  for ax in axes[1:]:
    ax.set_xticks(xs, labels, rotation=60, fontsize=7)
  fig.tight_layout()
  return fig


def main(argv: Optional[Sequence[str]] = None) -> dict[str, Any]:
  """Runs every layout and optimizer, prints the table, writes the outputs."""
  from optimflow.lab import examples  # pylint: disable=g-import-not-at-top

  args = examples.parse_args('distributed', __doc__.splitlines()[0], argv)
  config = SMOKE if args.smoke else FULL
  print(f'char LM on {DEVICES} devices: {dataclasses.asdict(config)}')
  runs = compare(config, names=SMOKE_OPTIMIZERS if args.smoke else None)
  rows = [r.row() for r in runs]
  print(training.format_table(rows))
  print(
    'AG/AR/A2A/CP: all-gather / all-reduce / all-to-all / '
    'collective-permute ops executed per call (compiled HLO, loops '
    'unrolled by trip count); MB: their results per device. Step times '
    'on simulated devices sharing a CPU are noisy.'
  )
  png = args.output / 'distributed.png'
  examples.save_figure(make_figure, png, runs)
  results = {
    'config': dataclasses.asdict(config),
    'devices': DEVICES,
    'summary': rows,
    'runs': [dataclasses.asdict(r) for r in runs],
    'smoke': args.smoke,
  }
  return examples.write_results(args.output, results, png)


if __name__ == '__main__':
  main()
