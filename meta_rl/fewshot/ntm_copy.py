"""The copy task of the Neural Turing Machine (Graves et al. 2014), a supervised trainer.

A sequence of ``length`` random ``bits``-bit vectors (each bit 0 or 1 with probability 1/2,
``length`` uniform in ``[min_length, max_length]``) is shown one vector per step, then a
delimiter (an extra input channel, set only at that step); then the network gets zero inputs
for ``length`` steps and must output the sequence again. Only that output phase is scored:
binary cross-entropy while training, and the **cost**: error bits per sequence (outputs
thresholded at 1/2 against the targets, summed over the sequence), the yardstick of the paper
and of the reference PyTorch NTM (loudinthecloud/pytorch-ntm, whose settings are the defaults
here: LSTM-100 controller, 128 x 20 memory, one read and one write head, RMSprop with learning
rate 1e-4, momentum 0.9, smoothing 0.95, gradients clipped to +-10, one sequence per update).
The memory starts constant and the interface is bounded, as Collier & Beel (2018) found reliable
(``memory_init``, ``bounded``; see :class:`~meta_rl.core.ntm.NTMCore`).

Evaluation uses held-out seeded sequences (the same ones at every evaluation): ``eval_per_length``
sequences of every training length, and ``eval_long`` sequences of each of ``eval_lengths``
(longer than any training sequence: does the learned copy algorithm generalise?).

Data-parallel (``torchrun``): the ``batch_size`` sequences of an update are split over the
ranks (every rank draws the whole batch from the shared seeded generator and keeps its share),
so it needs ``batch_size >= ranks``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from meta_rl_envs.stats import mean_ci95
from torch import Tensor, nn

from meta_rl import collectives
from meta_rl.config import BaseConfig, ConfigError, bounds, choice
from meta_rl.core.ntm import NTMCore
from meta_rl.fewshot.metric import episode_shard, fit, resolve_device
from meta_rl.fewshot.models import seeded

log = logging.getLogger(__name__)

__all__ = ["CopyNTM", "CopyTaskConfig", "copy_batch", "error_bits", "evaluate", "train"]


@dataclass
class CopyTaskConfig(BaseConfig):
    """An NTM learning to copy sequences of random bit vectors."""

    iterations: int = field(default=30000, metadata=bounds(ge=1))
    """optimizer updates (each on ``batch_size`` sequences)"""
    eval_every: int = field(default=1000, metadata=bounds(ge=0))
    """evaluate on the held-out sequences every this many updates (0: only at the end)"""
    checkpoint_every: int = field(default=5000, metadata=bounds(ge=0))
    """save a checkpoint every this many updates (0: only at the end)"""
    log_every: int = field(default=200, metadata=bounds(ge=1))
    """write training metrics every this many updates (``cost_avg`` averages over as many)"""
    bits: int = field(default=8, metadata=bounds(ge=1))
    """width of the random vectors (the input has one more channel: the delimiter)"""
    min_length: int = field(default=1, metadata=bounds(ge=1))
    """shortest training sequence"""
    max_length: int = field(default=20, metadata=bounds(ge=1))
    """longest training sequence"""
    batch_size: int = field(default=1, metadata=bounds(ge=1))
    """sequences per update (all of one length, drawn per update)"""
    hidden: int = field(default=100, metadata=bounds(ge=1))
    """controller units"""
    controller: str = field(default="lstm", metadata=choice("lstm", "gru"))
    """controller cell"""
    slots: int = field(default=128, metadata=bounds(ge=1))
    """memory slots (N)"""
    width: int = field(default=20, metadata=bounds(ge=1))
    """memory slot width (M)"""
    read_heads: int = field(default=1, metadata=bounds(ge=1))
    """read heads"""
    write_heads: int = field(default=1, metadata=bounds(ge=1))
    """write heads"""
    memory_init: str = field(default="constant", metadata=choice("constant", "random"))
    """initial memory: 'constant' 1e-6 (Collier & Beel 2018) or a fixed 'random' draw (the
    reference PyTorch NTM)"""
    bounded: bool = True
    """clip the controller's interface outputs to +-20, tanh on keys and add vectors (Collier
    & Beel 2018); False: as the reference (in our runs it learned as fast, then fell back to
    chance for thousands of sequences)"""
    lr: float = field(default=1e-4, metadata=bounds(gt=0))
    """RMSprop learning rate"""
    momentum: float = field(default=0.9, metadata=bounds(ge=0, lt=1))
    """RMSprop momentum"""
    alpha: float = field(default=0.95, metadata=bounds(gt=0, lt=1))
    """RMSprop smoothing of the squared gradients"""
    lr_final_fraction: float = field(default=1.0, metadata=bounds(gt=0, le=1))
    """the learning rate falls linearly to lr * lr_final_fraction at the last update (1: none)"""
    grad_clip: float = field(default=10.0, metadata=bounds(ge=0))
    """clip every gradient entry to +-grad_clip (0: no clipping)"""
    eval_per_length: int = field(default=10, metadata=bounds(ge=1))
    """held-out sequences of every training length for the test cost"""
    eval_lengths: tuple[int, ...] = (30, 40)
    """longer lengths the test cost is also reported at (``test_cost_<length>``)"""
    eval_long: int = field(default=10, metadata=bounds(ge=1))
    """held-out sequences of each of ``eval_lengths``"""

    def check(self) -> None:
        if self.min_length > self.max_length:
            raise ConfigError(
                f"min_length = {self.min_length} must be <= max_length = {self.max_length}"
            )
        if any(n < 1 for n in self.eval_lengths):
            raise ConfigError(f"eval_lengths = {self.eval_lengths} must all be >= 1")


# ---------------------------------------------------------------------------------------------
# data and metric
# ---------------------------------------------------------------------------------------------
def copy_batch(
    rng: np.random.Generator, batch: int, length: int, bits: int, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """``batch`` random sequences of ``length`` vectors of ``bits`` bits: inputs
    [length + 1, batch, bits + 1] (the sequence, then the delimiter on the last channel) and
    targets [length, batch, bits] (the sequence)."""
    seq = torch.from_numpy(rng.integers(0, 2, size=(length, batch, bits))).float()
    inputs = torch.zeros(length + 1, batch, bits + 1)
    inputs[:length, :, :bits] = seq
    inputs[length, :, bits] = 1.0
    return inputs.to(device), seq.to(device)


def error_bits(logits: Tensor, targets: Tensor) -> Tensor:
    """Error bits per sequence [B]: outputs thresholded at 1/2 (logit >= 0 is 1) against the
    targets, summed over the sequence's steps and bits (``logits``, ``targets`` [T, B, bits])."""
    return ((logits >= 0).to(targets.dtype) - targets).abs().sum(dim=(0, 2))


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class CopyNTM(nn.Module):
    """:class:`~meta_rl.core.ntm.NTMCore` + a linear read-out to bit logits."""

    def __init__(
        self,
        bits: int = 8,
        hidden: int = 100,
        slots: int = 128,
        width: int = 20,
        read_heads: int = 1,
        write_heads: int = 1,
        controller: str = "lstm",
        memory_init: str = "constant",
        bounded: bool = True,
    ) -> None:
        super().__init__()
        self.bits = bits
        self.core = NTMCore(
            bits + 1,
            hidden,
            slots,
            width,
            read_heads,
            write_heads,
            controller,
            memory_init,
            bounded,
        )
        self.head = nn.Linear(self.core.output_size, bits)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.normal_(self.head.bias, std=0.01)

    def forward(self, inputs: Tensor) -> Tensor:
        """Bit logits [length, B, bits] of the output phase for ``inputs`` [length + 1, B,
        bits + 1] (the sequence and the delimiter; zero inputs follow)."""
        if inputs.dim() != 3 or inputs.shape[-1] != self.bits + 1 or inputs.shape[0] < 2:
            raise ValueError(
                f"inputs have shape {tuple(inputs.shape)}; expected [length + 1 >= 2, batch, "
                f"bits + 1 = {self.bits + 1}]"
            )
        steps, b = inputs.shape[:2]
        xs = torch.cat([inputs, inputs.new_zeros(steps - 1, b, self.bits + 1)])
        out, _ = self.core.unroll(xs, self.core.initial_state(b, inputs.device, inputs.dtype))
        return self.head(out[steps:])


