"""The state head: a probe that leaves the world model untouched, trained in the update,
and the privileged state never an input. Exact comparisons (bit-identical tensors)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from estimator.state_head import StateHead, StateHeadConfig, fit_scaling
from tests.training.conftest import tiny_world_model
from tests.world_models.conftest import synthetic_data
from training.agent import AgentPolicy
from training.config import DreamerConfig
from training.dreamer_agent import DreamerAgent
from training.replay import Normalizer

NAMES = ("a", "b", "c", "d")
MODELS = ["vrkn", "rssm", "smooth_rssm", "mcd_rssm", "vrkn_no_dropout"]


def _agents(name: str, joint: bool = False):
    torch.manual_seed(0)
    plain = DreamerAgent(tiny_world_model(name, action_dim=2, proprio=3),
                         DreamerConfig(hidden=16, layers=2, horizon=3))
    probed = copy.deepcopy(plain)
    torch.manual_seed(1)
    probed.attach_state_head(StateHead(probed.model.feature_dim, NAMES,
                                       StateHeadConfig(hidden=16, joint=joint)))
    return plain, probed


def _batch(agent, seed=0):
    data = synthetic_data("fusion", batch=2, steps=5, seed=seed)
    state = torch.randn(2, 5, len(NAMES), generator=torch.Generator().manual_seed(seed + 7))
    return agent.model.to_batch(data), state


def _world_model_grads(agent, batch, state, seed):
    agent.model.set_dropout(True)
    loss, _, _ = agent.model.loss_and_posterior(batch, torch.Generator().manual_seed(seed))
    aux, _ = agent.joint_state_loss(batch, torch.Generator().manual_seed(seed + 1), state)
    if aux is not None:
        loss = loss + aux
    agent.model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in agent.model.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", MODELS)
def test_probe_leaves_world_model_gradients_and_updates_bit_identical(name):
    plain, probed = _agents(name)
    batch, state = _batch(plain)
    g_plain = _world_model_grads(plain, batch, None, 3)
    g_probe = _world_model_grads(probed, batch, state, 3)
    assert len(g_plain) == len(g_probe) > 0
    assert all(torch.equal(a, b) for a, b in zip(g_plain, g_probe, strict=True))
    # A whole update (world model, probe, actor, critic): every shared parameter equal.
    head_before = [p.clone() for p in probed.state_head.parameters()]
    m1 = plain.update(batch, torch.Generator().manual_seed(5))
    m2 = probed.update(batch, torch.Generator().manual_seed(5), state)
    for (k1, a), (k2, b) in zip(plain.state_dict().items(),
                                ((k, v) for k, v in probed.state_dict().items()
                                 if not k.startswith("state_head.")), strict=True):
        assert k1 == k2 and torch.equal(a, b), k1
    assert m1["wm/loss"] == m2["wm/loss"]
    assert "state/nll" in m2 and "state/nll" not in m1
    # ... and the probe itself did learn something.
    assert any(not torch.equal(a, b) for a, b in zip(head_before,
                                                      probed.state_head.parameters(),
                                                      strict=True))


def test_joint_option_does_change_the_world_model_gradients():
    plain, joint = _agents("vrkn", joint=True)
    batch, state = _batch(plain)
    g_plain = _world_model_grads(plain, batch, None, 3)
    g_joint = _world_model_grads(joint, batch, state, 3)
    assert any(not torch.equal(a, b) for a, b in zip(g_plain, g_joint, strict=True))
    metrics = joint.update(batch, torch.Generator().manual_seed(5), state)
    assert "state/nll" in metrics


@pytest.mark.parametrize("name", ["vrkn", "rssm"])
def test_scrambled_state_changes_no_belief_and_no_action(name):
    _, agent = _agents(name)
    data = synthetic_data("fusion", batch=2, steps=5)
    rng = np.random.default_rng(0)
    beliefs = []
    for scramble in (False, True):
        d = {k: v.clone() for k, v in data.items()}
        d["state"] = torch.as_tensor(rng.normal(size=(2, 5, 4)) * (1e6 if scramble else 1))
        batch = agent.model.to_batch(d)
        with torch.no_grad():
            beliefs.append(agent.model.observe(batch, torch.Generator().manual_seed(2)))
    assert all(torch.equal(a, b) for a, b in zip(*beliefs, strict=True))
    # Acting online: the same observations with a scrambled state give the same actions.
    normalizer = Normalizer({})
    actions = []
    for scramble in (False, True):
        policy = AgentPolicy(agent, normalizer, torch.device("cpu"), True,
                             torch.Generator().manual_seed(4))
        out = []
        for t in range(5):
            obs = {k: v[:, t].numpy() for k, v in data.items() if k != "action"}
            obs["is_first"] = np.full(2, t == 0)
            obs["state"] = rng.normal(size=(2, 4)) * (1e6 if scramble else 0)
            out.append(policy(obs))
        actions.append(np.stack(out))
    np.testing.assert_array_equal(actions[0], actions[1])


def test_head_outputs_physical_units_from_normalised_training():
    head = StateHead(3, ("x", "y"))
    states = torch.tensor([[10.0, -1.0], [12.0, -3.0], [14.0, -2.0]])
    loc, scale = fit_scaling(states)
    head.set_scaling(loc, scale)
    with torch.no_grad():
        for p in head.net[-1].parameters():
            p.zero_()  # normalised mean 0 and std softplus(0) + min_std
    mean, var = head(torch.zeros(1, 3))
    torch.testing.assert_close(mean[0], loc)
    std_n = torch.nn.functional.softplus(torch.tensor(0.0)) + head.config.min_std
    torch.testing.assert_close(var[0], (scale * std_n) ** 2)
    with pytest.raises(ValueError, match="positive stds"):
        head.set_scaling(loc, torch.zeros(2))
    with pytest.raises(ValueError, match="unique"):
        StateHead(3, ("x", "x"))
