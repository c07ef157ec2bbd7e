"""Metric-based few-shot learners: prototypical networks and Siamese networks.

- **Prototypical networks** (Snell et al. 2017): embed support and query images with one
  network; a class's prototype is the mean embedding of its support images; a query's logits
  are minus its squared Euclidean distances to the prototypes. Trained episodically with
  cross-entropy on the queries.
- **Siamese network** (pair verification; Koch et al. 2015 use a sigmoid over an L1 distance,
  here the contrastive loss of Hadsell et al. 2006): ``same * d^2 + (1 - same) *
  max(0, margin - d)^2`` on L2-normalised embeddings. Pairs come from episodes (every query
  against every support image, positive and negative pairs weighted equally). N-way one-shot
  classification picks the class of the nearest support embedding.

Both train on the glyph scripts of the train split and are evaluated on held-out scripts:
mean accuracy and the 95% confidence interval over many episodes.

Data-parallel (``torchrun``, :mod:`meta_rl.collectives`): the ``meta_batch`` episodes of an
update are split over the ranks. Every rank draws the whole batch from the shared seeded
sampler and keeps its episodes, weights its loss by its share and the gradients are summed, so
N ranks take the single-process step. The Conv-4's BatchNorm needs no synchronisation: the
encoder runs under ``vmap`` over episodes, so its batch statistics are per episode (support and
query of one episode together) and episodes never see each other. With ``meta_batch = 1`` the
episode's images are split over the ranks instead: the BatchNorms become
:class:`~meta_rl.fewshot.models.SyncBatchNorm2d` (statistics of the whole episode through
autograd-aware all-reduces) and the embeddings are all-reduced, so every rank computes the
whole episode's loss (weighted 1/N). ``1 < meta_batch < ranks`` is refused.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from meta_rl_envs.stats import mean_ci95
from torch import Tensor, nn

from meta_rl import collectives, loop
from meta_rl.checkpoint import rng_state, set_rng_state
from meta_rl.config import BaseConfig, ConfigError, bounds, choice
from meta_rl.fewshot.data import EpisodeSampler, ImageSet, split_by_group
from meta_rl.fewshot.glyphs import load_glyphs
from meta_rl.fewshot.models import Conv4, seeded, sync_batchnorm_

log = logging.getLogger(__name__)

__all__ = [
    "EpisodicConfig",
    "GlyphData",
    "GlyphDataConfig",
    "ProtoNet",
    "ProtoNetConfig",
    "SiameseConfig",
    "SiameseNet",
    "contrastive_loss",
    "evaluate_accuracy",
    "glyph_splits",
    "prototypes",
    "train_protonet",
    "train_siamese",
]


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
@dataclass
class GlyphData(BaseConfig):
    """The image set and its split by script: the one data piece every glyph learner shares
    (ProtoNet, Siamese, MANN, and the gradient learners of meta_rl.fewshot.gradient), so the
    same ``split_seed`` gives every learner the same held-out scripts."""

    dataset: str = field(default="glyphs", metadata=choice("glyphs", "omniglot"))
    """'glyphs' (rendered from fonts, split by script) or 'omniglot' (local folder data_root;
    background alphabets train, evaluation alphabets test)"""
    data_root: str | None = None
    """glyph cache folder (default: $META_RL_DATA/glyphs or ~/.cache/meta-rl/glyphs), or the
    Omniglot folder for dataset='omniglot'"""
    fonts: str = field(default="dejavu", metadata=choice("dejavu", "noto", "auto"))
    """glyph fonts (see meta_rl.fewshot.glyphs)"""
    image_size: int = field(default=28, metadata=bounds(ge=16))
    """side of the square images"""
    samples_per_class: int = field(default=20, metadata=bounds(ge=2))
    """glyph images rendered per letter"""
    scripts: tuple[str, ...] = ()
    """build the glyphs of these scripts only (e.g. Latin, Greek, Armenian); () = all"""
    split_seed: int = 0
    """seed of the script split train/val/test = 0.6/0.2/0.2 of the classes (kept apart from
    ``seed`` so runs of different seeds share the test scripts)"""


@dataclass
class GlyphDataConfig(GlyphData):
    """The glyph data plus the schedule and optimizer of the metric learners and MANN."""

    iterations: int = field(default=2000, metadata=bounds(ge=1))
    """number of optimizer updates"""
    eval_every: int = field(default=500, metadata=bounds(ge=0))
    """evaluate on the test scripts every this many updates (0: only at the end)"""
    checkpoint_every: int = field(default=500, metadata=bounds(ge=0))
    """save a checkpoint every this many updates (0: only at the end)"""
    log_every: int = field(default=10, metadata=bounds(ge=1))
    """write training metrics every this many updates"""
    rotations: bool = False
    """augment training classes by random quarter turns"""
    lr: float = field(default=1e-3, metadata=bounds(gt=0))
    """Adam learning rate"""


@dataclass
class EpisodicConfig(GlyphDataConfig):
    """N-way K-shot episodes for the metric learners."""

    n_way: int = field(default=5, metadata=bounds(ge=2))
    """classes per evaluation episode"""
    k_shot: int = field(default=1, metadata=bounds(ge=1))
    """support images per class"""
    q_queries: int = field(default=15, metadata=bounds(ge=1))
    """query images per class"""
    train_way: int = field(default=0, metadata=bounds(ge=0))
    """classes per training episode (0: n_way; ProtoNets gain from more)"""
    meta_batch: int = field(default=1, metadata=bounds(ge=1))
    """episodes per optimizer update"""
    hidden: int = field(default=64, metadata=bounds(ge=1))
    """channels of the Conv-4 encoder"""
    eval_episodes: int = field(default=600, metadata=bounds(ge=2))
    """episodes for the accuracy and its 95% confidence interval"""

    def check(self) -> None:
        if self.samples_per_class < self.k_shot + self.q_queries:
            raise ConfigError(
                f"samples_per_class = {self.samples_per_class} must be >= k_shot + q_queries "
                f"= {self.k_shot + self.q_queries}"
            )

    @property
    def way_train(self) -> int:
        return self.train_way or self.n_way


@dataclass
class ProtoNetConfig(EpisodicConfig):
    """Prototypical networks on the glyph benchmark."""

    train_way: int = field(default=20, metadata=bounds(ge=0))
    """classes per training episode (Snell et al. train with more ways than they test)"""


@dataclass
class SiameseConfig(EpisodicConfig):
    """Siamese network with a contrastive loss on the glyph benchmark."""

    n_way: int = field(default=20, metadata=bounds(ge=2))
    """classes per evaluation episode (Koch et al. report 20-way one-shot)"""
    train_way: int = field(default=5, metadata=bounds(ge=0))
    """classes per training episode (the pairs come from it)"""
    q_queries: int = field(default=5, metadata=bounds(ge=1))
    """query images per class"""
    margin: float = field(default=1.0, metadata=bounds(gt=0))
    """contrastive margin on the distance of normalised embeddings (in [0, 2])"""


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def glyph_splits(config: GlyphData) -> dict[str, ImageSet]:
    """The train / test image sets of ``config`` (whole scripts or alphabets on each side)."""
    if config.dataset == "omniglot":
        from meta_rl.fewshot.data import load_omniglot, omniglot_split

        if config.data_root is None:
            raise ConfigError("data_root = None: dataset='omniglot' needs the Omniglot folder")
        return omniglot_split(load_omniglot(config.data_root, config.image_size))
    images = load_glyphs(
        root=config.data_root,
        image_size=config.image_size,
        samples_per_class=config.samples_per_class,
        fonts=config.fonts,
        scripts=list(config.scripts) or None,
    )
    return split_by_group(images, seed=config.split_seed)


Predictor = Callable[[Tensor, Tensor, Tensor, int], Tensor]
"""``(xs, ys, xq, n_way) -> logits [B, N*Q, n_way]``"""


@torch.no_grad()
def evaluate_accuracy(
    predict: Predictor, sampler: EpisodeSampler, episodes: int = 600, batch: int = 10
) -> dict[str, float]:
    """Accuracy over ``episodes`` episodes of ``sampler``: ``accuracy`` (mean of the per-episode
    accuracies) and ``ci95`` (half-width of its 95% confidence interval)."""
    accs: list[float] = []
    while len(accs) < episodes:
        b = min(batch, episodes - len(accs))
        xs, ys, xq, yq = sampler.sample(b)
        logits = predict(xs, ys, xq, sampler.n_way)
        accs += (logits.argmax(-1) == yq).float().mean(-1).tolist()
    est = mean_ci95(accs)
    return {"accuracy": est.mean, "ci95": est.ci95}


def _check_episode(xs: Tensor, ys: Tensor, xq: Tensor) -> None:
    if xs.dim() != 5 or xq.dim() != 5 or ys.shape != xs.shape[:2]:
        raise ValueError(
            f"episode shapes xs {tuple(xs.shape)}, ys {tuple(ys.shape)}, xq {tuple(xq.shape)}; "
            "expected xs [B, N*K, C, H, W], ys [B, N*K], xq [B, N*Q, C, H, W]"
        )


def _embed_episodes(
    encoder: nn.Module, xs: Tensor, xq: Tensor, images: collectives.Shard | None = None
) -> tuple[Tensor, Tensor]:
    """Embed support and query of every episode together (batch statistics per episode).

    ``images``: training on one episode whose images are split over the ranks: this rank embeds
    its images (the encoder's :class:`~meta_rl.fewshot.models.SyncBatchNorm2d` takes the whole
    episode's statistics) and an autograd-aware all-reduce of the zero-padded embeddings gives
    every rank the whole episode's embeddings."""
    x = torch.cat([xs, xq], dim=1)
    if images is None or images.whole or not encoder.training:
        z = torch.func.vmap(encoder)(x)
    else:
        from torch.distributed.nn.functional import all_reduce

        if x.shape[0] != 1 or x.shape[1] != images.total:
            raise ValueError(
                f"an image shard of {images.total} images needs one episode of that many "
                f"images; got {x.shape[0]} episodes of {x.shape[1]}"
            )
        local = encoder(x[0, images.slice])
        pad = [local.new_zeros(images.start, local.shape[1]), local]
        pad.append(local.new_zeros(images.total - images.stop, local.shape[1]))
        z = all_reduce(torch.cat(pad)).unsqueeze(0)
    return z[:, : xs.shape[1]], z[:, xs.shape[1] :]


# ---------------------------------------------------------------------------------------------
# prototypical networks
# ---------------------------------------------------------------------------------------------
def prototypes(z: Tensor, y: Tensor, n_way: int) -> Tensor:
    """Class means [B, n_way, D] of support embeddings ``z`` [B, M, D] with labels ``y`` [B, M]."""
    onehot = F.one_hot(y, n_way).to(z.dtype)  # [B, M, N]
    counts = onehot.sum(1).clamp(min=1.0)
    return torch.einsum("bmn,bmd->bnd", onehot, z) / counts.unsqueeze(-1)


class ProtoNet(nn.Module):
    """Conv-4 embedding + nearest prototype (squared Euclidean distance)."""

    def __init__(self, in_channels: int = 1, hidden: int = 64, image_size: int = 28) -> None:
        super().__init__()
        self.encoder = Conv4(in_channels, hidden, None, image_size)
        self.images: collectives.Shard | None = None
        """set by data-parallel training on single episodes (see :func:`_embed_episodes`)"""

    def forward(self, xs: Tensor, ys: Tensor, xq: Tensor, n_way: int) -> Tensor:
        """Logits [B, N*Q, n_way] = minus squared distances of queries to prototypes."""
        _check_episode(xs, ys, xq)
        zs, zq = _embed_episodes(self.encoder, xs, xq, self.images)
        return -torch.cdist(zq, prototypes(zs, ys, n_way)).pow(2)


# ---------------------------------------------------------------------------------------------
# Siamese network
# ---------------------------------------------------------------------------------------------
def contrastive_loss(d: Tensor, same: Tensor, margin: float = 1.0) -> Tensor:
    """Contrastive loss of distances ``d`` with pair labels ``same`` (bool), positives and
    negatives weighted equally (means over each, summed)."""
    same = same.to(d.dtype)
    pos = (same * d.pow(2)).sum() / same.sum().clamp(min=1.0)
    neg = ((1 - same) * F.relu(margin - d).pow(2)).sum() / (1 - same).sum().clamp(min=1.0)
    return pos + neg


class SiameseNet(nn.Module):
    """Twin Conv-4 embedding (shared weights) with L2-normalised outputs."""

    def __init__(self, in_channels: int = 1, hidden: int = 64, image_size: int = 28) -> None:
        super().__init__()
        self.encoder = Conv4(in_channels, hidden, None, image_size)
        self.images: collectives.Shard | None = None
        """set by data-parallel training on single episodes (see :func:`_embed_episodes`)"""

    def distances(self, xs: Tensor, xq: Tensor) -> Tensor:
        """Distances [B, N*Q, N*K] between every query and every support image."""
        zs, zq = _embed_episodes(self.encoder, xs, xq, self.images)
        return torch.cdist(F.normalize(zq, dim=-1), F.normalize(zs, dim=-1))

    def forward(self, xs: Tensor, ys: Tensor, xq: Tensor, n_way: int) -> Tensor:
        """Logits [B, N*Q, n_way]: minus the distance to the nearest support image of a class."""
        _check_episode(xs, ys, xq)
        d = self.distances(xs, xq)
        onehot = F.one_hot(ys, n_way).bool()  # [B, M, N]
        masked = d.unsqueeze(-1).masked_fill(~onehot.unsqueeze(1), math.inf)
        return -masked.amin(dim=2)


@torch.no_grad()
def verification_accuracy(
    model: SiameseNet, sampler: EpisodeSampler, margin: float, episodes: int = 100
) -> float:
    """Balanced accuracy of 'same class iff distance < margin / 2' on episode pairs."""
    accs = []
    for _ in range(episodes):
        xs, ys, xq, yq = sampler.sample(1)
        same = yq[:, :, None] == ys[:, None, :]
        pred = model.distances(xs, xq) < margin / 2
        tpr = (pred & same).sum() / same.sum()
        tnr = (~pred & ~same).sum() / (~same).sum()
        accs.append(0.5 * (tpr + tnr).item())
    return float(np.mean(accs))


# ---------------------------------------------------------------------------------------------
# the episodic training loop both learners share
# ---------------------------------------------------------------------------------------------
def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; "cuda" without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but CUDA is not available; use 'cpu' or 'auto'")
    return torch.device(device)


def _samplers(
    config: EpisodicConfig, device: torch.device
) -> tuple[EpisodeSampler, EpisodeSampler]:
    splits = glyph_splits(config)
    train = EpisodeSampler(
        splits["train"],
        config.way_train,
        config.k_shot,
        config.q_queries,
        np.random.default_rng([config.seed, 1]),
        rotations=config.rotations,
        device=device,
    )
    test = EpisodeSampler(
        splits["test"],
        config.n_way,
        config.k_shot,
        config.q_queries,
        np.random.default_rng([config.seed, 2]),
        device=device,
    )
    return train, test


def episode_shard(
    ctx: collectives.Context,
    total: int,
    field_name: str,
    why: str = "one episode's batch statistics and prototypes span all its images",
) -> collectives.Shard:
    """This rank's episodes of a batch of ``total`` (all of them with one process). Episodes are
    the unit of data parallelism here: an episode is never split over ranks (``why``)."""
    if total < ctx.world_size:
        raise ConfigError(
            f"{field_name} = {total} episodes cannot be split over {ctx.world_size} ranks: "
            f"data-parallel training splits whole episodes ({why}); set {field_name} >= "
            f"{ctx.world_size} or use fewer processes (--nproc-per-node)"
        )
    return ctx.shard(total)


def fit(
    config: Any,
    run: Any,
    dist: Any,
    model: nn.Module,
    train_rng: np.random.Generator,
    batch_loss: Callable[[], tuple[Tensor, Callable[[], dict[str, float]]]],
    weight: float,
    evaluation: Callable[[], dict[str, float]],
    hint: str,
    grad_clip: float = 0.0,
    optimizer: torch.optim.Optimizer | None = None,
    grad_clip_value: float = 0.0,
    progress_key: str = "accuracy",
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> dict[str, float]:
    """The supervised training loop (ProtoNet, Siamese, MANN, the NTM copy task): ``optimizer``
    (default Adam with ``config.lr``) on ``batch_loss() -> (loss, metrics after the step)``,
    this rank's share ``weight`` of the batch's mean, gradients summed over ranks (then their
    norm clipped to ``grad_clip`` and each entry to +-``grad_clip_value``, where > 0); resume,
    guard, evaluation, log and checkpoints by :mod:`meta_rl.loop` (``config`` has the schedule
    fields of :class:`GlyphDataConfig`); a learning-rate ``scheduler`` steps after every update.
    ``train_rng`` draws the training batches (it is checkpointed, and so is the scheduler).
    Returns the final metrics."""
    device = next(model.parameters()).device
    if optimizer is None:
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)

    def checkpoint() -> loop.Saved:
        state = {"optimizer": optimizer.state_dict(), "train_rng": rng_state(train_rng)}
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        return model.state_dict(), state

    start = 0
    keys = ("optimizer", "train_rng") + (("scheduler",) if scheduler is not None else ())
    ck = loop.resume(run, dist, device, model.state_dict(), keys)
    if ck is not None:
        model.load_state_dict(ck.tensors)
        optimizer.load_state_dict(ck.state["optimizer"])
        set_rng_state(train_rng, ck.state["train_rng"])
        if scheduler is not None:
            scheduler.load_state_dict(ck.state["scheduler"])
        start = ck.step
    dist.broadcast_(model.parameters())

    metrics: dict[str, float] = {}
    with loop.progress(run, config, start, progress_key):
        for it in range(start, config.iterations):
            loss, summary = batch_loss()
            optimizer.zero_grad()
            (loss * weight).backward()  # this rank's share of the mean over the batch
            dist.all_reduce_grads(model.parameters())  # summed before clipping: the global norm
            if grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if grad_clip_value > 0:
                nn.utils.clip_grad_value_(model.parameters(), grad_clip_value)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            metrics = summary()
            loop.end_step(
                run, config, it + 1, metrics, model.parameters(), evaluation, checkpoint, hint
            )
    return loop.final(metrics, evaluation)


def _train_episodic(
    config: EpisodicConfig,
    run,
    model: nn.Module,
    episode_loss: Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]],
    extra_eval: Callable[[EpisodeSampler], dict[str, float]] | None = None,
) -> dict[str, float]:
    """Adam on ``episode_loss(xs, ys, xq, yq) -> (loss, accuracy)`` over training episodes;
    evaluation on the test split (fresh, seeded episodes each time)."""
    dist = collectives.context()  # data-parallel ranks (one process: no-ops)
    if dist.enabled and config.meta_batch == 1:
        # one episode per update: its images are split over the ranks, and the encoder's
        # BatchNorms take the statistics of the whole episode's images
        n_images = config.way_train * (config.k_shot + config.q_queries)
        model.images = dist.shard(n_images)
        sync_batchnorm_(model)
        shard = collectives.Context().shard(1)  # every rank holds the (whole) episode
        weight = 1.0 / dist.world_size  # every rank computes the whole loss: a 1/N share
    else:
        why = "only a meta_batch of 1 episode is split by images"
        shard = episode_shard(dist, config.meta_batch, "meta_batch", why)
        weight = shard.weight
    config.apply_num_threads()
    device = resolve_device(config.device)
    model = model.to(device)
    train_sampler, test_sampler = _samplers(config, device)

    def evaluation() -> dict[str, float]:
        # the same test episodes at every evaluation: a fresh sampler with a fixed seed
        sampler = EpisodeSampler(
            test_sampler.imageset,
            config.n_way,
            config.k_shot,
            config.q_queries,
            np.random.default_rng([config.seed, 2]),
            device=device,
        )
        model.eval()
        out = evaluate_accuracy(model, sampler, config.eval_episodes)
        metrics = {"test_accuracy": out["accuracy"], "test_ci95": out["ci95"]}
        if extra_eval is not None:
            metrics.update(extra_eval(sampler))
        model.train()
        return metrics

    def batch_loss() -> tuple[Tensor, Callable[[], dict[str, float]]]:
        # every rank draws the whole batch (same sampler stream) and keeps its episodes
        loss, acc = episode_loss(*shard.take(train_sampler.sample(config.meta_batch)))
        return loss, lambda: dist.weighted_sum(
            {"loss": loss.item(), "accuracy": acc.item()}, weight
        )

    hint = f"Lower lr (now {config.lr}) or change the seed."
    metrics = fit(config, run, dist, model, train_sampler.rng, batch_loss, weight, evaluation, hint)
    log.info(
        "test accuracy %.4f +- %.4f (%d-way %d-shot, %d episodes)",
        metrics["test_accuracy"],
        metrics["test_ci95"],
        config.n_way,
        config.k_shot,
        config.eval_episodes,
    )
    return metrics


