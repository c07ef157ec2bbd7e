"""Gradient-based few-shot learners on the meta-core: MAML, FOMAML, Meta-SGD, ANIL, Reptile.

Tasks: sinusoid regression (MLP 1-40-40-1, K points per task) and N-way K-shot glyph
classification (Conv-4 on the glyph image set, split by script). The loop reads top to bottom:

1. build the task family, the model and its params dict (seeded, explicit generators);
2. each iteration: sample a meta-batch, compute the outer objective over all tasks at once
   (:func:`meta_rl.core.maml_loss` / :func:`meta_rl.core.reptile_direction`), take the outer
   step (Adam; Reptile moves toward the adapted params);
3. evaluate post-adaptation loss / accuracy on held-out tasks (0..``eval_inner_steps`` steps);
4. for sinusoids, the pretrained baseline: the same network trained jointly on pooled tasks
   (no meta-learning), then adapted with the same inner update.

``train(config, run=None)`` works without a run folder (returns the final metrics).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from meta_rl_envs.stats import mean_ci95
from torch import Tensor, nn

from meta_rl import collectives, loop
from meta_rl.checkpoint import rng_state, set_rng_state
from meta_rl.config import ConfigError, Headline, bounds
from meta_rl.core import (
    METASGD_PREFIX,
    MetaLoss,
    Params,
    adaptation_scores,
    batched_call,
    init_metasgd_lrs,
    linear_chain_weights,
    maml_loss,
    reptile_direction,
    reptile_update_,
    tune_cpu_allocator,
)
from meta_rl.fewshot.metric import GlyphData, glyph_splits
from meta_rl.fewshot.models import MLP, Conv4
from meta_rl.fewshot.sinusoid import SinusoidFamily

logger = logging.getLogger(__name__)

__all__ = ["GradientFewShotConfig", "train", "build_task", "init_module_"]

_SINE_INNER_LR, _GLYPH_INNER_LR = 0.01, 0.4


@dataclass
class GradientFewShotConfig(GlyphData):
    """MAML-family few-shot learning on sinusoids or glyphs (the glyph data fields and their
    script split are those of every glyph learner: :class:`meta_rl.fewshot.metric.GlyphData`)."""

    algorithm: Literal["maml", "fomaml", "metasgd", "anil", "reptile"] = "maml"
    """outer objective: maml (second order), fomaml, metasgd (learned per-parameter inner lrs),
    anil (adapt only the head), reptile (step toward the adapted params)"""
    task: Literal["sine", "glyphs"] = "sine"
    """task family: sinusoid regression or N-way K-shot glyph classification"""
    iterations: int = field(default=2000, metadata=bounds(ge=1))
    """number of outer updates"""
    checkpoint_every: int = field(default=500, metadata=bounds(ge=0))
    """save a checkpoint every this many iterations (0: only at the end)"""
    log_every: int = field(default=50, metadata=bounds(ge=1))
    """write training metrics every this many iterations"""
    meta_batch_size: int = field(default=25, metadata=bounds(ge=1))
    """tasks per outer update"""
    k_shot: int = field(default=10, metadata=bounds(ge=1))
    """support examples: points per sinusoid task, or images per class for glyphs"""
    q_queries: int = field(default=10, metadata=bounds(ge=1))
    """query examples per task (sinusoid) or per class (glyphs) during training"""
    n_way: int = field(default=5, metadata=bounds(ge=2))
    """classes per glyph episode"""
    inner_lr: float | None = field(default=None, metadata=bounds(gt=0))
    """inner SGD step size (Meta-SGD: initial value); None: 0.01 for sine (Reptile 0.02),
    0.4 for glyphs"""
    inner_steps: int = field(default=1, metadata=bounds(ge=1))
    """inner steps during meta-training (Reptile: see reptile_steps)"""
    outer_lr: float = field(default=1e-3, metadata=bounds(gt=0))
    """Adam step size of the outer update (not used by Reptile)"""
    reptile_steps: int = field(default=10, metadata=bounds(ge=1))
    """Reptile: inner SGD steps per task on its support + query data"""
    reptile_epsilon: float = field(default=1.0, metadata=bounds(gt=0, le=1))
    """Reptile: outer step size (meta += epsilon * mean(adapted - meta))"""
    hidden: tuple[int, ...] = (40, 40)
    """sinusoid MLP hidden widths"""
    conv_hidden: int = field(default=64, metadata=bounds(ge=1))
    """glyphs: Conv-4 channels"""
    eval_tasks: int = field(default=100, metadata=bounds(ge=1))
    """held-out tasks per evaluation (metrics are their mean, with a 95% CI)"""
    eval_chunk: int = field(default=50, metadata=bounds(ge=1))
    """held-out tasks adapted at once during evaluation (bounds the memory it needs)"""
    eval_queries: int = field(default=100, metadata=bounds(ge=1))
    """query points per held-out sinusoid task (glyphs use q_queries per class)"""
    eval_inner_steps: int = field(default=10, metadata=bounds(ge=1))
    """evaluation adapts with 1..eval_inner_steps steps (metrics at each)"""
    baseline: bool = False
    """sinusoid: after meta-training, also train and evaluate the pretrained (joint-training)
    baseline (``baseline/...`` metrics): one network trained on pooled tasks for ``iterations``
    Adam steps, then adapted like the meta-learners. Off by default: it adds about as long again
    as the meta-training (logged, and ``baseline/seconds`` in the final metrics)"""

    def check(self) -> None:
        if self.task == "sine" and self.hidden and min(self.hidden) < 1:
            raise ConfigError(f"hidden = {self.hidden!r} is not allowed: widths must be >= 1")
        if self.task == "glyphs" and self.samples_per_class < self.k_shot + self.q_queries:
            raise ConfigError(
                f"samples_per_class = {self.samples_per_class} must be >= k_shot + q_queries "
                f"= {self.k_shot + self.q_queries} for task='glyphs'"
            )

    def headline(self) -> Headline:
        """Held-out loss (sinusoid MSE) or accuracy (glyphs) after ``eval_inner_steps``."""
        name = "loss" if self.task == "sine" else "acc"
        return Headline(f"eval/{name}_step{self.eval_inner_steps}", maximize=name == "acc")

    @property
    def step_size(self) -> float:
        """The inner learning rate after applying the per-task default."""
        if self.inner_lr is not None:
            return self.inner_lr
        if self.task == "sine":
            return 2 * _SINE_INNER_LR if self.algorithm == "reptile" else _SINE_INNER_LR
        return _GLYPH_INNER_LR


# --------------------------------------------------------------------------------------------
# Seeded initialisation (torch's default init, drawn from an explicit generator)
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def init_module_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise Linear / Conv layers like PyTorch's defaults, from ``generator`` only."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


# --------------------------------------------------------------------------------------------
# Tasks: model, batched loss, metric, samplers
# --------------------------------------------------------------------------------------------
@dataclass
class FewShotTask:
    """What the loop needs from a task family."""

    model: nn.Module
    loss_fn: Any
    """(stacked params, (x, y)) -> per-task loss [T]"""
    metric_fn: Any
    """(stacked params, (x, y)) -> per-task score [T] (MSE or accuracy)"""
    metric: str
    head: list[str]
    """names of the head parameters (ANIL adapts these)"""
    sample: Any
    """batch size -> (support, query) of a training meta-batch"""
    eval_batch: tuple[Any, Any]
    """fixed held-out (support, query) meta-batch"""
    factored: list[str] = field(default_factory=list)
    """Linear weights adapted in low-rank form (the batched MLP path; see meta_rl.core)"""

    def meta_loss(
        self,
        params: Params,
        support: Any,
        query: Any,
        lr: Any,
        steps: int,
        first_order: bool = False,
        adapt: list[str] | None = None,
    ) -> MetaLoss:
        """The MAML-family outer objective on this task's model (what the trainer optimises)."""
        return maml_loss(
            self.loss_fn, params, support, query, lr, steps, first_order, adapt, self.factored
        )