@torch.no_grad()
def evaluate(
    model: CopyNTM,
    rng: np.random.Generator,
    lengths: range | list[int],
    per_length: int,
    long_lengths: tuple[int, ...] = (),
    long_count: int = 10,
) -> dict[str, float]:
    """Error bits per sequence on ``per_length`` sequences of each of ``lengths`` (``cost``,
    its 95% CI ``cost_ci95``, the bit cross-entropy ``bce``) and on ``long_count`` sequences of
    each of ``long_lengths`` (``cost_<length>``), all drawn from ``rng``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    costs, bces = [], []
    for n in lengths:
        x, y = copy_batch(rng, per_length, n, model.bits, device)
        logits = model(x)
        costs += error_bits(logits, y).tolist()
        bces.append(F.binary_cross_entropy_with_logits(logits, y).item())
    out = {}
    est = mean_ci95(costs)
    out["cost"], out["cost_ci95"] = est.mean, est.ci95
    out["bce"] = float(np.mean(bces))
    for n in long_lengths:
        x, y = copy_batch(rng, long_count, n, model.bits, device)
        out[f"cost_{n}"] = error_bits(model(x), y).mean().item()
    model.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def train(config: CopyTaskConfig, run=None) -> dict[str, float]:
    """Train an NTM on the copy task; evaluate on held-out seeded sequences."""
    dist = collectives.context()  # data-parallel ranks (one process: no-ops)
    config = dist.sync_config(config)
    shard = episode_shard(
        dist, config.batch_size, "batch_size", "a sequence's memory is written and read in order"
    )
    config.apply_num_threads()
    device = resolve_device(config.device)
    with seeded(config.seed):
        model = CopyNTM(
            config.bits,
            config.hidden,
            config.slots,
            config.width,
            config.read_heads,
            config.write_heads,
            config.controller,
            config.memory_init,
            config.bounded,
        ).to(device)
    optimizer = torch.optim.RMSprop(
        model.parameters(), lr=config.lr, alpha=config.alpha, momentum=config.momentum
    )
    decay = (1.0 - config.lr_final_fraction) / config.iterations
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0 - decay * it)
    train_rng = np.random.default_rng([config.seed, 1])
    recent: deque[float] = deque(maxlen=config.log_every)

    def evaluation() -> dict[str, float]:
        # the same held-out sequences at every evaluation: a fresh generator with a fixed seed
        out = evaluate(
            model,
            np.random.default_rng([config.seed, 2]),
            range(config.min_length, config.max_length + 1),
            config.eval_per_length,
            config.eval_lengths,
            config.eval_long,
        )
        return {f"test_{k}": v for k, v in out.items()}

    def batch_loss() -> tuple[Tensor, Callable[[], dict[str, float]]]:
        # every rank draws the whole batch (same generator stream) and keeps its sequences
        length = int(train_rng.integers(config.min_length, config.max_length + 1))
        x, y = copy_batch(train_rng, config.batch_size, length, config.bits, device)
        x, y = x[:, shard.slice], y[:, shard.slice]
        logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits, y)

        def summary() -> dict[str, float]:
            # the whole batch's means (this rank's share, summed over ranks)
            local = {"loss": loss.item(), "cost": error_bits(logits.detach(), y).mean().item()}
            out = dist.weighted_sum(local, shard.weight)
            recent.append(out["cost"])
            return {**out, "cost_avg": float(np.mean(recent)), "length": float(length)}

        return loss, summary

    hint = f"Lower lr (now {config.lr}) or grad_clip (now {config.grad_clip}), or change the seed."
    metrics = fit(
        config,
        run,
        dist,
        model,
        train_rng,
        batch_loss,
        shard.weight,
        evaluation,
        hint,
        optimizer=optimizer,
        grad_clip_value=config.grad_clip,
        progress_key="cost_avg",
        scheduler=scheduler,
    )
    log.info(
        "test cost (error bits per sequence): %.3f at lengths %d-%d; %s",
        metrics.get("test_cost", float("nan")),
        config.min_length,
        config.max_length,
        " ".join(
            f"{n}: {metrics.get(f'test_cost_{n}', float('nan')):.2f}" for n in config.eval_lengths
        ),
    )
    return metrics