def train_protonet(config: ProtoNetConfig, run=None) -> dict[str, float]:
    """Train prototypical networks episodically; returns the final metrics."""
    config = collectives.context().sync_config(config)
    with seeded(config.seed):
        model = ProtoNet(1, config.hidden, config.image_size)
    n_train = config.way_train

    def episode_loss(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(xs, ys, xq, n_train)
        loss = F.cross_entropy(logits.flatten(0, 1), yq.flatten())
        return loss, (logits.argmax(-1) == yq).float().mean()

    return _train_episodic(config, run, model, episode_loss)


def train_siamese(config: SiameseConfig, run=None) -> dict[str, float]:
    """Train a Siamese network with the contrastive loss on episode pairs."""
    config = collectives.context().sync_config(config)
    with seeded(config.seed):
        model = SiameseNet(1, config.hidden, config.image_size)
    n_train = config.way_train

    def episode_loss(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, Tensor]:
        d = model.distances(xs, xq)
        same = yq[:, :, None] == ys[:, None, :]
        loss = contrastive_loss(d, same, config.margin)
        onehot = F.one_hot(ys, n_train).bool()
        nearest = -d.unsqueeze(-1).masked_fill(~onehot.unsqueeze(1), math.inf).amin(dim=2)
        return loss, (nearest.argmax(-1) == yq).float().mean()

    def verification(sampler: EpisodeSampler) -> dict[str, float]:
        return {"test_verification": verification_accuracy(model, sampler, config.margin)}

    return _train_episodic(config, run, model, episode_loss, verification)
