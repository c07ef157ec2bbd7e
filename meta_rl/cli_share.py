"""``meta-rl zoo`` and ``meta-rl push``: the sharing subcommands of the ``meta-rl`` command.

::

    meta-rl zoo [NAME] [--json]                the agents shipped in the package (NAME: its card)
    meta-rl push RUN --repo ORG/NAME [--private] [--dry-run DIR] [--report FILE]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_parsers", "cmd_push", "cmd_zoo"]


def cmd_zoo(args: argparse.Namespace) -> int:
    """List the zoo (name, preset, family, algorithm, held-out score with its 95% CI), or print
    one agent's model card."""
    from meta_rl import zoo

    if args.name is not None:
        print(zoo.entry(args.name).card.read_text())
        return 0
    rows: list[dict[str, Any]] = []
    for e in zoo.entries():
        h = e.headline
        rows.append(
            {
                "name": e.name,
                "load": f"zoo:{e.name}",
                "preset": e.preset,
                "family": e.env_id,
                "algorithm": e.algorithm,
                "score": h.label,
                "mean": h.mean,
                "ci95": h.ci95,
                "tasks": h.tasks,
                "split": h.split,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("the zoo is empty (this meta-rl was built without it)")
        return 0
    head = ("name", "family", "algorithm", "held-out score (mean ± 95% CI)")
    table = [
        (
            r["name"],
            r["family"],
            r["algorithm"],
            f"{r['mean']:.3f} ± {r['ci95']:.3f}  {r['score']}, {r['tasks']} {r['split']} tasks",
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table, strict=True)]
    for row in (head, *table):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())
    print('\nload one with meta_rl.load("zoo:NAME"); meta-rl zoo NAME prints its model card')
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """Pack a finished, evaluated run and upload it to the Hub (or, with ``--dry-run DIR``,
    write the folder that would be uploaded)."""
    from meta_rl.hub import push

    result = push(
        args.run,
        args.repo,
        private=args.private,
        dry_run=args.dry_run,
        report=args.report,
    )
    for name in result.files:
        print(f"  {name}")
    if result.url is None:
        print(f"dry run: {len(result.files)} files for {result.repo_id} in {result.folder}")
    else:
        print(f"pushed {len(result.files)} files to {result.repo_id}: {result.url}")
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``zoo`` and ``push`` to the ``meta-rl`` subcommands ``sub``."""
    p = sub.add_parser("zoo", help="pretrained agents shipped with meta-rl (load: zoo:NAME)")
    p.add_argument("name", nargs="?", help="an agent: print its model card")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser(
        "push", help="upload a finished, evaluated run to the Hugging Face Hub with a model card"
    )
    p.add_argument("run", metavar="RUN", help="run folder (trained and evaluated)")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="Hub model repository")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument(
        "--dry-run",
        metavar="DIR",
        default=None,
        help="write the folder that would be uploaded into DIR; upload nothing",
    )
    p.add_argument(
        "--report",
        default=None,
        metavar="FILE",
        help="evaluation report.json to ship (default: RUN/evaluation-test/report.json)",
    )
    p.set_defaults(func=cmd_push)
