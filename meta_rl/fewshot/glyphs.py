"""Offline Omniglot-like benchmark: the letters of many Unicode scripts rendered from fonts.

No image data set can be downloaded, so we draw one. Every *letter* (Unicode categories Lu, Ll, Lt,
Lo of a real script) that the fonts cover becomes a class; its *group* is its script (Latin,
Greek, Armenian, ...), the analogue of an Omniglot alphabet. Each class gets `samples_per_class`
images drawn from the fonts that cover it (style variation, like different drawers) with per-sample
affine jitter (rotation, scale, shear, translation) and stroke jitter (thinner / thicker via
3x3 grey erosion / dilation), rendered at 3x resolution and box-downsampled. Ink is high (255).

What is left out, and why:
- modifier letters (Lm: superscripts such as U+02B0), letters of the Common/Inherited scripts
  (mathematical alphanumerics) and compatibility forms (<font>, <super>, <compat>, ...): they are
  restyled copies of other letters, not letters of an alphabet. Arabic positional forms
  (<initial>, <medial>, <final>, <isolated>) are kept: they are distinct shapes.
- look-alikes: letters whose canonical bitmaps (primary font, no jitter) overlap with a
  soft IoU >= `dedup_threshold` are one class; the first in font/codepoint order survives (so
  Latin A stays, Greek Alpha and Cyrillic A go). Empty renders and the missing-glyph box go too.

Fonts: `fonts="dejavu"` (default) uses the DejaVu fonts inside matplotlib's wheel (Sans, Serif,
Sans Bold, Sans Mono; ~15 scripts), so every machine with matplotlib builds the same set.
`fonts="noto"` adds Debian's `fonts-noto-core` (/usr/share/fonts/truetype/noto, ~140 scripts,
~23k letters before dedup: pass `max_per_script` to keep it Omniglot-sized); `fonts="auto"` adds
Noto only when it is installed. A list of font paths is also accepted (each file is one style and
may contribute every letter it covers).

Splits: `split_by_group(load_glyphs(), seed=0)` (train/val/test = 0.6/0.2/0.2 of the classes, whole
scripts) gives on the default DejaVu set (2,518 classes, 15 scripts):
- train (1,584): Canadian Aboriginal, Coptic, Cyrillic, Latin, Ogham
- val (376): Arabic, Armenian, Old Italic
- test (558): Georgian, Greek, Hebrew, Lao, Lisu, Nko, Tifinagh
`scripts/build_glyphs.py` prints the split for any other build / seed.

The result is cached on disk (`$META_RL_DATA/glyphs` or `~/.cache/meta-rl/glyphs`) as an .npz
plus a JSON manifest (parameters, SHA-256 of each font file, library versions, classes, counts,
SHA-256 of the .npz). A manifest that does not match the request triggers a rebuild; the same
request on the same library versions rebuilds byte-identical files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import unicodedata
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL
from fontTools import unicodedata as ft_unicodedata
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont, features

from meta_rl.fewshot.data import ImageSet

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
NOTO_DIR = Path("/usr/share/fonts/truetype/noto")
DEJAVU_FILES = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf")
FONT_SETS = ("dejavu", "noto", "auto")
LETTER_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lo"})
NON_SCRIPTS = frozenset({"Zyyy", "Zinh", "Zzzz"})  # Common, Inherited, Unknown
DROPPED_DECOMPOSITIONS = frozenset(
    {
        "<compat>",
        "<font>",
        "<super>",
        "<sub>",
        "<wide>",
        "<narrow>",
        "<small>",
        "<square>",
        "<circle>",
        "<vertical>",
        "<fraction>",
        "<noBreak>",
    }
)
# Noto files that carry no letters we want (symbols, numerals, display duplicates).
_NOTO_SKIP = ("Display", "Math", "Symbols", "Music", "Numerals", "SignWriting", "Mono")

SUPERSAMPLE = 3  # render at 3x image_size, then box-downsample
FIT = 0.8  # the glyph's longer side fills this fraction of the canvas before jitter
CANON_SIZE = 32  # resolution of the canonical bitmaps used for dedup


@dataclass(frozen=True)
class Jitter:
    """Per-sample jitter ranges (uniform draws)."""

    rotation_deg: float = 12.0
    """Rotation in [-r, r] degrees."""
    scale: tuple[float, float] = (0.85, 1.1)
    """Isotropic scale factor range."""
    shear: float = 0.2
    """Horizontal shear factor in [-s, s]."""
    translate: float = 0.08
    """Translation in [-t, t] canvas widths, per axis."""
    stroke: tuple[int, ...] = (-1, 0, 1, 2)
    """Stroke changes to pick from: -1 erode, 0 none, 1 / 2 dilate, by 3x3 min / max filters
    applied |k| times at the supersampled resolution (one supersampled pixel per side each)."""


@dataclass(frozen=True)
class FontFile:
    """One font file used as a rendering style; `scripts` limits which letters it contributes."""

    path: Path
    scripts: frozenset[str] | None = None


# ----------------------------------------------------------------------------- fonts


def dejavu_fonts() -> list[FontFile]:
    """The DejaVu fonts shipped inside matplotlib's wheel (always present)."""
    import matplotlib

    root = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    return [FontFile(root / name) for name in DEJAVU_FILES]


