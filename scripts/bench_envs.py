"""Steps per second of the torch-batched families vs Gymnasium's SyncVectorEnv of the scalar
family (one task per sub-env), and for CartPole also vs Gymnasium's numpy CartPoleVectorEnv
(which shares one set of physics parameters across all envs).

    python scripts/bench_envs.py                      # 64, 1,024 and 16,384 envs
    python scripts/bench_envs.py --quick --json       # fewer steps, 64 and 1,024 envs
    python scripts/bench_envs.py --sizes 1024 --families CartPole

Each measurement is the best of ``--repeats`` interleaved rounds (ours, then each peer, again
and again), since the machine may be shared. Actions are drawn up front (torch on the batched
env's device, numpy for Gymnasium) so the timed loop only steps. One ``step`` call is one env
step of every row. The batched CartPole runs as one TorchInductor-compiled kernel (its compile
time is reported as a note); pass ``--no-compile`` for eager torch.

The MuJoCo and Meta-World families have no batched twin; for them (when their extra is
installed) the script times one env, stepping with random actions and resetting when an episode
ends: ours (``MetaRL/HalfCheetahVel-v0``, ``MetaRL/ML1-reach-v0``) vs the plain env it wraps
(Gymnasium's ``HalfCheetah-v5``; Meta-World's ``SawyerReachEnvV3`` on the same goal), both
without the env checker, with the same horizon. The ratio (ours / plain, ~1) is the cost of the
task layer. ``--scalar-steps`` sets the steps per measurement; ``--no-scalar`` skips it.

For the same two families it then times the multi-process sampler at equal rows
(``--mp-rows``, default 40 and 200): ``VectorTaskEnv(..., workers=K)`` (K = ``--workers``,
default the cores) vs the one-process path it replaces, Gymnasium's ``SyncVectorEnv`` of the
family's envs (one task per sub-env), and prints the physics floor beside them: plain
``mujoco.mj_step`` of the same model with the same frame skip, steps/s on one core times K.
Run it on a quiet machine: the ratio needs the cores to itself.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import time
from collections.abc import Callable

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import SyncVectorEnv
from meta_rl_envs import FAMILIES, make_batched


def time_steps(step: Callable[[int], object], steps: int, budget: float) -> tuple[int, float]:
    """Run ``step(i)`` up to ``steps`` times or until ``budget`` seconds pass (at least 3)."""
    start = time.perf_counter()
    done = 0
    while done < steps:
        step(done)
        done += 1
        if done >= 3 and time.perf_counter() - start > budget:
            break
    return done, time.perf_counter() - start


def torch_actions(
    space: gym.Space, steps: int, n: int, gen: torch.Generator, device
) -> torch.Tensor:
    if isinstance(space, gym.spaces.Discrete):
        return torch.randint(
            int(space.start), int(space.start + space.n), (steps, n), generator=gen, device=device
        )
    if isinstance(space, gym.spaces.Box):
        low = torch.as_tensor(space.low, device=device)
        high = torch.as_tensor(space.high, device=device)
        u = torch.rand((steps, n, *space.shape), generator=gen, device=device)
        return low + (high - low) * u
    raise TypeError(f"no random actions for {space}")


def numpy_actions(space: gym.Space, steps: int, n: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(space.start, space.start + space.n, size=(steps, n))
    if isinstance(space, gym.spaces.Box):
        u = rng.random((steps, n, *space.shape))
        return (space.low + (space.high - space.low) * u).astype(space.dtype)
    raise TypeError(f"no random actions for {space}")


def batched_runner(env_id: str, n: int, args) -> tuple[Callable[[], float], dict[str, float]]:
    spec = FAMILIES[env_id]
    module, _, cls_name = spec.batched.partition(":")
    cls = getattr(__import__(module, fromlist=[cls_name]), cls_name)
    kwargs = {}
    if "compile" in inspect.signature(cls).parameters:
        kwargs["compile"] = not args.no_compile
    env = make_batched(env_id, num_tasks=n, envs_per_task=1, device=args.device, **kwargs)
    env.set_tasks(env.sample_tasks(n, np.random.default_rng(0)))
    env.reset(seed=0)
    gen = torch.Generator(device=env.device).manual_seed(1)
    steps = args.steps
    actions = torch_actions(env.single_action_space, steps, n, gen, env.device)
    start = time.perf_counter()
    env.step(actions[0])  # first step: pays the compile where the family compiles
    first = time.perf_counter() - start
    for i in range(min(args.warmup, steps)):
        env.step(actions[i])

    def run() -> float:
        done, secs = time_steps(lambda i: env.step(actions[i]), steps, args.budget)
        return done * n / secs

    return run, {"first_step_s": first}


def sync_runner(env_id: str, n: int, args) -> tuple[Callable[[], float], dict[str, float]]:
    build = time.perf_counter()
    envs = SyncVectorEnv([lambda: gym.make(env_id, disable_env_checker=True) for _ in range(n)])
    tasks = envs.envs[0].unwrapped.sample_tasks(n, np.random.default_rng(0))
    for sub, task in zip(envs.envs, tasks, strict=True):
        sub.unwrapped.set_task(task)  # one task per sub-env
    envs.reset(seed=0)
    build = time.perf_counter() - build
    steps = max(4, args.steps // (1 if n <= 1024 else 8))
    actions = numpy_actions(envs.single_action_space, steps, n, np.random.default_rng(1))
    for i in range(min(2, steps)):
        envs.step(actions[i])

    def run() -> float:
        done, secs = time_steps(lambda i: envs.step(actions[i]), steps, args.budget)
        return done * n / secs

    return run, {"build_s": build}


def gym_cartpole_runner(n: int, args) -> tuple[Callable[[], float], dict[str, float]]:
    envs = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="vector_entry_point")
    envs.reset(seed=0)
    steps = args.steps
    actions = numpy_actions(envs.single_action_space, steps, n, np.random.default_rng(1))
    for i in range(min(args.warmup, steps)):
        envs.step(actions[i])

    def run() -> float:
        done, secs = time_steps(lambda i: envs.step(actions[i]), steps, args.budget)
        return done * n / secs

    return run, {}


# --------------------------------------------------------------------------------------------
# Families without a batched twin: one env, ours vs the plain env it wraps
# --------------------------------------------------------------------------------------------
def plain_halfcheetah() -> gym.Env:
    return gym.make("HalfCheetah-v5", disable_env_checker=True, max_episode_steps=200)


def plain_metaworld_reach() -> gym.Env:
    import metaworld

    bench = metaworld.ML1("reach-v3", seed=0)
    env = bench.train_classes["reach-v3"]()
    env.set_task(bench.train_tasks[0])  # our family's first train task is this goal
    return env  # truncates itself at 500 steps


SCALAR = {  # family id -> (extra, peer name, plain env, ours' kwargs)
    "MetaRL/HalfCheetahVel-v0": ("mujoco", "HalfCheetah-v5", plain_halfcheetah, {}),
    "MetaRL/ML1-reach-v0": ("metaworld", "Meta-World SawyerReach", plain_metaworld_reach, {}),
}


def scalar_runner(make: Callable[[], gym.Env], steps: int, budget: float) -> Callable[[], float]:
    env = make()
    env.reset(seed=0)
    env.action_space.seed(1)
    actions = [env.action_space.sample() for _ in range(steps)]

    def step(i: int) -> None:
        _, _, terminated, truncated, _ = env.step(actions[i])
        if terminated or truncated:
            env.reset()

    def run() -> float:
        done, secs = time_steps(step, steps, budget)
        return done / secs

    return run


def mp_runner(env_id: str, n: int, workers: int, steps: int, budget: float):
    """``VectorTaskEnv`` of ``n`` rows in ``workers`` processes (1: the one-process path)."""
    from meta_rl_envs.vector import VectorTaskEnv

    env = VectorTaskEnv(env_id, n, 1, workers=workers)
    env.set_tasks(env.sample_tasks(n, np.random.default_rng(0)))
    env.reset(seed=0)
    gen = torch.Generator().manual_seed(1)
    actions = torch_actions(env.single_action_space, steps, n, gen, "cpu")
    for i in range(min(2, steps)):
        env.step(actions[i])

    def run() -> float:
        done, secs = time_steps(lambda i: env.step(actions[i]), steps, budget)
        return done * n / secs

    return run, env


def sync_family_runner(env_id: str, n: int, steps: int, budget: float) -> Callable[[], float]:
    """The one-process path the sampler replaces: ``SyncVectorEnv`` of the family's envs."""
    envs = SyncVectorEnv(
        [lambda: gym.make(env_id) for _ in range(n)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    tasks = envs.envs[0].unwrapped.sample_tasks(n, np.random.default_rng(0))
    for sub, task in zip(envs.envs, tasks, strict=True):
        sub.unwrapped.set_task(task)
    envs.reset(seed=0)
    actions = numpy_actions(envs.single_action_space, steps, n, np.random.default_rng(1))

    def run() -> float:
        done, secs = time_steps(lambda i: envs.step(actions[i]), steps, budget)
        return done * n / secs

    return run


def physics_floor(env_id: str, seconds: float) -> float:
    """Plain ``mujoco.mj_step`` of the family env's model, its frame skip per env step: env
    steps/s on one core."""
    import mujoco

    outer = gym.make(env_id)
    env = outer.unwrapped
    if not hasattr(env, "model"):  # Meta-World's family holds the Sawyer env it drives
        env.reset(seed=0)
        env = env._env
    model, data, skip = env.model, mujoco.MjData(env.model), int(env.frame_skip)
    rng = np.random.default_rng(0)
    ctrl = rng.uniform(-1, 1, (256, model.nu))
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for c in ctrl:
            data.ctrl[:] = c
            mujoco.mj_step(model, data, nstep=skip)
        done += len(ctrl)
    outer.close()
    return done / (time.perf_counter() - start)


def best_of(runners: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Interleave the runners ``repeats`` times; keep each one's best (the machine is shared,
    so the best round is the one least disturbed by other load)."""
    best = dict.fromkeys(runners, 0.0)
    for _ in range(repeats):
        for name, run in runners.items():
            best[name] = max(best[name], run())
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="env counts")
    p.add_argument("--families", nargs="+", default=None, help="e.g. CartPole Bandit")
    p.add_argument("--steps", type=int, default=None, help="timed steps per measurement")
    p.add_argument("--budget", type=float, default=None, help="seconds per measurement (cap)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds; best kept")
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-compile", action="store_true", help="eager torch for the batched envs")
    p.add_argument("--quick", action="store_true", help="64 and 1,024 envs, fewer steps")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--scalar-steps", type=int, default=None, help="steps per scalar measurement")
    p.add_argument("--no-scalar", action="store_true", help="skip the MuJoCo/Meta-World envs")
    p.add_argument("--mp-rows", type=int, nargs="+", default=None, help="rows for the sampler")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--mp-steps", type=int, default=None, help="steps per sampler measurement")
    args = p.parse_args()
    args.sizes = args.sizes or ([64, 1024] if args.quick else [64, 1024, 16384])
    args.steps = args.steps or (100 if args.quick else 500)
    args.budget = args.budget or (1.0 if args.quick else 2.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.scalar_steps = args.scalar_steps or (500 if args.quick else 2000)
    args.mp_rows = args.mp_rows or ([40] if args.quick else [40, 200])
    args.mp_steps = args.mp_steps or (100 if args.quick else 400)
    torch.set_num_threads(args.threads)

    results: dict[str, float] = {}
    notes: list[str] = []
    rows: list[tuple[str, int, str, float, float]] = []
    ids = [i for i, s in sorted(FAMILIES.items()) if s.batched]
    if args.families:
        ids = [i for i in ids if i.split("/")[-1].split("-v")[0] in args.families]
    for env_id in ids:
        fam = env_id.split("/")[-1].split("-v")[0]
        key = fam.lower()
        for n in args.sizes:
            try:
                ours, info = batched_runner(env_id, n, args)
            except (ImportError, AttributeError, TypeError) as err:
                notes.append(f"{env_id}: skipped ({type(err).__name__}: {err})")
                break
            runners = {"ours": ours, "sync": sync_runner(env_id, n, args)[0]}
            if fam == "CartPole":
                runners["gymvec"] = gym_cartpole_runner(n, args)[0]
            best = best_of(runners, args.repeats)
            results[f"{key}_batched_steps_per_s_{n}"] = best["ours"]
            results[f"{key}_sync_steps_per_s_{n}"] = best["sync"]
            results[f"{key}_vs_sync_ratio_{n}"] = best["ours"] / best["sync"]
            results[f"{key}_first_step_s_{n}"] = info["first_step_s"]
            rows.append((fam, n, "SyncVectorEnv", best["sync"], best["ours"]))
            if "gymvec" in best:
                results[f"cartpole_gymvec_steps_per_s_{n}"] = best["gymvec"]
                results[f"cartpole_vs_gymvec_ratio_{n}"] = best["ours"] / best["gymvec"]
                rows.append((fam, n, "CartPoleVectorEnv", best["gymvec"], best["ours"]))
            if info["first_step_s"] > 1.0:
                notes.append(f"{env_id} n={n}: first step {info['first_step_s']:.1f} s (compile)")

    for env_id, (extra, peer_name, plain, kwargs) in SCALAR.items():
        fam = env_id.split("/")[-1].split("-v")[0]
        if args.no_scalar or (args.families and fam not in args.families):
            continue
        if env_id not in FAMILIES:
            notes.append(f"{env_id}: skipped (pip install 'meta-rl[{extra}]')")
            continue
        key = fam.lower().replace("-", "_")

        def ours_env(env_id: str = env_id, kwargs: dict = kwargs) -> gym.Env:
            return gym.make(env_id, disable_env_checker=True, **kwargs)

        runners = {
            "ours": scalar_runner(ours_env, args.scalar_steps, args.budget),
            "plain": scalar_runner(plain, args.scalar_steps, args.budget),
        }
        best = best_of(runners, args.repeats)
        results[f"{key}_steps_per_s"] = best["ours"]
        results[f"{key}_plain_steps_per_s"] = best["plain"]
        results[f"{key}_vs_plain_ratio"] = best["ours"] / best["plain"]
        rows.append((fam, 1, peer_name, best["plain"], best["ours"]))
        floor = physics_floor(env_id, args.budget) * args.workers
        results[f"{key}_physics_floor_steps_per_s"] = floor
        for n in args.mp_rows:
            ours, env = mp_runner(env_id, n, args.workers, args.mp_steps, args.budget * 2)
            sync = sync_family_runner(env_id, n, args.mp_steps, args.budget * 2)
            best = best_of({"ours": ours, "sync": sync}, args.repeats)
            env.close()
            results[f"{key}_procs_steps_per_s_{n}"] = best["ours"]
            results[f"{key}_sync_steps_per_s_{n}"] = best["sync"]
            results[f"{key}_procs_vs_sync_ratio_{n}"] = best["ours"] / best["sync"]
            results[f"{key}_procs_vs_floor_ratio_{n}"] = best["ours"] / floor
            label = f"SyncVectorEnv ({args.workers} proc)"
            rows.append((fam, n, label, best["sync"], best["ours"]))
            notes.append(
                f"{fam} n={n}: {args.workers} processes reach {best['ours'] / floor:.2f} of the "
                f"physics floor ({floor:,.0f} steps/s = mj_step x frame skip x {args.workers})"
            )

    print(
        f"torch {torch.__version__}, gymnasium {gym.__version__}, threads {args.threads}, "
        f"compile {not args.no_compile}, best of {args.repeats} interleaved rounds, "
        f"{platform.machine()}, load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"{'family':<14} {'envs':>7} {'peer':<22} {'peer steps/s':>14} {'ours steps/s':>14} "
        f"{'ratio':>8}"
    )
    for fam, n, peer_name, peer_sps, ours_sps in rows:
        print(
            f"{fam:<14} {n:>7} {peer_name:<22} {peer_sps:>14,.0f} {ours_sps:>14,.0f} "
            f"{ours_sps / peer_sps:>7.1f}x"
        )
    for note in notes:
        print("note:", note)
    if args.json:
        print(json.dumps({"threads": args.threads, "notes": notes, **results}, sort_keys=True))


if __name__ == "__main__":
    main()
