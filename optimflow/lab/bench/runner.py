"""The runner behind ``python -m optimflow bench`` (see :mod:`optimflow.lab.bench`)."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
import sys
from types import ModuleType
from typing import Any, Sequence

import jax
import optax

from optimflow import catalog
from optimflow.lab import report

#: Catalog ``optax_equivalent`` -> the benchmark case that times it.
OPTAX_CASES = {
  'lion': 'optax.lion',
  'adamw': 'optax.adamw',
  'sgd': 'optax.sgd_momentum',
  'contrib.muon': 'optax.contrib.muon',
  'contrib.sam': 'optax.contrib.sam',
}


def load_benchmarks() -> tuple[ModuleType, ModuleType]:
  """The case registry (:mod:`~optimflow.lab.bench.cases`) and the floors
  (:mod:`~optimflow.lab.bench.floors`)."""
  from optimflow.lab.bench import cases  # pylint: disable=g-import-not-at-top
  from optimflow.lab.bench import floors  # pylint: disable=g-import-not-at-top

  return cases, floors


def _catalog_tx(entry: catalog.Method) -> optax.GradientTransformation:
  tx = entry.build()
  if 'grad_fn' not in entry.needs:
    return tx
  st, _ = load_benchmarks()
  return st.with_stand_in_grad_fn(tx)


def _has_row(name: str, cases: dict[str, Any]) -> bool:
  return name in cases or any(c.startswith(name + '(') for c in cases)


def register_catalog_cases(st: ModuleType) -> list[str]:
  """Adds to ``st.CASES`` a case for every catalog entry without one.

  Returns:
    The names added.
  """
  added = []
  for entry in catalog.METHODS:
    if (
      entry.kind not in ('transformation', 'extra_args')
      or set(entry.needs) - {'grad_fn'}
      or _has_row(entry.name, st.CASES)
    ):
      continue
    base = OPTAX_CASES.get(entry.optax_equivalent or '')
    note = 'catalog defaults'
    if 'grad_fn' in entry.needs:
      note += '; grad_fn: elementwise stand-in'
    st.CASES[entry.name] = st.Case(
      functools.partial(_catalog_tx, entry),
      baseline=base if base in st.CASES else None,
      note=note,
    )
    added.append(entry.name)
  return added


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a bench run times: trees and case names (baselines included).

  Attributes:
    trees: tree names.
    names: case names, each baseline before its cases.
    cases: the requested cases (``'all'`` or a comma-separated list).
    torch: whether the PyTorch peers were requested.
    apply: time update + ``apply_updates`` with parameters and state donated
      (a training step's optimizer part) instead of the update alone.
  """

  trees: list[str]
  names: list[str]
  cases: str = 'all'
  torch: bool = True
  apply: bool = False

  def command(self, reps: int, output: Any = None) -> str:
    """The ``python -m optimflow bench`` command of this plan."""
    parts = ['python -m optimflow bench', '--trees ' + ','.join(self.trees)]
    if self.cases != 'all':
      parts.append(f'--cases {self.cases}')
    parts.append(f'--reps {reps}')
    if not self.torch:
      parts.append('--no-torch')
    if self.apply:
      parts.append('--apply')
    if output is not None:
      parts.append(f'--output {output}')
    return ' '.join(parts)


def plan(
  trees: Sequence[str],
  cases: str = 'all',
  *,
  torch: bool = True,
  apply: bool = False,
) -> Plan:
  """Validates the trees and cases of a run.

  Args:
    trees: names in ``optimflow.lab.bench.cases.TREES``.
    cases: ``'all'`` or comma-separated case names; each case's baseline is
      added.
    torch: include the PyTorch peers (for ``'all'``).
    apply: time update + ``apply_updates`` (see :class:`Plan`).

  Returns:
    A :class:`Plan`.

  Raises:
    ValueError: an unknown tree or case (the message lists the valid ones).
    ImportError: never (kept for compatibility).
  """
  st, _ = load_benchmarks()
  register_catalog_cases(st)
  trees = [t.strip() for t in trees if t.strip()]
  unknown = [t for t in trees if t not in st.TREES]
  if unknown or not trees:
    raise ValueError(
      f'unknown tree(s) {", ".join(unknown) or "(none)"}; '
      f'valid trees: {", ".join(st.TREES)}'
    )
  torch_names = list(st.TORCH_CASES) if torch else []
  valid = list(st.CASES) + torch_names
  if cases.strip() == 'all':
    names = valid
  else:
    names = list(
      dict.fromkeys(c.strip() for c in cases.split(',') if c.strip())
    )
    bad = [n for n in names if n not in valid]
    if bad or not names:
      raise ValueError(
        f'unknown case(s) {", ".join(bad) or "(none)"}; '
        f'valid cases: {", ".join(valid)}'
      )
  text = 'all' if cases.strip() == 'all' else ','.join(names)
  return Plan(trees, st.with_baselines(names), text, torch, apply)


def _cost(fl: ModuleType, case: Any, params: Any) -> Any:
  """The case's cost, traced on abstract values (nothing runs)."""
  tx = case.build()
  tree = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  return fl.update_cost(tx.update, tree, jax.eval_shape(tx.init, tree), tree)


def _log(progress: bool, text: str) -> None:
  if progress:
    print(text, file=sys.stderr, flush=True)


