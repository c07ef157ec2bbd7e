"""meta_rl.core.functional and meta_rl.core.inner: batched forward, params helpers, inner step."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from meta_rl.core import (
    batched_call,
    expand_params,
    get_params,
    inner_update,
    linear_chain,
    put_params,
    stack_params,
    unstack_params,
)

T, N = 4, 6


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)
    ).double()


class TinyConv(nn.Module):
    """Not a linear chain: batched_call must take the vmap path."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.head = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


def perturbed(params: dict, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        k: v.detach().expand(T, *v.shape)
        + 0.1 * torch.randn(T, *v.shape, generator=g, dtype=v.dtype)
        for k, v in params.items()
    }


@pytest.mark.parametrize("make", [mlp, lambda: TinyConv().double()])
def test_batched_call_equals_per_task_functional_call(make):
    model = make()
    stacked = perturbed(get_params(model), seed=2)
    g = torch.Generator().manual_seed(3)
    shape = (T, N, 3) if isinstance(model, nn.Sequential) else (T, N, 1, 4, 4)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    out = batched_call(model, stacked, x)
    for t in range(T):
        ref = functional_call(model, {k: v[t] for k, v in stacked.items()}, (x[t],))
        torch.testing.assert_close(out[t], ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stacked", [True, False])
@pytest.mark.parametrize("ends_with_tanh", [False, True])
def test_tanh_layers_run_as_folded_sigmoids_with_the_same_derivatives(stacked, ends_with_tanh):
    """batched_call runs Linear -> Tanh as sigmoid(2z) with the affine maps folded into the
    weights (tanh z = 2 sigmoid(2z) - 1): the same values, gradients and second derivatives as
    the module itself (float64)."""
    torch.manual_seed(7)
    layers = [nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2)]
    model = nn.Sequential(*(layers[:4] if ends_with_tanh else layers)).double()
    base = get_params(model, detach=True)
    params = perturbed(base, seed=8) if stacked else base
    params = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    x = torch.randn(T, N, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    out = batched_call(model, params, x)
    ref = torch.stack(
        [
            functional_call(model, {k: v[t] if stacked else v for k, v in params.items()}, (x[t],))
            for t in range(T)
        ]
    )
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    leaves = list(params.values())
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    g_ours = torch.autograd.grad((out**2 * w).sum(), leaves, create_graph=True)
    g_ref = torch.autograd.grad((ref**2 * w).sum(), leaves, create_graph=True)
    vs = [torch.randn_like(v) for v in leaves]
    hv_ours = torch.autograd.grad(g_ours, leaves, grad_outputs=vs)
    hv_ref = torch.autograd.grad(g_ref, leaves, grad_outputs=vs)
    for name, a, b, c, d in zip(params, g_ours, g_ref, hv_ours, hv_ref, strict=True):
        assert b.abs().sum() > 0 and d.abs().sum() > 0, name
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
        torch.testing.assert_close(c, d, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("make", [mlp, lambda: TinyConv().double()])
def test_batched_call_mixes_shared_and_stacked_params(make):
    model = make()
    params = get_params(model, detach=True)
    last = list(params)[-2:]  # the head: weight and bias of the last Linear
    mixed = {**params, **perturbed({k: params[k] for k in last}, seed=4)}
    shape = (T, N, 3) if isinstance(model, nn.Sequential) else (T, N, 1, 4, 4)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = batched_call(model, mixed, x)
    for t in range(T):
        ref = functional_call(
            model, {k: (v[t] if k in last else v) for k, v in mixed.items()}, (x[t],)
        )
        torch.testing.assert_close(out[t], ref, rtol=1e-12, atol=1e-12)


def test_linear_chain_detection():
    assert linear_chain(mlp()) is not None
    assert linear_chain(TinyConv()) is None
    assert linear_chain(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))) is None


def test_batched_call_rejects_bad_params():
    model = mlp()
    params = get_params(model, detach=True)
    x = torch.zeros(T, N, 3, dtype=torch.float64)
    with pytest.raises(KeyError, match="missing"):
        batched_call(model, {k: v for k, v in params.items() if k != "0.bias"}, x)
    bad = {**params, "0.weight": torch.zeros(T, 5, 3, dtype=torch.float64)}
    with pytest.raises(ValueError, match="0.weight"):
        batched_call(model, bad, x)
    with pytest.raises(ValueError, match="tasks"):
        batched_call(model, expand_params(params, T + 1), x)
    with pytest.raises(ValueError, match="last dimension must be 3"):
        batched_call(model, params, torch.zeros(T, N, 4, dtype=torch.float64))


