"""Step time and optimizer-state memory, optimflow against optax and peers.

Every case is timed in the same run, on the same parameter tree, with the
same protocol: the jitted ``update`` (state donated; with ``--apply``, update
and ``apply_updates`` with parameters and state donated, as in a training
loop) is warmed up, then all cases are called round-robin ``--reps`` times with
``block_until_ready`` (so load drift on a shared machine hits all alike); the
table reports the median, the ratio to the case's baseline and the state
bytes. PyTorch peers, when installed, run ``optimizer.step()`` on tensors of
the same shapes (torch layout).

    python -m optimflow.lab.bench.cases                       # every case
    python -m optimflow.lab.bench.cases --cases lion,optax.lion --reps 20
    python -m optimflow.lab.bench.cases --tree transformer-noembed --json out.json
    python -m optimflow.lab.bench.cases --apply    # update + apply_updates

Cases are registered in ``CASES`` (JAX) and ``TORCH_CASES`` (PyTorch) below;
a family adds its rows there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optimflow
from optimflow.lab import report
from optimflow.lab.tasks import tree_bytes

# ---------------------------------------------------------------------------
# Parameter trees (Flax layout: Dense kernels are (in, out)).


def transformer_tree(
  blocks: int = 6,
  d: int = 512,
  ff: int = 2048,
  vocab: int = 8192,
  embedding: bool = True,
  dtype: Any = jnp.float32,
) -> dict[str, Any]:
  """A GPT-shaped tree: ~23M parameters with the 8192x512 embedding."""
  key = iter(jax.random.split(jax.random.key(0), 16 * blocks + 4))
  dense = lambda i, o, bias=True: {
    'kernel': jax.random.normal(next(key), (i, o), dtype) / np.sqrt(i),
    **({'bias': jnp.zeros((o,), dtype)} if bias else {}),
  }
  norm = lambda: {
    'scale': jnp.ones((d,), dtype),
    'bias': jnp.zeros((d,), dtype),
  }
  tree: dict[str, Any] = {}
  if embedding:
    tree['embed'] = {
      'embedding': jax.random.normal(next(key), (vocab, d), dtype) * 0.02
    }
  for b in range(blocks):
    tree[f'block_{b}'] = {
      'ln1': norm(),
      'attn': {
        n: dense(d, d, bias=False) for n in ('query', 'key', 'value', 'out')
      },
      'ln2': norm(),
      'mlp': {'up': dense(d, ff), 'down': dense(ff, d)},
    }
  tree['ln_f'] = norm()
  return tree


def resnet_tree(
  width: int = 64,
  stages: tuple[int, ...] = (2, 2, 2, 2),
  classes: int = 1000,
  in_channels: int = 3,
  dtype: Any = jnp.float32,
) -> dict[str, Any]:
  """A ResNet-18-shaped tree (~11.7M parameters with the defaults).

  A 7x7 stem, then ``stages`` of basic blocks (two 3x3 convs, each followed
  by BatchNorm; a 1x1 projection where the width doubles), then a Dense head.
  Conv kernels are Flax's ``(h, w, in, out)``, without biases (BatchNorm
  follows them: scale-invariant, AdamP's setting).
  """
  rng = np.random.default_rng(0)  # numpy: no compilation per shape
  normal = lambda shape, std: jnp.asarray(
    rng.standard_normal(shape, np.float32) * std, dtype
  )
  conv = lambda k, i, o: normal((k, k, i, o), np.sqrt(2.0 / (k * k * i)))
  norm = lambda c: {
    'scale': jnp.ones((c,), dtype),
    'bias': jnp.zeros((c,), dtype),
  }
  tree: dict[str, Any] = {
    'stem': {'conv': {'kernel': conv(7, in_channels, width)}, 'bn': norm(width)}
  }
  c_in = width
  for s, blocks in enumerate(stages):
    c_out = width * 2**s
    for b in range(blocks):
      block = {
        'conv1': {'kernel': conv(3, c_in, c_out)},
        'bn1': norm(c_out),
        'conv2': {'kernel': conv(3, c_out, c_out)},
        'bn2': norm(c_out),
      }
      if c_in != c_out:
        block['proj'] = {'kernel': conv(1, c_in, c_out)}
        block['bn_proj'] = norm(c_out)
      tree[f'stage{s}_block{b}'] = block
      c_in = c_out
  tree['head'] = {
    'kernel': normal((c_in, classes), 1 / np.sqrt(c_in)),
    'bias': jnp.zeros((classes,), dtype),
  }
  return tree


TREES: dict[str, Callable[[], dict[str, Any]]] = {
  'transformer': transformer_tree,
  'transformer-noembed': lambda: transformer_tree(embedding=False),
  'resnet': resnet_tree,
  # Seconds-long smoke runs (tests).
  'tiny-transformer': lambda: transformer_tree(blocks=1, d=32, ff=64, vocab=64),
  'tiny-resnet': lambda: resnet_tree(width=4, stages=(1, 1), classes=10),
}


# ---------------------------------------------------------------------------
# Cases.


@dataclasses.dataclass(frozen=True)
class Case:
  """A timed optimizer. ``baseline`` names the case its ratio is taken to."""

  build: Callable[[], Any]
  baseline: Optional[str] = None
  note: str = ''


LR = 1e-3
CASES: dict[str, Case] = {
  'optax.lion': Case(lambda: optax.lion(LR, weight_decay=1e-2)),
  'lion': Case(
    lambda: optimflow.lion(LR, weight_decay=1e-2), baseline='optax.lion'
  ),
  'lion_kappa(l2)': Case(
    lambda: optimflow.lion_kappa(LR, kappa='l2', weight_decay=1e-2),
    baseline='optax.lion',
  ),
  'lion_kappa(huber)': Case(
    lambda: optimflow.lion_kappa(LR, kappa=('huber', 0.1), weight_decay=1e-2),
    baseline='optax.lion',
  ),
  'optax.adamw': Case(lambda: optax.adamw(LR, weight_decay=1e-2)),
  'optax.sgd_momentum': Case(lambda: optax.sgd(LR, momentum=0.9)),
  'adamp': Case(
    lambda: optimflow.adamp(LR, weight_decay=1e-2), baseline='optax.adamw'
  ),
  'sgdp': Case(
    lambda: optimflow.sgdp(LR, momentum=0.9), baseline='optax.sgd_momentum'
  ),
}

# Orthogonal updates. optax.contrib.muon routes every 2-D leaf to Muon (the
# 8192x512 embedding too); optimflow.muon sends embeddings and heads to AdamW.
# On 'transformer-noembed' both route the same leaves.
_MUON_LR, _AUX_LR = 0.02, 3e-4
CASES.update(
  {
    'optax.contrib.muon': Case(
      lambda: optax.contrib.muon(_MUON_LR, adam_learning_rate=_AUX_LR)
    ),
    'muon': Case(
      lambda: optimflow.muon(_MUON_LR, adam_learning_rate=_AUX_LR),
      baseline='optax.contrib.muon',
      note='same-shape batches, Gram NS for rectangular',
    ),
    'muon(reference)': Case(
      lambda: optimflow.muon(
        _MUON_LR, adam_learning_rate=_AUX_LR, reference=True
      ),
      baseline='optax.contrib.muon',
      note='per-leaf plain NS, float32',
    ),
    'auon': Case(
      lambda: optimflow.auon(0.05, adam_learning_rate=_AUX_LR), baseline='muon'
    ),
    'hybrid_auon': Case(
      lambda: optimflow.hybrid_auon(0.05, adam_learning_rate=_AUX_LR),
      baseline='muon',
    ),
  }
)

# Whitening. SWAN keeps no state on the hidden matrices (its state bytes are
# AdamW's on the embedding, norms and biases). Its default is seven scaled
# cubic Newton-Schulz steps (Chen & Chow), which whiten [0.01, 1] into
# [0.9988, 1]; the constant-beta row is the paper's Algorithm 2 with ten
# Higham steps (1.36x Muon's matrix FLOPs on the transformer tree).
CASES.update(
  {
    'swan': Case(
      lambda: optimflow.swan(LR),
      baseline='muon',
      note='7 scaled steps; no state on matrices',
    ),
    'swan(k=10 beta=1/2)': Case(
      lambda: optimflow.swan(LR, ns_steps=10, ns_beta=0.5),
      baseline='muon',
      note="Algorithm 2, Higham's constant steps",
    ),
  }
)

# PyTorch peers: name -> Case whose build(params) returns a torch optimizer.
TORCH_CASES: dict[str, Case] = {}


def _register_torch_cases() -> None:
  try:
    import lion_pytorch  # noqa: F401
  except ImportError:
    return
  TORCH_CASES['torch:lion_pytorch.Lion'] = Case(
    lambda ps: lion_pytorch.Lion(ps, lr=LR, weight_decay=1e-2),
    baseline='optax.lion',
  )


_register_torch_cases()


def _register_radial_torch_cases() -> None:
  """AdamP/SGDP peers; their ratio is torch time over optimflow's."""
  try:
    import adamp  # noqa: F401
  except ImportError:
    pass
  else:
    TORCH_CASES['torch:adamp.AdamP'] = Case(
      lambda ps: adamp.AdamP(ps, lr=LR, weight_decay=1e-2), baseline='adamp'
    )
    TORCH_CASES['torch:adamp.SGDP'] = Case(
      lambda ps: adamp.SGDP(ps, lr=LR, momentum=0.9), baseline='sgdp'
    )
  try:
    import pytorch_optimizer  # noqa: F401
  except ImportError:
    return
  for foreach in (False, True):
    TORCH_CASES[f'torch:pytorch_optimizer.AdamP(foreach={foreach})'] = Case(
      lambda ps, foreach=foreach: pytorch_optimizer.AdamP(
        ps, lr=LR, weight_decay=1e-2, foreach=foreach
      ),
      baseline='adamp',
    )


