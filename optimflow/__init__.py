"""optimflow: optimizers from recent research as optax transformations.

Every method is an ``optax.GradientTransformation`` (or
``GradientTransformationExtraArgs`` when it needs a callable such as
``grad_fn``): it chains with ``optax.chain``, jits, and drops into
``flax.nnx.Optimizer``.

This package is the library: it imports jax, optax, chex and numpy only.
``optimflow.nnx`` (Flax helpers) loads on first use; the application
(``python -m optimflow``: compare, bench, tasks, examples) lives in
``optimflow.lab`` and is never imported from here.
"""

from __future__ import annotations

import importlib
from typing import Any
import warnings

from optimflow import catalog
from optimflow import diagnostics
from optimflow import linalg
from optimflow import sharding
from optimflow import sharpness
from optimflow.orthogonal import OrthogonalMomentumState
from optimflow.orthogonal import auon
from optimflow.orthogonal import hybrid_auon
from optimflow.orthogonal import muon
from optimflow.orthogonal import scale_by_auon
from optimflow.orthogonal import scale_by_muon
from optimflow.radial import ScaleByAdamPState
from optimflow.radial import ScaleBySGDPState
from optimflow.radial import adamp
from optimflow.radial import radial_projection
from optimflow.radial import scale_by_adamp
from optimflow.radial import scale_by_sgdp
from optimflow.radial import sgdp
from optimflow.sharpness import OutputBank
from optimflow.sharpness import ParamEMAState
from optimflow.sharpness import asam
from optimflow.sharpness import param_ema
from optimflow.sharpness import saf_schedule
from optimflow.sharpness import sam
from optimflow.sharpness import sam_gradient
from optimflow.sharpness import sam_perturbation
from optimflow.sharpness import scale_by_asam
from optimflow.sharpness import scale_by_sam
from optimflow.sharpness import sgd_with_param_ema
from optimflow.sharpness import trajectory_kl
from optimflow.sign_momentum import KappaSpec
from optimflow.sign_momentum import ScaleByImplicitDecayState
from optimflow.sign_momentum import ScaleByLionKappaState
from optimflow.sign_momentum import kappa_gradient
from optimflow.sign_momentum import lion
from optimflow.sign_momentum import lion_kappa
from optimflow.sign_momentum import scale_by_implicit_decay
from optimflow.sign_momentum import scale_by_lion_kappa
from optimflow.whitening import gradnorm
from optimflow.whitening import scale_by_grad_norm
from optimflow.whitening import scale_by_grad_whitening
from optimflow.whitening import scale_by_swan
from optimflow.whitening import swan

__version__ = '0.1.0'

#: Old names kept for one release: each resolves to its new name with a
#: ``DeprecationWarning``.
_DEPRECATED = {
  'sam_sgd': 'sam',
  'asam_sgd': 'asam',
}
#: Subpackages loaded on first access (they import optional dependencies).
_LAZY = ('nnx',)


def __getattr__(name: str) -> Any:
  if name in _DEPRECATED:
    new = _DEPRECATED[name]
    warnings.warn(
      f'optimflow.{name} is deprecated: use optimflow.{new} (same arguments).',
      DeprecationWarning,
      stacklevel=2,
    )
    return globals()[new]
  if name in _LAZY:
    return importlib.import_module(f'optimflow.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = (
  'KappaSpec',
  'OrthogonalMomentumState',
  'OutputBank',
  'ParamEMAState',
  'ScaleByAdamPState',
  'ScaleByImplicitDecayState',
  'ScaleByLionKappaState',
  'ScaleBySGDPState',
  'adamp',
  'asam',
  'auon',
  'catalog',
  'diagnostics',
  'gradnorm',
  'hybrid_auon',
  'kappa_gradient',
  'linalg',
  'lion',
  'lion_kappa',
  'muon',
  'param_ema',
  'radial_projection',
  'saf_schedule',
  'sam',
  'sam_gradient',
  'sam_perturbation',
  'scale_by_adamp',
  'scale_by_asam',
  'scale_by_auon',
  'scale_by_grad_norm',
  'scale_by_grad_whitening',
  'scale_by_implicit_decay',
  'scale_by_lion_kappa',
  'scale_by_muon',
  'scale_by_sam',
  'scale_by_sgdp',
  'scale_by_swan',
  'sgd_with_param_ema',
  'sgdp',
  'sharding',
  'sharpness',
  'swan',
  'trajectory_kl',
)
