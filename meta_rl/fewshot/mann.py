"""Memory-augmented neural network (MANN) for episodic few-shot classification.

Santoro et al. 2016: an episode is a sequence of ``length`` images from ``n_way`` classes in a
random order, with a fresh class -> label map per episode. At step ``t`` the network sees the
image ``x_t`` and the *previous* step's label ``y_{t-1}`` (one-hot; zeros at ``t = 0``) and
predicts ``y_t``. It can only be right on a class's later instances by binding images to labels
in its external memory (:class:`meta_rl.core.memory.MemoryCore`), so accuracy by instance
number (1st, 2nd, 5th, 10th appearance of a class) is the yardstick: near chance on the 1st,
high from the 2nd on.

Images are box-downsampled to ``input_size`` x ``input_size`` and flattened (the paper feeds
20x20 pixels to the controller).

``memory="ntm"`` swaps the LRUA memory for a Neural Turing Machine's
(:class:`meta_rl.core.ntm.NTMCore`: content and location addressing, erase/add writes;
``heads`` read heads and one write head): the same episodes, inputs and yardstick, so the two
memories compare directly (preset ``ntm-glyphs`` beside ``mann-glyphs``).

Data-parallel (``torchrun``, :mod:`meta_rl.collectives`): the ``batch_size`` sequences of an
update are split over the ranks (every rank draws the whole batch from the shared seeded
sampler and keeps its sequences; losses are weighted by the rank's share and gradients summed
before clipping), so N ranks take the single-process step. A sequence is never split: its
memory is written and read step after step, so a run needs ``batch_size >= ranks``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from meta_rl_envs.stats import mean_ci95
from torch import Tensor, nn

from meta_rl import collectives
from meta_rl.config import ConfigError, bounds, choice
from meta_rl.core.memory import CoreState, MemoryCore
from meta_rl.core.ntm import NTMCore, NTMCoreState
from meta_rl.fewshot.data import EpisodeSampler, occurrence_index
from meta_rl.fewshot.metric import (
    GlyphDataConfig,
    episode_shard,
    fit,
    glyph_splits,
    resolve_device,
)
from meta_rl.fewshot.models import seeded

log = logging.getLogger(__name__)

__all__ = [
    "MANN",
    "MANNConfig",
    "accuracy_by_instance",
    "evaluate_sequences",
    "image_features",
    "previous_labels",
    "train",
]

INSTANCES = (1, 2, 3, 5, 10)
"""instance numbers reported by default (1-based: the 1st appearance of a class is 1)"""
LRUA_ONLY_FIELDS = ("gamma", "interface_sees_input", "separate_values", "init_strength")
"""MANNConfig fields of the LRUA memory (an NTM memory would ignore them)"""


@dataclass
class MANNConfig(GlyphDataConfig):
    """MANN few-shot classification on glyph sequences."""

    iterations: int = field(default=20000, metadata=bounds(ge=1))
    """number of optimizer updates (each on ``batch_size`` episodes)"""
    eval_every: int = field(default=2000, metadata=bounds(ge=0))
    """evaluate on the test scripts every this many updates (0: only at the end)"""
    checkpoint_every: int = field(default=2000, metadata=bounds(ge=0))
    """save a checkpoint every this many updates (0: only at the end)"""
    log_every: int = field(default=50, metadata=bounds(ge=1))
    """write training metrics every this many updates"""
    n_way: int = field(default=5, metadata=bounds(ge=2))
    """classes per episode"""
    length: int = field(default=50, metadata=bounds(ge=2))
    """steps per episode (images split evenly among the classes)"""
    batch_size: int = field(default=16, metadata=bounds(ge=1))
    """episodes per update"""
    input_size: int = field(default=20, metadata=bounds(ge=2))
    """images are box-downsampled to input_size x input_size before flattening"""
    hidden: int = field(default=200, metadata=bounds(ge=1))
    """controller units"""
    controller: str = field(default="lstm", metadata=choice("lstm", "gru"))
    """controller cell"""
    memory: str = field(default="lrua", metadata=choice("lrua", "ntm"))
    """'lrua' (Santoro et al.: content reads, least-recently-used writes) or 'ntm' (Graves et
    al.: content and location addressing, erase/add writes)"""
    slots: int = field(default=128, metadata=bounds(ge=1))
    """memory slots"""
    width: int = field(default=40, metadata=bounds(ge=1))
    """memory slot width"""
    heads: int = field(default=4, metadata=bounds(ge=1))
    """read/write heads (LRUA: each reads and writes; NTM: read heads, plus one write head)"""
    gamma: float = field(default=0.95, metadata=bounds(ge=0, le=1))
    """usage decay of the LRUA write"""
    interface_sees_input: bool = True
    """the memory heads see the step's input beside the controller state (faster learning)"""
    separate_values: bool = True
    """write a vector of its own instead of the read key (False: the paper's key write;
    True learns the image -> label binding several times faster in our runs)"""
    init_strength: float = field(default=10.0, metadata=bounds(ge=0))
    """initial key strength of the reads (0: the plain softplus init, nearly uniform reads)"""
    grad_clip: float = field(default=10.0, metadata=bounds(ge=0))
    """clip the gradient norm to this (0: no clipping)"""
    eval_episodes: int = field(default=500, metadata=bounds(ge=2))
    """test episodes for the accuracy by instance"""

    def check(self) -> None:
        if self.memory == "lrua" and self.heads > self.slots:
            raise ConfigError(f"heads = {self.heads} must be <= slots = {self.slots}")
        if self.memory != "lrua":
            for name in LRUA_ONLY_FIELDS:
                value = getattr(self, name)
                if value != getattr(type(self), name):
                    raise ConfigError(
                        f"{name} = {value!r} applies to memory 'lrua' only; memory = "
                        f"{self.memory!r} would ignore it"
                    )
        if self.input_size > self.image_size:
            raise ConfigError(
                f"input_size = {self.input_size} must be <= image_size = {self.image_size}"
            )
        per_class = -(-self.length // self.n_way)
        if per_class > self.samples_per_class:
            raise ConfigError(
                f"length = {self.length} with n_way = {self.n_way} needs {per_class} images per "
                f"class; samples_per_class = {self.samples_per_class}"
            )


# ---------------------------------------------------------------------------------------------
# inputs and metrics
# ---------------------------------------------------------------------------------------------
def image_features(x: Tensor, size: int) -> Tensor:
    """Images [B, T, C, H, W] -> box-downsampled, flattened features [B, T, C*size*size]."""
    if x.dim() != 5:
        raise ValueError(f"images have shape {tuple(x.shape)}; expected [B, T, C, H, W]")
    b, t = x.shape[:2]
    flat = x.flatten(0, 1)
    if flat.shape[-1] != size or flat.shape[-2] != size:
        flat = F.adaptive_avg_pool2d(flat, size)
    return flat.reshape(b, t, -1)


def previous_labels(y: Tensor, n_way: int) -> Tensor:
    """One-hot of ``y`` shifted one step later: [B, T, n_way], zeros at ``t = 0``."""
    onehot = F.one_hot(y, n_way).to(torch.float32)
    return torch.cat([torch.zeros_like(onehot[:, :1]), onehot[:, :-1]], dim=1)


def accuracy_by_instance(
    logits: Tensor, y: Tensor, instances: Sequence[int] = INSTANCES
) -> dict[int, float]:
    """Accuracy on the ``i``-th appearance of a class (1-based) for each ``i`` in
    ``instances`` (NaN where a sequence has no such instance)."""
    correct = (logits.argmax(-1) == y).float()
    occ = occurrence_index(y) + 1
    out = {}
    for i in instances:
        mask = occ == i
        out[i] = correct[mask].mean().item() if mask.any() else float("nan")
    return out


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class MANN(nn.Module):
    """Features ``x_t`` and the previous label -> a memory cell -> logits over n_way.

    The cell is :class:`MemoryCore` (``memory="lrua"``) or :class:`NTMCore` (``memory="ntm"``:
    ``heads`` read heads and one write head; the LRUA-only arguments are not used)."""

    def __init__(
        self,
        input_size: int,
        n_way: int,
        hidden: int = 200,
        slots: int = 128,
        width: int = 40,
        heads: int = 4,
        controller: str = "lstm",
        gamma: float = 0.95,
        interface_sees_input: bool = True,
        separate_values: bool = True,
        init_strength: float = 10.0,
        memory: str = "lrua",
    ) -> None:
        super().__init__()
        if not isinstance(n_way, int) or n_way < 2:
            raise ValueError(f"n_way={n_way!r} must be an integer >= 2")
        if memory not in ("lrua", "ntm"):
            raise ValueError(f"memory={memory!r}; allowed: 'lrua', 'ntm'")
        self.n_way = n_way
        self.core: MemoryCore | NTMCore
        if memory == "ntm":
            self.core = NTMCore(input_size + n_way, hidden, slots, width, heads, 1, controller)
        else:
            self.core = MemoryCore(
                input_size + n_way,
                hidden,
                slots,
                width,
                heads,
                controller,
                gamma,
                separate_values=separate_values,
                interface_sees_input=interface_sees_input,
                init_strength=init_strength,
            )
        self.head = nn.Linear(self.core.output_size, n_way)

    def forward(
        self, x: Tensor, y: Tensor, state: CoreState | NTMCoreState | None = None
    ) -> Tensor:
        """Logits [B, T, n_way] for features ``x`` [B, T, D] and labels ``y`` [B, T] (the label
        of step t is shown at step t + 1)."""
        if x.dim() != 3 or y.shape != x.shape[:2]:
            raise ValueError(
                f"x has shape {tuple(x.shape)} and y {tuple(y.shape)}; expected x [B, T, D] "
                "and y [B, T]"
            )
        inp = torch.cat([x, previous_labels(y, self.n_way).to(x.dtype)], dim=-1)
        if state is None:
            state = self.core.initial_state(x.shape[0], x.device, x.dtype)
        out, _ = self.core.unroll(inp.transpose(0, 1), state)
        return self.head(out).transpose(0, 1)


@torch.no_grad()
def evaluate_sequences(
    model: MANN,
    sampler: EpisodeSampler,
    input_size: int,
    episodes: int = 500,
    length: int = 50,
    batch: int = 50,
    instances: Sequence[int] = INSTANCES,
) -> dict[str, float]:
    """Accuracy (overall and by instance, with 95% CI over episodes) on ``episodes`` sequences."""
    was_training = model.training
    model.eval()
    per_episode: dict[int, list[float]] = {i: [] for i in instances}
    overall: list[float] = []
    done = 0
    while done < episodes:
        b = min(batch, episodes - done)
        x, y = sampler.sample_sequence(b, model.n_way, length)
        logits = model(image_features(x, input_size), y)
        correct = (logits.argmax(-1) == y).float()
        occ = occurrence_index(y) + 1
        overall += correct.mean(1).tolist()
        for i in instances:
            mask = (occ == i).float()
            has = mask.sum(1) > 0
            acc = (correct * mask).sum(1)[has] / mask.sum(1)[has]
            per_episode[i] += acc.tolist()
        done += b
    model.train(was_training)
    out = {}
    est = mean_ci95(overall)
    out["accuracy"], out["ci95"] = est.mean, est.ci95
    for i in instances:
        est = mean_ci95(per_episode[i])
        out[f"instance_{i}"], out[f"instance_{i}_ci95"] = est.mean, est.ci95
    return out


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def _train_metrics(
    dist: collectives.Context, logits: Tensor, y: Tensor, loss: float, weight: float
) -> dict[str, float]:
    """Loss, accuracy and accuracy on the 1st / 2nd instance of the whole batch (this rank's
    sequences with one process; summed over ranks' shares, counts included, otherwise)."""
    if not dist.enabled:
        by_inst = accuracy_by_instance(logits, y, (1, 2))
        return {
            "loss": loss,
            "accuracy": (logits.argmax(-1) == y).float().mean().item(),
            "instance_1": by_inst[1],
            "instance_2": by_inst[2],
        }
    correct = (logits.argmax(-1) == y).to(torch.float64)
    occ = occurrence_index(y) + 1
    parts = [torch.tensor(loss * weight, dtype=torch.float64), correct.mean() * weight]
    for i in (1, 2):
        mask = occ == i
        parts += [correct[mask].sum(), mask.sum().to(torch.float64)]
    loss_sum, acc, hit1, n1, hit2, n2 = dist.all_reduce(torch.stack(parts)).tolist()
    nan = float("nan")
    return {
        "loss": loss_sum,
        "accuracy": acc,
        "instance_1": hit1 / n1 if n1 else nan,
        "instance_2": hit2 / n2 if n2 else nan,
    }


def train(config: MANNConfig, run=None) -> dict[str, float]:
    """Train a MANN on glyph sequences of the train scripts; evaluate on the test scripts."""
    dist = collectives.context()  # data-parallel ranks (one process: no-ops)
    config = dist.sync_config(config)
    shard = episode_shard(
        dist, config.batch_size, "batch_size", "a sequence's memory is written and read in order"
    )
    config.apply_num_threads()
    device = resolve_device(config.device)
    splits = glyph_splits(config)
    train_sampler = EpisodeSampler(
        splits["train"],
        config.n_way,
        1,
        0,
        np.random.default_rng([config.seed, 1]),
        rotations=config.rotations,
        device=device,
    )
    with seeded(config.seed):
        model = MANN(
            config.input_size**2,
            config.n_way,
            config.hidden,
            config.slots,
            config.width,
            config.heads,
            config.controller,
            config.gamma,
            config.interface_sees_input,
            config.separate_values,
            config.init_strength,
            config.memory,
        ).to(device)

    def evaluation() -> dict[str, float]:
        sampler = EpisodeSampler(
            splits["test"],
            config.n_way,
            1,
            0,
            np.random.default_rng([config.seed, 2]),
            device=device,
        )
        out = evaluate_sequences(
            model, sampler, config.input_size, config.eval_episodes, config.length
        )
        return {f"test_{k}": v for k, v in out.items()}

    def batch_loss() -> tuple[Tensor, Callable[[], dict[str, float]]]:
        # every rank draws the whole batch (same sampler stream) and keeps its sequences
        batch = train_sampler.sample_sequence(config.batch_size, config.n_way, config.length)
        x, y = shard.take(batch)
        logits = model(image_features(x, config.input_size), y)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        return loss, lambda: _train_metrics(dist, logits.detach(), y, loss.item(), shard.weight)

    hint = f"Lower lr (now {config.lr}) or grad_clip, or change the seed."
    metrics = fit(
        config,
        run,
        dist,
        model,
        train_sampler.rng,
        batch_loss,
        shard.weight,
        evaluation,
        hint,
        config.grad_clip,
    )
    log.info(
        "test accuracy by instance: %s",
        " ".join(f"{i}:{metrics.get(f'test_instance_{i}', float('nan')):.3f}" for i in INSTANCES),
    )
    return metrics
