"""meta_rl.policies: distribution functions vs torch.distributions, vmap, MLP policies."""

import gymnasium as gym
import pytest
import torch
from torch.func import functional_call, vmap

from meta_rl.core import expand_params
from meta_rl.policies import (
    CategoricalMLPPolicy,
    GaussianMLPPolicy,
    make_mlp_policy,
)
from meta_rl.policies import distributions as D

BOX = gym.spaces.Box(-1.0, 1.0, (3,))
DISC = gym.spaces.Discrete(4, start=1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_head_size_and_unsupported_spaces():
    assert D.head_size(BOX) == 3
    assert D.head_size(DISC) == 4
    with pytest.raises(ValueError, match="must be 1-D"):
        D.head_size(gym.spaces.Box(-1, 1, (2, 2)))
    with pytest.raises(ValueError, match="MultiBinary"):
        D.head_size(gym.spaces.MultiBinary(3))


def test_gaussian_matches_torch_distributions():
    g = gen()
    mean, log_std = torch.randn(5, 3, generator=g), torch.randn(3, generator=g) * 0.3
    mean_q, log_std_q = torch.randn(5, 3, generator=g), torch.randn(3, generator=g) * 0.3
    p = torch.distributions.Normal(mean, log_std.exp())
    q = torch.distributions.Normal(mean_q, log_std_q.exp())
    a = D.sample(BOX, mean, log_std, g)
    assert a.shape == (5, 3)
    torch.testing.assert_close(D.log_prob(BOX, mean, log_std, a), p.log_prob(a).sum(-1))
    torch.testing.assert_close(D.entropy(BOX, mean, log_std), p.entropy().sum(-1))
    kl = D.kl(BOX, mean, log_std, mean_q, log_std_q)
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(p, q).sum(-1))
    assert torch.equal(D.mode(BOX, mean), mean)
    with pytest.raises(ValueError, match="log_std"):
        D.log_prob(BOX, mean, None, a)


def test_categorical_matches_torch_distributions():
    g = gen(1)
    logits, logits_q = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    p = torch.distributions.Categorical(logits=logits)
    q = torch.distributions.Categorical(logits=logits_q)
    a = D.sample(DISC, logits, None, g)
    assert a.dtype == torch.long and a.min() >= 1 and a.max() <= 4  # Discrete(start=1)
    torch.testing.assert_close(D.log_prob(DISC, logits, None, a), p.log_prob(a - 1))
    torch.testing.assert_close(D.entropy(DISC, logits, None), p.entropy())
    torch.testing.assert_close(
        D.kl(DISC, logits, None, logits_q, None), torch.distributions.kl_divergence(p, q)
    )
    assert torch.equal(D.mode(DISC, logits), logits.argmax(-1) + 1)


def test_gumbel_sampling_has_the_right_frequencies():
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4])).expand(40_000, 4)
    a = D.sample(gym.spaces.Discrete(4), logits, None, gen(2))
    freq = torch.bincount(a, minlength=4).float() / a.numel()
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.01, rtol=0)


def test_sampling_is_seeded_and_works_under_vmap():
    mean, log_std = torch.zeros(7, 3), torch.zeros(3)
    assert torch.equal(D.sample(BOX, mean, log_std, gen(3)), D.sample(BOX, mean, log_std, gen(3)))
    assert not torch.equal(
        D.sample(BOX, mean, log_std, gen(3)), D.sample(BOX, mean, log_std, gen(4))
    )
    # sample_from_noise / log_prob / kl run per task under vmap and agree with the batched call
    heads = torch.randn(2, 7, 3, generator=gen(5))
    eps = D.noise(BOX, (2, 7), gen(6))
    a = vmap(D.sample_from_noise, in_dims=(None, 0, None, 0))(BOX, heads, log_std, eps)
    torch.testing.assert_close(a, D.sample_from_noise(BOX, heads, log_std, eps))
    lp = vmap(D.log_prob, in_dims=(None, 0, None, 0))(BOX, heads, log_std, a)
    torch.testing.assert_close(lp, D.log_prob(BOX, heads, log_std, a))
    u = D.noise(DISC, (2, 7), gen(7))
    logits = torch.randn(2, 7, 4, generator=gen(8))
    ad = vmap(D.sample_from_noise, in_dims=(None, 0, None, 0))(DISC, logits, None, u)
    assert torch.equal(ad, D.sample_from_noise(DISC, logits, None, u))


