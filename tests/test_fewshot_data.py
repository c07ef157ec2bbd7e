"""Few-shot data: glyph generation (dedup, determinism, cache), splits, episodes, Omniglot."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from meta_rl.fewshot.data import (
    EpisodeSampler,
    ImageSet,
    load_omniglot,
    occurrence_index,
    omniglot_split,
    split_by_group,
)
from meta_rl.fewshot.glyphs import (
    NOTO_DIR,
    _soft_iou_duplicates,
    cache_paths,
    glyph_params,
    letter_inventory,
    letter_script,
    load_glyphs,
    resolve_fonts,
)

# Latin A, Greek Alpha, Cyrillic A look the same; likewise B / Beta / Ve, o / omicron / o.
LOOKALIKES = "AΑАBΒВoοо"
# a few letters of six scripts (Latin, Greek, Cyrillic, Armenian, Hebrew, Georgian)
SIX_SCRIPTS = "AGRλξψЖЯЩԱԲԳאבגაბგ"


def small_glyphs(root, letters=SIX_SCRIPTS, **kw):
    kw = {"samples_per_class": 5, "image_size": 20, "fonts": "dejavu", **kw}
    return load_glyphs(root=root, letters=letters, **kw)


# ----------------------------------------------------------------------------- glyphs


def test_letter_filter():
    assert letter_script(ord("A")) == "Latin"
    assert letter_script(ord("Ж")) == "Cyrillic"
    assert letter_script(ord("ﺏ")) == "Arabic"  # isolated positional form: kept
    assert letter_script(0x02B0) is None  # modifier letter small h (Lm)
    assert letter_script(0x1D400) is None  # mathematical bold capital A (Common script)
    assert letter_script(0xFB01) is None  # fi ligature (<compat>)
    assert letter_script(ord("7")) is None  # not a letter


def test_glyph_dedup_keeps_one_of_each_lookalike(tmp_path):
    s = small_glyphs(tmp_path, letters=LOOKALIKES + "Ж")
    names = [c.split(" ", 1)[1] for c in s.classes]
    assert names == [
        "LATIN CAPITAL LETTER A",
        "LATIN CAPITAL LETTER B",
        "LATIN SMALL LETTER O",
        "CYRILLIC CAPITAL LETTER ZHE",
    ]
    assert s.groups == ["Latin", "Latin", "Latin", "Cyrillic"]
    assert s.images.shape == (4 * 5, 20, 20) and s.images.dtype == np.uint8
    assert s.labels.tolist() == np.repeat(np.arange(4), 5).tolist()
    # ink is high on a dark background, and every sample has ink
    assert s.images.max() == 255
    assert (s.images.reshape(len(s), -1).max(1) > 128).all()
    assert s.images.mean() < 80
    # a stricter threshold than 1.0 would merge nothing new; 1.0 still merges identical A/Alpha
    strict = small_glyphs(tmp_path, letters="AΑ", dedup_threshold=1.0)
    assert strict.num_classes == 1


def test_soft_iou_dedup_is_greedy_in_order():
    base = np.zeros((6, 6), np.float32)
    base[1:5, 2] = 1.0
    a = base.copy()
    b = base.copy()
    b[1, 2] = 0.9  # soft IoU with a: 3.9 / 4 = 0.975
    c = b.copy()
    c[2, 2] = 0.85  # soft IoU with b: 3.75 / 3.9 = 0.96, with a: 3.75 / 4 = 0.94
    d = np.zeros((6, 6), np.float32)
    d[3, 0:5] = 1.0  # a different shape
    keep = _soft_iou_duplicates(np.stack([a, b, c, d]), threshold=0.95)
    # b duplicates the kept a; c only duplicates b, which was dropped, so c stays
    assert keep.tolist() == [True, False, True, True]
    assert _soft_iou_duplicates(np.stack([a, b, c, d]), threshold=0.99).tolist() == [True] * 4


def test_glyph_samples_are_jittered_not_copies(tmp_path):
    s = small_glyphs(tmp_path, letters="AG")
    a = s.images[s.labels == 0].astype(int)
    diffs = [np.abs(a[i] - a[j]).mean() for i in range(5) for j in range(i + 1, 5)]
    assert min(diffs) > 1.0  # no two samples identical


def test_glyph_build_is_byte_identical_and_cached(tmp_path, caplog):
    a = small_glyphs(tmp_path / "a")
    b = small_glyphs(tmp_path / "b")
    params = glyph_params(samples_per_class=5, image_size=20, fonts="dejavu", letters=SIX_SCRIPTS)
    (npz_a, man_a), (npz_b, man_b) = (
        cache_paths(params, tmp_path / "a"),
        cache_paths(params, tmp_path / "b"),
    )
    assert npz_a.read_bytes() == npz_b.read_bytes()
    assert man_a.read_text() == man_b.read_text()
    assert np.array_equal(a.images, b.images)
    manifest = json.loads(man_a.read_text())
    assert manifest["params"]["seed"] == 0
    assert all(len(f["sha256"]) == 64 for f in manifest["params"]["fonts"])
    assert manifest["num_classes"] == a.num_classes == len(manifest["classes"])

    # second call loads from the cache
    with caplog.at_level(logging.INFO, logger="meta_rl.fewshot.glyphs"):
        caplog.clear()
        c = small_glyphs(tmp_path / "a")
    assert any("loaded" in r.message for r in caplog.records)
    assert np.array_equal(c.images, a.images) and c.classes == a.classes

    # a manifest that does not match triggers a rebuild with the same bytes
    manifest["params"]["jitter"]["shear"] = 0.0
    man_a.write_text(json.dumps(manifest))
    with caplog.at_level(logging.INFO, logger="meta_rl.fewshot.glyphs"):
        caplog.clear()
        d = small_glyphs(tmp_path / "a")
    assert any("does not match" in r.message for r in caplog.records)
    assert np.array_equal(d.images, a.images)
    assert npz_a.read_bytes() == npz_b.read_bytes()

    # a damaged .npz (hash differs from the manifest) is rebuilt too
    npz_a.write_bytes(npz_a.read_bytes()[:-10])
    f = small_glyphs(tmp_path / "a")
    assert np.array_equal(f.images, a.images)
    assert npz_a.read_bytes() == npz_b.read_bytes()

    # another seed gives other images of the same classes
    e = small_glyphs(tmp_path / "a", seed=1)
    assert e.classes == a.classes and not np.array_equal(e.images, a.images)


def test_glyph_class_renders_the_same_in_any_subset(tmp_path):
    big = small_glyphs(tmp_path, letters="AGЖ")
    small = small_glyphs(tmp_path, letters="Ж")
    assert np.array_equal(big.images[big.labels == 2], small.images)


def test_glyph_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="fonts='comic'"):
        load_glyphs(root=tmp_path, fonts="comic", letters="A")
    with pytest.raises(ValueError, match="image_size=0"):
        load_glyphs(root=tmp_path, image_size=0, letters="A")
    with pytest.raises(ValueError, match="'7'"):
        load_glyphs(root=tmp_path, letters="A7")
    with pytest.raises(ValueError, match="Klingon"):
        load_glyphs(root=tmp_path, scripts=["Latin", "Klingon"], letters="A")


# ----------------------------------------------------------------------------- splits


def toy_set(n_groups=6, per_group=4, per_class=6, size=8, seed=0) -> ImageSet:
    """Random images; class c's images are distinct and labelled c."""
    rng = np.random.default_rng(seed)
    n = n_groups * per_group
    images = rng.integers(0, 256, size=(n * per_class, size, size), dtype=np.uint8)
    return ImageSet(
        images=images,
        labels=np.repeat(np.arange(n), per_class),
        classes=[f"c{i}" for i in range(n)],
        groups=[f"g{i // per_group}" for i in range(n)],
    )


