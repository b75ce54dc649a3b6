"""The Variational Recurrent Kalman Network world model (paper Sec. 3, docs/design.md §3).

Per sensor an encoder gives a latent observation (w, sigma_w^2) at its present steps; a
Kalman filter with the transition network phi(mu+_t, a_t) fuses them sequentially; an
RTS smoother gives the smoothed beliefs; the loss is the SSM bound (paper Eq. 4) with
reconstructions from samples of the smoothed marginals and the KL between the smoothed
dynamics and the prior transition at the same sample, with free nats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from estimator.batch import SensorBatch, SensorSpec, SequenceBatch
from estimator.gaussian import Belief, LatentObservation
from estimator.kalman import (
    FilterResult,
    fuse,
    kalman_filter,
    kl_divergence,
    predict,
    sample,
    transition_given,
)
from estimator.networks import ConvConfig, LatentObservationHead, MLPConfig
from estimator.sensors import PreparedSensor, SensorStack, scatter_rows
from estimator.smoother import rts_smoother, smoothed_dynamics
from estimator.transition import TransitionNet
from estimator.world_model import (
    Imagination,
    Policy,
    WorldModel,
    stack_states,
    step_sensors,
)

# softplus(0 + c) + 0.001 = 1.0 for the learned initial variance (docs/design.md §2.1).
INIT_VAR_OFFSET = math.log(math.expm1(0.999))


@dataclass(frozen=True)
class VRKNConfig:
    """VRKN hyperparameters; defaults are the paper's Dreamer settings (docs/design.md §3.1)."""

    latent: int = 230
    hidden: int = 300  # transition network width (PlaNet: 200 with ELU)
    act: str = "relu"
    dropout: float = 0.1  # MC dropout in the transition network; 0 = "VRKN without dropout"
    free_nats: float = 3.0
    reward_weight: float = 10.0
    conv: ConvConfig = field(default_factory=ConvConfig)
    vector: MLPConfig = field(default_factory=MLPConfig)
    reward: MLPConfig = field(default_factory=lambda: MLPConfig(hidden=300, layers=3, act="elu"))
    compiled_filter: bool = False  # torch.compile the filter step (see bench/kalman.py)


class VRKNState(NamedTuple):
    """A filtered belief and one sample of it (the sample is what the policy sees)."""

    mean: Tensor  # [..., L]
    var: Tensor  # [..., L]
    sample: Tensor  # [..., L]