def test_policy_init_is_seeded_and_leaves_global_rng_alone():
    obs_space = gym.spaces.Box(-1, 1, (2,))
    state = torch.random.get_rng_state()
    p1 = GaussianMLPPolicy(obs_space, BOX, hidden=(8, 8), generator=gen(0))
    assert torch.equal(state, torch.random.get_rng_state())
    p2 = GaussianMLPPolicy(obs_space, BOX, hidden=(8, 8), generator=gen(0))
    p3 = GaussianMLPPolicy(obs_space, BOX, hidden=(8, 8), generator=gen(1))
    assert all(torch.equal(a, b) for a, b in zip(p1.parameters(), p2.parameters(), strict=True))
    assert not torch.equal(p1.net[0].weight, p3.net[0].weight)


def test_policy_types_and_errors():
    obs_space = gym.spaces.Box(-1, 1, (2,))
    assert isinstance(make_mlp_policy(obs_space, DISC), CategoricalMLPPolicy)
    assert isinstance(make_mlp_policy(obs_space, BOX), GaussianMLPPolicy)
    with pytest.raises(ValueError, match="Box action space"):
        GaussianMLPPolicy(obs_space, DISC)
    with pytest.raises(ValueError, match="Discrete action space"):
        CategoricalMLPPolicy(obs_space, BOX)
    with pytest.raises(ValueError, match="activation='sigmoid'"):
        make_mlp_policy(obs_space, BOX, activation="sigmoid")
    with pytest.raises(ValueError, match="one-hot"):
        make_mlp_policy(gym.spaces.Discrete(3), BOX)


@pytest.mark.parametrize("space", [BOX, DISC], ids=["gaussian", "categorical"])
def test_stacked_params_equal_a_per_task_loop(space):
    """head() with stacked per-task params == each task's functional_call on its own obs."""
    policy = make_mlp_policy(gym.spaces.Box(-1, 1, (2,)), space, hidden=(16, 16), generator=gen())
    T, N = 3, 5
    params = {
        k: v + 0.1 * torch.randn(T, *v.shape, generator=gen(9))
        for k, v in policy.params(True).items()
    }
    obs = torch.randn(T, N, 2, generator=gen(10))
    head, log_std = policy.head(params, obs)
    for t in range(T):
        p_t = {k: v[t] for k, v in params.items()}
        ref = functional_call(policy, p_t, (obs[t],))
        if isinstance(space, gym.spaces.Box):
            torch.testing.assert_close(head[t], ref.base_dist.loc)
            torch.testing.assert_close(log_std[t].expand(N, -1), ref.base_dist.scale.log())
            a = ref.sample()
            torch.testing.assert_close(D.log_prob(space, head[t], log_std[t], a), ref.log_prob(a))
        else:
            torch.testing.assert_close(torch.log_softmax(head[t], -1), ref.logits)
    # shared (unstacked) params broadcast to every task
    shared_head, _ = policy.head(expand_params(policy.params(True), T), obs)
    torch.testing.assert_close(shared_head[1], policy.head(policy.params(True), obs[1])[0])


def test_gradients_reach_every_task_separately():
    policy = make_mlp_policy(gym.spaces.Box(-1, 1, (2,)), BOX, hidden=(8,), generator=gen())
    params = {
        k: v.detach().expand(2, *v.shape).clone().requires_grad_(True)
        for k, v in policy.params().items()
    }
    obs = torch.randn(2, 4, 2, generator=gen(11))
    act = torch.randn(2, 4, 3, generator=gen(12))
    logp = policy.log_prob(params, obs, act)
    logp[0].sum().backward()  # task 0 only
    for v in params.values():
        assert v.grad[0].abs().sum() > 0
        assert v.grad[1].abs().sum() == 0