def test_params_helpers_round_trip():
    model = mlp()
    params = get_params(model, detach=True)
    stacked = expand_params(params, 3)
    assert all(v.shape == (3, *params[k].shape) for k, v in stacked.items())
    per_task = unstack_params(perturbed(params, seed=6))
    again = stack_params(per_task)
    for t, p in enumerate(per_task):
        for k in p:
            assert torch.equal(again[k][t], p[k])
    new = {k: v + 1 for k, v in params.items()}
    put_params(model, new)
    for k, v in get_params(model).items():
        assert torch.equal(v.detach(), new[k])
    with pytest.raises(KeyError, match="nope"):
        get_params(model, ["nope"])
    with pytest.raises(ValueError, match="shape"):
        put_params(model, {"0.bias": torch.zeros(3)})


def _linreg_loss(params, data):
    x, y = data  # x [T, N, D], y [T, N]
    pred = torch.einsum("tnd,td->tn", x, params["w"]) + params["b"][:, None]
    return (pred - y).pow(2).mean(dim=1)


def _linreg_data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, N, 3, generator=g, dtype=torch.float64)
    y = torch.randn(T, N, generator=g, dtype=torch.float64)
    w = torch.randn(T, 3, generator=g, dtype=torch.float64)
    b = torch.randn(T, generator=g, dtype=torch.float64)
    return x, y, w, b


def _hand_step(x, y, w, b, lr):
    r = torch.einsum("tnd,td->tn", x, w) + b[:, None] - y
    gw = 2.0 / N * torch.einsum("tn,tnd->td", r, x)
    gb = 2.0 / N * r.sum(dim=1)
    return w - lr * gw, b - lr * gb


def test_one_inner_step_equals_hand_computation():
    x, y, w, b = _linreg_data()
    out = inner_update(_linreg_loss, {"w": w, "b": b}, (x, y), lr=0.1, steps=1)
    w1, b1 = _hand_step(x, y, w, b, 0.1)
    torch.testing.assert_close(out["w"], w1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["b"], b1, rtol=1e-12, atol=1e-12)
    # three steps, per-parameter learning rates (Meta-SGD) and a partial adapt set
    lrs = {"w": torch.tensor([0.1, 0.2, 0.05], dtype=torch.float64), "b": torch.tensor(0.3)}
    out = inner_update(_linreg_loss, {"w": w, "b": b}, (x, y), lr=lrs, steps=3, adapt=["w"])
    ww = w
    for _ in range(3):
        r = torch.einsum("tnd,td->tn", x, ww) + b[:, None] - y
        ww = ww - lrs["w"] * (2.0 / N * torch.einsum("tn,tnd->td", r, x))
    torch.testing.assert_close(out["w"], ww, rtol=1e-12, atol=1e-12)
    assert out["b"] is b


def test_func_mode_matches_autograd_mode_under_vmap():
    x, y, w, b = _linreg_data(1)

    def one_task(p, data):
        xt, yt = data
        return (xt @ p["w"] + p["b"] - yt).pow(2).mean()

    def adapt(w_t, b_t, x_t, y_t):
        out = inner_update(one_task, {"w": w_t, "b": b_t}, (x_t, y_t), 0.1, steps=2, mode="func")
        return out["w"], out["b"]

    vw, vb = torch.func.vmap(adapt)(w, b, x, y)
    ref = inner_update(_linreg_loss, {"w": w, "b": b}, (x, y), 0.1, steps=2)
    torch.testing.assert_close(vw, ref["w"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vb, ref["b"], rtol=1e-12, atol=1e-12)


def test_inner_update_rejects_bad_arguments():
    x, y, w, b = _linreg_data()
    params = {"w": w, "b": b}
    with pytest.raises(ValueError, match="steps"):
        inner_update(_linreg_loss, params, (x, y), 0.1, steps=-1)
    with pytest.raises(ValueError, match="mode"):
        inner_update(_linreg_loss, params, (x, y), 0.1, mode="jit")
    with pytest.raises(KeyError, match="head"):
        inner_update(_linreg_loss, params, (x, y), 0.1, adapt=["head"])
    with pytest.raises(KeyError, match="'b'"):
        inner_update(_linreg_loss, params, (x, y), {"w": torch.tensor(0.1)})


def test_inner_update_works_under_no_grad_for_evaluation():
    x, y, w, b = _linreg_data()
    with torch.no_grad():
        out = inner_update(_linreg_loss, {"w": w, "b": b}, (x, y), 0.1, first_order=True)
    w1, _ = _hand_step(x, y, w, b, 0.1)
    torch.testing.assert_close(out["w"].detach(), w1, rtol=1e-12, atol=1e-12)
