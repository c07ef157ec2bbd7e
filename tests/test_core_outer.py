"""meta_rl.core.outer: batched meta-gradients equal a per-task autograd loop."""

import pytest
import torch
from torch import nn
from torch.func import functional_call

from meta_rl.core import (
    adaptation_scores,
    batched_call,
    get_params,
    init_metasgd_lrs,
    maml_loss,
    maml_loss_vmapped,
    reptile_direction,
    reptile_update_,
)

T, K, Q, LR = 5, 7, 9, 0.05


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    ).double()


MODEL = make_model()


def loss_fn(params, data):  # stacked params -> [T]
    x, y = data
    return (batched_call(MODEL, params, x) - y).pow(2).mean(dim=(1, 2))


def task_loss(params, data):  # one task's params -> scalar
    x, y = data
    return (functional_call(MODEL, params, (x,)) - y).pow(2).mean()


def tasks(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(T, K, 2, generator=g, dtype=torch.float64)
    xq = torch.randn(T, Q, 2, generator=g, dtype=torch.float64)
    a = torch.randn(T, 1, 2, generator=g, dtype=torch.float64)
    return (xs, torch.sin(xs * a).sum(-1, keepdim=True)), (
        xq,
        torch.sin(xq * a).sum(-1, keepdim=True),
    )


def meta_params():
    return {k: v.detach().clone().requires_grad_(True) for k, v in get_params(MODEL).items()}


def loop_meta_grad(params, support, query, lr, steps, first_order=False, adapt=None):
    """Reference: one task at a time, explicit torch.autograd.grad inner steps."""
    names = list(params) if adapt is None else adapt
    total = 0.0
    for t in range(T):
        p = dict(params)
        for _ in range(steps):
            loss = task_loss(p, (support[0][t], support[1][t]))
            grads = torch.autograd.grad(loss, [p[k] for k in names], create_graph=not first_order)
            p = {
                **p,
                **{
                    k: p[k] - (lr[k] if isinstance(lr, dict) else lr) * g
                    for k, g in zip(names, grads, strict=True)
                },
            }
        total = total + task_loss(p, (query[0][t], query[1][t]))
    meta = total / T
    leaves = list(params.values()) + (list(lr.values()) if isinstance(lr, dict) else [])
    return meta, torch.autograd.grad(meta, leaves)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_batched_meta_gradient_equals_per_task_loop(steps, first_order):
    support, query = tasks()
    params = meta_params()
    out = maml_loss(loss_fn, params, support, query, LR, steps, first_order)
    grads = torch.autograd.grad(out.loss, list(params.values()))
    ref_loss, ref = loop_meta_grad(params, support, query, LR, steps, first_order)
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_vmapped_objective_equals_batched_objective():
    support, query = tasks(1)
    params = meta_params()
    a = maml_loss(loss_fn, params, support, query, LR, steps=2)
    b = maml_loss_vmapped(task_loss, params, support, query, LR, steps=2)
    torch.testing.assert_close(a.task_losses, b.task_losses, rtol=1e-10, atol=1e-10)
    ga = torch.autograd.grad(a.loss, list(params.values()))
    gb = torch.autograd.grad(b.loss, list(params.values()))
    for x, y in zip(ga, gb, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-8)


def test_first_order_drops_exactly_the_second_order_terms():
    """FOMAML's meta-gradient is mean_t grad L_q(theta'_t): the query gradient at the adapted
    params, with no Jacobian of the inner step. Second order differs from it by the Hessian
    term -lr * H_s(theta) @ grad L_q(theta'), which we compute explicitly."""
    support, query = tasks(2)
    params = meta_params()
    names = list(params)
    fo = maml_loss(loss_fn, params, support, query, LR, 1, first_order=True)
    so = maml_loss(loss_fn, params, support, query, LR, 1, first_order=False)
    g_fo = torch.autograd.grad(fo.loss, list(params.values()))
    g_so = torch.autograd.grad(so.loss, list(params.values()))
    want_fo = [torch.zeros_like(v) for v in params.values()]
    want_so = [torch.zeros_like(v) for v in params.values()]
    for t in range(T):
        s_loss = task_loss(params, (support[0][t], support[1][t]))
        g_s = torch.autograd.grad(s_loss, list(params.values()), create_graph=True)
        adapted = {
            k: (params[k] - LR * g).detach().requires_grad_(True)
            for k, g in zip(names, g_s, strict=True)
        }
        g_q = torch.autograd.grad(
            task_loss(adapted, (query[0][t], query[1][t])), list(adapted.values())
        )
        # Hessian-vector product H_s @ g_q (double backward of the support loss)
        hvp = torch.autograd.grad(g_s, list(params.values()), grad_outputs=g_q)
        for i in range(len(names)):
            want_fo[i] += g_q[i] / T
            want_so[i] += (g_q[i] - LR * hvp[i]) / T
    for a, b in zip(g_fo, want_fo, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    for a, b in zip(g_so, want_so, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)
    assert max(float((a - b).abs().max()) for a, b in zip(g_fo, g_so, strict=True)) > 1e-6


@pytest.mark.parametrize("first_order", [False, True])
def test_gradients_reach_metasgd_learning_rates(first_order):
    support, query = tasks(3)
    params = meta_params()
    lrs = init_metasgd_lrs(params, LR)
    out = maml_loss(loss_fn, params, support, query, lrs, 2, first_order)
    out.loss.backward()
    ref_loss, ref = loop_meta_grad(params, support, query, lrs, 2, first_order)
    n = len(params)
    for k, r in zip(lrs, ref[n:], strict=True):
        assert lrs[k].grad is not None and float(lrs[k].grad.abs().sum()) > 0
        torch.testing.assert_close(lrs[k].grad, r, rtol=1e-5, atol=1e-8)
    # one step: dL/dlr = mean_t -grad_s(theta) * grad_q(theta'_t) (elementwise), in closed form
    params = meta_params()
    lrs = init_metasgd_lrs(params, LR)
    maml_loss(loss_fn, params, support, query, lrs, 1, first_order).loss.backward()
    want = {k: torch.zeros_like(v) for k, v in params.items()}
    for t in range(T):
        g_s = torch.autograd.grad(
            task_loss(params, (support[0][t], support[1][t])), list(params.values())
        )
        adapted = {
            k: (params[k] - LR * g).detach().requires_grad_(True)
            for k, g in zip(params, g_s, strict=True)
        }
        g_q = torch.autograd.grad(
            task_loss(adapted, (query[0][t], query[1][t])), list(adapted.values())
        )
        for k, a, b in zip(params, g_s, g_q, strict=True):
            want[k] += -a * b / T
    for k in params:
        torch.testing.assert_close(lrs[k].grad, want[k], rtol=1e-8, atol=1e-12)


def test_anil_adapts_only_the_head():
    support, query = tasks(4)
    params = meta_params()
    head = ["4.weight", "4.bias"]
    out = maml_loss(loss_fn, params, support, query, LR, 2, adapt=head)
    for k in params:
        if k in head:
            assert out.adapted[k].shape == (T, *params[k].shape)
        else:
            assert out.adapted[k] is params[k]  # the body is shared, never stacked
    grads = torch.autograd.grad(out.loss, list(params.values()))
    _, ref = loop_meta_grad(params, support, query, LR, 2, adapt=head)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_reptile_update_equals_its_definition():
    support, _ = tasks(5)
    params = meta_params()
    steps, eps = 3, 0.3
    direction = reptile_direction(loss_fn, params, support, LR, steps)
    want = {k: torch.zeros_like(v) for k, v in params.items()}
    for t in range(T):
        p = {k: v.detach().clone() for k, v in params.items()}
        for _ in range(steps):
            p = {k: v.requires_grad_(True) for k, v in p.items()}
            g = torch.autograd.grad(task_loss(p, (support[0][t], support[1][t])), list(p.values()))
            p = {k: (v - LR * gi).detach() for (k, v), gi in zip(p.items(), g, strict=True)}
        for k in params:
            want[k] += (p[k] - params[k].detach()) / T
    before = {k: v.detach().clone() for k, v in params.items()}
    for k in params:
        torch.testing.assert_close(direction[k], want[k], rtol=1e-10, atol=1e-12)
    reptile_update_(params, direction, eps)
    for k in params:
        torch.testing.assert_close(
            params[k].detach(), before[k] + eps * want[k], rtol=1e-12, atol=1e-12
        )


def test_adaptation_curve_and_shape_checks():
    support, query = tasks(6)
    params = meta_params()
    curve = adaptation_scores(loss_fn, params, support, query, LR, 2)
    assert len(curve) == 3 and curve[0].shape == (T,)
    one = maml_loss(loss_fn, params, support, query, LR, 1)
    torch.testing.assert_close(curve[1], one.task_losses.detach(), rtol=1e-12, atol=1e-12)
    assert float(curve[2].mean()) < float(curve[0].mean())
    with pytest.raises(ValueError, match="one loss per task"):
        maml_loss(lambda p, d: loss_fn(p, d).sum(), params, support, query, LR)


def test_meta_gradient_is_deterministic():
    support, query = tasks(7)
    runs = []
    for _ in range(2):
        params = meta_params()
        out = maml_loss(loss_fn, params, support, query, LR, 2)
        runs.append(torch.autograd.grad(out.loss, list(params.values())))
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


FACTORED = ["0.weight", "2.weight", "4.weight"]


@pytest.mark.parametrize("steps,first_order", [(1, False), (3, False), (2, True)])
@pytest.mark.parametrize("adapt", [None, ["4.weight", "4.bias"]])
def test_factored_linear_weights_give_the_same_meta_gradient(steps, first_order, adapt):
    """Linear weights adapted in low-rank form (no per-task weight tensors) give the same query
    losses and meta-gradients as the per-task loop."""
    support, query = tasks(8)
    params = meta_params()
    out = maml_loss(loss_fn, params, support, query, LR, steps, first_order, adapt, FACTORED)
    kinds = {type(v).__name__ for k, v in out.adapted.items() if k.endswith("weight")}
    assert "LowRankWeight" in kinds
    grads = torch.autograd.grad(out.loss, list(params.values()))
    ref_loss, ref = loop_meta_grad(params, support, query, LR, steps, first_order, adapt)
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-10, atol=1e-10)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_factored_reptile_and_adaptation_curve_match_dense():
    support, query = tasks(9)
    params = meta_params()
    a = reptile_direction(loss_fn, params, support, LR, 3)
    b = reptile_direction(loss_fn, params, support, LR, 3, factored=FACTORED)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-12)
    ca = adaptation_scores(loss_fn, params, support, query, LR, 3)
    cb = adaptation_scores(loss_fn, params, support, query, LR, 3, factored=FACTORED)
    for x, y in zip(ca, cb, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="not used"):
        maml_loss(
            lambda p, d: p["4.bias"].pow(2).sum(-1),
            params,
            support,
            query,
            LR,
            factored=["0.weight"],
        )
    with pytest.raises(KeyError, match="9.weight"):
        maml_loss(loss_fn, params, support, query, LR, factored=["9.weight"])


def test_factored_weight_used_outside_batched_call_fails_loudly():
    """A loss that touches a factored weight directly (e.g. weight decay) must not silently
    lose that gradient: the weight is a LowRankWeight there, and tensor ops on it fail."""
    support, query = tasks(10)
    params = meta_params()

    def decayed(p, data):
        return loss_fn(p, data) + 1e-3 * p["2.weight"].pow(2).sum()

    with pytest.raises((AttributeError, TypeError)):
        maml_loss(decayed, params, support, query, LR, factored=FACTORED)
    out = maml_loss(decayed, params, support, query, LR)  # the dense path handles it
    assert torch.isfinite(out.loss)
