"""Flax NNX helpers: ``grad_fn`` builders, train steps, EMA models, SAF/MESA.

The one part of the library that imports flax; ``import optimflow`` does not
load it until ``optimflow.nnx`` is first used. Modules:
:mod:`~optimflow.nnx.training`; every name is re-exported here.
"""

from optimflow.nnx.training import ema_model
from optimflow.nnx.training import grad_fn
from optimflow.nnx.training import grad_fn_builder
from optimflow.nnx.training import mesa_train_step
from optimflow.nnx.training import saf_loss
from optimflow.nnx.training import train_step

__all__ = (
  'ema_model',
  'grad_fn',
  'grad_fn_builder',
  'mesa_train_step',
  'saf_loss',
  'train_step',
)
