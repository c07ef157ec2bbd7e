"""Recurrent RL^2 policies: step/unroll agreement, state resets, Box heads, bad input."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

from meta_rl.policies import distributions as D
from meta_rl.policies.recurrent import (
    EpisodicMemoryPolicy,
    GRUPolicy,
    MemoryPolicy,
    NTMPolicy,
    index_state,
)

DISCRETE = gym.spaces.Discrete(5)
BOX = gym.spaces.Box(-0.1, 0.1, (2,))


def _policies(space):
    with torch.random.fork_rng(devices=[]):  # fixed weights, global RNG untouched
        torch.manual_seed(0)
        return _build(space)


def _build(space):
    return [
        GRUPolicy(7, space, hidden_size=16),
        GRUPolicy(7, space, hidden_size=16, embed=8),
        GRUPolicy(7, space, hidden_size=16, separate_critic=True, action_reward=(2, 5, 5)),
        EpisodicMemoryPolicy(7, space, hidden_size=16, slots=8, width=4, heads=2),
        EpisodicMemoryPolicy(7, space, 16, slots=4, width=4, heads=1, action_reward=(2, 5, 5)),
        EpisodicMemoryPolicy(7, space, 16, slots=8, width=4, heads=2, transition_keys=True),
        MemoryPolicy(7, space, hidden_size=16, slots=8, width=4, heads=2),
        MemoryPolicy(7, space, hidden_size=16, slots=8, width=4, heads=1, controller="lstm"),
        NTMPolicy(7, space, hidden_size=16, slots=8, width=4, read_heads=2),
        NTMPolicy(7, space, hidden_size=16, slots=8, width=4, controller="lstm", write_heads=2),
    ]


@pytest.mark.parametrize("space", [DISCRETE, BOX], ids=["discrete", "box"])
def test_unroll_equals_stepping_and_resets_restart(space):
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(6, 3, 7, generator=g)
    starts = torch.zeros(6, 3, dtype=torch.bool)
    starts[3, 1] = True
    for policy in _policies(space):
        state = policy.initial_state(3)
        heads, values = [], []
        s = state
        for t in range(6):
            s = policy.reset_state(s, starts[t])
            h, v, s = policy.step(obs[t], s)
            heads.append(h)
            values.append(v)
        head_u, value_u, _ = policy.unroll(obs, state, starts)
        torch.testing.assert_close(head_u, torch.stack(heads), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(value_u, torch.stack(values), rtol=1e-5, atol=1e-6)
        assert head_u.shape == (6, 3, D.head_size(space)) and value_u.shape == (6, 3)
        # Row 1 restarted at t=3: its outputs from there equal a fresh unroll of obs[3:].
        fresh, fresh_v, _ = policy.unroll(obs[3:, 1:2], policy.initial_state(1))
        torch.testing.assert_close(head_u[3:, 1:2], fresh, rtol=1e-5, atol=1e-6)
        # ...and without the restart they differ: the memory carries information.
        carried, _, _ = policy.unroll(obs, state)
        assert not torch.allclose(carried[3:, 1], head_u[3:, 1])


def test_index_state_and_act_shapes():
    for policy in _policies(BOX):
        state = policy.initial_state(4)
        action, logp, value, state = policy.act(torch.randn(4, 7), state, torch.Generator())
        assert action.shape == (4, 2) and logp.shape == (4,) and value.shape == (4,)
        sub = index_state(state, torch.tensor([0, 2]))
        head, _, _ = policy.step(torch.zeros(2, 7), sub)
        assert head.shape == (2, 2)
        assert policy.log_std is not None and policy.log_std.shape == (2,)
    assert GRUPolicy(7, DISCRETE).log_std is None


@pytest.mark.parametrize("kind", [MemoryPolicy, NTMPolicy])
def test_gradients_flow_through_the_memory(kind):
    policy = kind(7, DISCRETE, hidden_size=8, slots=4, width=4)
    head, value, _ = policy.unroll(torch.randn(5, 2, 7), policy.initial_state(2))
    (head.sum() + value.sum()).backward()
    assert policy.core.interface.weight.grad.abs().sum() > 0
    assert policy.core.controller.weight_ih.grad.abs().sum() > 0


def test_episodic_fast_unroll_equals_stepping():
    """The fused path (fresh state, trial within the slots) equals stepping one by one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        policy = EpisodicMemoryPolicy(
            7, DISCRETE, hidden_size=8, slots=10, width=4, heads=2, transition_keys=True
        )
    obs = torch.randn(10, 3, 7, generator=torch.Generator().manual_seed(2))
    head_u, value_u, final = policy.unroll(obs, policy.initial_state(3))
    state, heads = policy.initial_state(3), []
    for t in range(10):
        head, _, state = policy.step(obs[t], state)
        heads.append(head)
    torch.testing.assert_close(head_u, torch.stack(heads), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(final.keys, state.keys, rtol=1e-5, atol=1e-6)
    assert final.count.tolist() == [10, 10, 10]
    (head_u.sum() + value_u.sum()).backward()
    assert policy.interface.weight.grad.abs().sum() > 0


def test_action_reward_input_appends_per_action_rewards():
    policy = GRUPolicy(7, DISCRETE, hidden_size=4, action_reward=(2, 5, 5))
    obs = torch.tensor([[9.0, 9.0, 0.0, 1.0, 0.0, 0.5, 1.0]])
    torch.testing.assert_close(policy._augment(obs)[0, 7:], torch.tensor([0.0, 0.5, 0.0]))
    assert policy.gru.input_size == 10


def test_bad_input_is_named():
    policy = GRUPolicy(7, DISCRETE, hidden_size=4)
    with pytest.raises(ValueError, match="obs_size=7"):
        policy.step(torch.zeros(2, 6), policy.initial_state(2))
    with pytest.raises(ValueError, match=r"\[T, batch"):
        policy.unroll(torch.zeros(2, 7), policy.initial_state(2))
    with pytest.raises(ValueError, match="hidden_size=0"):
        GRUPolicy(7, DISCRETE, hidden_size=0)
    with pytest.raises(ValueError, match="not supported"):
        GRUPolicy(7, gym.spaces.MultiBinary(3))
    with pytest.raises(ValueError, match="action_reward=.*obs_size=7"):
        GRUPolicy(7, DISCRETE, action_reward=(5, 9, 6))
    with pytest.raises(ValueError, match="slots=0"):
        EpisodicMemoryPolicy(7, DISCRETE, slots=0)
