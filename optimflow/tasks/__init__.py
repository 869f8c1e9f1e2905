"""Small built-in training tasks that need no download.

Shared by the CLI, the examples, the notebooks and the benchmarks.
"""

from optimflow.tasks import charlm
from optimflow.tasks import digits
from optimflow.tasks import synthetic
from optimflow.tasks import training
from optimflow.tasks.digits import CNN
from optimflow.tasks.digits import DigitsData
from optimflow.tasks.digits import MLP
from optimflow.tasks.digits import accuracy
from optimflow.tasks.digits import cross_entropy
from optimflow.tasks.digits import load_digits
from optimflow.tasks.digits import loss_fn
from optimflow.tasks.synthetic import Problem
from optimflow.tasks.synthetic import box
from optimflow.tasks.synthetic import quadratic
from optimflow.tasks.synthetic import rastrigin
from optimflow.tasks.synthetic import rosenbrock
from optimflow.tasks.training import History
from optimflow.tasks.training import batches
from optimflow.tasks.training import evaluate
from optimflow.tasks.training import fit
from optimflow.tasks.training import format_table
from optimflow.tasks.training import grad_fn_builder
from optimflow.tasks.training import optimizer_state_bytes
from optimflow.tasks.training import params_grad_fn
from optimflow.tasks.training import set_grad_fn_factory
from optimflow.tasks.training import tree_bytes