def test_split_by_group_disjoint_whole_groups_seeded(tmp_path):
    s = toy_set(n_groups=10)
    splits = split_by_group(s, seed=3)
    assert set(splits) == {"train", "val", "test"}
    classes = [set(v.classes) for v in splits.values()]
    groups = [set(v.groups) for v in splits.values()]
    assert sum(len(c) for c in classes) == s.num_classes
    assert set.union(*classes) == set(s.classes)
    for i in range(3):
        for j in range(i + 1, 3):
            assert not classes[i] & classes[j] and not groups[i] & groups[j]
    assert splits["train"].num_classes >= splits["test"].num_classes
    again = split_by_group(s, seed=3)
    assert all(again[k].classes == splits[k].classes for k in splits)
    others = {tuple(sorted(split_by_group(s, seed=k)["test"].groups)) for k in range(6)}
    assert len(others) > 1  # the seed matters
    # images follow their classes
    tr = splits["train"]
    first = s.classes.index(tr.classes[0])
    assert np.array_equal(tr.images[tr.labels == 0], s.images[s.labels == first])

    glyphs = small_glyphs(tmp_path)
    g = split_by_group(glyphs, seed=0)
    scripts = [set(v.groups) for v in g.values()]
    assert set.union(*scripts) == set(glyphs.groups)
    assert sum(len(x) for x in scripts) == len(set(glyphs.groups)) == 6


