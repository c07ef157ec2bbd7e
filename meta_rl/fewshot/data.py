"""Few-shot image data: image sets, splits by group, a local Omniglot loader and episode samplers.

- `ImageSet`: uint8 images [N, H, W] (ink high), int64 labels [N], class names, and per class its
  group (script / alphabet) and source (font file / Omniglot "background" | "evaluation").
- `split_by_group`: disjoint train/val/test class sets, whole groups at a time, seeded.
- `load_omniglot(root)`: the standard folder layout, for users who have Omniglot on disk.
- the offline glyph benchmark is `meta_rl.fewshot.glyphs.load_glyphs` (it builds on `ImageSet`).
- `EpisodeSampler`: N-way K-shot episodes (`sample`) and MANN label sequences (`sample_sequence`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

OMNIGLOT_SUBSETS = ("images_background", "images_evaluation")
OMNIGLOT_LAYOUT = (
    "<root>/images_background/<Alphabet>/<character>/*.png and/or "
    "<root>/images_evaluation/<Alphabet>/<character>/*.png"
)


@dataclass(frozen=True, eq=False)
class ImageSet:
    """A labelled set of grayscale images; class c has name classes[c], group groups[c]."""

    images: np.ndarray
    """uint8 [N, H, W], ink = high values."""
    labels: np.ndarray
    """int64 [N], class index in [0, len(classes))."""
    classes: list[str]
    groups: list[str]
    """Group (script / alphabet) of each class."""
    sources: list[str] | None = None
    """Optional origin of each class (font file, Omniglot subset)."""

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.images.dtype != np.uint8:
            raise ValueError(
                f"images must be uint8 [N, H, W]; got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels shape {self.labels.shape} != ({len(self.images)},)")
        if len(self.groups) != len(self.classes):
            raise ValueError(f"{len(self.groups)} groups for {len(self.classes)} classes")
        if self.sources is not None and len(self.sources) != len(self.classes):
            raise ValueError(f"{len(self.sources)} sources for {len(self.classes)} classes")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"labels must lie in [0, {len(self.classes)})")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.images.shape[1], self.images.shape[2]

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)

    def group_names(self) -> list[str]:
        """Distinct groups in first-appearance order."""
        return list(dict.fromkeys(self.groups))

    def select_classes(self, class_indices: Sequence[int]) -> ImageSet:
        """A new set with only these classes, relabelled 0..len-1 in the given order."""
        idx = np.asarray(class_indices, dtype=np.int64)
        remap = np.full(self.num_classes, -1, dtype=np.int64)
        remap[idx] = np.arange(len(idx))
        mask = remap[self.labels] >= 0
        return ImageSet(
            images=self.images[mask],
            labels=remap[self.labels[mask]],
            classes=[self.classes[i] for i in idx],
            groups=[self.groups[i] for i in idx],
            sources=None if self.sources is None else [self.sources[i] for i in idx],
        )

    def select_groups(self, groups: Sequence[str]) -> ImageSet:
        """A new set with the classes of these groups."""
        wanted = set(groups)
        unknown = sorted(wanted - set(self.groups))
        if unknown:
            raise ValueError(f"groups {unknown} not in this set; known: {self.group_names()}")
        return self.select_classes([c for c, g in enumerate(self.groups) if g in wanted])


def split_by_group(
    imageset: ImageSet,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    assignment: Mapping[str, str] | None = None,
) -> dict[str, ImageSet]:
    """Disjoint class splits made of whole groups (scripts / alphabets).

    With `assignment` ({group: split name}) the split is explicit (groups not listed are left
    out). Otherwise groups are visited in a seeded random order and each joins the split whose
    class count is furthest below its target share `fractions` (default train/val/test =
    0.6/0.2/0.2 of the classes); a split with a positive share that ends up empty is an error.
    """
    if assignment is not None:
        unknown = sorted(set(assignment) - set(imageset.groups))
        if unknown:
            raise ValueError(
                f"assignment names groups {unknown} not in this set; known: "
                f"{imageset.group_names()}"
            )
        names = list(dict.fromkeys(assignment.values()))
        return {
            name: imageset.select_groups([g for g, s in assignment.items() if s == name])
            for name in names
        }
    fractions = dict(fractions or {"train": 0.6, "val": 0.2, "test": 0.2})
    bad = {k: v for k, v in fractions.items() if not v >= 0}
    if bad or sum(fractions.values()) <= 0:
        raise ValueError(f"fractions={fractions} must be >= 0 with a positive sum")
    total = sum(fractions.values())
    groups = imageset.group_names()
    sizes = {g: 0 for g in groups}
    for g in imageset.groups:
        sizes[g] += 1
    rng = np.random.default_rng(seed)
    order = [groups[i] for i in rng.permutation(len(groups))]
    have = {name: 0 for name in fractions}
    members: dict[str, list[str]] = {name: [] for name in fractions}
    n_classes = imageset.num_classes
    for g in order:
        # deficit = target classes - classes so far; ties go to the earlier split name
        name = max(fractions, key=lambda s: fractions[s] / total * n_classes - have[s])
        members[name].append(g)
        have[name] += sizes[g]
    empty = [s for s in fractions if fractions[s] > 0 and not members[s]]
    if empty:
        raise ValueError(
            f"splits {empty} got no group: {len(groups)} groups ({groups}) are too few for "
            f"fractions={fractions}; pass fewer splits or an explicit assignment"
        )
    out = {name: imageset.select_groups(members[name]) for name in fractions if members[name]}
    logger.info(
        "split_by_group: %s",
        {k: (v.num_classes, sorted(set(v.groups))) for k, v in out.items()},
    )
    return out


# ----------------------------------------------------------------------------- Omniglot


def load_omniglot(root: str | os.PathLike, image_size: int = 28) -> ImageSet:
    """Omniglot from a local folder in the standard layout (see OMNIGLOT_LAYOUT).

    Classes are "<Alphabet>/<character>", group = alphabet, source = "images_background" or
    "images_evaluation" (the standard background/evaluation split: `omniglot_split`). Images
    are inverted so ink is high and box-resized to image_size x image_size.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size={image_size!r} must be a positive integer")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Omniglot root {root} does not exist; expected {OMNIGLOT_LAYOUT}")
    subsets = [s for s in OMNIGLOT_SUBSETS if (root / s).is_dir()]
    if not subsets:
        zips = sorted(p.name for p in root.glob("images_*.zip"))
        hint = f" (found {zips}: unzip them here first)" if zips else ""
        raise FileNotFoundError(
            f"{root} has neither images_background/ nor images_evaluation/{hint}; "
            f"expected {OMNIGLOT_LAYOUT}"
        )
    images, labels, classes, groups, sources = [], [], [], [], []
    for subset in subsets:
        alphabets = sorted(p for p in (root / subset).iterdir() if p.is_dir())
        if not alphabets:
            raise ValueError(f"{root / subset} has no alphabet folders; expected {OMNIGLOT_LAYOUT}")
        for alphabet in alphabets:
            characters = sorted(p for p in alphabet.iterdir() if p.is_dir())
            if not characters:
                raise ValueError(
                    f"alphabet folder {alphabet} has no character folders; "
                    f"expected {OMNIGLOT_LAYOUT}"
                )
            for character in characters:
                files = sorted(character.glob("*.png"))
                if not files:
                    raise ValueError(f"character folder {character} has no .png images")
                label = len(classes)
                classes.append(f"{alphabet.name}/{character.name}")
                groups.append(alphabet.name)
                sources.append(subset)
                for f in files:
                    with Image.open(f) as im:
                        gray = im.convert("L")
                    ink = Image.eval(gray, lambda v: 255 - v)
                    small = ink.resize((image_size, image_size), Image.Resampling.BOX)
                    images.append(np.asarray(small, dtype=np.uint8))
                    labels.append(label)
    logger.info("omniglot: %d classes, %d images from %s", len(classes), len(images), root)
    return ImageSet(np.stack(images), np.asarray(labels, np.int64), classes, groups, sources)


