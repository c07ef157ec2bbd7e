"""meta-rl evaluate: adaptation curves on held-out tasks beside SB3 PPO from scratch, the
analytic references and no adaptation; report.json, adaptation.png, the markdown table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from meta_rl_envs import FamilySpec, TaskError, add_family
from meta_rl_envs.builder import make_family

from meta_rl.agent import SpaceMismatchError
from meta_rl.cli import main
from meta_rl.evaluate import evaluate_run, markdown_table, write_outputs
from meta_rl.report import Report
from tests.test_agent import TINY_MAML, TINY_RL2, train_cli


@pytest.fixture(scope="module")
def grad_run(tmp_path_factory) -> Path:
    return train_cli("smoke-pointnav", tmp_path_factory.mktemp("eval") / "maml", TINY_MAML)


@pytest.fixture(scope="module")
def mem_run(tmp_path_factory) -> Path:
    return train_cli("rl2-bandits", tmp_path_factory.mktemp("eval") / "rl2", TINY_RL2)


# A user's own Gymnasium env with a success flag, made a family by the family builder.
class ReachEnv(gym.Env):
    """Move a point toward (goal_x, goal_y); success within 0.15 of it."""

    def __init__(self) -> None:
        self.goal_x, self.goal_y = 0.3, 0.3
        self.observation_space = gym.spaces.Box(-5.0, 5.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-0.1, 0.1, (2,), np.float32)
        self.pos = np.zeros(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = np.zeros(2)
        return self.pos.astype(np.float32), {}

    def step(self, action):
        self.pos = self.pos + np.clip(np.asarray(action, np.float64), -0.1, 0.1)
        dist = float(np.hypot(self.pos[0] - self.goal_x, self.pos[1] - self.goal_y))
        return self.pos.astype(np.float32), -dist, False, False, {"success": dist < 0.15}


ReachFamily = make_family(
    ReachEnv, {"goal_x": (-0.5, 0.5), "goal_y": (-0.5, 0.5)}, name="Reach", horizon=20
)
add_family(FamilySpec("MetaRLTest/Reach-v0", ReachFamily, "reach a goal, success flag"))


def test_end_to_end_cli_evaluate_with_ppo_baseline(grad_run, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            str(grad_run),
            "--tasks",
            "3",
            "--budget",
            "2",
            "--ppo-multipliers",
            "0.5,1",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    printed = captured.out
    assert code == 0
    # output not on a terminal: every stage still prints a progress line (issue 14)
    assert "evaluate: adaptation on 3 test tasks" in captured.err
    assert captured.err.count("evaluate: PPO task") == 3 and "evaluate: references" in captured.err
    # the 0-step row is the no-adaptation baseline: printed once, named for both (issue 14)
    rows = [line for line in printed.splitlines() if line.startswith("| ")]
    assert len([r for r in rows if "| 0 inner steps |" in r]) == 1
    assert rows[1].startswith("| smoke-pointnav, no adaptation | 0 inner steps | 0 |")
    assert rows[2].startswith("| smoke-pointnav, adapted | 1 inner step | 40 |")
    assert "| agent / baseline | budget | env steps | return (mean ± 95% CI) |" in printed
    assert "| SB3 PPO from scratch | x0.5 (40 steps) |" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["format"] == "meta-rl-evaluation" and report["agent"] == "gradient"
    assert report["split"] == "test" and report["num_tasks"] == 3
    assert report["budget"] == {
        "unit": "inner steps",
        "value": 2,
        "env_steps": 80.0,  # 2 inner steps x 2 episodes x 20 steps per task before the last point
        "episodes_per_inner_step": 2,
    }
    # the evaluated tasks are recorded and are held-out (test split) goals
    space = gym.make("MetaRL/PointNav-v0").unwrapped.task_space
    tasks = [space.validate(t) for t in report["tasks"]]
    assert len(tasks) == 3 and {space.split_of(t) for t in tasks} == {"test"}
    series = {s["name"]: s for s in report["series"]}
    assert list(series) == ["adapted", "no_adaptation", "ppo"]
    adapted = series["adapted"]["points"]
    assert [p["budget"] for p in adapted] == [0, 1, 2]
    assert [p["env_steps"] for p in adapted] == [0.0, 40.0, 80.0]
    for p in adapted:
        assert len(p["per_task"]) == 3 and p["num"] == 3
        assert p["mean"] == pytest.approx(np.mean(p["per_task"]))
        assert math.isfinite(p["ci95"]) and p["ci95"] > 0
        assert p["ci95"] == pytest.approx(1.96 * np.std(p["per_task"], ddof=1) / math.sqrt(3))
    # no adaptation is the 0-step return on the same tasks: one measurement, printed once
    assert series["no_adaptation"]["points"] == adapted[:1]
    assert report["version"] == 2 and report["skipped_references"] == {}
    assert Report.from_dict(report).to_dict() == report  # the JSON reads back as it was
    ppo = series["ppo"]["points"]
    assert [p["budget"] for p in ppo] == [40, 80] and [p["multiplier"] for p in ppo] == [0.5, 1]
    assert all(s >= p["budget"] for p in ppo for s in p["env_steps_trained"])
    assert "n_steps=40" in report["ppo"]
    # the navigation references, on the same goals: the oracle beats standing still
    refs = report["references"]
    assert set(refs) == {"zero", "oracle"} and refs["oracle"]["mean"] > refs["zero"]["mean"]
    with (out / "adaptation.png").open("rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    assert Image.open(out / "adaptation.png").size[0] >= 600


def test_same_seed_same_numbers_and_ood_split(grad_run, tmp_path):
    kw = dict(tasks=2, budget=1, baselines=("none",), seed=4)
    a = evaluate_run(grad_run, **kw)
    b = evaluate_run(grad_run, **kw)
    assert a.series == b.series and a.tasks == b.tasks
    # mean-action measurement: extra episodes, the same tasks and adaptation budget
    det = evaluate_run(grad_run, deterministic=True, **kw)
    assert det.tasks == a.tasks and det.deterministic is True
    pa, pd = a.adapted.points, det.adapted.points
    assert [p.env_steps for p in pa] == [p.env_steps for p in pd]
    assert [p.mean for p in pa] != [p.mean for p in pd]
    ood = evaluate_run(grad_run, split="ood", tasks=2, budget=1, baselines=("none", "reference"))
    space = gym.make("MetaRL/PointNav-v0").unwrapped.task_space
    assert {space.split_of(space.validate(t)) for t in ood.tasks} == {"ood"}
    assert all(max(abs(g) for g in t["goal"]) > 0.5 for t in ood.tasks)
    paths = write_outputs(ood, tmp_path / "ood")
    assert paths["report"].exists() and paths["plot"].exists()
    assert "| reference: oracle | per episode |" in markdown_table(ood)


def test_family_builder_env_not_trained_on_with_success_rate(grad_run):
    report = evaluate_run(
        grad_run,
        env_id="MetaRLTest/Reach-v0",
        tasks=3,
        budget=1,
        episodes=2,
        ppo_multipliers=(1,),
    )
    assert report.env_id == "MetaRLTest/Reach-v0"
    assert report.trained_env_id == "MetaRL/PointNav-v0"
    assert set(report.tasks[0]) >= {"goal_x", "goal_y"}
    assert report.references == []  # this family ships none
    for s in report.series:
        for p in s.points:
            assert 0.0 <= p.success_rate <= 1.0
    # the table shows the success column when the family reports success
    near = evaluate_run(
        grad_run,
        env_id="MetaRLTest/Reach-v0",
        env_kwargs={},
        tasks=2,
        budget=1,
        episodes=2,
        baselines=(),
    )
    assert "success" in markdown_table(near)


def test_trial_env_passes_success_per_step():
    """A trial over a Gymnasium family reports info["success"] per row and step (and False for
    rows that have finished their trial)."""
    from meta_rl_envs.vector import VectorTaskEnv
    from meta_rl_envs.wrappers import BatchedTrialEnv

    env = BatchedTrialEnv(VectorTaskEnv("MetaRLTest/Reach-v0", 2, 1), 2)
    near, far = (env.task_space.validate({"goal_x": g, "goal_y": g}) for g in (0.05, 0.45))
    env.set_tasks([near, far])  # standing still: inside 0.15 of the near goal, never the far one
    env.reset(seed=0)
    seen = []
    for _ in range(env.max_trial_length + 1):
        *_, info = env.step(torch.zeros(2, 2))
        seen.append(info["success"].tolist())
    assert seen[:-1] == [[True, False]] * env.max_trial_length and seen[-1] == [False, False]


def test_memory_agent_success_rate_per_episode_of_a_trial(tmp_path):
    run = train_cli(
        "rl2-pointnav", tmp_path / "rl2nav", {**TINY_RL2, "env_kwargs": '{"horizon": 20}'}
    )
    report = evaluate_run(run, env_id="MetaRLTest/Reach-v0", tasks=4, budget=2, baselines=())
    points = report.adapted.points
    assert [p.budget for p in points] == [1, 2]
    for p in points:
        assert set(p.success_per_task) <= {0.0, 1.0}  # one trial per task: hit or not
        assert p.success_rate == pytest.approx(np.mean(p.success_per_task))
    assert "success" in markdown_table(report)


def test_mismatched_spaces_and_bad_arguments(grad_run, tmp_path, capsys):
    with pytest.raises(SpaceMismatchError) as err:
        evaluate_run(grad_run, env_id="MetaRL/Bandit-v0", tasks=2, baselines=())
    text = str(err.value)
    assert "action space Discrete(5)" in text and "policy: Box(-0.1, 0.1, (2,), float32)" in text
    with pytest.raises(TaskError, match="split='validation' is not a split"):
        evaluate_run(grad_run, split="validation", tasks=2)
    code = main(["evaluate", str(grad_run), "--split", "validation", "--out", str(tmp_path)])
    err_text = capsys.readouterr().err
    assert code == 2 and err_text.startswith("meta-rl: error: split='validation' is not a split")
    code = main(["evaluate", str(grad_run), "--baselines", "none,magic"])
    assert code == 2 and "baselines ['magic'] are not known" in capsys.readouterr().err
    code = main(["evaluate", str(tmp_path / "nope")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written on a refused evaluation


def test_memory_agent_episode_curve_and_bandit_references(mem_run):
    report = evaluate_run(mem_run, tasks=20, ppo_multipliers=(1,), seed=1)
    assert report.agent == "memory" and report.budget.unit == "episodes"
    adapted = report.adapted.points
    assert [p.budget for p in adapted] == list(range(1, 11))
    assert [p.env_steps for p in adapted] == [float(i) for i in range(10)]  # 1-pull episodes
    assert all(0.0 <= p.mean <= 1.0 for p in adapted)
    total = report.trial_return
    per_task = np.sum([p.per_task for p in adapted], axis=0)
    assert total.mean == pytest.approx(per_task.mean()) and total.budget == 10
    refs = {r.name: r for r in report.references}
    assert refs["bayes_optimal"].mean == pytest.approx(6.66, abs=0.01)  # exact DP, n=10
    assert refs["bayes_optimal"].per_episode == pytest.approx(0.666, abs=0.001)
    # the family's references, the same set RL^2's final metrics report, and each one's first
    # episode (a trial of one pull: Bayes-optimal 0.5)
    names = {"bayes_optimal", "thompson", "ucb1", "greedy", "random"}
    assert set(refs) == names | {f"{n} (episode 1)" for n in names}
    assert refs["bayes_optimal (episode 1)"].mean == pytest.approx(0.5)
    ppo = report.series[-1]
    assert ppo.name == "ppo" and ppo.points[0].budget == 9
    assert "Trial total (10 episodes)" in markdown_table(report)


@pytest.mark.slow
def test_smoke_pointnav_preset_learns_to_adapt(tmp_path):
    """The quick-start preset (under a minute on a 2-core CPU) shows a real gain from one inner
    step on held-out goals, which its untrained initial policy does not."""
    from meta_rl.runs import read_metrics

    run = train_cli("smoke-pointnav", tmp_path / "run", {"device": "cpu"})
    rows = read_metrics(run)
    first, last = rows[0], rows[-1]
    assert first["step"] == 0 and last["step"] == 30
    assert first["eval_return_1"] - first["eval_return_0"] < 3.0
    assert last["eval_return_1"] - last["eval_return_0"] > 10.0
    report = evaluate_run(run, tasks=10, budget=1, baselines=("none", "reference"), seed=3)
    before, after = report.adapted.points
    assert after.mean - before.mean > 8.0
    refs = {r.name: r for r in report.references}
    assert after.mean > refs["zero"].mean  # better than standing still


# A user's bandit: five arms with win probabilities p0..p4, one pull per episode.
class ArmsEnv(gym.Env):
    def __init__(self) -> None:
        self.p0 = self.p1 = self.p2 = self.p3 = self.p4 = 0.5
        self.observation_space = gym.spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = gym.spaces.Discrete(5)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1, np.float32), {}

    def step(self, action):
        p = [self.p0, self.p1, self.p2, self.p3, self.p4][int(action)]
        reward = float(self.np_random.random() < p)
        return np.zeros(1, np.float32), reward, True, False, {}


ArmsFamily = make_family(ArmsEnv, {f"p{i}": (0.0, 1.0) for i in range(5)}, name="Arms", horizon=1)
add_family(FamilySpec("MetaRLTest/Arms-v0", ArmsFamily, "a user's five-armed bandit"))


def test_memory_agent_on_a_family_builder_env_through_a_vector_env(mem_run):
    report = evaluate_run(mem_run, env_id="MetaRLTest/Arms-v0", tasks=6, baselines=("none",))
    points = report.adapted.points
    assert [p.budget for p in points] == list(range(1, 11))
    assert [p.env_steps for p in points] == [float(i) for i in range(10)]
    assert all(set(p.per_task) <= {0.0, 1.0} for p in points)  # Bernoulli pulls
    assert set(report.tasks[0]) >= {"p0", "p4"}


def test_plot_x_axis_has_one_unit(grad_run, mem_run):
    """The x axis is env steps per task for every curve; the agent's own budget (inner steps,
    episodes) is written beside its points, not mixed into the axis label (issue 14)."""
    from meta_rl.report import _figure

    for run in (grad_run, mem_run):
        report = evaluate_run(run, tasks=2, budget=2, baselines=("none",))
        ax = _figure(report).axes[0]
        assert ax.get_xlabel() == "env steps per task (experience before the measurement)"
        notes = [t.get_text() for t in ax.texts]
        assert notes == (["0 steps", "1 step", "2 steps"] if run is grad_run else ["ep 1", "ep 2"])


def test_ppo_in_parallel_processes_gives_the_serial_numbers(grad_run):
    kw = dict(tasks=3, budget=1, baselines=("ppo",), ppo_multipliers=(0.5, 1), seed=2)
    serial = evaluate_run(grad_run, ppo_workers=1, **kw)
    parallel = evaluate_run(grad_run, ppo_workers=2, **kw)
    assert serial.get("ppo") == parallel.get("ppo")


def test_quick_start_ppo_budgets_and_the_100x_flag():
    """The quick start's evaluate runs PPO at 1x and 10x; 100x is one flag away."""
    import inspect

    from meta_rl.cli import build_parser

    assert inspect.signature(evaluate_run).parameters["ppo_multipliers"].default == (1.0, 10.0)
    args = build_parser().parse_args(["evaluate", "runs/x"])
    assert args.ppo_multipliers == [1.0, 10.0] and args.ppo_workers is None
    args = build_parser().parse_args(["evaluate", "runs/x", "--ppo-multipliers", "1,10,100"])
    assert args.ppo_multipliers == [1.0, 10.0, 100.0]


