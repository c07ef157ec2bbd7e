"""Reference returns of the yardstick families beside the papers' numbers (DESIGN.md section 5).

    python scripts/reference_baselines.py                     # bandits n=10,100; MDPs n=10,25
    python scripts/reference_baselines.py --n 10 20 --k 5 --episodes 10 --seed 1
    python scripts/reference_baselines.py --json > references.json

Bandits (RL^2): exact Bayes-optimal (dynamic programming, for n <= --max-dp-n), Thompson
sampling, UCB1, greedy, random. Tabular MDPs (RL^2): PSRL with the true prior, PSRL in the
paper's setting (prior mean 0), greedy (certainty equivalence: plans in the posterior-mean
MDP), the per-MDP optimal policy, random. Navigation (MAML): the
zero-action and straight-to-goal policies. Monte Carlo rows show a mean and its standard error.
"""

from __future__ import annotations

import argparse
import json
import time

from meta_rl_envs import references as R


def row(family: str, method: str, n: int | None, est, paper: float | None, note: str = ""):
    if isinstance(est, R.Estimate):
        mean, se, num = est.mean, est.se, est.num
    else:
        mean, se, num = est, (None if est is None else 0.0), None
    return {
        "family": family,
        "method": method,
        "n": n,
        "mean": mean,
        "se": se,
        "num_tasks": num,
        "paper": paper,
        "note": note,
    }


def bandit_rows(args) -> list[dict]:
    rows = []
    paper = R.PAPER["bandit"] if args.k == 5 else {}
    for n in args.n:
        if n <= args.max_dp_n:
            bayes = R.bandit_bayes_optimal(n, args.k)
            rows.append(
                row(
                    "bandit",
                    "Bayes-optimal (exact DP)",
                    n,
                    bayes,
                    paper.get((n, "gittins")),
                    "paper: Gittins index" if (n, "gittins") in paper else "",
                )
            )
        else:
            rows.append(
                row(
                    "bandit",
                    "Bayes-optimal (exact DP)",
                    n,
                    None,
                    paper.get((n, "gittins")),
                    f"skipped: n > --max-dp-n={args.max_dp_n}",
                )
            )
        if n <= args.max_dp_n:
            rows.append(
                row("bandit", "greedy (exact DP)", n, R.bandit_greedy_exact(n, args.k), None)
            )
        for i, policy in enumerate(("thompson", "greedy", "ucb1", "random")):
            est = R.bandit_policy(policy, n, args.k, args.bandits, seed=args.seed + i)
            rows.append(row("bandit", policy, n, est, paper.get((n, policy))))
        rows.append(row("bandit", "random (exact n/2)", n, R.bandit_random(n), n / 2))
        if (n, "rl2") in paper:
            rows.append(row("bandit", "RL^2 (paper)", n, None, paper[(n, "rl2")]))
    return rows


def tabular_rows(args) -> list[dict]:
    rows = []
    paper = R.PAPER["tabular"]
    for n in args.episodes:
        kw = dict(n=n, num_mdps=args.mdps, seed=args.seed)
        rows += [
            row(
                "tabular",
                "PSRL, true prior N(1,1)",
                n,
                R.tabular_psrl(**kw),
                paper.get((n, "psrl")),
            ),
            row(
                "tabular",
                "PSRL, prior mean 0 (paper)",
                n,
                R.tabular_psrl(**kw, reward_prior_mean=0.0),
                paper.get((n, "psrl")),
            ),
            row(
                "tabular",
                "greedy (posterior-mean MDP)",
                n,
                R.tabular_greedy(**kw),
                None,
            ),
            row("tabular", "optimal policy of the true MDP", n, R.tabular_oracle(**kw), None),
            row("tabular", "random (exact 10n)", n, R.tabular_random(n), 10.0 * n),
        ]
        if (n, "rl2") in paper:
            rows.append(row("tabular", "RL^2 (paper)", n, None, paper[(n, "rl2")]))
    return rows


def navigation_rows(args) -> list[dict]:
    nav = R.PAPER["navigation"]
    return [
        row(
            "navigation",
            "zero action",
            None,
            R.navigation_return("zero", args.goals, args.seed),
            nav["zero"],
        ),
        row(
            "navigation",
            "zero action (exact -100 E|g|)",
            None,
            R.navigation_zero_action_exact(),
            nav["zero"],
        ),
        row(
            "navigation",
            "straight to goal",
            None,
            R.navigation_return("oracle", args.goals, args.seed),
            nav["oracle"],
        ),
    ]


def fmt(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    head = f"{'method':<34} {'n':>4} {'mean':>9} {'SE':>7} {'paper':>7}  note"
    print(head)
    print("-" * len(head))
    for r in rows:
        n = "" if r["n"] is None else str(r["n"])
        se = "exact" if r["se"] == 0.0 else fmt(r["se"], 3)
        paper = fmt(r["paper"], 1)
        print(f"{r['method']:<34} {n:>4} {fmt(r['mean']):>9} {se:>7} {paper:>7}  {r['note']}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, nargs="+", default=[10, 100], help="bandit pulls per trial")
    p.add_argument("--k", type=int, default=5, help="bandit arms")
    p.add_argument("--bandits", type=int, default=10_000, help="simulated bandits per policy")
    p.add_argument("--max-dp-n", type=int, default=25, help="largest n for the exact bandit DP")
    p.add_argument(
        "--episodes", type=int, nargs="+", default=[10, 25], help="MDP episodes per trial"
    )
    p.add_argument("--mdps", type=int, default=2000, help="simulated MDPs per method")
    p.add_argument("--goals", type=int, default=10_000, help="navigation goals")
    p.add_argument(
        "--only",
        choices=["bandit", "tabular", "navigation"],
        nargs="+",
        default=["bandit", "tabular", "navigation"],
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = p.parse_args()

    sections = {"bandit": bandit_rows, "tabular": tabular_rows, "navigation": navigation_rows}
    titles = {
        "bandit": f"Bernoulli bandits, k={args.k}, mean total reward of n pulls",
        "tabular": "Tabular MDPs (10 states, 5 actions, T=10), mean total reward of n episodes",
        "navigation": "2D navigation (MAML), mean episode return (horizon 100)",
    }
    out, seconds = {}, {}
    for name in args.only:
        start = time.perf_counter()
        out[name] = sections[name](args)
        seconds[name] = round(time.perf_counter() - start, 2)
    if args.json:
        print(json.dumps({"seed": args.seed, "seconds": seconds, **out}, indent=2))
        return
    for name, rows in out.items():
        print_table(f"{titles[name]}  ({seconds[name]} s)", rows)


if __name__ == "__main__":
    main()
