"""Evaluation of the state head during training: estimate vs the simulator's state.

``StateRecorder`` is an ``AgentPolicy`` observer: at every evaluation step it keeps the
belief's feature moments and the true ``state`` of every environment. ``metrics()`` runs
the divided-difference estimate (``server.runtime.uncertainty``, the arithmetic the service
runs on the exported head) and reports nRMSE, NLL and 90% coverage per element and averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from estimator.state_head import StateHead
from estimator.world_model import State, WorldModel
from server.runtime import calibration
from server.runtime.uncertainty import StateEstimate, estimate

CHUNK = 256  # beliefs per head call (each expands to 2n+1 sigma points)


def head_function(head: StateHead) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The head as a numpy function ``z [N, F] -> (mean, var) [N, S]`` (no gradients)."""
    param = next(head.parameters())

    def run(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            mean, var = head(torch.as_tensor(z, device=param.device, dtype=param.dtype))
        return mean.cpu().numpy(), var.cpu().numpy()

    return run


def estimate_states(head: StateHead, mean: np.ndarray, var: np.ndarray) -> StateEstimate:
    """Estimates for beliefs ``[N, F]``, in chunks."""
    fn = head_function(head)
    parts = [estimate(fn, mean[i:i + CHUNK], var[i:i + CHUNK])
             for i in range(0, len(mean), CHUNK)]
    return StateEstimate(np.concatenate([p.mean for p in parts]),
                         np.concatenate([p.var for p in parts]))


class StateRecorder:
    """Observer: feature moments and true states of every environment at every step."""

    def __init__(self, model: WorldModel):
        self.model = model
        self.means: list[np.ndarray] = []
        self.vars: list[np.ndarray] = []
        self.truth: list[np.ndarray] = []

    def __call__(self, obs: Mapping[str, np.ndarray], state: State) -> None:
        if "state" not in obs:
            return
        mean, var = self.model.feature_moments(state)
        self.means.append(mean.float().cpu().numpy())
        self.vars.append(var.float().cpu().numpy())
        self.truth.append(np.asarray(obs["state"], np.float32))

    def metrics(self, head: StateHead, prefix: str = "eval/") -> dict[str, float]:
        if not self.truth:
            return {}
        truth = np.concatenate(self.truth)
        est = estimate_states(head, np.concatenate(self.means), np.concatenate(self.vars))
        nrmse = calibration.nrmse(est.mean, truth)
        nll = calibration.gaussian_nll(est.mean, est.var, truth)
        cov = calibration.coverage(est.mean, est.var, truth, 0.9)
        out = {f"{prefix}state_nrmse": float(nrmse.mean()),
               f"{prefix}state_nll": float(nll.mean()),
               f"{prefix}state_cov90": float(cov.mean()),
               f"{prefix}state_nees": float(calibration.nees(est.mean, est.var, truth).mean())}
        for i, name in enumerate(head.names):
            out[f"{prefix}state_nrmse/{name}"] = float(nrmse[i])
            out[f"{prefix}state_cov90/{name}"] = float(cov[i])
        return out


class Observers:
    """Several observers as one."""

    def __init__(self, *observers: Callable[[Mapping[str, np.ndarray], State], None] | None):
        self.observers = [o for o in observers if o is not None]

    def __call__(self, obs: Mapping[str, np.ndarray], state: State) -> None:
        for observer in self.observers:
            observer(obs, state)
