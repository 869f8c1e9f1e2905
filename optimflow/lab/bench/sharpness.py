"""Training-step time of SGD, SAM, ASAM, SAF and MESA on the digits MLP.

Sharpness-aware methods change the whole training step (extra passes, a
loss term, an output bank), not only the optimizer update, so they are timed
here as full jitted train steps (forward, backward, update) on the digits
MLP 64-256-256-10, built and timed by ``optimflow/lab/examples/sharpness.py``
(:func:`time_steps`): every step is compiled and warmed up, then the methods
run round-robin, ``--steps`` steps each per round (``block_until_ready`` at
the end of each block) for ``--reps`` rounds; the table reports the median
time per step and the ratio to SGD, at the training batch (64, where
per-step overhead dominates on CPU) and at a large batch (1024, where the
passes' compute dominates). Target: SAF <= 1.15x SGD; SAM ~2x. SAF checks its
example ids on the host; the extra row checks them under jit instead.

    python -m optimflow.lab.bench.sharpness [--reps 15] [--steps 20]
        [--batches 64,1024] [--charlm-batch 32] [--charlm-steps 5]
        [--json out.json]

The char-LM rows time the same steps on ``optimflow.lab.tasks.charlm``'s
default transformer (context 64, width 128, 2 blocks) at batch 32 (5 steps
per round), with the SAF bank holding per-position logits ``(context,
vocab)`` per window; the bank is donated to the step, so it is updated in
place (undonated, copying it cost more than the rest of SAF's overhead).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
import sys
from typing import Any, Optional

from flax import nnx
import jax

from optimflow.lab import tasks
from optimflow.lab.examples import sharpness as study


def cases(cfg: study.Config) -> list[study.Method]:
  """The example's methods (SAF checks ids on the host), plus SAF checking
  them under jit."""
  methods = list(study.methods(cfg))
  saf = next(m for m in methods if m.loss == 'saf')
  methods.insert(
    methods.index(saf) + 1,
    dataclasses.replace(
      saf, name=saf.name + ' (ids checked in jit)', check_ids=True
    ),
  )
  return methods


def _timed_rows(task, batch, timed):
  base = timed['sgd']['ms']
  return [
    {
      'task': task,
      'batch': batch,
      'method': name,
      'fwd+bwd/step': t['passes'],
      'ms/step': t['ms'],
      'x sgd': t['ms'] / base,
    }
    for name, t in timed.items()
  ]


def run(
  reps: int,
  steps: int,
  batches: tuple[int, ...] = (64, 1024),
  charlm_batch: Optional[int] = 32,
  charlm_steps: int = 5,
  cfg: study.Config = study.FULL,
) -> list[dict[str, Any]]:
  """Median ms per step of each case, task and batch size (round-robin)."""
  cfg = dataclasses.replace(cfg, timing_reps=reps, timing_steps=steps)
  data = tasks.load_digits()
  rows = []
  for batch in batches:
    rows += _timed_rows(
      'digits MLP', batch, study.time_steps(cases(cfg), data, cfg, batch)
    )
  if charlm_batch:
    # The default CharTransformer (context 64, width 128, 2 blocks); the SAF
    # bank holds per-position logits, so time on the first 512 windows.
    lm = tasks.charlm.load_charlm()
    lm = lm._replace(x_train=lm.x_train[:512], y_train=lm.y_train[:512])
    make = lambda: tasks.charlm.CharTransformer(
      context=lm.context, rngs=nnx.Rngs(0)
    )
    lm_cfg = dataclasses.replace(cfg, timing_steps=charlm_steps)
    rows += _timed_rows(
      'char-LM',
      charlm_batch,
      study.time_steps(
        cases(lm_cfg),
        lm,
        lm_cfg,
        charlm_batch,
        make_model=make,
        num_classes=(lm.context, lm.vocab_size),
      ),
    )
  return rows


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--reps', type=int, default=15)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument(
    '--batches', default='64,1024', help='comma-separated batch sizes (digits)'
  )
  parser.add_argument(
    '--charlm-batch',
    type=int,
    default=32,
    help='char-LM batch size; 0 skips the char-LM rows',
  )
  parser.add_argument(
    '--charlm-steps',
    type=int,
    default=5,
    help='char-LM steps per round (its steps are slow)',
  )
  parser.add_argument('--json', default=None, help='write rows as JSON here')
  args = parser.parse_args(argv)
  batches = tuple(int(b) for b in args.batches.split(','))
  rows = run(
    args.reps, args.steps, batches, args.charlm_batch, args.charlm_steps
  )
  print(
    f'digits MLP 64-256-256-10 and char-LM transformer (context 64, '
    f'width 128, 2 blocks), {jax.devices()[0].platform}; median of '
    f'{args.reps} rounds x {args.steps} steps (MESA: +1 forward pass)'
  )
  print(tasks.format_table(rows, floatfmt='.3g'))
  if args.json:
    Path(args.json).write_text(json.dumps(rows, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
