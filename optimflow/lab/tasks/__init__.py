"""Small built-in training tasks that need no download.

Shared by the CLI, the examples, the notebooks and the benchmarks.
"""

from optimflow.lab.tasks import charlm
from optimflow.lab.tasks import digits
from optimflow.lab.tasks import synthetic
from optimflow.lab.tasks import training
from optimflow.lab.tasks.digits import CNN
from optimflow.lab.tasks.digits import MLP
from optimflow.lab.tasks.digits import DigitsData
from optimflow.lab.tasks.digits import accuracy
from optimflow.lab.tasks.digits import cross_entropy
from optimflow.lab.tasks.digits import load_digits
from optimflow.lab.tasks.digits import loss_fn
from optimflow.lab.tasks.synthetic import Problem
from optimflow.lab.tasks.synthetic import box
from optimflow.lab.tasks.synthetic import quadratic
from optimflow.lab.tasks.synthetic import rastrigin
from optimflow.lab.tasks.synthetic import rosenbrock
from optimflow.lab.tasks.training import History
from optimflow.lab.tasks.training import batches
from optimflow.lab.tasks.training import evaluate
from optimflow.lab.tasks.training import fit
from optimflow.lab.tasks.training import format_table
from optimflow.lab.tasks.training import grad_fn_builder
from optimflow.lab.tasks.training import optimizer_state_bytes
from optimflow.lab.tasks.training import params_grad_fn
from optimflow.lab.tasks.training import tree_bytes