class VRKN(WorldModel):
    def __init__(self, specs: tuple[SensorSpec, ...], action_dim: int,
                 config: VRKNConfig = VRKNConfig()):
        super().__init__(specs, action_dim, config.latent, config.reward)
        self.config = config
        self.sensors = SensorStack(self.specs, config.latent, config.conv, config.vector)
        self.heads = nn.ModuleList(LatentObservationHead(d, config.latent)
                                   for d in self.sensors.feature_dims)
        self.transition = TransitionNet(config.latent, action_dim, config.hidden, config.act,
                                        config.dropout)
        self.init_var_param = nn.Parameter(torch.zeros(config.latent))

    # ------------------------------------------------------------------ inference

    def initial_belief(self, batch_size: int) -> Belief:
        var = F.softplus(self.init_var_param + INIT_VAR_OFFSET) + 0.001
        return Belief(var.new_zeros(batch_size, self.config.latent),
                      var.expand(batch_size, -1))

    def latent_observations(self, prepared: tuple[PreparedSensor, ...], batch: int, steps: int
                            ) -> list[LatentObservation]:
        """Encode every sensor at its present steps only; [B, T, L] with zeros elsewhere."""
        out = []
        total, latent = batch * steps, self.config.latent
        for k, p in enumerate(prepared):
            if p.index.numel() == 0:
                mean = torch.zeros(total, latent, device=p.valid.device)
                var = torch.ones(total, latent, device=p.valid.device)
            else:
                w, var_w = self.heads[k](self.sensors.encode(k, p))
                mean = scatter_rows(w, p.index, total, 0.0)
                var = scatter_rows(var_w, p.index, total, 1.0)
            out.append(LatentObservation(mean.view(batch, steps, latent),
                                         var.view(batch, steps, latent), p.valid))
        return out

    def run_filter(self, batch: SequenceBatch, prepared: tuple[PreparedSensor, ...],
                   generator: torch.Generator | None) -> FilterResult:
        b, t = batch.batch_size, batch.length
        observations = self.latent_observations(prepared, b, t)
        actions = batch.action.unbind(1)
        dropout = self.dropout_active

        def transition(step: int, posterior: Belief):
            return self.transition(posterior.mean, actions[step], dropout, generator)

        return kalman_filter(self.initial_belief(b), observations, transition, validate=False,
                             compiled=self.config.compiled_filter)

    def observe(self, batch: SequenceBatch, generator: torch.Generator | None = None
                ) -> VRKNState:
        prepared = self.sensors.prepare(batch.sensors, generator, dequantize=self.training)
        post = self.run_filter(batch, prepared, generator).posterior
        return VRKNState(post.mean, post.var, sample(post, generator))

    # ------------------------------------------------------------------ loss (Eq. 4)

    def loss_and_posterior(self, batch: SequenceBatch, generator: torch.Generator | None = None
                           ) -> tuple[Tensor, dict[str, float], VRKNState]:
        cfg = self.config
        b, t = batch.batch_size, batch.length
        prepared = self.sensors.prepare(batch.sensors, generator, dequantize=True)
        filtered = self.run_filter(batch, prepared, generator)
        smoothed = rts_smoother(filtered, validate=False)
        z = sample(smoothed.smoothed, generator)  # [B, T, L]
        # Reconstruction from samples of the smoothed marginals.
        flat = z.reshape(b * t, -1)
        obs_nll, per_sensor = self.sensors.reconstruction_nll(flat, prepared)
        reward_nll = 0.5 * (self.reward(flat) - batch.reward.reshape(-1)).square() \
            + 0.5 * math.log(2 * math.pi)
        recon = (obs_nll + cfg.reward_weight * reward_nll).mean()
        # KL between the smoothed dynamics and the prior transition at the same sample
        # z_{t-1}; the initial step has no KL term.
        if t > 1:
            z_prev = z[:, :-1]
            q_dyn = smoothed_dynamics(smoothed, z_prev)
            p_dyn = transition_given(filtered.transition, z_prev)
            kl = kl_divergence(q_dyn, p_dyn)  # [B, T-1]
            kl_loss = kl.clamp(min=cfg.free_nats).mean()
        else:
            kl = kl_loss = z.new_zeros(())
        loss = recon + kl_loss
        metrics = {"loss": loss.item(), "kl": kl.mean().item(), "reward_nll": reward_nll.mean()
                   .item(), "recon": recon.item(), "a_mean": filtered.transition.a.mean().item()
                   if t > 1 else float("nan"), "q_mean": filtered.transition.q.mean().item()
                   if t > 1 else float("nan")}
        for spec, nll in zip(self.specs, per_sensor, strict=True):
            metrics[f"nll/{spec.name}"] = nll.item()
        with torch.no_grad():
            post = Belief(filtered.posterior.mean.detach(), filtered.posterior.var.detach())
            posterior = VRKNState(post.mean, post.var, sample(post, generator))
        return loss, metrics, posterior

    # ------------------------------------------------------------------ acting

    def init_state(self, batch_size: int) -> VRKNState:
        init = self.initial_belief(batch_size)
        return VRKNState(init.mean, init.var, init.mean)

    def features(self, state: VRKNState) -> Tensor:
        return state.sample

    def feature_moments(self, state: VRKNState) -> tuple[Tensor, Tensor]:
        return state.mean, state.var

    def filter_step(self, state: VRKNState | None, action: Tensor | None,
                    sensors: tuple[SensorBatch, ...],
                    generator: torch.Generator | None = None) -> VRKNState:
        seq = step_sensors(sensors)
        batch = seq[0].valid.shape[0]
        prepared = self.sensors.prepare(seq, generator, dequantize=False)
        obs = [LatentObservation(o.mean[:, 0], o.var[:, 0], o.valid[:, 0])
               for o in self.latent_observations(prepared, batch, 1)]
        if state is None:
            prior = self.initial_belief(batch)
        else:
            if action is None:
                raise ValueError("filter_step needs the action applied since the last state")
            params = self.transition(state.mean, action, self.dropout_active, generator)
            prior = predict(Belief(state.mean, state.var), params, validate=False)
        post = fuse(prior, obs, validate=False)
        return VRKNState(post.mean, post.var, sample(post, generator))

    def imagine(self, start: VRKNState, policy: Policy, horizon: int,
                generator: torch.Generator | None = None) -> Imagination:
        """Sampled rollout z' = A z + b + sqrt(q) eps, with the mean propagated alongside
        (m' = A m + b) as the transition network's linearisation point."""
        state = start
        states, actions = [start], []
        for _ in range(horizon):
            action = policy(self.features(state))
            params = self.transition(state.mean, action, self.dropout_active, generator)
            z = sample(transition_given(params, state.sample), generator)
            mean = params.a * state.mean + params.b
            state = VRKNState(mean, params.a.square() * state.var + params.q, z)
            states.append(state)
            actions.append(action)
        stacked = stack_states(states)
        return Imagination(self.features(stacked), torch.stack(actions), stacked)
