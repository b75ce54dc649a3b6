"""The PlaNet agent (Hafner et al. 2019): world-model training only; acting by CEM planning
(``training.cem.cem_plan``) from the filtered state of each environment."""

from __future__ import annotations

import torch
from torch import Tensor

from estimator.batch import SequenceBatch
from estimator.world_model import State, WorldModel
from training.agent import Agent, check_finite
from training.config import PlanetConfig


class PlanetAgent(Agent):
    def __init__(self, model: WorldModel, config: PlanetConfig | None = None):
        super().__init__()
        config = config or PlanetConfig()
        self.config = config
        self.model = model
        self.model_opt = torch.optim.Adam(model.parameters(), lr=config.model_lr, eps=config.eps)

    def optimisers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.model_opt}

    def update(self, batch: SequenceBatch, generator: torch.Generator,
               state: Tensor | None = None) -> dict[str, float]:
        self.model.set_dropout(True)
        loss, wm = self.model.loss(batch, generator)
        check_finite("world-model loss", loss, wm)
        aux, aux_metrics = self.joint_state_loss(batch, generator, state)
        if aux is not None:
            loss = loss + aux
        self.model_opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = self.step("world-model", self.model_opt, list(self.model.parameters()),
                            self.config.grad_clip)
        out = {f"wm/{k}": v for k, v in wm.items()}
        out["wm/grad_norm"] = norm
        out.update(aux_metrics)
        if aux is not None:
            assert self.state_head is not None
            self.step("state-head", self.state_opt, list(self.state_head.parameters()),
                         self.config.grad_clip)
        elif state is not None and self.state_head is not None:
            with torch.no_grad():
                out.update(self.state_probe_update(self.model.observe(batch, generator), state))
        return out

    def act(self, state: State, explore: bool, generator: torch.Generator) -> Tensor:
        from training.cem import cem_plan

        c = self.config
        actions = []
        rows = state[0].shape[0]
        for i in range(rows):
            single = type(state)(*(x[i:i + 1] for x in state))
            actions.append(cem_plan(self.model, single, action_dim=self.model.action_dim,
                                    horizon=c.horizon, iterations=c.iterations,
                                    candidates=c.candidates, top_k=c.top_k,
                                    generator=generator))
        action = torch.stack(actions)
        if explore:
            noise = torch.randn(action.shape, generator=generator, device=action.device)
            action = (action + c.expl_noise * noise).clamp(-1.0, 1.0)
        return action
