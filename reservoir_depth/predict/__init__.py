"""Predict the saturation rank r* before training, and test the prediction across benchmarks.

One job per module: ``targets`` (r* read from the committed stores at a metric's tolerances, the search
replay), ``model`` (the study's model at init, its target weights, ``full_rank``), ``predictors`` (spectrum
measures at init: ``GradientSpectrum``, ``ProbeSpectrum``, ``LayerTaskSpectrum``, ``DataSpectrum``),
``evaluation`` (calibration, leave-one-benchmark-out evaluation, ``CALIBRATION``, ``per_tolerance``,
``predict_study``) and ``allocation`` (per-layer ranks at uniform rank's budget). Everything public is
re-exported here.
"""

from .allocation import allocate_ranks, layer_dims, ranks_config
from .evaluation import CALIBRATION, calibrate, evaluate, hit, per_tolerance, permutation_pvalue, predict_study
from .model import full_rank, init_model, target_weights
from .predictors import (MEASURE_OF, ROWS, DataSpectrum, GradientSpectrum, LayerTaskSpectrum, Predictor,
                         ProbeSpectrum)
from .targets import LEVELS, search_replay, study_of, target, targets

__all__ = [
    "CALIBRATION", "DataSpectrum", "GradientSpectrum", "LEVELS", "LayerTaskSpectrum", "MEASURE_OF", "Predictor",
    "ProbeSpectrum", "ROWS", "allocate_ranks", "calibrate", "evaluate", "full_rank", "hit", "init_model", "layer_dims",
    "per_tolerance", "permutation_pvalue", "predict_study", "ranks_config", "search_replay", "study_of", "target",
    "target_weights", "targets",
]