_register_radial_torch_cases()


def _register_orthogonal_torch_cases() -> None:
  """pytorch_optimizer's Muon: every >= 2-D tensor to Muon, others AdamW."""
  try:
    import pytorch_optimizer  # noqa: F401
  except ImportError:
    return

  def build(ps):
    return pytorch_optimizer.Muon(
      [
        {'params': [p for p in ps if p.ndim >= 2], 'use_muon': True},
        {'params': [p for p in ps if p.ndim < 2], 'use_muon': False},
      ],
      lr=_MUON_LR,
      adamw_lr=_AUX_LR,
    )

  TORCH_CASES['torch:pytorch_optimizer.Muon'] = Case(build, baseline='muon')


_register_orthogonal_torch_cases()


def _register_pytorch_optimizer_cases() -> None:
  """pytorch-optimizer's Lion and SGDP (its AdamP and Muon are above)."""
  try:
    import pytorch_optimizer  # noqa: F401
  except ImportError:
    return
  TORCH_CASES.setdefault(
    'torch:pytorch_optimizer.Lion',
    Case(
      lambda ps: pytorch_optimizer.Lion(ps, lr=LR, weight_decay=1e-2),
      baseline='lion',
    ),
  )
  TORCH_CASES.setdefault(
    'torch:pytorch_optimizer.SGDP',
    Case(
      lambda ps: pytorch_optimizer.SGDP(ps, lr=LR, momentum=0.9),
      baseline='sgdp',
    ),
  )