def test_split_by_group_errors_and_assignment():
    s = toy_set(n_groups=2)
    with pytest.raises(ValueError, match="too few"):
        split_by_group(s)
    out = split_by_group(s, assignment={"g0": "train", "g1": "test"})
    assert out["train"].groups == ["g0"] * 4 and out["test"].groups == ["g1"] * 4
    with pytest.raises(ValueError, match="g7"):
        split_by_group(s, assignment={"g7": "train"})


# ----------------------------------------------------------------------------- episodes


def decode(x: torch.Tensor, s: ImageSet) -> np.ndarray:
    """Index into s of each image in x [..., 1, H, W] (images of toy_set are unique)."""
    flat = (x.reshape(-1, x.shape[-2] * x.shape[-1]) * 255).round().to(torch.uint8).numpy()
    lookup = {img.tobytes(): i for i, img in enumerate(s.images.reshape(len(s), -1))}
    return np.array([lookup[row.tobytes()] for row in flat]).reshape(x.shape[:-3])


def test_episode_sampler_shapes_labels_and_distinctness():
    s = toy_set()
    n, k, q, b = 5, 2, 3, 8
    sampler = EpisodeSampler(s, n_way=n, k_shot=k, q_queries=q, seed=0)
    xs, ys, xq, yq = sampler.sample(b)
    assert xs.shape == (b, n * k, 1, 8, 8) and xq.shape == (b, n * q, 1, 8, 8)
    assert xs.dtype == torch.float32 and ys.dtype == torch.int64
    assert 0.0 <= xs.min() and xs.max() <= 1.0
    assert ys[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert yq[0].tolist() == [i for i in range(n) for _ in range(q)]
    src_s, src_q = decode(xs, s), decode(xq, s)
    first_class = set()
    for e in range(b):
        cls_s, cls_q = s.labels[src_s[e]], s.labels[src_q[e]]
        # one class per label, the same class in support and query, no class twice
        per_label = {lab: set(cls_s[ys[e].numpy() == lab]) for lab in range(n)}
        assert all(len(v) == 1 for v in per_label.values())
        assert len({next(iter(v)) for v in per_label.values()}) == n
        for lab in range(n):
            assert set(cls_q[yq[e].numpy() == lab]) == per_label[lab]
        # no image twice within an episode (support and query disjoint)
        assert len(set(src_s[e]) | set(src_q[e])) == n * (k + q)
        first_class.add(next(iter(per_label[0])))
    assert len(first_class) > 1  # labels are re-drawn per episode


def test_episode_sampler_seeding():
    s = toy_set()
    a = EpisodeSampler(s, 5, 1, 2, seed=7).sample(4)
    b = EpisodeSampler(s, 5, 1, 2, seed=np.random.default_rng(7)).sample(4)
    c = EpisodeSampler(s, 5, 1, 2, seed=8).sample(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])


