"""Backbones for few-shot learning: an MLP and the Conv-4 network of the few-shot literature.

Both are plain ``nn.Module`` s with no in-place buffer updates (batch norm keeps no running
statistics), so they run under ``torch.func.functional_call`` with per-task parameter dicts and
under ``torch.func.vmap`` over tasks, as the gradient learners (MAML, Meta-SGD, Reptile) need.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from meta_rl.core.functional import register_linear_chain

__all__ = ["MLP", "Conv4", "SyncBatchNorm2d", "conv4_feature_size", "seeded", "sync_batchnorm_"]

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """Fully connected net ``sizes[0] -> sizes[1] -> ... -> sizes[-1]`` with an activation
    between layers (none after the last). ``MLP([1, 40, 40, 1])`` is the sinusoid network."""

    def __init__(self, sizes: Sequence[int], activation: str = "relu") -> None:
        super().__init__()
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"sizes={sizes!r} needs at least an input and an output size")
        for i, s in enumerate(sizes):
            if not isinstance(s, int) or isinstance(s, bool) or s < 1:
                raise ValueError(f"sizes[{i}]={s!r} must be a positive integer")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; allowed: {sorted(_ACTIVATIONS)}")
        self.sizes = sizes
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(_ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.sizes[0]:
            raise ValueError(
                f"input has shape {tuple(x.shape)}; last dimension must be {self.sizes[0]}"
            )
        return self.net(x)


# MLP.forward is its Sequential `net` (plus an input check): every user of MLP gets the
# meta-core's fast path, batched matrix products over per-task weights (see batched_call).
register_linear_chain(MLP, lambda m: ("net.", m.net))


def conv4_feature_size(hidden: int, image_size: int) -> int:
    """Feature size of :class:`Conv4` (four 'same' convolutions, each followed by a 2x2
    max-pool that floors odd sizes)."""
    s = image_size
    for _ in range(4):
        s //= 2
    if s < 1:
        raise ValueError(f"image_size={image_size} is too small for 4 pooling stages (need >= 16)")
    return hidden * s * s


class Conv4(nn.Module):
    """Four blocks of [conv 3x3 (padding 1), BatchNorm (batch statistics only), ReLU,
    max-pool 2], flatten, then a linear head to ``out_features`` logits.

    ``out_features=None`` builds the feature extractor only: ``forward`` returns the embedding
    (what ProtoNets and Siamese nets use). :meth:`embed` always returns the embedding.
    Input: [N, in_channels, image_size, image_size] floats.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden: int = 64,
        out_features: int | None = 5,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("hidden", hidden)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        if out_features is not None and (not isinstance(out_features, int) or out_features < 1):
            raise ValueError(f"out_features={out_features!r} must be a positive integer or None")
        self.in_channels, self.hidden, self.image_size = in_channels, hidden, image_size
        self.feature_size = conv4_feature_size(hidden, image_size)
        blocks: list[nn.Module] = []
        ch = in_channels
        for _ in range(4):
            blocks += [
                nn.Conv2d(ch, hidden, 3, padding=1),
                nn.BatchNorm2d(hidden, track_running_stats=False),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            ch = hidden
        self.features = nn.Sequential(*blocks)
        self.head = None if out_features is None else nn.Linear(self.feature_size, out_features)

    def embed(self, x: Tensor) -> Tensor:
        """Features [N, feature_size] of images [N, C, H, W]."""
        if x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[-1] != self.image_size:
            raise ValueError(
                f"images have shape {tuple(x.shape)}; expected [N, {self.in_channels}, "
                f"{self.image_size}, {self.image_size}]"
            )
        return torch.flatten(self.features(x), 1)

    def forward(self, x: Tensor) -> Tensor:
        z = self.embed(x)
        return z if self.head is None else self.head(z)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d with batch statistics only whose training-mode statistics are those of the
    images on *all* ranks of the process group (sums and counts summed by autograd-aware
    all-reduces, so gradients flow across ranks too); works with gloo on CPU tensors. In eval
    mode, or without a multi-process group, it is a plain batch-statistics BatchNorm2d.
    Mean and (biased) variance are taken in two passes, as BatchNorm does."""

    def forward(self, x: Tensor) -> Tensor:
        import torch.distributed as dist

        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = (0, 2, 3)
        count = torch.full((1,), float(x.numel() // c), dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum(dims), count]))
        n = sums[c].detach()
        mean = (sums[:c] / n).view(1, c, 1, 1)
        var = all_reduce((x - mean).square().sum(dims)) / n
        y = (x - mean) * torch.rsqrt(var + self.eps).view(1, c, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y


def sync_batchnorm_(module: nn.Module) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` (batch statistics only) inside ``module`` by a
    :class:`SyncBatchNorm2d` holding the same parameters (state-dict keys unchanged). Returns
    ``module``. Call it before building the optimizer; only multi-process runs need it."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            if child.track_running_stats:
                raise ValueError(
                    f"{name}: BatchNorm2d with track_running_stats=True; SyncBatchNorm2d "
                    "supports batch statistics only"
                )
            new = SyncBatchNorm2d(
                child.num_features, child.eps, affine=child.affine, track_running_stats=False
            )
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            new.train(child.training)
            setattr(module, name, new)
        else:
            sync_batchnorm_(child)
    return module


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Build modules inside ``with seeded(seed):`` for seed-determined initial weights; the
    global torch RNG state is restored afterwards (nothing else sees the draws)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