def _compact(name: str) -> str:
    return name.replace(" ", "").replace("_", "").replace("-", "").lower()


def noto_fonts(root: str | os.PathLike = NOTO_DIR) -> list[FontFile]:
    """Regular and Bold files of Debian's fonts-noto-core; script fonts only give their script."""
    root = Path(root)
    files = sorted(root.glob("*-Regular.ttf")) + sorted(root.glob("*-Bold.ttf"))
    if not files:
        raise FileNotFoundError(
            f"no Noto fonts (*-Regular.ttf) under {root}; install them with "
            "`apt-get install fonts-noto-core` or use fonts='dejavu'"
        )
    generic = {"NotoSans", "NotoSerif"}
    out = []
    for path in files:
        stem = path.name.split("-")[0]
        if any(word in stem for word in _NOTO_SKIP):
            continue
        if stem in generic:
            out.append(FontFile(path))
        else:  # e.g. NotoSansArmenian -> only Armenian letters; NotoKufiArabic -> Arabic
            out.append(FontFile(path, scripts=frozenset({_compact(stem)})))
    # generic families first so Latin/Greek/Cyrillic get their primary style from them
    out.sort(key=lambda f: (f.scripts is not None, f.path.name))
    return out


def resolve_fonts(fonts: str | Sequence[str | os.PathLike]) -> list[FontFile]:
    """Turn `fonts` ("dejavu" | "noto" | "auto" | list of paths) into font files, primary first."""
    if isinstance(fonts, str):
        if fonts == "dejavu":
            return dejavu_fonts()
        if fonts == "noto":
            return dejavu_fonts() + noto_fonts()
        if fonts == "auto":
            has_noto = NOTO_DIR.is_dir() and any(NOTO_DIR.glob("*-Regular.ttf"))
            return dejavu_fonts() + (noto_fonts() if has_noto else [])
        raise ValueError(
            f"fonts={fonts!r} is not allowed; use one of {FONT_SETS} or a list of paths"
        )
    out = [FontFile(Path(p)) for p in fonts]
    if not out:
        raise ValueError("fonts=[] is empty; give at least one font file")
    for f in out:
        if not f.path.is_file():
            raise FileNotFoundError(f"font file {f.path} does not exist")
    return out


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- letters


def letter_script(cp: int) -> str | None:
    """Script name of a letter we keep (e.g. "Latin"), or None when the code point is dropped."""
    ch = chr(cp)
    if unicodedata.category(ch) not in LETTER_CATEGORIES:
        return None
    code = ft_unicodedata.script(ch)
    if code in NON_SCRIPTS:
        return None
    decomposition = unicodedata.decomposition(ch)
    if decomposition.startswith("<") and decomposition.split()[0] in DROPPED_DECOMPOSITIONS:
        return None
    return ft_unicodedata.script_name(code)


@dataclass
class Letter:
    codepoint: int
    script: str
    fonts: list[int]  # indices into the font list; fonts[0] is the primary (canonical) style


