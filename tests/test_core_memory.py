"""External memory (MANN / LRUA): reads, writes, usage, gradients, batching, determinism."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from meta_rl.core import memory as M
from meta_rl.core.memory import MemoryCore, MemoryState
from meta_rl.fewshot.models import seeded


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _written(batch=2, slots=8, width=6, heads=1, seed=0) -> tuple[MemoryState, torch.Tensor]:
    """A memory with ``slots`` random vectors written, one per step, to fresh slots."""
    state = M.init_state(batch, slots, width, heads)
    values = torch.randn(slots, batch, heads, width, generator=_gen(seed))
    for t in range(slots):
        gate = torch.full((batch, heads), -30.0)  # all of the write to the least-used slot
        state = M.write(state, values[t], gate)
    return state, values


def test_read_returns_the_stored_vector_for_a_matching_key():
    state, values = _written(batch=3, slots=8, width=6)
    target = values[5]  # [B, 1, W]
    # a noisy, rescaled version of the stored vector is still a match by cosine similarity
    key = 3.0 * target + 0.05 * torch.randn(target.shape, generator=_gen(1))
    reads, weights = M.read(state, key, strength=torch.full((3, 1), 50.0))
    assert torch.allclose(reads, target, atol=1e-3)
    assert torch.equal(weights.argmax(-1), torch.full((3, 1), 5))
    # a weak key strength blurs the read toward the mean of the memory
    blurred, _ = M.read(state, key, strength=0.0)
    assert torch.allclose(blurred, state.memory.mean(1, keepdim=True), atol=1e-6)
    assert not torch.allclose(blurred, target, atol=0.1)


def test_lrua_writes_to_the_least_used_slot_or_the_last_read_one():
    b, s, w = 2, 5, 4
    usage = torch.tensor([[0.9, 0.2, 0.5, 0.05, 0.7], [0.1, 0.8, 0.9, 0.6, 0.3]])
    read_w = F.one_hot(torch.tensor([[2], [4]]), s).float()
    state = MemoryState(torch.zeros(b, s, w), usage, read_w, M.least_used(usage, 1))
    assert torch.equal(state.least_used.argmax(-1), torch.tensor([[3], [0]]))
    v = torch.ones(b, 1, w)
    # gate -> 0: all of the write goes to the least-used slot
    new = M.write(state, v, torch.full((b, 1), -40.0))
    assert torch.allclose(new.memory[0, 3], v[0, 0]) and torch.allclose(new.memory[1, 0], v[1, 0])
    assert (new.memory[0].abs().sum(-1) > 1e-6).nonzero().flatten().tolist() == [3]
    # gate -> 1: the write goes to the slot read last step
    new = M.write(state, v, torch.full((b, 1), 40.0))
    assert torch.allclose(new.memory[0, 2], v[0, 0]) and torch.allclose(new.memory[1, 4], v[1, 0])
    # gate 0 logit: half and half
    ww = M.write_weights(state, torch.zeros(b, 1))
    assert torch.allclose(ww[0, 0], torch.tensor([0.0, 0.0, 0.5, 0.5, 0.0]))


def test_least_used_slot_is_erased_before_the_write():
    s, w = 3, 2
    memory = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    usage = torch.tensor([[0.5, 0.1, 0.9]])
    read_w = F.one_hot(torch.tensor([[0]]), s).float()
    state = MemoryState(memory, usage, read_w, M.least_used(usage, 1))
    new = M.write(state, torch.full((1, 1, w), 10.0), torch.full((1, 1), 40.0))  # update slot 0
    assert torch.allclose(new.memory, torch.tensor([[[11.0, 11.0], [0.0, 0.0], [3.0, 3.0]]]))


def test_usage_accounting():
    gamma = 0.9
    state, _ = _written(batch=2, slots=6, width=4, heads=2)
    keys = torch.randn(2, 2, 4, generator=_gen(3))
    gate = torch.randn(2, 2, generator=_gen(4))
    reads, weights = M.read(state, keys, 5.0)
    ww = M.write_weights(state, gate)
    new = M.write(state, keys, gate, weights, gamma)
    expected = gamma * state.usage + weights.sum(1) + ww.sum(1)
    assert torch.allclose(new.usage, expected)
    assert torch.equal(new.read_weights, weights)
    # two heads get the two least-used slots, distinct, in order of usage
    order = torch.sort(expected, dim=-1, stable=True).indices[:, :2]
    assert torch.equal(new.least_used.argmax(-1), order)
    # without a read, only the write counts
    only_write = M.write(state, keys, gate, gamma=gamma)
    assert torch.allclose(only_write.usage, gamma * state.usage + ww.sum(1))
    # the fresh memory: ties broken by slot index, heads get slots 0 and 1
    fresh = M.init_state(1, 4, 3, heads=2)
    assert fresh.least_used.argmax(-1).tolist() == [[0, 1]]
    # after writing a sequence to fresh slots, each slot was used exactly once
    filled, _ = _written(batch=1, slots=5, width=3, heads=1)
    assert (filled.memory.abs().sum(-1) > 0.01).all()


def test_gradients_flow_to_keys_gate_and_values():
    state, _ = _written(batch=2, slots=6, width=4)
    state = MemoryState(
        state.memory,
        state.usage,
        torch.softmax(torch.randn(2, 1, 6, generator=_gen(7)), -1),
        state.least_used,
    )
    keys = torch.randn(2, 1, 4, generator=_gen(5), requires_grad=True)
    values = torch.randn(2, 1, 4, generator=_gen(6), requires_grad=True)
    gate = torch.zeros(2, 1, requires_grad=True)
    strength = torch.ones(2, 1, requires_grad=True)
    reads, new = M.step(state, keys, strength, gate, values)
    later, _ = M.read(new, keys.detach() + 0.1, 5.0)
    (reads.sum() + later.pow(2).sum()).backward()
    for name, t in [("keys", keys), ("values", values), ("gate", gate), ("strength", strength)]:
        assert t.grad is not None and t.grad.abs().sum() > 0, name


def test_bad_shapes_are_named():
    state = M.init_state(2, 8, 6, heads=1)
    with pytest.raises(ValueError, match="keys has shape"):
        M.read(state, torch.zeros(2, 1, 5))
    with pytest.raises(ValueError, match="gate has shape"):
        M.write(state, torch.zeros(2, 1, 6), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="heads=9 must be <= slots=8"):
        M.init_state(1, 8, 4, heads=9)
    with pytest.raises(ValueError, match="controller='rnn'"):
        MemoryCore(3, controller="rnn")


@pytest.mark.parametrize("controller", ["lstm", "gru"])
def test_memory_core_batch_independence_and_determinism(controller):
    with seeded(0):
        core = MemoryCore(5, hidden_size=16, slots=10, width=6, heads=2, controller=controller)
    xs = torch.randn(7, 3, 5, generator=_gen(1))
    out, state = core.unroll(xs, core.initial_state(3))
    assert out.shape == (7, 3, core.output_size) and core.output_size == 16 + 2 * 6
    # a different row 2 does not change rows 0 and 1
    xs2 = xs.clone()
    xs2[:, 2] = torch.randn(7, 5, generator=_gen(2))
    out2, _ = core.unroll(xs2, core.initial_state(3))
    assert torch.equal(out[:, :2], out2[:, :2]) and not torch.allclose(out[:, 2], out2[:, 2])
    # one row alone gives the same numbers as inside the batch
    out_row, _ = core.unroll(xs[:, 1:2], core.initial_state(1))
    assert torch.allclose(out_row[:, 0], out[:, 1], atol=1e-6)
    # same seed, same weights, same numbers
    with seeded(0):
        twin = MemoryCore(5, hidden_size=16, slots=10, width=6, heads=2, controller=controller)
    out3, state3 = twin.unroll(xs, twin.initial_state(3))
    assert torch.equal(out, out3) and torch.equal(state.memory.memory, state3.memory.memory)
    # gradients reach every parameter through time and memory
    out.pow(2).mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in core.parameters())


def test_memory_core_episode_start_resets_rows():
    with seeded(1):
        core = MemoryCore(4, hidden_size=8, slots=6, width=4, heads=1)
    xs = torch.randn(6, 2, 4, generator=_gen(3))
    starts = torch.zeros(6, 2, dtype=torch.bool)
    starts[3, 0] = True  # row 0 starts a new episode at t = 3
    out, _ = core.unroll(xs, core.initial_state(2), episode_start=starts)
    fresh, _ = core.unroll(xs[3:, :1], core.initial_state(1))
    assert torch.allclose(out[3:, 0], fresh[:, 0], atol=1e-6)
    full, _ = core.unroll(xs, core.initial_state(2))
    assert torch.equal(out[:, 1], full[:, 1]) and not torch.allclose(out[3:, 0], full[3:, 0])


def test_episodic_memory_appends_overwrites_oldest_and_reads_by_content():
    batch, heads, slots, width = 2, 1, 3, 4
    zeros = torch.zeros(batch, heads, slots, width)
    state = M.EpisodicState(zeros, zeros.clone(), torch.zeros(batch, dtype=torch.long))
    keys = 10.0 * torch.eye(width)[:, None, :].expand(width, heads, width)  # orthogonal keys
    for t in range(4):  # 4 writes into 3 slots: the 4th replaces the 1st
        row = torch.full((batch, heads, width), float(t))
        state = M.episodic_write(state, keys[t].expand(batch, heads, width), row)
    assert state.count.tolist() == [4, 4]
    assert state.values[0, 0, :, 0].tolist() == [3.0, 1.0, 2.0]
    valid = torch.ones(batch, 1, slots, dtype=torch.bool)
    query = keys[1].expand(batch, heads, width).unsqueeze(2)  # [B, H, 1, W], matches row 1
    read = M.episodic_read(query, state.keys, state.values, valid)
    torch.testing.assert_close(read[:, 0, 0], torch.full((batch, width), 1.0), atol=1e-3, rtol=0)
    valid[:, :, 1] = False  # an invalid row is never read, however well it matches
    read = M.episodic_read(query, state.keys, state.values, valid)
    assert (read[:, 0, 0] - 1.0).abs().min() > 0.5
    with pytest.raises(ValueError, match="expected"):
        M.episodic_write(state, torch.zeros(batch, heads, width + 1), torch.zeros(1))
