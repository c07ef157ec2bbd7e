"""pytest prints no warnings: each one the suite used to print is fixed or filtered on purpose
(pyproject.toml, ``filterwarnings``, one comment per filter). This runs, in a fresh pytest, the
tests that used to print them (issue 14: about 40 per run)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import pytest

from meta_rl.policies.recurrent import GRUPolicy

ROOT = Path(__file__).resolve().parents[1]
USED_TO_WARN = [
    "tests/test_cli.py::test_envs_lists_pointnav_with_ranges_and_splits",  # Meta-World's Box
    "tests/test_wrappers.py::test_gym_trial_samples_seeded_tasks_and_passes_checker",
    "tests/test_policies_recurrent.py::test_bad_input_is_named",
]


def test_bad_hidden_size_is_refused_before_a_layer_is_built():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # was: "Initializing zero-element tensors is a no-op"
        with pytest.raises(ValueError, match="hidden_size=0"):
            GRUPolicy(7, gym.spaces.Discrete(5), hidden_size=0)


def test_the_tests_that_used_to_warn_print_no_warnings():
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *USED_TO_WARN],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert "warning" not in out.stdout.lower(), out.stdout[-3000:]
