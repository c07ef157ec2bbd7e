"""The zoo shipped in the package: every agent loads offline with ``meta_rl.load("zoo:NAME")``
(no training), runs under stable-baselines3's ``evaluate_policy``, and still scores its card's
held-out result within the card's 95% CI when its card's evaluation is repeated."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest

import meta_rl
from meta_rl import zoo
from meta_rl.agent import GradientAgent, MemoryAgent
from meta_rl.card import packed_files
from meta_rl.cli import main

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


FRESH_VENV_CHECK = """
import json, sys
import meta_rl
from meta_rl import zoo
from meta_rl.card import headline
from meta_rl.evaluate import evaluate_run

out = {"meta_rl": meta_rl.__file__, "sys_path": sys.path, "agents": {}}
for name in zoo.names():
    card = zoo.entry(name).report
    report = evaluate_run(
        f"zoo:{name}", split=card.split, tasks=card.num_tasks, budget=card.budget.value,
        baselines=(), seed=card.seed, deterministic=card.deterministic,
    )
    h = headline(report)
    out["agents"][name] = {"mean": h.mean, "before": h.before, "tasks": h.tasks}
print(json.dumps(out))
"""


def _site_packages(python: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(
        subprocess.run(
            [python, "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()
    )


def test_zoo_loads_from_the_wheel_in_a_fresh_virtualenv_offline_and_scores_its_cards(tmp_path):
    """The Must-show: build the wheel, install it (no dependencies, no index) into a new
    virtualenv whose only other packages are the dependencies (torch, gymnasium... through a
    .pth line; meta-rl's own editable install is not visible there), then, with no network
    (a network namespace without interfaces when ``unshare`` allows it; ``HF_HUB_OFFLINE=1``)
    and no training, every zoo agent loads and scores its card's result within the card's CI
    on the card's held-out tasks."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git",
            "runs",
            "build",
            "dist",
            "site",
            "*.egg-info",
            ".ci",
            ".shim",
            "__pycache__",
            ".pytest_cache",
            ".ruff_cache",
        ),
    )
    pip = [sys.executable, "-m", "pip"]
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no checkout on the path
    quiet = {"capture_output": True, "text": True, "check": True, "env": clean}
    subprocess.run(
        [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl")],
        **quiet,
    )
    (wheel,) = (tmp_path / "whl").glob("meta_rl-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], **quiet)
    python = venv / "bin" / "python"
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], **quiet
    )
    deps = _site_packages(Path(sys.executable))
    (_site_packages(python) / "_deps.pth").write_text(f"{deps}\n")  # torch, gymnasium, ...

    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [str(python), "-c", FRESH_VENV_CHECK]
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"]).returncode == 0:
        cmd = ["unshare", "-rn", *cmd]  # no network at all
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["meta_rl"].startswith(str(venv))  # the wheel's meta_rl, not the checkout's
    # nothing of the checkout on the path (the dependencies' site-packages may live inside it,
    # as CI's .ci/venv does)
    assert not any(p.startswith(str(ROOT)) and not p.startswith(str(deps)) for p in out["sys_path"])
    assert set(out["agents"]) == set(NAMES)
    for name, got in out["agents"].items():
        want = zoo.entry(name).headline
        assert got["tasks"] == want.tasks >= 100
        assert abs(got["mean"] - want.mean) <= want.ci95, (name, got, want.text())
        assert got["mean"] > got["before"]  # adaptation still helps, as the card says


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
    assert "meta_rl.zoo" in config["tool"]["setuptools"]["packages"]
    globs = config["tool"]["setuptools"]["package-data"]["meta_rl.zoo"]

    def shipped(rel: PurePosixPath) -> bool:  # setuptools' glob: '*' stays inside one folder
        return any(len(PurePosixPath(g).parts) == len(rel.parts) and rel.match(g) for g in globs)

    for name in NAMES:
        for f in packed_files(zoo.ZOO_DIR / name):
            assert shipped(PurePosixPath(f"{name}/{f}")), f


def test_docs_list_every_zoo_agent():
    page = (ROOT / "docs" / "sharing.md").read_text()
    for e in zoo.entries():
        assert f"`zoo:{e.name}`" in page and e.headline.text() in page
