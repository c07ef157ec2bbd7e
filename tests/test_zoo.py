"""The zoo shipped in the package: every agent loads offline with ``meta_rl.load("zoo:NAME")``
(no training), runs under stable-baselines3's ``evaluate_policy``, and still scores its card's
held-out result within the card's 95% CI when its card's evaluation is repeated."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gymnasium as gym
import pytest

import meta_rl
from meta_rl import zoo
from meta_rl.agent import GradientAgent, MemoryAgent
from meta_rl.card import headline, packed_files
from meta_rl.cli import main
from meta_rl.evaluate import evaluate_run

ROOT = Path(__file__).resolve().parent.parent
EXPECTED = {"smoke-pointnav", "maml-trpo-pointnav", "rl2-bandits"}
NAMES = zoo.names()


def test_the_zoo_ships_its_agents():
    assert set(NAMES) == EXPECTED


@pytest.mark.parametrize("name", NAMES)
def test_zoo_agent_holds_only_what_loading_and_its_card_need(name):
    files = packed_files(zoo.ZOO_DIR / name)
    assert [f for f in files if f.endswith(".safetensors")] == [
        f for f in files if f.startswith("checkpoints/step_") and f.endswith(".safetensors")
    ]
    assert len([f for f in files if f.startswith("checkpoints/")]) == 2  # final weights only
    assert {"README.md", "config.json", "final.json"} <= set(files)
    assert {"evaluation-test/report.json", "evaluation-test/adaptation.png"} <= set(files)
    assert not any(f.startswith(("tb/", "metrics.csv", "log.txt")) for f in files)
    size = sum((zoo.ZOO_DIR / name / f).stat().st_size for f in files)
    assert size < 1_500_000, f"{name}: {size} bytes"


@pytest.mark.parametrize("name", NAMES)
def test_zoo_agent_runs_under_sb3_evaluate_policy(name):
    from stable_baselines3.common.evaluation import evaluate_policy

    agent = meta_rl.load(f"zoo:{name}")
    entry = zoo.entry(name)
    env = gym.make(entry.env_id, **entry.report.env_kwargs)
    task = env.unwrapped.sample_tasks(1, rng=0, split="test")[0]
    env.unwrapped.set_task(task)
    if isinstance(agent, GradientAgent):
        policy, eval_env = agent.adapt(env, budget=1), env
        expected_length = env.unwrapped.horizon
    else:
        assert isinstance(agent, MemoryAgent)
        policy, eval_env = agent, agent.wrap_env(env)  # one wrapper episode = one trial
        expected_length = None
    rewards, lengths = evaluate_policy(
        policy, eval_env, n_eval_episodes=3, return_episode_rewards=True, warn=False
    )
    assert len(rewards) == 3 and all(math.isfinite(r) for r in rewards)
    if expected_length is not None:
        assert all(n == expected_length for n in lengths)
    else:
        assert all(n >= agent.episodes_per_trial for n in lengths)


@pytest.mark.parametrize("name", NAMES)
def test_zoo_agent_still_scores_its_card_within_its_ci(name):
    """The card's evaluation repeated (same split, tasks, seed, budget): the held-out result is
    within the card's 95% CI (on the machine that built the zoo it is the same number)."""
    entry = zoo.entry(name)
    card = entry.report
    report = evaluate_run(
        f"zoo:{name}",
        split=card.split,
        tasks=card.num_tasks,
        budget=card.budget.value,
        baselines=(),
        seed=card.seed,
        deterministic=card.deterministic,
    )
    want, got = headline(card), headline(report)
    assert got.tasks == want.tasks >= 100
    assert abs(got.mean - want.mean) <= want.ci95, (name, got.text(), want.text())
    # and adaptation still helps, as the card says
    assert got.mean > got.before


@pytest.mark.parametrize("name", NAMES)
def test_zoo_card_states_the_same_result_as_its_report(name):
    entry = zoo.entry(name)
    h = entry.headline
    text = entry.card.read_text()
    assert "library_name: meta-rl" in text
    assert f"**{h.text()}**" in text
    assert f'meta_rl.load("zoo:{name}")' in text
    config = json.loads((entry.path / "config.json").read_text())
    assert config["preset"] == name  # trained by its preset as shipped


def test_meta_rl_zoo_lists_every_agent_with_its_score(capsys):
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    for e in zoo.entries():
        assert e.name in out and e.headline.text() in out
    assert main(["zoo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == set(NAMES)
    assert main(["zoo", NAMES[0]]) == 0
    assert "model-index" in capsys.readouterr().out


def test_unknown_zoo_names_list_the_available_ones(capsys):
    with pytest.raises(zoo.ZooError, match="available: " + ", ".join(NAMES)):
        meta_rl.load("zoo:no-such-agent")
    assert main(["zoo", "no-such-agent"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("meta-rl: error: no zoo agent called 'no-such-agent'") and "\n" not in err


def test_pyproject_ships_every_zoo_file_as_package_data():
    """Each file of the zoo matches one of the package-data globs (so it is in the wheel)."""
    from pathlib import PurePosixPath

    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["meta_rl"]

    def shipped(rel: PurePosixPath) -> bool:  # setuptools' glob: '*' stays inside one folder
        return any(len(PurePosixPath(g).parts) == len(rel.parts) and rel.match(g) for g in globs)

    for name in NAMES:
        for f in packed_files(zoo.ZOO_DIR / name):
            assert shipped(PurePosixPath(f"zoo/{name}/{f}")), f


def test_docs_list_every_zoo_agent():
    page = (ROOT / "docs" / "sharing.md").read_text()
    for e in zoo.entries():
        assert f"`zoo:{e.name}`" in page and e.headline.text() in page
