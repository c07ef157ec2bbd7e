"""Sharing on the Hugging Face Hub: the folder ``meta-rl push`` uploads (complete, weights only,
a model card the client parses), the upload up to the client's network calls (those two are
replaced by a copy into a local folder standing for the repository), and the download through
the client's own offline cache: push -> cache -> ``meta_rl.load("hf://...")`` acts as the
original run does."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import meta_rl
from meta_rl.card import headline, read_report
from meta_rl.cli import main
from meta_rl.hub import HubError, parse, push
from meta_rl.runs import RunError
from tests.test_agent import TINY_MAML, TINY_RL2, train_cli

hf = pytest.importorskip("huggingface_hub")

OBS = np.array([[0.0, 0.0], [0.3, -0.2], [-0.4, 0.1], [0.05, 0.45]], dtype=np.float32)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def evaluated(run: Path, tasks: int = 3) -> Path:
    argv = ["-q", "evaluate", str(run), "--tasks", str(tasks), "--baselines", "none,reference"]
    assert main([*argv, "--no-progress"]) == 0
    return run


@pytest.fixture(scope="module")
def grad_run(tmp_path_factory) -> Path:
    run = train_cli("smoke-pointnav", tmp_path_factory.mktemp("hub") / "maml", TINY_MAML)
    return evaluated(run)


@pytest.fixture(scope="module")
def mem_run(tmp_path_factory) -> Path:
    run = train_cli("rl2-bandits", tmp_path_factory.mktemp("hub") / "rl2", TINY_RL2)
    return evaluated(run)


class FakeHub:
    """``HfApi.create_repo`` / ``upload_folder`` without the network: the uploaded folder is
    copied into ``repos/ORG/NAME`` (the repository), and the calls are recorded."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, dict]] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        fake = self

        def create_repo(self, repo_id, **kw):
            fake.calls.append(("create_repo", {"repo_id": repo_id, **kw}))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, *, repo_id, folder_path, **kw):
            fake.calls.append(("upload_folder", {"repo_id": repo_id, **kw}))
            src, dest = Path(folder_path), fake.root / repo_id
            for p in sorted(src.rglob("*")):
                if p.is_file():
                    (dest / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
                    (dest / p.relative_to(src)).write_bytes(p.read_bytes())
            return hf.CommitInfo(
                commit_url=f"https://huggingface.co/{repo_id}/commit/{COMMIT}",
                commit_message=kw.get("commit_message", ""),
                commit_description="",
                oid=COMMIT,
            )

        monkeypatch.setattr(hf.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(hf.HfApi, "upload_folder", upload_folder)


def lay_out_cache(repo: Path, cache: Path, repo_id: str, commit: str = COMMIT) -> Path:
    """The client's cache layout for a downloaded model repository: ``models--ORG--NAME/`` with
    ``blobs/<hash>`` (the file contents), ``snapshots/<commit>/<path>`` (relative links to the
    blobs) and ``refs/main`` (the commit)."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = storage / "snapshots" / commit
    for p in sorted(repo.rglob("*")):
        if not p.is_file():
            continue
        data = p.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        (storage / "blobs" / digest).write_bytes(data)
        rel = p.relative_to(repo)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        up = "../" * (len(rel.parts) + 1)  # snapshots/<commit>/<dirs...>/file -> blobs/
        link.symlink_to(f"{up}blobs/{digest}")
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return storage


def offline_python(code: str, cache: Path, meta_cache: Path) -> str:
    """Run ``code`` in a new interpreter with the Hub client offline on ``cache``."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cache),
        "META_RL_CACHE": str(meta_cache),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def actions(agent, seed: int = 3) -> dict:
    det, _ = agent.predict(OBS, deterministic=True)
    agent.seed(seed)
    sampled, _ = agent.predict(OBS)
    return {"det": det.tolist(), "sampled": sampled.tolist()}


# --------------------------------------------------------------------------------------------
# The folder push uploads
# --------------------------------------------------------------------------------------------
def test_dry_run_writes_a_complete_weights_only_folder_that_loads(grad_run, tmp_path):
    result = push(grad_run, "my-org/nav-agent", dry_run=tmp_path / "up")
    assert result.url is None
    files = result.files
    tensors = [f for f in files if f.endswith(".safetensors")]
    sidecars = [f for f in files if f.startswith("checkpoints/") and f.endswith(".json")]
    assert len(tensors) == 1 and len(sidecars) == 1  # the final checkpoint only
    assert set(files) == {
        "README.md",
        "config.json",
        "final.json",
        "evaluation-test/report.json",
        "evaluation-test/adaptation.png",
        *tensors,
        *sidecars,
    }
    final_step = max(int(p.name[5:13]) for p in (grad_run / "checkpoints").glob("step_*.json"))
    sidecar = json.loads((tmp_path / "up" / sidecars[0]).read_text())
    assert sidecar["step"] == final_step
    assert sidecar["state"] == {}  # no trainer / RNG state travels
    report = json.loads((tmp_path / "up" / "evaluation-test/report.json").read_text())
    assert report["run"] == "nav-agent" and report["tasks"] == []  # no local paths
    # the packed folder is a run folder: it loads and acts as the original does
    assert actions(meta_rl.load(tmp_path / "up")) == actions(meta_rl.load(grad_run))


def test_model_card_metadata_parses_with_the_client_and_renders_the_table(grad_run, tmp_path):
    folder = push(grad_run, "my-org/nav-agent", dry_run=tmp_path / "up").folder
    card = hf.ModelCard.load(folder / "README.md")
    data = card.data
    assert data.library_name == "meta-rl"
    assert {"meta-rl", "PointNav-v0", "maml", "trpo"} <= set(data.tags)
    result = data.eval_results[0]
    h = headline(read_report(grad_run / "evaluation-test" / "report.json"))
    assert result.task_type == "reinforcement-learning"
    assert result.dataset_type == "MetaRL/PointNav-v0"
    assert result.metric_type == "mean_reward"
    assert result.metric_value == f"{h.mean:.2f} +/- {h.ci95:.2f}"
    assert "held-out" in result.metric_name
    text = card.text
    assert "| agent / baseline | budget | env steps | return (mean ± 95% CI) |" in text
    assert f"{h.mean:.3f} ± {h.ci95:.3f}" in text
    assert "![adaptation](evaluation-test/adaptation.png)" in text
    assert 'meta_rl.load("hf://my-org/nav-agent")' in text


def test_memory_agent_card_leads_with_the_trial_return(mem_run, tmp_path):
    folder = push(mem_run, "my-org/bandit-agent", dry_run=tmp_path / "up").folder
    data = hf.ModelCard.load(folder / "README.md").data
    report = read_report(folder / "evaluation-test" / "report.json")
    assert {"rl2", "gru", "Bandit-v0"} <= set(data.tags)
    trial = report.trial_return
    assert data.eval_results[0].metric_value == f"{trial.mean:.2f} +/- {trial.ci95:.2f}"
    assert "trial" in data.eval_results[0].metric_name


# --------------------------------------------------------------------------------------------
# Upload up to the client call, then the download round trip through the offline cache
# --------------------------------------------------------------------------------------------
def test_push_calls_the_client_and_the_round_trip_loads_the_same_agent(
    grad_run, tmp_path, monkeypatch
):
    fake = FakeHub(tmp_path / "repos")
    fake.install(monkeypatch)
    result = push(grad_run, "my-org/nav-agent", private=True)
    assert [c[0] for c in fake.calls] == ["create_repo", "upload_folder"]
    assert fake.calls[0][1]["private"] is True and fake.calls[0][1]["exist_ok"] is True
    assert fake.calls[1][1]["repo_type"] == "model"
    assert result.url.endswith(COMMIT)
    repo = tmp_path / "repos" / "my-org" / "nav-agent"
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()) == (
        result.files
    )

    cache = tmp_path / "hf-cache"
    lay_out_cache(repo, cache, "my-org/nav-agent")
    out = offline_python(
        f"""
        import json, numpy as np, meta_rl
        obs = np.array({OBS.tolist()}, dtype=np.float32)
        out = {{}}
        for spec in ["hf://my-org/nav-agent", "hf://my-org/nav-agent@{COMMIT}"]:
            agent = meta_rl.load(spec)
            det, _ = agent.predict(obs, deterministic=True)
            agent.seed(3)
            sampled, _ = agent.predict(obs)
            out[spec] = {{"det": det.tolist(), "sampled": sampled.tolist(),
                         "path": str(agent.path)}}
        print(json.dumps(out))
        """,
        cache,
        tmp_path / "meta-rl-cache",
    )
    got = json.loads(out)
    want = actions(meta_rl.load(grad_run))
    for spec, acts in got.items():
        assert {"det": acts["det"], "sampled": acts["sampled"]} == want, spec
        # loaded from a real-file copy of the snapshot, not through the cache's links
        assert acts["path"].startswith(str(tmp_path / "meta-rl-cache"))


def test_memory_agent_round_trip(mem_run, tmp_path, monkeypatch):
    fake = FakeHub(tmp_path / "repos")
    fake.install(monkeypatch)
    push(mem_run, "my-org/bandit-agent")
    lay_out_cache(
        tmp_path / "repos" / "my-org" / "bandit-agent", tmp_path / "c", "my-org/bandit-agent"
    )
    monkeypatch.setenv("META_RL_CACHE", str(tmp_path / "mc"))
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", True)
    from meta_rl.hub import download

    folder = download("hf://my-org/bandit-agent", cache_dir=tmp_path / "c")
    agent, original = meta_rl.load(str(folder)), meta_rl.load(mem_run)
    obs = np.zeros((3, agent.trial_observation_space.shape[0]), dtype=np.float32)
    a, state_a = agent.predict(obs, deterministic=True)
    b, state_b = original.predict(obs, deterministic=True)
    assert a.tolist() == b.tolist()
    a2, _ = agent.predict(obs, state_a, deterministic=True)
    b2, _ = original.predict(obs, state_b, deterministic=True)
    assert a2.tolist() == b2.tolist()


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec", ["hf://", "hf://just-a-name", "hf://a/b/c", "hf://a/b@", "hf://-a/b", "hf://a/b@x y"]
)
def test_malformed_hub_addresses_name_the_expected_form(spec):
    with pytest.raises(HubError, match=r"hf://ORG/NAME\[@revision\]"):
        meta_rl.load(spec)