def letter_inventory(
    fonts: Sequence[FontFile], scripts: Sequence[str] | None = None, only: str | None = None
) -> list[Letter]:
    """Letters covered by the fonts (first font covering a letter is its primary style).

    `scripts` keeps only letters of these scripts, `only` only these characters.
    """
    wanted = None if scripts is None else {_compact(s) for s in scripts}
    chars = None if only is None else {ord(c) for c in only}
    letters: dict[int, Letter] = {}
    for i, font in enumerate(fonts):
        cmap = TTFont(str(font.path), lazy=True).getBestCmap() or {}
        for cp in sorted(cmap if chars is None else chars.intersection(cmap)):
            script = letter_script(cp)
            if script is None:
                continue
            key = _compact(script)
            if wanted is not None and key not in wanted:
                continue
            if font.scripts is not None and not any(key in s for s in font.scripts):
                continue
            if cp in letters:
                letters[cp].fonts.append(i)
            else:
                letters[cp] = Letter(cp, script, [i])
    if chars is not None:
        absent = sorted(chars - set(letters))
        if absent:
            raise ValueError(
                f"letters: {''.join(chr(c) for c in absent)!r} are not kept letters of the fonts "
                f"{[f.path.name for f in fonts]} (not covered, not a letter, or filtered script)"
            )
    if wanted is not None:
        found = {_compact(let.script) for let in letters.values()}
        missing = sorted(set(scripts or ()) - {s for s in scripts or () if _compact(s) in found})
        if missing:
            raise ValueError(
                f"scripts={list(scripts or ())}: no letters of {missing} in the fonts "
                f"{[f.path.name for f in fonts]}"
            )
    return list(letters.values())


# ----------------------------------------------------------------------------- rendering


def _master(font: ImageFont.FreeTypeFont, ch: str) -> Image.Image | None:
    """The glyph drawn at font size, cropped to its ink; None when it renders empty."""
    left, top, right, bottom = font.getbbox(ch)
    pad = 4
    img = Image.new("L", (max(1, right - left) + 2 * pad, max(1, bottom - top) + 2 * pad))
    ImageDraw.Draw(img).text((pad - left, pad - top), ch, font=font, fill=255)
    box = img.getbbox()
    return None if box is None else img.crop(box)


