import numpy as np
import torch

from meta_rl.rl.returns import discounted_returns, fit_linear_baseline, gae, linear_features


def naive_returns(r, d, gamma):
    out, g = np.zeros_like(r), np.zeros(r.shape[1])
    for t in reversed(range(len(r))):
        g = r[t] + gamma * (1 - d[t]) * g
        out[t] = g
    return out


def test_discounted_returns_cut_at_episode_ends():
    gen = torch.Generator().manual_seed(0)
    r = torch.rand(7, 3, generator=gen, dtype=torch.float64)
    d = torch.rand(7, 3, generator=gen) < 0.3
    got = discounted_returns(r, d, 0.9)
    assert np.allclose(got.numpy(), naive_returns(r.numpy(), d.numpy().astype(float), 0.9))
    # Hand check of one column: r = 1, 1, 1 with an end after step 0.
    ones = torch.ones(3, 1, dtype=torch.float64)
    ends = torch.tensor([[1.0], [0.0], [0.0]])
    assert discounted_returns(ones, ends, 0.5).flatten().tolist() == [1.0, 1.5, 1.0]


def test_gae_with_lambda_one_is_return_minus_value_and_lambda_zero_is_td():
    gen = torch.Generator().manual_seed(1)
    T, N, gamma = 6, 4, 0.95
    r = torch.rand(T, N, generator=gen, dtype=torch.float64)
    v = torch.rand(T, N, generator=gen, dtype=torch.float64)
    nv = torch.cat([v[1:], torch.zeros(1, N, dtype=torch.float64)])  # terminal after the last step
    term = torch.zeros(T, N)
    term[-1] = 1
    adv1 = gae(r, v, nv, term, term, gamma, 1.0)
    assert torch.allclose(adv1, discounted_returns(r, term, gamma) - v)
    adv0 = gae(r, v, nv, term, term, gamma, 0.0)
    assert torch.allclose(adv0, r + gamma * (1 - term) * nv - v)


def test_gae_bootstraps_on_truncation_but_not_on_termination():
    r = torch.zeros(2, 2, dtype=torch.float64)
    v = torch.zeros(2, 2, dtype=torch.float64)
    nv = torch.full((2, 2), 10.0, dtype=torch.float64)
    done = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    term = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # column 0 terminated, column 1 truncated
    adv = gae(r, v, nv, term, done, 0.9, 0.95)
    assert adv[:, 0].tolist() == [0.0, 0.0]
    assert torch.allclose(adv[:, 1], torch.tensor([9.0, 9.0], dtype=torch.float64))


def test_linear_baseline_fits_each_task_separately():
    # Two tasks whose returns are different exact linear functions of the features: the fit
    # recovers each (a shared fit could not).
    gen = torch.Generator().manual_seed(2)
    T, E, D = 20, 3, 2
    obs = torch.rand(T, 2 * E, D, generator=gen, dtype=torch.float64)
    t = torch.arange(T, dtype=torch.float64).unsqueeze(1).expand(T, 2 * E)
    feats = linear_features(obs, t)
    w0 = torch.randn(feats.shape[-1], generator=gen, dtype=torch.float64)
    w1 = torch.randn(feats.shape[-1], generator=gen, dtype=torch.float64)
    y = torch.cat([feats[:, :E] @ w0, feats[:, E:] @ w1], dim=1)
    pred = fit_linear_baseline(obs, y, t, num_tasks=2, reg=1e-10)
    assert torch.allclose(pred, y, atol=1e-5)
    shared = fit_linear_baseline(obs, y, t, num_tasks=1, reg=1e-10)
    assert not torch.allclose(shared, y, atol=1e-2)


def test_linear_baseline_ignores_masked_steps():
    T, N = 10, 2
    obs = torch.zeros(T, N, 1, dtype=torch.float64)
    t = torch.arange(T, dtype=torch.float64).unsqueeze(1).expand(T, N)
    y = torch.ones(T, N, dtype=torch.float64)
    mask = torch.ones(T, N)
    y[5:] = 1e6  # garbage after the episodes ended
    mask[5:] = 0
    pred = fit_linear_baseline(obs, y, t, num_tasks=1, mask=mask, reg=1e-8)
    assert torch.allclose(pred[:5], torch.ones(5, N, dtype=torch.float64), atol=1e-4)


def test_linear_baseline_survives_a_singular_fit():
    # Constant observations and one time step make the feature Gram matrix singular: with no
    # ridge the plain solve raises; the fit retries with a growing ridge and stays finite.
    T, N = 1, 4
    obs = torch.zeros(T, N, 3)
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    timestep = torch.zeros(T, N)
    x = linear_features(obs, timestep, 100.0).flatten(0, 1)
    gram = x.T @ x
    assert torch.linalg.matrix_rank(gram) < gram.shape[0]
    pred = fit_linear_baseline(obs, returns, timestep, num_tasks=2, reg=0.0)
    assert torch.isfinite(pred).all()
    # Each task's prediction is close to its mean return (the only thing constant features fit).
    assert torch.allclose(pred, torch.tensor([[1.5, 1.5, 3.5, 3.5]]), atol=0.05)