def omniglot_split(
    imageset: ImageSet, val_alphabets: int = 0, seed: int = 0
) -> dict[str, ImageSet]:
    """The standard split: train = background alphabets, test = evaluation alphabets.

    `val_alphabets` > 0 moves that many seeded-random background alphabets to "val".
    """
    if imageset.sources is None:
        raise ValueError("imageset has no sources; load it with load_omniglot")
    group_subset = dict(zip(imageset.groups, imageset.sources, strict=True))
    background = [g for g, s in group_subset.items() if s == "images_background"]
    if not 0 <= val_alphabets < max(len(background), 1):
        raise ValueError(
            f"val_alphabets={val_alphabets} must be in [0, {len(background)}) "
            f"(background alphabets)"
        )
    val = set(np.random.default_rng(seed).permutation(background)[:val_alphabets].tolist())
    names = {"images_background": "train", "images_evaluation": "test"}
    assignment = {g: ("val" if g in val else names[s]) for g, s in group_subset.items()}
    return split_by_group(imageset, assignment=assignment)


# ----------------------------------------------------------------------------- episodes


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


class EpisodeSampler:
    """Seeded N-way K-shot episodes from an ImageSet.

    `sample(batch)` returns (xs [B, N*K, 1, H, W], ys [B, N*K], xq [B, N*Q, 1, H, W], yq [B, N*Q]):
    float32 images in [0, 1] and int64 labels. Each episode draws N distinct classes and K+Q
    distinct images per class; the class -> label map is a fresh random permutation of 0..N-1,
    and support / query are ordered by label (ys = 0,..,0,1,..,1,...). With `rotations=True`
    each episode rotates every drawn class by a random multiple of 90 degrees (the usual
    Omniglot class augmentation). Randomness comes only from `seed` (int or np.random.Generator).
    """

    def __init__(
        self,
        imageset: ImageSet,
        n_way: int,
        k_shot: int,
        q_queries: int,
        seed: int | np.random.Generator = 0,
        rotations: bool = False,
        device: str | torch.device = "cpu",
    ) -> None:
        self.n_way = _check_int("n_way", n_way, 1)
        self.k_shot = _check_int("k_shot", k_shot, 1)
        self.q_queries = _check_int("q_queries", q_queries, 0)
        self.imageset = imageset
        self.rotations = rotations
        self.device = torch.device(device)
        self.rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        counts = imageset.class_counts()
        self._counts = counts
        # table[c, j] = index of the j-th image of class c (padded with 0 past counts[c])
        order = np.argsort(imageset.labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        width = int(counts.max()) if len(counts) else 0
        j = np.arange(width)
        self._table = np.where(
            j[None, :] < counts[:, None],
            order[np.minimum(starts[:, None] + j[None, :], max(len(order) - 1, 0))],
            0,
        )
        self._images = torch.from_numpy(np.ascontiguousarray(imageset.images))
        self._eligible = self._classes_with(self.k_shot + self.q_queries, self.n_way, "sample")

    def _classes_with(self, need: int, n_way: int, what: str) -> np.ndarray:
        eligible = np.flatnonzero(self._counts >= need)
        if len(eligible) < n_way:
            most = int(self._counts.max()) if len(self._counts) else 0
            if len(eligible) == 0:
                raise ValueError(
                    f"{what}: k_shot + q_queries = {need} images per class exceed the largest "
                    f"class ({most} images)"
                    if what == "sample"
                    else f"{what}: {need} images per class exceed the largest class ({most})"
                )
            raise ValueError(
                f"{what}: n_way={n_way} exceeds the {len(eligible)} classes with at least "
                f"{need} images (of {self.imageset.num_classes} classes)"
            )
        return eligible

    def _draw(self, batch: int, n_way: int, per_class: int, eligible: np.ndarray) -> np.ndarray:
        """Image indices [B, n_way, per_class]: distinct classes, distinct images per class."""
        keys = self.rng.random((batch, len(eligible)))
        classes = eligible[np.argsort(keys, axis=1)[:, :n_way]]  # random order = random labels
        keys = self.rng.random((batch, n_way, self._table.shape[1]))
        keys[np.arange(self._table.shape[1]) >= self._counts[classes][..., None]] = 2.0
        picks = np.argsort(keys, axis=2)[..., :per_class]
        return self._table[classes[..., None], picks]

    def _images_for(self, idx: np.ndarray) -> torch.Tensor:
        """float32 [..., 1, H, W] in [0, 1] for an index array."""
        x = self._images[torch.from_numpy(idx)].to(self.device, torch.float32).div_(255.0)
        return x.unsqueeze(-3)

    def _rotate(self, x: torch.Tensor, k: np.ndarray) -> torch.Tensor:
        """Rotate x [B, n, m, 1, H, W] by k[b, n] quarter turns."""
        out = x.clone()
        for turns in (1, 2, 3):
            mask = torch.from_numpy(k == turns).to(x.device)
            if mask.any():
                out[mask] = torch.rot90(x[mask], turns, dims=(-2, -1))
        return out

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        batch = _check_int("batch", batch, 1)
        n, k, q = self.n_way, self.k_shot, self.q_queries
        idx = self._draw(batch, n, k + q, self._eligible)
        x = self._images_for(idx)  # [B, N, K+Q, 1, H, W]
        if self.rotations:
            x = self._rotate(x, self.rng.integers(0, 4, size=(batch, n)))
        h, w = x.shape[-2:]
        labels = torch.arange(n, device=self.device)
        xs = x[:, :, :k].reshape(batch, n * k, 1, h, w)
        xq = x[:, :, k:].reshape(batch, n * q, 1, h, w)
        ys = labels.repeat_interleave(k).expand(batch, -1).contiguous()
        yq = labels.repeat_interleave(q).expand(batch, -1).contiguous()
        return xs, ys, xq, yq

    def sample_sequence(
        self, batch: int, n_way: int | None = None, length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """MANN episodes: x [B, L, 1, H, W], y [B, L] (labels 0..n_way-1, fresh map per episode).

        Each episode draws n_way classes and `length` images split as evenly as possible among
        them (distinct images within a class), shown in a random order. The model usually sees
        y shifted by one step (its label for x[t] arrives with x[t+1]); `occurrence_index(y)`
        gives the instance number used for per-instance accuracy. length defaults to 10*n_way.
        """
        batch = _check_int("batch", batch, 1)
        n = self.n_way if n_way is None else _check_int("n_way", n_way, 1)
        length = 10 * n if length is None else _check_int("length", length, 1)
        per_class = -(-length // n)
        eligible = self._classes_with(per_class, n, "sample_sequence")
        idx = self._draw(batch, n, per_class, eligible)  # [B, n, per_class]
        x = self._images_for(idx)
        if self.rotations:
            x = self._rotate(x, self.rng.integers(0, 4, size=(batch, n)))
        h, w = x.shape[-2:]
        x = x.reshape(batch, n * per_class, 1, h, w)
        labels = np.repeat(np.arange(n), per_class)
        # keep `length` slots: every class gets floor(length/n), a random subset one more
        extra = length - n * (length // n)
        slot_keys = self.rng.random((batch, n * per_class))
        if per_class * n != length:
            # the last image of each class is optional; drop those of n - extra random classes
            drop_rank = np.argsort(self.rng.random((batch, n)), axis=1) >= extra  # [B, n]
            last = np.zeros((batch, n, per_class), dtype=bool)
            last[:, :, -1] = drop_rank
            slot_keys[last.reshape(batch, -1)] = 2.0
        order = np.argsort(slot_keys, axis=1)[:, :length]  # random order of the kept slots
        order_t = torch.from_numpy(order).to(self.device)
        x = torch.gather(x, 1, order_t[..., None, None, None].expand(-1, -1, 1, h, w))
        y = torch.from_numpy(labels[order]).to(self.device)
        return x, y


def occurrence_index(y: torch.Tensor) -> torch.Tensor:
    """For labels y [B, L]: how many times y[b, t] appeared before t (0 = first instance)."""
    onehot = torch.nn.functional.one_hot(y.long()).to(torch.int64)  # [B, L, C]
    seen_before = onehot.cumsum(1) - onehot
    return (seen_before * onehot).sum(-1)