_register_pytorch_optimizer_cases()


# Sharpness-aware methods need ``grad_fn``. In an optimizer-only benchmark it
# is an elementwise stand-in for the second backward pass, the same for every
# peer, so the rows time the optimizers' own work (the perturbation, the
# extra state), not a model.


def stand_in_grad_fn(grads: Any) -> Callable[..., Any]:
  """``grad_fn(w, *_) = g + 1e-3 w``: one elementwise pass over the tree."""
  return lambda params, *_: jax.tree.map(
    lambda g, w: g + 1e-3 * w, grads, params
  )


def with_stand_in_grad_fn(tx: Any) -> optax.GradientTransformation:
  """``tx`` (needing ``grad_fn=``) as a plain transformation that passes
  :func:`stand_in_grad_fn` of its gradient."""

  def update(grads, state, params=None):
    return tx.update(grads, state, params, grad_fn=stand_in_grad_fn(grads))

  return optax.GradientTransformation(tx.init, update)


def _optimflow_matrix_dims(params: Any) -> Any:
  """optax.contrib.muon dimension numbers for the leaves optimflow.muon
  orthogonalises (Flax layout: conv kernels as ``(h w in, out)``); ``None``
  (its Adam branch) for embeddings, heads, norms and biases."""
  keep = optimflow.orthogonal.default_matrix_filter()
  return jax.tree_util.tree_map_with_path(
    lambda path, x: (
      optimflow.linalg.flax_dimension_numbers(x.ndim) if keep(path, x) else None
    ),
    params,
  )


# optax.contrib.muon's default routes only 2-D leaves to Muon: on the ResNet
# tree that is the head alone (conv kernels go to its Adam branch). This row
# gives it optimflow.muon's routing, for a like-for-like comparison.
CASES.setdefault(
  'optax.contrib.muon(flax dims)',
  Case(
    lambda: optax.contrib.muon(
      0.02,
      adam_learning_rate=3e-4,
      muon_weight_dimension_numbers=_optimflow_matrix_dims,
    ),
    note="optimflow.muon's routing: hidden matrices and conv kernels",
  ),
)