def _canonical(master: Image.Image, size: int = CANON_SIZE) -> np.ndarray:
    """Master fitted into a size x size canvas (no jitter), float in [0, 1]."""
    w, h = master.size
    s = FIT * size / max(w, h)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    canvas = Image.new("L", (size, size))
    canvas.paste(
        master.resize((nw, nh), Image.Resampling.BOX), ((size - nw) // 2, (size - nh) // 2)
    )
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _morph(a: np.ndarray, steps: int) -> np.ndarray:
    """Grey dilation (steps > 0) or erosion (steps < 0) by a 3x3 square, |steps| times."""
    op = np.maximum if steps > 0 else np.minimum
    for _ in range(abs(steps)):
        p = np.pad(a, 1, mode="edge")
        rows = op(op(p[:-2], p[1:-1]), p[2:])  # separable: 3 rows, then 3 columns
        a = op(op(rows[:, :-2], rows[:, 1:-1]), rows[:, 2:])
    return a


def _jittered(
    master: Image.Image, rng: np.random.Generator, image_size: int, jitter: Jitter
) -> np.ndarray:
    """One sample: affine + stroke jitter at SUPERSAMPLE x resolution, box-downsampled (uint8)."""
    big = image_size * SUPERSAMPLE
    w, h = master.size
    theta = math.radians(rng.uniform(-jitter.rotation_deg, jitter.rotation_deg))
    scale = rng.uniform(*jitter.scale) * FIT * big / max(w, h)
    shear = rng.uniform(-jitter.shear, jitter.shear)
    tx, ty = rng.uniform(-jitter.translate, jitter.translate, size=2) * big
    stroke = int(jitter.stroke[rng.integers(len(jitter.stroke))])
    # forward map (master -> canvas): p = c_out + t + A (q - c_in), A = scale * R(theta) @ Shear;
    # Pillow wants the inverse: q = c_in + A^-1 (p - c_out - t)
    cos, sin = math.cos(theta), math.sin(theta)
    a00, a01, a10, a11 = (
        scale * cos,
        scale * (cos * shear - sin),
        scale * sin,
        scale * (sin * shear + cos),
    )
    det = a00 * a11 - a01 * a10
    i00, i01, i10, i11 = a11 / det, -a01 / det, -a10 / det, a00 / det
    px, py = big / 2.0 + tx, big / 2.0 + ty
    data = (i00, i01, w / 2.0 - i00 * px - i01 * py, i10, i11, h / 2.0 - i10 * px - i11 * py)
    img = master.transform((big, big), Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
    arr = np.asarray(img)
    if stroke < 0:
        thin = _morph(arr, stroke)
        # keep erosion only when the glyph survives it (thin strokes could vanish)
        if int(thin.sum()) * 2 >= int(arr.sum()):
            arr = thin
    elif stroke > 0:
        arr = _morph(arr, stroke)
    # exact box downsampling by SUPERSAMPLE, rounded half up
    box = arr.reshape(image_size, SUPERSAMPLE, image_size, SUPERSAMPLE).sum((1, 3), dtype=np.int32)
    n = SUPERSAMPLE * SUPERSAMPLE
    return ((box + n // 2) // n).astype(np.uint8)


def _soft_iou_duplicates(canon: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy dedup: keep[i] is False when an earlier kept bitmap has soft IoU >= threshold."""
    n = len(canon)
    flat = canon.reshape(n, -1).astype(np.float64)  # float64: no rounding flips a candidate
    mass = flat.sum(1)
    # soft IoU = sum(min) / sum(max) <= min(mass) / max(mass): only near-equal masses can match
    order = np.argsort(mass, kind="stable")
    sorted_mass = mass[order]
    neighbours: dict[int, list[int]] = {}
    chunk = 256
    for start in range(0, n, chunk):
        rows = order[start : start + chunk]
        lo = np.searchsorted(sorted_mass, sorted_mass[start] * threshold, side="left")
        hi_end = min(start + chunk, n) - 1
        hi = np.searchsorted(sorted_mass, sorted_mass[hi_end] / threshold, side="right")
        cols = order[lo:hi]
        a, b = flat[rows], flat[cols]
        # soft IoU >= t  <=>  L1 <= (|a| + |b|) (1 - t) / (1 + t); since values lie in [0, 1],
        # L1 >= squared L2, which a matrix product gives cheaply: exact check on candidates only
        both = mass[rows][:, None] + mass[cols][None, :]
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
        sim = np.zeros(sq.shape)
        candidates = np.nonzero(sq <= both * (1 - threshold) / (1 + threshold) + 1e-6)
        for r, c in zip(*candidates, strict=True):
            inter = np.minimum(a[r], b[c]).sum()
            sim[r, c] = inter / max(float(both[r, c] - inter), 1e-6)
        for r, c in zip(*np.nonzero(sim >= threshold), strict=True):
            i, j = int(rows[r]), int(cols[c])
            if j < i:
                neighbours.setdefault(i, []).append(j)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        if any(keep[j] for j in neighbours.get(i, ())):
            keep[i] = False
    return keep


# ----------------------------------------------------------------------------- build + cache


def default_root() -> Path:
    """`$META_RL_DATA/glyphs` if set, else `~/.cache/meta-rl/glyphs`."""
    base = os.environ.get("META_RL_DATA")
    return (Path(base) if base else Path.home() / ".cache" / "meta-rl") / "glyphs"


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return int(value)


def glyph_params(
    image_size: int = 28,
    samples_per_class: int = 20,
    seed: int = 0,
    fonts: str | Sequence[str | os.PathLike] = "dejavu",
    scripts: Sequence[str] | None = None,
    max_per_script: int | None = None,
    dedup_threshold: float = 0.95,
    jitter: Jitter | None = None,
    letters: str | None = None,
) -> dict:
    """The full, JSON-able description of a build (what the manifest must match)."""
    _check_positive_int("image_size", image_size)
    _check_positive_int("samples_per_class", samples_per_class)
    if max_per_script is not None:
        _check_positive_int("max_per_script", max_per_script)
    if not 0.0 < dedup_threshold <= 1.0:
        raise ValueError(f"dedup_threshold={dedup_threshold!r} must be in (0, 1]")
    jitter = jitter or Jitter()
    files = resolve_fonts(fonts)
    return {
        "format_version": FORMAT_VERSION,
        "image_size": int(image_size),
        "samples_per_class": int(samples_per_class),
        "seed": int(seed),
        "fonts": [
            {
                "file": f.path.name,
                "path": str(f.path),
                "sha256": sha256_file(f.path),
                "scripts": None if f.scripts is None else sorted(f.scripts),
            }
            for f in files
        ],
        "scripts": None if scripts is None else list(scripts),
        "letters": letters,
        "max_per_script": max_per_script,
        "dedup_threshold": float(dedup_threshold),
        "jitter": {
            "rotation_deg": jitter.rotation_deg,
            "scale": list(jitter.scale),
            "shear": jitter.shear,
            "translate": jitter.translate,
            "stroke": list(jitter.stroke),
        },
        "versions": {
            "pillow": PIL.__version__,
            "freetype": features.version("freetype2"),
            "numpy": np.__version__,
        },
    }


def build_glyphs(params: dict, progress: Callable[[int, int], None] | None = None) -> ImageSet:
    """Render the image set described by `glyph_params(...)` (no caching)."""
    files = [
        FontFile(Path(f["path"]), None if f["scripts"] is None else frozenset(f["scripts"]))
        for f in params["fonts"]
    ]
    jit = params["jitter"]
    jitter = Jitter(
        jit["rotation_deg"], tuple(jit["scale"]), jit["shear"], jit["translate"],
        tuple(jit["stroke"]),
    )  # fmt: skip
    size, per_class, seed = params["image_size"], params["samples_per_class"], params["seed"]
    letters = letter_inventory(files, params["scripts"], params["letters"])
    logger.info("glyphs: %d candidate letters from %d font files", len(letters), len(files))

    big = size * SUPERSAMPLE
    loaded: dict[int, ImageFont.FreeTypeFont] = {}

    def font(i: int) -> ImageFont.FreeTypeFont:
        if i not in loaded:
            loaded[i] = ImageFont.truetype(str(files[i].path), big)
        return loaded[i]

    # canonical bitmaps from the primary font; drop empty renders and the missing-glyph box
    notdef = {}
    masters: dict[tuple[int, int], Image.Image] = {}
    canon, kept = [], []
    for let in letters:
        m = _master(font(let.fonts[0]), chr(let.codepoint))
        if m is None:
            continue
        f0 = let.fonts[0]
        if f0 not in notdef:  # U+10FFFD (private use) is never covered: it draws .notdef
            box = _master(font(f0), "\U0010fffd")
            notdef[f0] = None if box is None else _canonical(box)
        c = _canonical(m)
        if notdef[f0] is not None:
            nd = notdef[f0]
            if np.minimum(c, nd).sum() / max(np.maximum(c, nd).sum(), 1e-6) >= 0.95:
                continue
        masters[(let.codepoint, f0)] = m
        canon.append(c)
        kept.append(let)
    if not canon:
        names = [f.path.name for f in files]
        raise ValueError(f"no letter rendered any ink from the fonts {names}")
    keep = _soft_iou_duplicates(np.stack(canon), params["dedup_threshold"])
    letters = [let for let, k in zip(kept, keep, strict=True) if k]
    logger.info("glyphs: %d letters after dropping empties and %d look-alikes",
                len(letters), int((~keep).sum()))  # fmt: skip

    if params["max_per_script"] is not None:
        by_script: dict[str, list[Letter]] = {}
        for let in letters:
            by_script.setdefault(let.script, []).append(let)
        rng = np.random.default_rng([seed, 0x5C819])
        chosen = set()
        for script in sorted(by_script):
            group = by_script[script]
            if len(group) > params["max_per_script"]:
                idx = rng.choice(len(group), params["max_per_script"], replace=False)
                group = [group[i] for i in sorted(idx)]
            chosen.update(let.codepoint for let in group)
        letters = [let for let in letters if let.codepoint in chosen]

    # samples: each class has its own generator, so a class renders the same in any subset
    images = np.empty((len(letters) * per_class, size, size), dtype=np.uint8)
    for ci, let in enumerate(letters):
        rng = np.random.default_rng([seed, let.codepoint])
        ch = chr(let.codepoint)
        for si in range(per_class):
            fi = let.fonts[int(rng.integers(len(let.fonts)))]
            key = (let.codepoint, fi)
            if key not in masters:
                masters[key] = _master(font(fi), ch) or masters[(let.codepoint, let.fonts[0])]
            images[ci * per_class + si] = _jittered(masters[key], rng, size, jitter)
        if progress is not None:
            progress(ci + 1, len(letters))
    return ImageSet(
        images=images,
        labels=np.repeat(np.arange(len(letters), dtype=np.int64), per_class),
        classes=[
            f"U+{let.codepoint:04X} {unicodedata.name(chr(let.codepoint), '?')}" for let in letters
        ],
        groups=[let.script for let in letters],
        sources=[files[let.fonts[0]].path.name for let in letters],
    )


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed without timestamps, so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def _identity(params: dict) -> dict:
    """What defines a build: the parameters minus where the font files happen to live."""
    fonts = [{k: v for k, v in f.items() if k != "path"} for f in params["fonts"]]
    return {**params, "fonts": fonts}


def cache_paths(params: dict, root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """(npz, manifest) paths of a build; the file name carries a hash of the parameters."""
    root = Path(root) if root is not None else default_root()
    blob = json.dumps(_identity(params), sort_keys=True).encode()
    key = hashlib.sha256(blob).hexdigest()[:16]
    return root / f"glyphs-{key}.npz", root / f"glyphs-{key}.json"


def _read_cache(npz: Path, manifest: Path, params: dict) -> ImageSet | None:
    if not (npz.is_file() and manifest.is_file()):
        return None
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    stored = meta.get("params")
    if (
        not isinstance(stored, dict)
        or "fonts" not in stored
        or _identity(stored) != _identity(params)
        or meta.get("npz_sha256") != sha256_file(npz)
    ):
        logger.info("glyphs: manifest %s does not match; rebuilding", manifest)
        return None
    with np.load(npz, allow_pickle=False) as data:
        images, labels = data["images"], data["labels"]
    return ImageSet(images, labels, meta["classes"], meta["groups"], meta["sources"])


def load_glyphs(
    root: str | os.PathLike | None = None,
    image_size: int = 28,
    samples_per_class: int = 20,
    seed: int = 0,
    fonts: str | Sequence[str | os.PathLike] = "dejavu",
    scripts: Sequence[str] | None = None,
    max_per_script: int | None = None,
    dedup_threshold: float = 0.95,
    jitter: Jitter | None = None,
    letters: str | None = None,
    rebuild: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ImageSet:
    """The glyph image set (all scripts; split it with `split_by_group`), cached under `root`.

    `root` defaults to `$META_RL_DATA/glyphs` or `~/.cache/meta-rl/glyphs`. `scripts` restricts
    the build to some scripts (e.g. ["Latin", "Greek"]), `letters` to some characters (e.g.
    "AΑБ", handy for small tests). `progress(done, total)` is called per
    class while rendering. See the module docstring for what the set contains.
    """
    params = glyph_params(
        image_size,
        samples_per_class,
        seed,
        fonts,
        scripts,
        max_per_script,
        dedup_threshold,
        jitter,
        letters,
    )
    npz, manifest = cache_paths(params, root)
    if not rebuild:
        cached = _read_cache(npz, manifest, params)
        if cached is not None:
            logger.info("glyphs: loaded %s (%d classes)", npz, cached.num_classes)
            return cached
    imageset = build_glyphs(params, progress)
    npz.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(npz.name + f".tmp{os.getpid()}")
    _write_npz(tmp, {"images": imageset.images, "labels": imageset.labels})
    os.replace(tmp, npz)
    counts: dict[str, int] = {}
    for g in imageset.groups:
        counts[g] = counts.get(g, 0) + 1
    meta = {
        "params": params,
        "npz": npz.name,
        "npz_sha256": sha256_file(npz),
        "num_classes": imageset.num_classes,
        "num_images": len(imageset),
        "classes_per_script": dict(sorted(counts.items())),
        "classes": imageset.classes,
        "groups": imageset.groups,
        "sources": imageset.sources,
    }
    tmp = manifest.with_name(manifest.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, manifest)
    logger.info(
        "glyphs: wrote %s (%d classes, %d images)", npz, imageset.num_classes, len(imageset)
    )
    return imageset
