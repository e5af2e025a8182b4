"""Numerical predictions of the propositions in theory/ (one module per group).

reservoir  Props. 1-3: depth unfolding of an echo state network, mean-field signal
           propagation through random scaffolds, spectra of scaffolds (MP, circular law).
adapters   Props. 4-5: rank bounds of adapters, beta under a resampled scaffold.
analogy    Prop. 6: rank correlation of spectral predictors with the measured r*.
"""

from . import adapters, analogy, reservoir

__all__ = ["adapters", "analogy", "reservoir"]
