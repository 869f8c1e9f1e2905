"""optimflow: optimizers from recent research as optax transformations.

Every method is an ``optax.GradientTransformation`` (or
``GradientTransformationExtraArgs`` when it needs a callable such as
``grad_fn``): it chains with ``optax.chain``, jits, and drops into
``flax.nnx.Optimizer``.
"""

from optimflow import catalog
from optimflow import linalg
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
from optimflow.sharpness import asam_sgd
from optimflow.sharpness import param_ema
from optimflow.sharpness import saf_schedule
from optimflow.sharpness import sam
from optimflow.sharpness import sam_gradient
from optimflow.sharpness import sam_perturbation
from optimflow.sharpness import sam_sgd
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
    'asam_sgd',
    'auon',
    'catalog',
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
    'sam_sgd',
    'sgd_with_param_ema',
    'scale_by_adamp',
    'scale_by_grad_norm',
    'scale_by_grad_whitening',
    'scale_by_auon',
    'scale_by_implicit_decay',
    'scale_by_lion_kappa',
    'scale_by_muon',
    'scale_by_sgdp',
    'scale_by_swan',
    'sgdp',
    'swan',
    'trajectory_kl',
)
