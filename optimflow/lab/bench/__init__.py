"""``python -m optimflow bench``: update step time against optax, PyTorch peers
and the hardware floors.

The cases registered in
:mod:`optimflow.lab.bench.cases` (``CASES``: optimflow and optax transformations;
``TORCH_CASES``: PyTorch peers, present when torch and the peer packages are
installed) plus one case per catalog entry that has no row there (built with
its ``defaults``; methods that need ``grad_fn`` get the elementwise stand-in
``grad_fn(w) = g + 1e-3 w`` of ``step_time.with_stand_in_grad_fn``, so their
row times the optimizer's own work, not a second backward pass). Every chosen case and its baseline are timed
round-robin in one process on each parameter tree (``transformer``: 23M
parameters, ``resnet``: ResNet-18 shaped, 11.7M), and two floors are measured
in the same run (:mod:`optimflow.lab.bench.floors`): the memory floor (bytes the
update must move / measured copy bandwidth of a donated buffer) and the
matmul floor (matmul FLOPs / measured float32 matmul rate). A case's floor is
the larger of the two; PyTorch rows get the floor of their baseline.

The report, per tree: median milliseconds, the ratio to the baseline (optax's
nearest equivalent for optimflow rows, the optimflow row for PyTorch peers),
the floor, its bound, the ratio to the floor and the state bytes.

Examples:
  >>> from optimflow.lab import bench
  >>> p = bench.plan(['tiny-transformer'], 'lion', torch=False)
  >>> p.names
  ['optax.lion', 'lion']
"""

from optimflow.lab.bench.runner import OPTAX_CASES
from optimflow.lab.bench.runner import Plan
from optimflow.lab.bench.runner import load_benchmarks
from optimflow.lab.bench.runner import markdown
from optimflow.lab.bench.runner import plan
from optimflow.lab.bench.runner import register_catalog_cases
from optimflow.lab.bench.runner import run
from optimflow.lab.bench.runner import write_outputs
