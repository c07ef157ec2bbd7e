"""RL^2 on Bernoulli bandits: ours (batched trials, GRU, PPO over whole trials) vs sb3-contrib
``RecurrentPPO`` (``MlpLstmPolicy``) trained on the same trial wrapper with the same env-step
budget, in one process; or, with ``--policy memory|episodic|ntm``, that policy of ours vs our
GRU policy (same trainer, same settings, same budget).

    python scripts/bench_rl2.py                    # k=5 arms, n=10 pulls, 25k env steps each
    python scripts/bench_rl2.py --steps 20000 --json
    python scripts/bench_rl2.py --policy ntm       # NTM policy's env steps/s / the GRU's

RecurrentPPO trains on ``TrialWrapper(gym.make("MetaRL/Bandit-v0"), n)`` (one trial = one SB3
episode, default hyperparameters). Both policies are then evaluated on the same test-split
bandits (one trial each, sampled actions) through ``BatchedTrialEnv``, which produces the same
observation layout as ``TrialWrapper``. Printed: final mean total reward (95% CI) of both,
training env steps/s of both and their ratio, beside Thompson sampling and the Bayes-optimal
value on the same number of bandits. With ``--policy`` other than ``gru``: both policies' scores
and env steps/s and the ratio (policy / GRU); the memory policies use RL2Config's memory defaults.
"""

from __future__ import annotations

import argparse
import json
import time

import gymnasium as gym
import numpy as np
import torch
from meta_rl_envs import references as R
from meta_rl_envs.stats import mean_ci95
from meta_rl_envs.wrappers import TrialWrapper

from meta_rl.rl.rl2 import RL2Config, make_trial_env, train