_SAM_RHO = 0.05
CASES.setdefault(
  'optax.contrib.sam',
  Case(
    lambda: with_stand_in_grad_fn(
      optax.contrib.sam(
        optax.sgd(LR, momentum=0.9),
        optax.chain(optax.contrib.normalize(), optax.sgd(_SAM_RHO)),
        opaque_mode=True,
      )
    ),
    note='opaque mode; grad_fn: elementwise stand-in',
  ),
)
CASES.setdefault(
  'sam',
  Case(
    lambda: with_stand_in_grad_fn(
      optimflow.sam(LR, rho=_SAM_RHO, momentum=0.9)
    ),
    baseline='optax.contrib.sam',
    note='grad_fn: elementwise stand-in',
  ),
)
CASES.setdefault(
  'asam',
  Case(
    lambda: with_stand_in_grad_fn(optimflow.asam(LR, rho=0.5, momentum=0.9)),
    baseline='optax.contrib.sam',
    note='grad_fn: elementwise stand-in',
  ),
)
CASES.setdefault(
  'sgd_with_param_ema',
  Case(
    lambda: optimflow.sharpness.sgd_with_param_ema(
      LR, momentum=0.9, decay=0.99
    ),
    baseline='optax.sgd_momentum',
    note='SGD+momentum and the parameter EMA',
  ),
)


class _ClosureStepper:
  """A torch optimizer whose ``step`` needs a closure (SAM), stepped with the
  stand-in closure ``p.grad = g + 1e-3 p``."""

  def __init__(self, opt: Any, params: list[Any]):
    self.opt, self.state = opt, opt.state
    grads = [p.grad.detach().clone() for p in params]

    def closure():
      for p, g in zip(params, grads):
        p.grad = g + 1e-3 * p.detach()

    self.closure = closure

  def step(self) -> None:
    self.opt.step(self.closure)


def _register_sam_torch_cases() -> None:
  try:
    import pytorch_optimizer  # noqa: F401
    import torch  # noqa: F401
  except ImportError:
    return
  TORCH_CASES.setdefault(
    'torch:pytorch_optimizer.SAM',
    Case(
      lambda ps: _ClosureStepper(
        pytorch_optimizer.SAM(
          ps, torch.optim.SGD, rho=_SAM_RHO, lr=LR, momentum=0.9
        ),
        ps,
      ),
      baseline='sam',
      note='closure: elementwise stand-in',
    ),
  )


_register_sam_torch_cases()


# ---------------------------------------------------------------------------
# Timing.


def jax_inputs(case: Case, params: Any) -> tuple[Any, Any, Any]:
  """The case's transformation, the gradient tree it is timed on, its state."""
  tx = case.build()
  grads = jax.tree.map(
    lambda x: jax.random.normal(jax.random.key(1), x.shape, x.dtype) * 1e-2,
    params,
  )
  # The state is donated: copy leaves init may share with params (an EMA).
  state = jax.tree.map(
    lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else x,
    tx.init(params),
  )
  return tx, grads, state


def jax_stepper(
  case: Case, params: Any, apply: bool = False
) -> tuple[Callable[[], None], int]:
  """One jitted step as a closure, and the state bytes.

  ``apply=False``: ``tx.update`` alone, the state donated. ``apply=True``:
  a training step's optimizer part, ``update`` then ``optax.apply_updates``
  with parameters and state donated, as in a training loop; XLA then fuses
  the update into the parameter write, and donated buffers are reused in
  place (update-only timing copies state buffers that the returned updates
  alias). The PyTorch peers' ``step()`` always applies the update.
  """
  tx, grads, state = jax_inputs(case, params)
  if apply:

    def train_step(params, state):
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    step_fn = jax.jit(train_step, donate_argnums=(0, 1))
    box = {
      'params': jax.tree.map(lambda x: jnp.array(x, copy=True), params),
      'state': state,
    }

    def step():
      box['params'], box['state'] = step_fn(box['params'], box['state'])
      jax.block_until_ready(box['params'])

    return step, tree_bytes(box['state'])

  box = {'state': state}
  update = jax.jit(tx.update, donate_argnums=(1,))

  def step():
    updates, box['state'] = update(grads, box['state'], params)
    jax.block_until_ready(updates)

  return step, tree_bytes(box['state'])


