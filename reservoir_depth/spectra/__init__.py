"""Spectra of activations, tasks and weight updates, and intrinsic dimension.

``measures``: functions of a variance spectrum (explained variance, k_tau, participation
ratio, entropy and stable rank; ``Spectrum``) and ``StreamingCovariance``; arrays in,
numbers out. ``probes``: what to measure in a model or a data set (``ActivationSpectra``,
``WeightSpectra``, ``TaskSpectrum``, ``IntrinsicDimension``). Both are re-exported here.
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
from .probes import ActivationSpectra, DeadUnits, IntrinsicDimension, TaskSpectrum, WeightSpectra

__all__ = [
    "ActivationSpectra", "DEFAULT_TAUS", "DeadUnits", "IntrinsicDimension", "MEASURES", "Spectrum", "StreamingCovariance",
    "TaskSpectrum", "WeightSpectra", "entropy_effective_rank", "explained_variance_ratio", "k_tau",
    "participation_ratio", "stable_rank",
]