def test_many_armed_bandit_skips_the_reference_it_cannot_compute(tmp_path, capsys):
    """k=50 arms, n=10 pulls: the exact Bayes-optimal DP cannot be computed; training keeps its
    final evaluation and the other references, and the evaluation finishes and says which
    reference it skipped and why (issue 14)."""
    k50 = {**TINY_RL2, "env_kwargs": '{"k": 50}', "iterations": 1, "references": "true"}
    run = train_cli("rl2-bandits", tmp_path / "k50", k50)
    final = json.loads((run / "final.json").read_text())
    assert "eval_return" in final and "ref_thompson" in final and "ref_bayes_optimal" not in final
    report = evaluate_run(run, tasks=3, baselines=("none", "reference"))
    assert list(report.skipped_references) == ["bayes_optimal"]
    assert "too large for the exact bandit DP" in report.skipped_references["bayes_optimal"]
    whole_trial = {r.name for r in report.references if "(episode 1)" not in r.name}
    assert whole_trial == {"thompson", "ucb1", "greedy", "random"}
    table = markdown_table(report)
    assert "not computed" in table and "DP" in table
    code = main(["evaluate", str(run), "--tasks", "3", "--baselines", "reference", "--out",
                 str(tmp_path / "eval")])  # fmt: skip
    assert code == 0 and "not computed" in capsys.readouterr().out
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["skipped_references"] == Report.from_dict(saved).skipped_references != {}
