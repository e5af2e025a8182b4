"""Spectra of activations, tasks and weight updates, and intrinsic dimension.

``measures``: functions of a variance spectrum (explained variance, k_tau, participation
ratio, entropy and stable rank; ``Spectrum``) and ``StreamingCovariance``; arrays in,
numbers out. ``probes``: what to measure in a model or a data set (``ActivationSpectra``,
``WeightSpectra``, ``TaskSpectrum``, ``IntrinsicDimension``; ``select_layers`` and ``hooked_pass``, the
layer selection and hooked forward pass they share with predict's layer spectra). Both are re-exported here.
"""

from .measures import (
    DEFAULT_TAUS,
    MEASURES,
    Spectrum,
    StreamingCovariance,
    entropy_effective_rank,
    explained_variance_ratio,
    k_tau,
    participation_ratio,
    stable_rank,
)
from .probes import (ActivationSpectra, DeadUnits, IntrinsicDimension, TaskSpectrum, WeightSpectra, hooked_pass,
                     select_layers)

__all__ = [
    "ActivationSpectra", "DEFAULT_TAUS", "DeadUnits", "IntrinsicDimension", "MEASURES", "Spectrum", "StreamingCovariance",
    "TaskSpectrum", "WeightSpectra", "entropy_effective_rank", "explained_variance_ratio", "k_tau",
    "hooked_pass", "participation_ratio", "select_layers", "stable_rank",
]