def ours(args, policy: str = "gru") -> tuple[dict, float, RL2Config]:
    per_iter = args.tasks * args.n
    config = RL2Config(
        policy=policy,
        env_id="MetaRL/Bandit-v0",
        env_kwargs={"k": args.k},
        episodes_per_trial=args.n,
        hidden_size=64,
        tasks_per_iteration=args.tasks,
        iterations=max(1, args.steps // per_iter),
        lr=0.01,
        minibatches=2,
        eval_tasks=args.eval_tasks,
        references=False,
        seed=args.seed,
        device="cpu",
        log_every=10_000,
        checkpoint_every=0,
    )
    final = train(config)
    steps = config.iterations * per_iter
    seconds = steps / final["env_steps_per_s"]  # sampling + updates; evaluation excluded
    return (
        {"score": final["eval_return"], "ci95": final["eval_ci95"], "steps": steps},
        seconds,
        config,
    )


def recurrent_ppo(args, config: RL2Config) -> tuple[dict, float]:
    from sb3_contrib import RecurrentPPO

    env = TrialWrapper(gym.make("MetaRL/Bandit-v0", k=args.k), args.n)
    model = RecurrentPPO("MlpLstmPolicy", env, seed=args.seed, device="cpu", verbose=0)
    t0 = time.perf_counter()
    model.learn(total_timesteps=args.steps)  # sampling + updates (SB3's own loop)
    seconds = time.perf_counter() - t0
    steps = int(model.num_timesteps)

    # Evaluate on the same test bandits as ours: the batched trial env has the same layout.
    tenv = make_trial_env(config, args.eval_tasks, 1, torch.device("cpu"))
    tenv.set_tasks(tenv.sample_tasks(args.eval_tasks, config.seed + 2, "test"))
    obs, _ = tenv.reset(seed=config.seed + 5)
    state, starts = None, np.ones(args.eval_tasks, dtype=bool)
    total = torch.zeros(args.eval_tasks)
    for _ in range(tenv.max_trial_length):
        action, state = model.predict(
            obs.numpy(), state=state, episode_start=starts, deterministic=False
        )
        starts[:] = False
        obs, reward, _, _, info = tenv.step(torch.as_tensor(action))
        total += reward * info["active"]
    res = mean_ci95(total)
    return {"score": res.mean, "ci95": res.ci95, "steps": steps}, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--k", type=int, default=5, help="arms")
    p.add_argument("--n", type=int, default=10, help="pulls (episodes) per trial")
    p.add_argument("--steps", type=int, default=25_000, help="training env steps of each")
    p.add_argument("--tasks", type=int, default=64, help="our bandits per PPO iteration")
    p.add_argument("--eval-tasks", type=int, default=1000, help="test bandits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for both")
    p.add_argument(
        "--policy",
        choices=("gru", "memory", "episodic", "ntm"),
        default="gru",
        help="our policy; other than gru: compared with our GRU policy instead of RecurrentPPO",
    )
    p.add_argument("--skip-peer", action="store_true", help="time ours only")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    mine, mine_s, config = ours(args, args.policy)
    out = {
        "policy": args.policy,
        "k": args.k,
        "n": args.n,
        "budget_env_steps": args.steps,
        "threads": args.threads,
        "ours_score": mine["score"],
        "ours_ci95": mine["ci95"],
        "ours_env_steps": mine["steps"],
        "ours_seconds": mine_s,
        "ours_env_steps_per_s": mine["steps"] / mine_s,
        "thompson": R.bandit_policy("thompson", args.n, args.k, args.eval_tasks, args.seed).mean,
    }
    if args.n <= 20:
        out["bayes_optimal"] = R.bandit_bayes_optimal(args.n, args.k)
    if args.policy != "gru" and not args.skip_peer:
        gru, gru_s, _ = ours(args, "gru")
        out.update(
            {
                "gru_score": gru["score"],
                "gru_ci95": gru["ci95"],
                "gru_env_steps": gru["steps"],
                "gru_seconds": gru_s,
                "gru_env_steps_per_s": gru["steps"] / gru_s,
            }
        )
        out["speed_ratio_vs_gru"] = out["ours_env_steps_per_s"] / out["gru_env_steps_per_s"]
    elif not args.skip_peer:
        import sb3_contrib

        peer, peer_s = recurrent_ppo(args, config)
        out.update(
            {
                "sb3_contrib_version": sb3_contrib.__version__,
                "recurrent_ppo_score": peer["score"],
                "recurrent_ppo_ci95": peer["ci95"],
                "recurrent_ppo_env_steps": peer["steps"],
                "recurrent_ppo_seconds": peer_s,
                "recurrent_ppo_env_steps_per_s": peer["steps"] / peer_s,
            }
        )
        out["speed_ratio"] = out["ours_env_steps_per_s"] / out["recurrent_ppo_env_steps_per_s"]
        out["score_difference"] = out["ours_score"] - out["recurrent_ppo_score"]
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"Bernoulli bandits k={args.k}, n={args.n}; budget {args.steps} env steps each")
    print(
        f"  ours (RL^2 {args.policy}, PPO):    {out['ours_score']:.3f} +- {out['ours_ci95']:.3f}   "
        f"{out['ours_env_steps_per_s']:.0f} env steps/s ({mine_s:.1f} s)"
    )
    if "speed_ratio_vs_gru" in out:
        print(
            f"  ours (RL^2 gru, PPO):    {out['gru_score']:.3f} +- {out['gru_ci95']:.3f}   "
            f"{out['gru_env_steps_per_s']:.0f} env steps/s ({out['gru_seconds']:.1f} s)"
        )
        print(f"  speed ratio ({args.policy} / gru): {out['speed_ratio_vs_gru']:.2f}x")
    if "speed_ratio" in out:
        print(
            f"  RecurrentPPO (sb3-contrib {out['sb3_contrib_version']}): "
            f"{out['recurrent_ppo_score']:.3f} +- {out['recurrent_ppo_ci95']:.3f}   "
            f"{out['recurrent_ppo_env_steps_per_s']:.0f} env steps/s ({peer_s:.1f} s)"
        )
        print(f"  speed ratio (ours / RecurrentPPO): {out['speed_ratio']:.1f}x")
    print(
        f"  Thompson sampling: {out['thompson']:.3f}; Bayes-optimal: "
        f"{out.get('bayes_optimal', float('nan')):.3f}"
    )


if __name__ == "__main__":
    main()
