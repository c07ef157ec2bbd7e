"""NTM memory: every addressing step against a hand computation, erase/add writes, one step,
batched == per-row, gradients, the recurrent cell."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from meta_rl.core import ntm
from meta_rl.core.ntm import Addressing, NTMCore, NTMState
from meta_rl.fewshot.models import seeded


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# -- the addressing steps, by hand -----------------------------------------------------------


def test_content_weights_are_a_softmax_of_scaled_cosine_similarities():
    memory = _t([[[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]]])  # [1, 3, 2]
    key = _t([[[5.0, 0.0]]])  # cosine with the rows: 1, 0, 1/sqrt(2)
    beta = _t([[2.0]])
    logits = [2.0 * 1.0, 2.0 * 0.0, 2.0 / math.sqrt(2.0)]
    z = sum(math.exp(v) for v in logits)
    expected = _t([[[math.exp(v) / z for v in logits]]])
    assert torch.allclose(ntm.content_weights(memory, key, beta), expected, atol=1e-7)


def test_interpolation_gate_mixes_content_and_previous_weights():
    content = _t([[[0.7, 0.2, 0.1]]])
    previous = _t([[[0.0, 1.0, 0.0]]])
    out = ntm.interpolate(content, previous, _t([[0.25]]))
    assert torch.allclose(out, _t([[[0.175, 0.8, 0.025]]]))
    assert torch.allclose(ntm.interpolate(content, previous, _t([[1.0]])), content)
    assert torch.allclose(ntm.interpolate(content, previous, _t([[0.0]])), previous)


def test_shift_is_a_circular_convolution_that_wraps_around():
    w = _t([[[1.0, 0.0, 0.0, 0.0]]])  # focus on slot 0
    kernel = _t([[[0.1, 0.2, 0.7]]])  # shifts -1, 0, +1
    # out(i) = 0.1 w(i+1) + 0.2 w(i) + 0.7 w(i-1): slot 3 gets the -1 shift of slot 0 (wrap)
    assert torch.allclose(ntm.shift(w, kernel), _t([[[0.2, 0.7, 0.0, 0.1]]]))
    last = _t([[[0.0, 0.0, 0.0, 1.0]]])
    forward = _t([[[0.0, 0.0, 1.0]]])
    assert torch.allclose(ntm.shift(last, forward), _t([[[1.0, 0.0, 0.0, 0.0]]]))  # 3 -> 0
    spread = _t([[[0.5, 0.3, 0.2, 0.0]]])
    out = ntm.shift(spread, _t([[[0.6, 0.0, 0.4]]]))
    # out(0) = .6 w(1) + .4 w(3); out(1) = .6 w(2) + .4 w(0); out(2) = .6 w(3) + .4 w(1);
    # out(3) = .6 w(0) + .4 w(2)
    assert torch.allclose(out, _t([[[0.18, 0.32, 0.12, 0.38]]]))
    assert torch.allclose(out.sum(-1), spread.sum(-1))  # a convolution keeps the total
    with pytest.raises(ValueError, match="kernel"):
        ntm.shift(w, _t([[[0.5, 0.5]]]))


def test_sharpening_raises_to_gamma_and_renormalises():
    w = _t([[[0.5, 0.25, 0.25]]])
    # 0.25, 0.0625, 0.0625 over their sum 0.375
    assert torch.allclose(ntm.sharpen(w, _t([[2.0]])), _t([[[2 / 3, 1 / 6, 1 / 6]]]))
    assert torch.allclose(ntm.sharpen(w, _t([[1.0]])), w)
    # a large gamma tends to a one-hot of the peak (0.5^60 would underflow an additive epsilon)
    sharp = ntm.sharpen(w, _t([[60.0]]))
    assert torch.allclose(sharp, _t([[[1.0, 0.0, 0.0]]]), atol=1e-12)
    sharp32 = ntm.sharpen(w.float(), torch.tensor([[200.0]]))
    assert torch.allclose(sharp32, torch.tensor([[[1.0, 0.0, 0.0]]]))
    assert torch.equal(ntm.sharpen(torch.zeros(1, 1, 3), torch.ones(1, 1)), torch.zeros(1, 1, 3))


def test_address_chains_content_gate_shift_and_sharpening():
    memory = torch.randn(2, 6, 4, generator=_gen(0), dtype=torch.float64)
    previous = torch.softmax(torch.randn(2, 3, 6, generator=_gen(1), dtype=torch.float64), -1)
    raw = torch.randn(2, 3, 4 + ntm.PARAMS_PER_HEAD, generator=_gen(2), dtype=torch.float64)
    p = ntm.addressing(raw, 4)
    expected = ntm.content_weights(memory, p.key, p.beta)
    expected = ntm.interpolate(expected, previous, p.gate)
    expected = ntm.sharpen(ntm.shift(expected, p.shift), p.gamma)
    out = ntm.address(memory, previous, p)
    assert torch.allclose(out, expected)
    assert torch.allclose(out.sum(-1), torch.ones(2, 3, dtype=torch.float64))


def test_addressing_maps_raw_outputs_to_their_ranges():
    width = 2
    raw = _t([[[0.3, -0.4, 0.0, 2.0, 1.0, 2.0, 3.0, -1.0]]])  # key 2, beta, g, s x3, gamma
    p = ntm.addressing(raw, width)
    assert torch.equal(p.key, raw[..., :2])
    assert torch.allclose(p.beta, _t([[math.log(2.0)]]))  # softplus(0)
    assert torch.allclose(p.gate, _t([[1 / (1 + math.exp(-2.0))]]))
    e = [math.exp(v) for v in (1.0, 2.0, 3.0)]
    assert torch.allclose(p.shift, _t([[[v / sum(e) for v in e]]]))
    assert torch.allclose(p.gamma, _t([[1.0 + math.log1p(math.exp(-1.0))]]))
    with pytest.raises(ValueError, match="per head"):
        ntm.addressing(raw, 3)


def test_location_addressing_walks_one_slot_per_step_and_wraps():
    """Gate 0 (ignore content), shift +1 and a sharp gamma: the focus moves one slot a step,
    from the last slot back to the first (how the NTM writes and reads a sequence in order)."""
    memory = torch.randn(1, 5, 3, generator=_gen(0), dtype=torch.float64)
    w = F.one_hot(torch.tensor([[3]]), 5).to(torch.float64)
    p = Addressing(memory[:, :1], _t([[1.0]]), _t([[0.0]]), _t([[[0.0, 0.0, 1.0]]]), _t([[20.0]]))
    seen = []
    for _ in range(3):
        w = ntm.address(memory, w, p)
        seen.append(int(w.argmax()))
    assert seen == [4, 0, 1]


# -- reading and writing -------------------------------------------------------------------


def test_write_erases_then_adds():
    memory = _t([[[1.0, 2.0], [3.0, 4.0]]])
    w = _t([[[1.0, 0.5]]])
    erase = _t([[[1.0, 0.5]]])
    add = _t([[[10.0, 20.0]]])
    # slot 0: [1 (1 - 1), 2 (1 - .5)] + [10, 20]; slot 1: [3 (1 - .5), 4 (1 - .25)] + [5, 10]
    out = ntm.write(memory, w, erase, add)
    assert torch.allclose(out, _t([[[10.0, 21.0], [6.5, 13.0]]]))
    # two heads: the product of their erase factors, the sum of their adds
    w2 = _t([[[1.0, 0.5], [0.0, 1.0]]])
    e2 = _t([[[1.0, 0.5], [0.5, 0.5]]])
    a2 = _t([[[10.0, 20.0], [1.0, 1.0]]])
    out2 = ntm.write(memory, w2, e2, a2)
    # slot 1: [3 (1 - .5)(1 - .5), 4 (1 - .25)(1 - .5)] + [5 + 1, 10 + 1]
    assert torch.allclose(out2, _t([[[10.0, 21.0], [6.75, 12.5]]]))
    with pytest.raises(ValueError, match="erase/add"):
        ntm.write(memory, w, erase[..., :1], add)


def test_read_is_the_weighted_sum_of_rows():
    memory = _t([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    w = _t([[[0.5, 0.5, 0.0], [0.0, 0.25, 0.75]]])
    assert torch.allclose(ntm.read(memory, w), _t([[[2.0, 3.0], [4.5, 5.5]]]))


def _random_step_inputs(batch=3, slots=7, width=4, reads=2, writes=1, seed=0):
    g = _gen(seed)
    state = NTMState(
        torch.randn(batch, slots, width, generator=g),
        torch.softmax(torch.randn(batch, reads, slots, generator=g), -1),
        torch.softmax(torch.randn(batch, writes, slots, generator=g), -1),
        torch.randn(batch, reads, width, generator=g),
    )
    raw = torch.randn(batch, reads + writes, width + ntm.PARAMS_PER_HEAD, generator=g)
    erase = torch.sigmoid(torch.randn(batch, writes, width, generator=g))
    add = torch.randn(batch, writes, width, generator=g)
    return state, ntm.addressing(raw, width), erase, add


def test_step_reads_the_memory_before_its_write():
    state, params, erase, add = _random_step_inputs()
    new = ntm.step(state, params, erase, add)
    previous = torch.cat([state.read_weights, state.write_weights], 1)
    weights = ntm.address(state.memory, previous, params)
    assert torch.allclose(new.read_weights, weights[:, :2])
    assert torch.allclose(new.write_weights, weights[:, 2:])
    assert torch.allclose(new.reads, ntm.read(state.memory, weights[:, :2]))
    assert torch.allclose(new.memory, ntm.write(state.memory, weights[:, 2:], erase, add))


def test_batched_step_equals_per_row():
    state, params, erase, add = _random_step_inputs(batch=4, writes=2)
    new = ntm.step(state, params, erase, add)
    for b in range(4):
        row = ntm.step(
            NTMState(*(t[b : b + 1] for t in state)),
            Addressing(*(t[b : b + 1] for t in params)),
            erase[b : b + 1],
            add[b : b + 1],
        )
        for got, want in zip(row, new, strict=True):
            assert torch.allclose(got, want[b : b + 1], atol=1e-6)


def test_gradients_flow_through_addressing_and_memory():
    state, params, erase, add = _random_step_inputs(seed=3)
    leaves = [state.memory, *params, erase, add]
    leaves = [t.detach().requires_grad_() for t in leaves]
    memory, key, beta, gate, kernel, gamma, erase, add = leaves
    p = Addressing(key, beta, gate, kernel, gamma)
    s = state._replace(memory=memory)
    one = ntm.step(s, p, erase, add)
    two = ntm.step(one, p, erase, add)  # the second read sees the first write
    two.reads.pow(2).sum().backward()
    for name, t in zip(("memory", *Addressing._fields, "erase", "add"), leaves, strict=True):
        assert t.grad is not None and torch.isfinite(t.grad).all(), name
        assert t.grad.abs().sum() > 0, name


def test_init_state_and_reset_rows():
    s = ntm.init_state(3, slots=5, width=2, read_heads=2, write_heads=1)
    assert s.memory.shape == (3, 5, 2) and torch.all(s.memory == 1e-6)
    assert s.read_weights.shape == (3, 2, 5) and s.write_weights.shape == (3, 1, 5)
    assert s.reads.shape == (3, 2, 2)
    m0 = torch.randn(5, 2, generator=_gen(0))
    s0 = ntm.init_state(3, 5, 2, 2, 1, memory=m0)
    assert torch.equal(s0.memory[2], m0)
    with pytest.raises(ValueError, match="memory has shape"):
        ntm.init_state(3, 4, 2, memory=m0)
    with pytest.raises(ValueError, match="batch"):
        ntm.init_state(0)
    state, params, erase, add = _random_step_inputs(batch=3, slots=5, width=2)
    reset = ntm.reset_rows(state, torch.tensor([False, True, False]), s0)
    assert torch.equal(reset.memory[1], m0) and torch.equal(reset.memory[0], state.memory[0])
    assert torch.equal(reset.read_weights[1], s0.read_weights[1])


# -- the recurrent cell --------------------------------------------------------------------


@pytest.mark.parametrize("controller", ["lstm", "gru"])
def test_core_batched_equals_per_row_and_learns_through_time(controller):
    with seeded(0):
        core = NTMCore(5, hidden_size=12, slots=8, width=4, read_heads=2, controller=controller)
    xs = torch.randn(6, 3, 5, generator=_gen(1))
    out, state = core.unroll(xs, core.initial_state(3))
    assert out.shape == (6, 3, core.output_size) == (6, 3, 12 + 2 * 4)
    for b in range(3):
        row, _ = core.unroll(xs[:, b : b + 1], core.initial_state(1))
        assert torch.allclose(row[:, 0], out[:, b], atol=1e-5)
    xs = xs.clone().requires_grad_()
    out, _ = core.unroll(xs, core.initial_state(3))
    out[-1].sum().backward()
    assert xs.grad[0].abs().sum() > 0  # the first input reaches the last output
    for name, p in core.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_core_reset_restarts_rows():
    with seeded(0):
        core = NTMCore(3, hidden_size=8, slots=6, width=3)
    xs = torch.randn(5, 2, 3, generator=_gen(2))
    starts = torch.zeros(5, 2, dtype=torch.bool)
    starts[3, 1] = True
    out, _ = core.unroll(xs, core.initial_state(2), starts)
    fresh, _ = core.unroll(xs[3:, 1:], core.initial_state(1))
    assert torch.allclose(out[3:, 1], fresh[:, 0], atol=1e-6)
    with pytest.raises(ValueError, match="input_size"):
        core(torch.zeros(2, 4), core.initial_state(2))


def test_core_is_seed_determined_and_starts_from_its_initial_memory():
    with seeded(5):
        a = NTMCore(3, hidden_size=8, slots=6, width=3, memory_init="random")
    with seeded(5):
        b = NTMCore(3, hidden_size=8, slots=6, width=3, memory_init="random")
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert 0 < a.memory0.abs().max() <= 1 / math.sqrt(6 + 3)
    constant = NTMCore(3, hidden_size=8, slots=6, width=3)
    assert torch.all(constant.memory0 == 1e-6)
    state = constant.initial_state(2)
    assert torch.equal(state.memory.memory[1], constant.memory0)
    w0 = torch.softmax(constant.weights0, -1)
    assert torch.allclose(state.memory.read_weights[1], w0[:1])
    assert torch.allclose(state.memory.write_weights[1], w0[1:])
    with pytest.raises(ValueError, match="memory_init"):
        NTMCore(3, memory_init="zeros")


def test_bounded_core_clips_the_interface_and_squashes_keys_and_adds():
    """With huge interface outputs a bounded cell keeps its memory writes in [-1, 1] (tanh adds
    over a memory that starts at 1e-6); an unbounded one writes them as they come."""
    x = torch.randn(4, 3, generator=_gen(0))
    for bounded in (True, False):
        with seeded(0):
            core = NTMCore(3, hidden_size=8, slots=6, width=3, bounded=bounded)
        with torch.no_grad():
            core.interface.weight.mul_(1e3)
        _, state = core(x, core.initial_state(4))
        biggest = state.memory.memory.abs().max().item()
        assert (biggest <= 1.0 + 1e-5) == bounded, (bounded, biggest)
        assert torch.isfinite(state.memory.read_weights).all()


def test_addressing_gradients_match_finite_differences():
    memory = torch.randn(2, 5, 3, generator=_gen(4), dtype=torch.float64, requires_grad=True)
    previous = torch.softmax(torch.randn(2, 1, 5, generator=_gen(5), dtype=torch.float64), -1)
    raw = torch.randn(2, 1, 3 + ntm.PARAMS_PER_HEAD, generator=_gen(6), dtype=torch.float64)
    raw.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda m, r: ntm.address(m, previous, ntm.addressing(r, 3)), (memory, raw)
    )