def _sine_task(config: GradientFewShotConfig, gen: torch.Generator, device: torch.device):
    family = SinusoidFamily()
    model = init_module_(MLP([1, *config.hidden, 1]), gen).to(device)

    def loss_fn(params: Params, data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = data
        return (batched_call(model, params, x) - y).pow(2).mean(dim=(1, 2))

    def sample(batch: int) -> tuple[Any, Any]:
        b = family.sample(batch, config.k_shot, config.q_queries, gen, device=device)
        return b.support, b.query

    eval_gen = torch.Generator().manual_seed(config.seed + 1_000_003)
    held = family.sample(config.eval_tasks, config.k_shot, config.eval_queries, eval_gen)
    held_out = ((held.xs.to(device), held.ys.to(device)), (held.xq.to(device), held.yq.to(device)))
    last = len(model.net) - 1
    head = [n for n, _ in model.named_parameters() if n.startswith(f"net.{last}.")]
    factored = linear_chain_weights(model)
    return FewShotTask(model, loss_fn, loss_fn, "mse", head, sample, held_out, factored)


def _glyph_task(config: GradientFewShotConfig, gen: torch.Generator, device: torch.device):
    from meta_rl.fewshot.data import EpisodeSampler

    splits = glyph_splits(config)  # the same held-out scripts as every glyph learner
    np_rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen)))
    train_sampler = EpisodeSampler(
        splits["train"], config.n_way, config.k_shot, config.q_queries, np_rng, device=device
    )
    test_sampler = EpisodeSampler(
        splits["test"],
        config.n_way,
        config.k_shot,
        config.q_queries,
        config.seed + 1_000_003,
        device=device,
    )
    model = Conv4(1, config.conv_hidden, config.n_way, config.image_size)
    model = init_module_(model, gen).to(device)

    def logits(params: Params, x: Tensor) -> Tensor:
        return batched_call(model, params, x)

    def loss_fn(params: Params, data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = data
        z = logits(params, x)
        ce = F.cross_entropy(z.flatten(0, 1), y.flatten(), reduction="none")
        return ce.view(y.shape).mean(dim=1)

    def accuracy(params: Params, data: tuple[Tensor, Tensor]) -> Tensor:
        x, y = data
        return (logits(params, x).argmax(-1) == y).float().mean(dim=1)

    def sample(batch: int) -> tuple[Any, Any]:
        xs, ys, xq, yq = train_sampler.sample(batch)
        return (xs, ys), (xq, yq)

    xs, ys, xq, yq = test_sampler.sample(config.eval_tasks)
    head = [n for n, _ in model.named_parameters() if n.startswith("head.")]
    return FewShotTask(model, loss_fn, accuracy, "acc", head, sample, ((xs, ys), (xq, yq)))


def build_task(
    config: GradientFewShotConfig, gen: torch.Generator, device: torch.device
) -> FewShotTask:
    """The model, losses and samplers of ``config.task`` (model init draws from ``gen``)."""
    if config.task == "sine":
        return _sine_task(config, gen, device)
    return _glyph_task(config, gen, device)


def _concat(a: tuple[Tensor, Tensor], b: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return torch.cat([a[0], b[0]], dim=1), torch.cat([a[1], b[1]], dim=1)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def evaluate_heldout(
    task: FewShotTask,
    params: Params,
    lr: Any,
    steps: int,
    prefix: str = "eval",
    adapt: list[str] | None = None,
    chunk: int = 50,
) -> dict[str, float]:
    """Held-out post-adaptation loss and metric after 0..``steps`` inner steps (adapting
    ``adapt`` only, e.g. ANIL's head): mean over the held-out tasks and the half-width of its
    95% confidence interval (``..._ci95``). Tasks are adapted ``chunk`` at a time."""
    support, query = task.eval_batch
    tasks = support[0].shape[0]

    def score(fast: Params, data: tuple[Tensor, Tensor]) -> Tensor:  # [T, 2]: loss, metric
        loss = task.loss_fn(fast, data)
        metric = loss if task.metric == "mse" else task.metric_fn(fast, data)
        return torch.stack([loss, metric], dim=-1)

    per_task: list[Tensor] = []  # chunks of [steps + 1, T, 2]
    for lo in range(0, tasks, chunk):
        part = slice(lo, lo + chunk)
        curve = adaptation_scores(
            task.loss_fn,
            params,
            tuple(t[part] for t in support),
            tuple(t[part] for t in query),
            lr,
            steps,
            score,
            adapt,
            task.factored,
        )
        per_task.append(torch.stack(curve))
    scores = torch.cat(per_task, dim=1).cpu().numpy()
    names = ["loss"] if task.metric == "mse" else ["loss", task.metric]
    out: dict[str, float] = {}
    for k in range(steps + 1):
        for j, name in enumerate(names):
            est = mean_ci95(scores[k, :, j])
            out[f"{prefix}/{name}_step{k}"] = est.mean
            out[f"{prefix}/{name}_step{k}_ci95"] = est.ci95
    return out


def pretrained_baseline(config: GradientFewShotConfig, device: torch.device) -> dict[str, float]:
    """Sinusoid baseline: one network trained on pooled tasks (same budget of outer steps and
    tasks), then adapted on the held-out tasks with the same inner update as the meta-learners.
    Its wall time is logged and returned as ``baseline/seconds``."""
    logger.info(
        "pretrained baseline (baseline=true): training one network on pooled tasks for %d Adam "
        "steps, then adapting it on the held-out tasks",
        config.iterations,
    )
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(config.seed + 7)
    task = _sine_task(config, gen, device)
    params = {k: v for k, v in task.model.named_parameters()}
    opt = torch.optim.Adam(params.values(), lr=config.outer_lr, fused=True)
    for _ in range(config.iterations):
        support, query = task.sample(config.meta_batch_size)
        x, y = _concat(support, query)
        shared_loss = task.loss_fn(params, (x, y)).mean()  # shared (unstacked) params
        opt.zero_grad()
        shared_loss.backward()
        opt.step()
    out = evaluate_heldout(
        task,
        params,
        config.step_size,
        config.eval_inner_steps,
        prefix="baseline",
        chunk=config.eval_chunk,
    )
    out["baseline/seconds"] = seconds = time.perf_counter() - t0
    logger.info(
        "pretrained baseline took %.1f s beyond the meta-training (set baseline=false to skip it)",
        seconds,
    )
    return out


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
def train(config: GradientFewShotConfig, run: Any = None) -> dict[str, float]:
    """Meta-train ``config.algorithm`` on ``config.task``; returns the final metrics."""
    if not isinstance(config, GradientFewShotConfig):
        raise TypeError(f"config must be a GradientFewShotConfig, got {type(config).__name__}")
    from meta_rl_envs.batched import resolve_device

    dist = collectives.context()  # data-parallel ranks (one process: no-ops)
    config = dist.sync_config(config)
    shard = dist.shard(config.meta_batch_size)  # this rank's tasks of each meta-batch
    device = resolve_device(config.device)
    config.apply_num_threads()
    if device.type == "cpu":
        tune_cpu_allocator()
    gen = torch.Generator().manual_seed(config.seed)
    task = build_task(config, gen, device)
    params: Params = dict(task.model.named_parameters())
    algo = config.algorithm
    lr: Any = config.step_size
    lrs: Params = {}
    if algo == "metasgd":
        lrs = init_metasgd_lrs(params, config.step_size)
        lr = lrs
    adapt = task.head if algo == "anil" else None
    chunk = config.eval_chunk
    opt = torch.optim.Adam([*params.values(), *lrs.values()], lr=config.outer_lr, fused=True)

    def checkpoint() -> loop.Saved:
        tensors = {k: v.detach() for k, v in params.items()}
        tensors.update({METASGD_PREFIX + k: v.detach() for k, v in lrs.items()})
        return tensors, {"optimizer": opt.state_dict(), "rng": rng_state(gen)}

    def evaluation() -> dict[str, float]:
        return evaluate_heldout(task, params, lr, config.eval_inner_steps, "eval", adapt, chunk)

    start = 0
    expected = {**params, **{METASGD_PREFIX + k: v for k, v in lrs.items()}}
    ck = loop.resume(run, dist, device, expected, ("optimizer", "rng"))
    if ck is not None:
        with torch.no_grad():
            for k, v in expected.items():
                v.copy_(ck.tensors[k])
        opt.load_state_dict(ck.state["optimizer"])
        set_rng_state(gen, ck.state["rng"])
        start = ck.step
    dist.broadcast_([*params.values(), *lrs.values()])

    t0 = time.perf_counter()
    metrics: dict[str, float] = {}
    hint = f"Lower inner_lr (now {config.step_size}) or outer_lr / reptile_epsilon."
    with loop.progress(run, config, start, "train/loss"):
        for it in range(start, config.iterations):
            support, query = shard.take(task.sample(config.meta_batch_size))  # ours kept
            if algo == "reptile":
                direction = reptile_direction(
                    task.loss_fn,
                    params,
                    _concat(support, query),
                    lr,
                    config.reptile_steps,
                    factored=task.factored,
                )
                direction = {k: dist.all_reduce(d * shard.weight) for k, d in direction.items()}
                reptile_update_(params, direction, config.reptile_epsilon)
                train_loss = float(torch.stack([d.pow(2).sum() for d in direction.values()]).sum())
                key = "train/direction_sq"
            else:
                out = task.meta_loss(
                    params, support, query, lr, config.inner_steps, algo == "fomaml", adapt
                )
                opt.zero_grad(set_to_none=True)
                (out.loss * shard.weight).backward()  # this rank's share of the mean over tasks
                dist.all_reduce_grads([*params.values(), *lrs.values()])
                opt.step()
                train_loss = dist.weighted_sum({"l": float(out.loss.detach())}, shard.weight)["l"]
                key = "train/loss"
            step = it + 1
            metrics = {
                key: train_loss,
                "train/it_per_s": (step - start) / (time.perf_counter() - t0),
            }
            if lrs:
                metrics["train/mean_inner_lr"] = float(
                    torch.cat([v.detach().flatten() for v in lrs.values()]).mean()
                )
            loop.end_step(
                run, config, step, metrics, expected.values(), evaluation, checkpoint, hint
            )

    final = loop.final(metrics, evaluation)
    final["train/seconds"] = time.perf_counter() - t0  # meta-training; the baseline's is its own
    if config.task == "sine" and config.baseline:
        final.update(pretrained_baseline(config, device))
    return final