def test_episode_sampler_bad_arguments():
    s = toy_set(n_groups=2, per_group=3, per_class=20)  # 6 classes x 20 images
    with pytest.raises(ValueError, match=r"n_way=10 exceeds the 6 classes"):
        EpisodeSampler(s, n_way=10, k_shot=1, q_queries=1)
    with pytest.raises(ValueError, match=r"k_shot \+ q_queries = 25 .* \(20 images\)"):
        EpisodeSampler(s, n_way=5, k_shot=5, q_queries=20)
    with pytest.raises(ValueError, match="k_shot=0"):
        EpisodeSampler(s, n_way=5, k_shot=0, q_queries=1)
    with pytest.raises(ValueError, match="batch=0"):
        EpisodeSampler(s, n_way=5, k_shot=1, q_queries=1).sample(0)
    with pytest.raises(ValueError, match="n_way=7 exceeds"):
        EpisodeSampler(s, 5, 1, 1).sample_sequence(2, n_way=7, length=14)


def test_episode_sampler_rotations():
    s = toy_set(n_groups=2, per_group=3)
    xs, ys, xq, yq = EpisodeSampler(s, 3, 2, 2, seed=0, rotations=True).sample(16)
    rotated = {}
    for turns in range(4):
        for i, img in enumerate(np.rot90(s.images, turns, axes=(1, 2))):
            rotated[np.ascontiguousarray(img).tobytes()] = (i, turns)
    seen_turns = set()
    x = torch.cat([xs, xq], 1)
    y = torch.cat([ys, yq], 1)
    for e in range(16):
        imgs = (x[e, :, 0] * 255).round().to(torch.uint8).numpy()
        found = [rotated[img.tobytes()] for img in imgs]
        for lab in range(3):
            turns = {t for (_, t), yy in zip(found, y[e].tolist(), strict=True) if yy == lab}
            assert len(turns) == 1  # one rotation per class per episode
            seen_turns |= turns
    assert seen_turns == {0, 1, 2, 3}


def test_sample_sequence_balanced_and_shuffled():
    s = toy_set(per_class=12)
    sampler = EpisodeSampler(s, n_way=5, k_shot=1, q_queries=1, seed=0)
    x, y = sampler.sample_sequence(6, n_way=5, length=50)
    assert x.shape == (6, 50, 1, 8, 8) and y.shape == (6, 50) and y.dtype == torch.int64
    src = decode(x, s)
    for e in range(6):
        assert np.bincount(y[e].numpy(), minlength=5).tolist() == [10] * 5
        assert len(set(src[e])) == 50  # distinct images
        cls = s.labels[src[e]]
        assert all(len(set(cls[y[e].numpy() == lab])) == 1 for lab in range(5))
        assert y[e].tolist() != sorted(y[e].tolist())  # interleaved, not blocked
    x2, y2 = sampler.sample_sequence(3, n_way=3, length=7)
    counts = [sorted(np.bincount(row, minlength=3).tolist()) for row in y2.numpy()]
    assert counts == [[2, 2, 3]] * 3
    with pytest.raises(ValueError, match="13 images per class"):
        sampler.sample_sequence(1, n_way=2, length=26)


def test_occurrence_index():
    y = torch.tensor([[0, 1, 0, 0, 2, 1]])
    assert occurrence_index(y).tolist() == [[0, 0, 1, 2, 0, 1]]


# ----------------------------------------------------------------------------- Omniglot