def run(
  p: Plan, *, reps: int = 10, progress: bool = False, output: Any = None
) -> dict[str, Any]:
  """Times the plan on each tree and attaches the floors.

  Args:
    p: from :func:`plan`.
    reps: timed round-robin repetitions.
    progress: one line on stderr per phase.
    output: the output folder, for the recorded command.

  Returns:
    The content of ``bench.json``: the machine, and per tree its size, the
    measured rates and one row per case (median ms, ratio to the baseline,
    state bytes, bytes moved, matmul FLOPs, floor ms, bound, ratio to the
    floor).
  """
  st, fl = load_benchmarks()
  out: dict[str, Any] = {
    'command': p.command(reps, output),
    'machine': report.machine_info(),
    'reps': reps,
    'apply': p.apply,
    'trees': [],
  }
  for tree in p.trees:
    params = st.TREES[tree]()
    nbytes = st.tree_bytes(params)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    _log(
      progress,
      f'{tree}: {n_params / 1e6:.2f}M parameters; measuring costs and floors',
    )
    costs = {}
    for name in p.names:
      if name in st.CASES:
        try:
          costs[name] = _cost(fl, st.CASES[name], params)
        except Exception as e:  # pylint: disable=broad-except
          _log(progress, f'  no floor for {name}: {type(e).__name__}: {e}')
    buffer = min(max(nbytes, 32 << 20), 256 << 20)
    rates = fl.measure_rates(buffer)
    _log(progress, f'{tree}: timing {len(p.names)} cases x {reps} reps')
    rows = st.run(p.names, tree, reps, apply=p.apply)
    again = fl.measure_rates(buffer)  # rates are the best of both
    rates = fl.Rates(
      max(rates.copy_bytes_per_s, again.copy_bytes_per_s),
      max(rates.matmul_flops_per_s, again.matmul_flops_per_s),
      rates.copy_buffer_bytes,
      rates.matmul_size,
    )
    floors = {}
    for name, cost in costs.items():
      seconds, bound = fl.floor_seconds(cost, rates)
      floors[name] = dict(
        bytes_moved=cost.bytes_moved,
        matmul_flops=cost.matmul_flops,
        floor_exact=cost.exact,
        floor_ms=1e3 * seconds,
        bound=bound,
      )
    for row in rows:
      floor = floors.get(row['case'])
      if floor is None and row['case'] in st.TORCH_CASES:
        floor = floors.get(row['baseline'])
        row['note'] = '; '.join(
          filter(
            None, [row['note'], f'floor of {row["baseline"]}' if floor else '']
          )
        )
      row.update(
        floor
        or dict(
          bytes_moved=None,
          matmul_flops=None,
          floor_exact=None,
          floor_ms=None,
          bound=None,
        )
      )
      row['ratio_to_floor'] = (
        row['median_ms'] / row['floor_ms'] if row['floor_ms'] else None
      )
    out['trees'].append(
      {
        'tree': tree,
        'n_params': int(n_params),
        'param_bytes': int(nbytes),
        'rates': dataclasses.asdict(rates),
        'rows': rows,
      }
    )
  return out


def _ratio(x: Any) -> str:
  return '' if x is None else f'{x:.2f}x'


def _ms(x: Any) -> str:
  if x is None:
    return ''
  return f'{x:.1f}' if x >= 100 else f'{x:.3g}'


def _rows_markdown(rows: list[dict[str, Any]]) -> str:
  return report.markdown_table(
    [
      {
        'case': r['case'],
        'median ms': _ms(r['median_ms']),
        'vs baseline': _ratio(r['ratio']),
        'baseline': r['baseline'] or '',
        'floor ms': _ms(r['floor_ms']),
        'bound': r['bound'] or '',
        'vs floor': _ratio(r['ratio_to_floor']),
        'state MB': f'{r["state_bytes"] / 2**20:.1f}',
      }
      for r in rows
    ],
    align='lrrlrlrr',
  )


def markdown(result: dict[str, Any], heading: str = '###') -> str:
  """The report: per tree, its rates and the table."""
  timed = (
    'update + `apply_updates`, parameters and state donated (a '
    "training step's optimizer part; the PyTorch peers' `step()` "
    'does the same)'
    if result.get('apply')
    else '`update` alone, state donated'
  )
  parts = [
    f'`{result["command"]}`',
    f'Machine: {report.describe_machine(result["machine"])}; timed: '
    f'{timed}; median of {result["reps"]} round-robin repetitions. '
    '"vs baseline": '
    "median over the baseline's (optax's nearest equivalent; for "
    'PyTorch peers, the optimflow row). "floor": the larger of bytes '
    'moved / copy bandwidth (memory) and matmul FLOPs / matmul rate '
    '(matmul), both measured in the same run.',
  ]
  for t in result['trees']:
    r = t['rates']
    parts.append(
      f'{heading} {t["tree"]}: {t["n_params"] / 1e6:.1f}M parameters '
      f'({t["param_bytes"] / 2**20:.1f} MB)\n\n'
      f'Copy bandwidth {r["copy_bytes_per_s"] / 1e9:.1f} GB/s (donated '
      f'{r["copy_buffer_bytes"] / 2**20:.0f} MB buffer), matmul '
      f'{r["matmul_flops_per_s"] / 1e9:.1f} GFLOP/s (float32 '
      f'{r["matmul_size"]}x{r["matmul_size"]}).\n\n' + _rows_markdown(t['rows'])
    )
    notes = [
      f'- `{row["case"]}`: {row["note"]}'
      for row in t['rows']
      if row.get('note')
    ]
    if notes:
      parts.append('Notes:\n\n' + '\n'.join(notes))
  return '\n\n'.join(parts) + '\n'


def write_outputs(result: dict[str, Any], folder: Path) -> list[Path]:
  """Writes ``bench.json`` and ``bench.md`` to ``folder``."""
  folder = Path(folder)
  (folder / 'bench.json').write_text(json.dumps(result, indent=1) + '\n')
  (folder / 'bench.md').write_text('# bench\n\n' + markdown(result))
  return [folder / 'bench.json', folder / 'bench.md']
