"""Collective ops of a compiled HLO module: counts and bytes, loops unrolled."""

from __future__ import annotations

import math
import re
from typing import Any, Optional

from optimflow.sharding.matrix import COLLECTIVES

_DTYPE_BYTES = {
  'pred': 1,
  's8': 1,
  'u8': 1,
  's16': 2,
  'u16': 2,
  'f16': 2,
  'bf16': 2,
  's32': 4,
  'u32': 4,
  'f32': 4,
  's64': 8,
  'u64': 8,
  'f64': 8,
  'c64': 8,
  'c128': 16,
}
_OP = re.compile(
  r'^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<type>.+?)\s+'
  r'(?P<op>all-gather|all-reduce|all-to-all|collective-permute|'
  r'reduce-scatter)(?P<start>-start)?\(',
  re.MULTILINE,
)
_ARRAY = re.compile(r'(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]')


def _hlo_text(compiled: Any) -> str:
  if isinstance(compiled, str):
    return compiled
  return compiled.as_text()


_COMPUTATION = re.compile(r'^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s.*\{\s*$')
_WHILE = re.compile(r'\bwhile\(.*?body=%?(?P<body>[\w.\-]+)')
_TRIP = re.compile(r'"known_trip_count":\{"n":"(?P<n>\d+)"')
_CALLEE = re.compile(
  r'(?:calls|to_apply|condition|true_computation|false_computation)='
  r'%?(?P<name>[\w.\-]+)|branch_computations=\{(?P<names>[^}]*)\}'
)


def _computations(text: str) -> tuple[dict[str, list[str]], Optional[str]]:
  """HLO computations by name (their body lines) and the entry's name."""
  comps, entry, current = {}, None, None
  for line in text.splitlines():
    if current is None:
      match = _COMPUTATION.match(line)
      if match and '=' not in line.split('(')[0]:
        current = match['name']
        comps[current] = []
        if line.lstrip().startswith('ENTRY'):
          entry = current
    elif line.strip() == '}':
      current = None
    else:
      comps[current].append(line)
  return comps, entry


def _multipliers(text: str) -> dict[str, int]:
  """How many times each computation runs per call of the entry: the
  product of the known trip counts of the while loops around it."""
  comps, entry = _computations(text)
  if entry is None:
    return {}
  mult: dict[str, int] = {}

  def visit(name: str, times: int) -> None:
    if name not in comps or mult.get(name, 0) >= times:
      return
    mult[name] = times
    for line in comps[name]:
      loop = _WHILE.search(line)
      if loop:
        trip = _TRIP.search(line)
        visit(loop['body'], times * (int(trip['n']) if trip else 1))
      for callee in _CALLEE.finditer(line):
        names = (
          [callee['name']]
          if callee['name']
          else [n.strip().lstrip('%') for n in callee['names'].split(',')]
        )
        for n in names:
          visit(n, times)

  visit(entry, 1)
  return mult


def _collectives(compiled: Any, executed: bool = False):
  """``(op, bytes, times)`` of every collective op of the module."""
  text = _hlo_text(compiled)
  comps, _ = _computations(text) if executed else ({}, None)
  mult = _multipliers(text) if executed else {}
  owner = {}
  for name, lines in comps.items():
    for line in lines:
      owner[line] = name
  for match in _OP.finditer(text):
    arrays = [(a['dtype'], a['dims']) for a in _ARRAY.finditer(match['type'])]
    if match['start'] and len(arrays) > 1:
      arrays = arrays[len(arrays) // 2 :]  # async: (operands, results)
    size = sum(
      _DTYPE_BYTES.get(dtype, 4)
      * math.prod(int(d) for d in dims.split(',') if d)
      for dtype, dims in arrays
    )
    times = 1
    if executed:
      line = text[
        text.rfind('\n', 0, match.start()) + 1 : text.find('\n', match.end())
        % (len(text) + 1)
      ]
      times = mult.get(owner.get(line, ''), 1)
    yield match['op'], size, times


def collective_counts(compiled: Any, executed: bool = False) -> dict[str, int]:
  """Number of each collective op in a compiled module.

  Args:
    compiled: ``jax.jit(f).lower(...).compile()`` or its ``as_text()``.
    executed: count each op as many times as it runs per call: ops in the
      body of a while loop (``lax.fori_loop``, ``lax.map``, ``lax.scan``)
      times the loop's known trip count (nested loops multiply). ``False``
      counts the ops written in the module once each.

  Returns:
    ``{op: count}`` for all-gather, all-reduce, all-to-all,
    collective-permute and reduce-scatter (async ``-start`` ops count once).

  Examples:
    >>> from optimflow import sharding
    >>> hlo = '''
    ... %body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
    ...   %ar = f32[4]{0} all-reduce(f32[4]{0} %x), to_apply=%add
    ... }
    ... ENTRY %main (a: f32[1,4]) -> f32[4] {
    ...   %ag = f32[8,4]{1,0} all-gather(f32[1,4]{1,0} %a), dimensions={0}
    ...   %w = (s32[], f32[4]) while(%t), condition=%c, body=%body, backend_config={"known_trip_count":{"n":"5"}}
    ... }
    ... '''
    >>> c = sharding.collective_counts(hlo)
    >>> c['all-gather'], c['all-reduce']
    (1, 1)
    >>> sharding.collective_counts(hlo, executed=True)['all-reduce']
    5
    >>> sharding.collective_bytes(hlo)['all-gather']
    128
  """
  counts = dict.fromkeys(COLLECTIVES, 0)
  for op, _, times in _collectives(compiled, executed):
    counts[op] += times
  return counts


def collective_bytes(compiled: Any, executed: bool = False) -> dict[str, int]:
  """Bytes of each kind of collective's results, per device.

  The size of what each op leaves on one device (an all-gather's full
  result, an all-to-all's local block): a proxy for the data a device
  receives. ``executed`` weights ops inside loops by their trip counts, as
  in :func:`collective_counts`.
  """
  total = dict.fromkeys(COLLECTIVES, 0)
  for op, size, times in _collectives(compiled, executed):
    total[op] += size * times
  return total
