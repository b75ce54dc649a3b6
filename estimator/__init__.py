"""Latent Kalman inference (VRKN): typed diagonal Gaussians, filter, smoother, losses.

Pure torch; imports no dm_control, gRPC or FastAPI.
"""

from estimator.gaussian import Belief, LatentObservation, LinearTransition, always_valid
from estimator.kalman import (
    FilterResult,
    fuse,
    gaussian_log_prob,
    kalman_filter,
    kl_divergence,
    log_marginal_likelihood,
    predict,
    predictive_log_prob,
    sample,
    transition_given,
    update,
)
from estimator.smoother import SmootherResult, rts_smoother, smoothed_dynamics

__all__ = [
    "Belief",
    "FilterResult",
    "LatentObservation",
    "LinearTransition",
    "SmootherResult",
    "always_valid",
    "fuse",
    "gaussian_log_prob",
    "kalman_filter",
    "kl_divergence",
    "log_marginal_likelihood",
    "predict",
    "predictive_log_prob",
    "rts_smoother",
    "sample",
    "smoothed_dynamics",
    "transition_given",
    "update",
]
