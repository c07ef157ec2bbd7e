"""Build (or load from cache) the offline glyph benchmark and print its statistics.

python scripts/build_glyphs.py                      # DejaVu fonts, 28x28, 20 samples/class
python scripts/build_glyphs.py --fonts noto --max-per-script 100
python scripts/build_glyphs.py --grid glyphs.png    # a PNG of sample classes to eyeball
python scripts/build_glyphs.py --json               # stats as JSON
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

from meta_rl.fewshot.data import split_by_group
from meta_rl.fewshot.glyphs import cache_paths, glyph_params, load_glyphs


def save_grid(imageset, path: str, n_classes: int, n_samples: int, seed: int) -> None:
    """Rows = random classes (spread over groups), columns = their samples; ink drawn dark."""
    rng = np.random.default_rng(seed)
    classes = np.sort(rng.choice(imageset.num_classes, min(n_classes, imageset.num_classes), False))
    h, w = imageset.image_size
    grid = np.full((len(classes) * (h + 2), n_samples * (w + 2)), 255, dtype=np.uint8)
    for r, c in enumerate(classes):
        idx = np.flatnonzero(imageset.labels == c)[:n_samples]
        for col, i in enumerate(idx):
            grid[r * (h + 2) : r * (h + 2) + h, col * (w + 2) : col * (w + 2) + w] = (
                255 - imageset.images[i]
            )
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", default=None, help="cache folder (default $META_RL_DATA/glyphs)")
    p.add_argument("--fonts", default="dejavu", help="dejavu | noto | auto")
    p.add_argument("--scripts", nargs="*", default=None, help="only these scripts, e.g. Latin")
    p.add_argument("--max-per-script", type=int, default=None)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--samples-per-class", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rebuild", action="store_true", help="ignore the cache")
    p.add_argument("--grid", default=None, help="save a PNG grid of sample classes here")
    p.add_argument("--grid-classes", type=int, default=24)
    p.add_argument("--json", action="store_true", help="print the stats as JSON")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    kwargs = dict(
        image_size=args.image_size,
        samples_per_class=args.samples_per_class,
        seed=args.seed,
        fonts=args.fonts,
        scripts=args.scripts,
        max_per_script=args.max_per_script,
    )
    bar = tqdm(desc="rendering classes", unit="class", disable=args.json)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    t0 = time.perf_counter()
    imageset = load_glyphs(root=args.root, rebuild=args.rebuild, progress=progress, **kwargs)
    seconds = time.perf_counter() - t0
    bar.close()
    npz, manifest = cache_paths(glyph_params(**kwargs), args.root)

    per_script: dict[str, int] = {}
    for g in imageset.groups:
        per_script[g] = per_script.get(g, 0) + 1
    splits = split_by_group(imageset, seed=args.seed)
    stats = {
        "classes": imageset.num_classes,
        "images": len(imageset),
        "scripts": len(per_script),
        "classes_per_script": dict(sorted(per_script.items(), key=lambda kv: -kv[1])),
        "split_seed": args.seed,
        "splits": {
            k: {"classes": v.num_classes, "scripts": sorted(set(v.groups))}
            for k, v in splits.items()
        },
        "seconds": round(seconds, 2),
        "npz": str(npz),
        "manifest": str(manifest),
    }
    if args.grid:
        save_grid(imageset, args.grid, args.grid_classes, 20, args.seed)
        stats["grid"] = args.grid
    if args.json:
        print(json.dumps(stats, indent=1, ensure_ascii=False))
        return
    print(f"{stats['classes']} classes, {stats['images']} images, {stats['scripts']} scripts "
          f"in {stats['seconds']} s")  # fmt: skip
    for script, n in stats["classes_per_script"].items():
        print(f"  {script:24s} {n:5d}")
    for name, s in stats["splits"].items():
        print(f"{name}: {s['classes']} classes from {', '.join(s['scripts'])}")
    print(f"cache: {npz}\n       {manifest}")
    if args.grid:
        print(f"grid: {args.grid}")


if __name__ == "__main__":
    main()
