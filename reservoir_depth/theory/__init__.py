"""Numerical predictions of the propositions in theory/ (one module per proposition group).

activations         the elementwise phi shared by Props 1-3 (phi', Lipschitz constant)
unfolding           Prop. 1: an echo state network unfolded along depth is a scaffold
signal_propagation  Prop. 2: mean-field variance and correlation maps, chi_1, finite-width spread
scaffold_spectra    Prop. 3: Marchenko-Pastur, circular law, KS distance, echo-state contraction
adapters            Props. 4-5: rank bounds of adapters, beta under a resampled scaffold
analogy             Prop. 6: rank correlation of spectral predictors with the measured r*
"""

from . import activations, adapters, analogy, scaffold_spectra, signal_propagation, unfolding

__all__ = ["activations", "adapters", "analogy", "scaffold_spectra", "signal_propagation", "unfolding"]
