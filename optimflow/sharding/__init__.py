"""Sharded parameters: state shardings, layouts, and stacked Newton-Schulz.

Every optimflow transformation runs under JAX's own SPMD (``jax.jit`` with
``NamedSharding``, Explicit or Auto mesh axes): elementwise methods keep each
state leaf in its parameter's layout, and the conformance suite checks that
``update`` preserves the state's shardings and compiles once. This module adds
what a multi-device run needs beyond that.

**Layouts.** :func:`fsdp_specs` shards every parameter along its largest
divisible axis (FSDP / ZeRO-3 style), :func:`replicated_specs` keeps a copy
per device (data parallel); :func:`named` turns specs into ``NamedSharding``.
:func:`state_shardings` derives the optimizer state's shardings from the
parameters' (each parameter-shaped state leaf gets its parameter's sharding,
counters and hyperparameters are replicated), for ``jax.jit``'s
``out_shardings`` or ``jax.device_put`` of a restored checkpoint.

**Matrix methods.** Muon, AuON/Hybrid-AuON and SWAN need whole matrices. Left
to the compiler (optax's Muon), a sharded Newton-Schulz iteration all-reduces
partial Gram matrices at every step; gathering every matrix on every device
instead (what these methods do by default on Explicit meshes) repeats the
whole iteration on each device. :class:`MatrixSharding` picks one of

* ``'stacked'``: same-shape matrices (same layout) are stacked, the stack axis
  is sharded over the mesh so each device orthogonalises whole matrices of its
  own (``shard_map``: no collective inside the iteration), with one reshard in
  and one out, each a sequence of single-axis moves that XLA lowers to
  all-to-alls. A group with fewer matrices than devices is sharded over the
  subset of mesh axes that leaves the fewest matrices per device (zero
  matrices pad the stack to a multiple); a single matrix is gathered.
* ``'gather'``: all-gather every matrix and compute it redundantly on every
  device (the default on Explicit meshes, ``sharding=None``).
* ``'local'``: no resharding; the compiler partitions the matrix maths in the
  parameter's layout (cheapest for AuON without Newton-Schulz, whose only
  cross-device work is two scalar reductions per matrix).

Pass it as ``sharding=`` to :func:`optimflow.muon`, :func:`optimflow.auon`,
:func:`optimflow.hybrid_auon`, :func:`optimflow.swan` or their
``scale_by_*`` blocks (a string gives that mode with the ambient mesh).
The stacked mode knows each leaf's layout when the mesh axes are Explicit
(sharding in types); under Auto axes the layout is only known to the compiler,
so the stack is constrained in one step and XLA chooses the reshard.

:func:`collective_counts` and :func:`collective_bytes` read a compiled HLO
module and report its all-gather / all-reduce / all-to-all /
collective-permute / reduce-scatter ops.

Examples:
  >>> import jax, jax.numpy as jnp
  >>> from jax.sharding import AxisType, PartitionSpec as P
  >>> import optimflow
  >>> from optimflow import sharding
  >>> mesh = jax.make_mesh((2, 4), ('data', 'model'),
  ...                      axis_types=(AxisType.Explicit,) * 2)
  >>> params = {'w': jnp.ones((16, 8)), 'b': jnp.zeros(8)}
  >>> specs = sharding.fsdp_specs(params, mesh)
  >>> specs
  {'b': P(('data', 'model'),), 'w': P(('data', 'model'), None)}
  >>> tx = optimflow.muon(0.02, adam_learning_rate=3e-3, sharding='stacked')
  >>> with jax.set_mesh(mesh):
  ...   params = jax.device_put(params, sharding.named(mesh, specs))
  ...   state = tx.init(params)
  ...   u, state = jax.jit(tx.update)(params, state, params)
  >>> u['w'].sharding.spec == specs['w']
  True
  >>> state_sh = sharding.state_shardings(tx, params, sharding.named(mesh, specs))
  >>> state_sh.inner_states['matrix'].inner_state[0].mu['w'].spec
  P(('data', 'model'), None)
"""

from optimflow.sharding.hlo import collective_bytes
from optimflow.sharding.hlo import collective_counts
from optimflow.sharding.layouts import fsdp_specs
from optimflow.sharding.layouts import named
from optimflow.sharding.layouts import replicated_specs
from optimflow.sharding.layouts import state_shardings
from optimflow.sharding.matrix import COLLECTIVES
from optimflow.sharding.matrix import MODES
from optimflow.sharding.matrix import MatrixSharding
from optimflow.sharding.matrix import MeshLike
from optimflow.sharding.matrix import Mode
from optimflow.sharding.matrix import ShardingArg
from optimflow.sharding.matrix import as_matrix_sharding
from optimflow.sharding.matrix import map_views

__all__ = (
  'COLLECTIVES',
  'MODES',
  'MatrixSharding',
  'MeshLike',
  'Mode',
  'ShardingArg',
  'as_matrix_sharding',
  'collective_bytes',
  'collective_counts',
  'fsdp_specs',
  'map_views',
  'named',
  'replicated_specs',
  'state_shardings',
)