def write_png(path, seed):
    """A 105x105 Omniglot-style image: white background, black strokes, 1-bit."""
    rng = np.random.default_rng(seed)
    img = np.ones((105, 105), dtype=bool)
    r, c = rng.integers(10, 80, size=2)
    img[r : r + 20, c : c + 6] = False
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def make_omniglot(root, layout):
    seed = 0
    for subset, alphabets in layout.items():
        for alphabet, n_chars in alphabets.items():
            for ch in range(1, n_chars + 1):
                for d in range(1, 4):
                    write_png(
                        root / subset / alphabet / f"character{ch:02d}" / f"{d:02d}.png", seed
                    )
                    seed += 1


def test_load_omniglot(tmp_path):
    make_omniglot(
        tmp_path,
        {
            "images_background": {"Alpha": 2, "Beta": 3},
            "images_evaluation": {"Gamma": 2},
        },
    )
    s = load_omniglot(tmp_path, image_size=14)
    assert s.images.shape == (7 * 3, 14, 14) and s.images.dtype == np.uint8
    assert s.classes[:3] == ["Alpha/character01", "Alpha/character02", "Beta/character01"]
    assert s.groups == ["Alpha"] * 2 + ["Beta"] * 3 + ["Gamma"] * 2
    assert s.sources[0] == "images_background" and s.sources[-1] == "images_evaluation"
    # inverted: strokes (black in the file) are high, background low
    assert s.images.max() > 200 and np.median(s.images) == 0
    splits = omniglot_split(s)
    assert sorted(set(splits["train"].groups)) == ["Alpha", "Beta"]
    assert splits["test"].groups == ["Gamma", "Gamma"]
    with_val = omniglot_split(s, val_alphabets=1, seed=0)
    assert len(set(with_val["val"].groups)) == 1 and with_val["train"].num_classes in (2, 3)
    xs, ys, xq, yq = EpisodeSampler(s, 3, 1, 2, seed=0).sample(2)
    assert xs.shape == (2, 3, 1, 14, 14)


def test_load_omniglot_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_omniglot(tmp_path / "nope")
    (tmp_path / "omniglot" / "stuff").mkdir(parents=True)
    (tmp_path / "omniglot" / "images_background.zip").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"unzip.*images_background/<Alphabet>/<character>"):
        load_omniglot(tmp_path / "omniglot")
    make_omniglot(tmp_path / "o2", {"images_background": {"Alpha": 1}})
    (tmp_path / "o2" / "images_background" / "Alpha" / "character02").mkdir()
    with pytest.raises(ValueError, match="character02 has no .png"):
        load_omniglot(tmp_path / "o2")
    (tmp_path / "o3" / "images_background" / "Alpha").mkdir(parents=True)
    with pytest.raises(ValueError, match="no character folders"):
        load_omniglot(tmp_path / "o3")


@pytest.mark.skipif(not NOTO_DIR.is_dir(), reason="fonts-noto-core is not installed")
def test_noto_script_fonts_only_give_their_script():
    files = resolve_fonts("noto")
    names = [f.path.name for f in files]
    armenian = letter_inventory(files, only="Ա")[0]
    styles = {names[i] for i in armenian.fonts}
    assert "DejaVuSans.ttf" in styles and "NotoSansArmenian-Regular.ttf" in styles
    assert not any("Georgian" in n for n in styles)
    latin = letter_inventory(files, only="A")[0]
    assert not any("Armenian" in names[i] for i in latin.fonts)


@pytest.mark.slow
def test_full_dejavu_set_and_documented_split(tmp_path):
    s = load_glyphs(root=tmp_path)
    assert s.num_classes == 2518 and len(s) == 2518 * 20 and len(set(s.groups)) == 15
    splits = split_by_group(s, seed=0)
    assert {k: v.num_classes for k, v in splits.items()} == {"train": 1584, "val": 376, "test": 558}
    assert sorted(set(splits["test"].groups)) == [
        "Georgian", "Greek", "Hebrew", "Lao", "Lisu", "Nko", "Tifinagh"
    ]  # fmt: skip