def torch_stepper(case: Case, params: Any) -> tuple[Callable[[], None], int]:
  """``optimizer.step()`` on same-shaped torch tensors (torch layout)."""
  import torch  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  tensors = []
  for x in jax.tree.leaves(params):
    t = torch.nn.Parameter(torch.from_numpy(np.asarray(x).T.copy()))
    t.grad = torch.randn_like(t) * 1e-2
    tensors.append(t)
  opt = case.build(tensors)
  opt.step()  # creates the state
  state_bytes = sum(
    v.nbytes
    for s in opt.state.values()
    for v in s.values()
    if isinstance(v, torch.Tensor)
  )
  return opt.step, int(state_bytes)


def run(
  names: list[str], tree: str, reps: int, warmup: int = 2, apply: bool = False
) -> list[dict[str, Any]]:
  """Times the cases interleaved (round-robin), so load drift hits all alike.

  ``apply``: time update + ``apply_updates`` (see :func:`jax_stepper`).
  """
  params = TREES[tree]()
  cases, steppers, nbytes = {}, {}, {}
  for name in names:
    if name in CASES:
      cases[name] = CASES[name]
      steppers[name], nbytes[name] = jax_stepper(CASES[name], params, apply)
    else:
      cases[name] = TORCH_CASES[name]
      steppers[name], nbytes[name] = torch_stepper(TORCH_CASES[name], params)
    for _ in range(warmup):
      steppers[name]()
  times: dict[str, list[float]] = {n: [] for n in names}
  for _ in range(reps):
    for name in names:
      t0 = time.perf_counter()
      steppers[name]()
      times[name].append(time.perf_counter() - t0)
  rows = [
    dict(
      case=n,
      tree=tree,
      median_ms=1e3 * statistics.median(times[n]),
      state_bytes=nbytes[n],
      baseline=cases[n].baseline,
      note=cases[n].note,
    )
    for n in names
  ]
  by_name = {r['case']: r for r in rows}
  for r in rows:
    base = by_name.get(r['baseline'])
    r['ratio'] = r['median_ms'] / base['median_ms'] if base else None
  return rows


def format_table(rows: list[dict[str, Any]]) -> str:
  """The timed rows as a markdown table (:func:`report.markdown_table`)."""
  return report.markdown_table(
    [
      {
        'case': r['case'],
        'median ms': f'{r["median_ms"]:.1f}',
        'vs baseline': f'{r["ratio"]:.2f}x' if r['ratio'] is not None else '',
        'baseline': r['baseline'] or '',
        'state MB': f'{r["state_bytes"] / 2**20:.1f}',
      }
      for r in rows
    ],
    align='lrrlr',
  )


def with_baselines(names: list[str]) -> list[str]:
  """``names`` with the baseline of each case in front of it (once).

  Baselines are timed in the same run so ratios compare like with like.
  """
  names = list(names)
  pending = list(names)
  while pending:  # a baseline may have a baseline of its own
    name = pending.pop()
    case = CASES.get(name) or TORCH_CASES.get(name)
    if case.baseline and case.baseline not in names:
      names.insert(0, case.baseline)
      pending.append(case.baseline)
  return names


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument(
    '--cases', default='all', help='comma-separated case names, or "all"'
  )
  parser.add_argument('--tree', default='transformer', choices=sorted(TREES))
  parser.add_argument('--reps', type=int, default=10)
  parser.add_argument('--json', default=None, help='write rows as JSON here')
  parser.add_argument(
    '--apply',
    action='store_true',
    help='time update + apply_updates with parameters and '
    "state donated (a training step's optimizer part)",
  )
  args = parser.parse_args(argv)
  known = list(CASES) + list(TORCH_CASES)
  names = known if args.cases == 'all' else args.cases.split(',')
  unknown = [n for n in names if n not in known]
  if unknown:
    parser.error(f'unknown case(s) {unknown}; known: {", ".join(known)}')
  names = with_baselines(names)
  n_params = sum(x.size for x in jax.tree.leaves(TREES[args.tree]()))
  print(
    f'tree={args.tree} ({n_params / 1e6:.1f}M params), '
    f'backend={jax.default_backend()}, devices={jax.device_count()}, '
    f'reps={args.reps}, apply={args.apply}',
    file=sys.stderr,
  )
  rows = run(names, args.tree, args.reps, apply=args.apply)
  print(format_table(rows))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=2)
  return 0


if __name__ == '__main__':
  sys.exit(main())