def test_parse_reads_repo_and_revision():
    assert parse("hf://my-org/agent").revision == "main"
    ref = parse("hf://my-org/agent@v1.0")
    assert (ref.repo_id, ref.revision, str(ref)) == (
        "my-org/agent",
        "v1.0",
        "hf://my-org/agent@v1.0",
    )


def test_a_repo_missing_from_the_offline_cache_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(hf.constants, "HF_HUB_OFFLINE", True)
    from meta_rl.hub import download

    with pytest.raises(HubError, match="not in the local Hugging Face cache"):
        download("hf://my-org/absent", cache_dir=tmp_path)


def test_push_refuses_an_unevaluated_run_and_a_bad_repo(tmp_path, grad_run):
    bare = train_cli("smoke-pointnav", tmp_path / "bare", TINY_MAML)
    with pytest.raises(RunError, match="meta-rl evaluate"):
        push(bare, "my-org/x", dry_run=tmp_path / "up")
    with pytest.raises(HubError, match="ORG/NAME"):
        push(grad_run, "not a repo", dry_run=tmp_path / "up2")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(RunError, match="not empty"):
        push(grad_run, "my-org/x", dry_run=tmp_path / "full")


def test_cli_push_dry_run_and_one_line_errors(grad_run, tmp_path, capsys):
    assert (
        main(["push", str(grad_run), "--repo", "my-org/nav", "--dry-run", str(tmp_path / "d")]) == 0
    )
    out = capsys.readouterr().out
    assert "README.md" in out and "dry run: 7 files for my-org/nav" in out
    assert main(["push", str(grad_run), "--repo", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("meta-rl: error:") and "ORG/NAME" in err and "\n" not in err


def test_without_the_client_the_error_names_the_extra(grad_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(HubError, match=r"meta-rl\[hub\]"):
        push(grad_run, "my-org/x")
    with pytest.raises(HubError, match=r"meta-rl\[hub\]"):
        meta_rl.load("hf://my-org/x")
