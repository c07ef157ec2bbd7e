"""The task protocol itself (envs/core.py), independent of any one family."""

from dataclasses import dataclass

import numpy as np
import pytest
from meta_rl_envs import Choice, Task, TaskDistribution, TaskError, TaskSpace, Uniform
from meta_rl_envs.core import TEST_FRACTION


@dataclass(frozen=True)
class Toy(Task):
    family = "Toy"
    a: float = 0.0
    b: tuple[float, float] = (0.0, 0.0)


def toy_space():
    return TaskSpace(
        Toy, [Uniform("a", (), 0.0, 1.0, ood=((1.5, 2.0),)), Uniform("b", (2,), -1, 1)]
    )


def test_splits_partition_the_space_and_follow_the_hash():
    space = toy_space()
    seen = {}
    for split in ("train", "test", "ood"):
        tasks = space.sample(300, np.random.default_rng(0), split)
        assert len(tasks) == 300
        assert all(space.split_of(t) == split for t in tasks)
        seen[split] = {t.to_json() for t in tasks}
    assert not seen["train"] & seen["test"]
    assert not (seen["train"] | seen["test"]) & seen["ood"]
    # In-range draws fall on the test side about TEST_FRACTION of the time.
    draws = [
        space._build({"a": np.array([x]), "b": np.zeros((1, 2))}, 0)
        for x in np.linspace(0, 1, 2000)
    ]
    share = np.mean([space.split_of(t) == "test" for t in draws])
    assert abs(share - TEST_FRACTION) < 0.05


def test_ood_draws_lie_in_the_declared_region():
    tasks = toy_space().sample(200, 3, "ood")
    a = np.array([t.a for t in tasks])
    assert ((a >= 1.5) & (a <= 2.0)).all()


def test_same_seed_same_tasks_other_seed_other_tasks():
    space = toy_space()
    assert space.sample(5, 7) == space.sample(5, 7)
    assert space.sample(5, 7) != space.sample(5, 8)


def test_json_round_trip_and_validation_errors():
    space = toy_space()
    task = space.sample(1, 0)[0]
    assert Toy.from_json(task.to_json()) == task
    assert space.validate(task.to_json()) == task
    with pytest.raises(TaskError, match=r"'a' = 3.0 is out of range: allowed \[0.0, 2.0\]"):
        space.validate(Toy(a=3.0, b=(0.0, 0.0)))
    with pytest.raises(TaskError, match="malformed task JSON"):
        space.validate("{not json")
    with pytest.raises(TaskError, match=r"unknown fields \['c'\]"):
        space.validate({"a": 0.5, "b": [0, 0], "c": 1})
    with pytest.raises(TaskError, match="has 3 values"):
        space.validate({"a": 0.5, "b": [0, 0, 0]})
    with pytest.raises(TaskError, match="split='valid' is not a split"):
        space.sample(2, 0, "valid")
    with pytest.raises(TaskError, match="rng is required"):
        space.sample(2, None)


def test_a_space_without_ood_region_says_so():
    space = TaskSpace(Toy, [Uniform("a", (), 0, 1), Uniform("b", (2,), -1, 1)])
    assert space.splits == ("train", "test")
    with pytest.raises(TaskError, match="has no ood split"):
        space.sample(1, 0, "ood")


def test_finite_space_shares_its_tasks_between_train_and_test():
    @dataclass(frozen=True)
    class Dir(Task):
        family = "Dir"
        direction: float = 1.0

    space = TaskSpace(Dir, [Choice("direction", values=(-1.0, 1.0))])
    values = {t.direction for t in space.sample(50, 0, "test")}
    assert values == {-1.0, 1.0}
    with pytest.raises(TaskError, match=r"allowed one of \[-1.0, 1.0\]"):
        space.validate(Dir(direction=0.5))


def test_ood_interval_inside_the_range_is_refused():
    with pytest.raises(TaskError, match="outside the range"):
        Uniform("a", (), 0.0, 1.0, ood=((0.5, 1.5),))


def test_task_distribution_is_a_value_that_samples():
    dist = TaskDistribution("MetaRL/PointNav-v0", "test")
    tasks = dist.sample(4, 0)
    assert tasks == dist.sample(4, 0)
    with pytest.raises(TaskError, match="unknown family id 'MetaRL/Nope-v0'.*MetaRL/PointNav-v0"):
        TaskDistribution("MetaRL/Nope-v0").sample(1, 0)


def _legacy_sample(space, n, seed, split):
    """The block draw the task spaces used before prefix-stable sampling (issue 14): every
    parameter of a block of candidates in turn. One-parameter spaces must still draw exactly
    this (PointNav and Bandit runs keep their numbers)."""
    rng = np.random.default_rng(seed)
    tasks = []
    while len(tasks) < n:
        block = max(8, 2 * (n - len(tasks)))
        values = {k: p.sample(rng, block, split == "ood") for k, p in space.params.items()}
        for i in range(block):
            task = space._build(values, i)
            if space.split_of(task) == split and len(tasks) < n:
                tasks.append(task)
    return tasks, rng.random()


@pytest.mark.parametrize(
    "env_id",
    ["MetaRL/CartPole-v0", "MetaRL/TabularMDP-v0", "MetaRL/PointNav-v0", "MetaRL/Pendulum-v0"],
)
@pytest.mark.parametrize("split", ["train", "test", "ood"])
def test_the_first_k_tasks_of_a_seeded_draw_do_not_depend_on_n(env_id, split):
    """sample_tasks(3, rng=0) == sample_tasks(5, rng=0)[:3], for families with several
    parameters too (CartPole, Pendulum, tabular MDPs), on every split they have."""
    from meta_rl_envs import make_batched, make_env

    env = make_env(env_id, 1)
    space = env.task_space
    if split not in space.splits:
        pytest.skip(f"{env_id} has no {split} split")
    for k, n in ((3, 5), (1, 40), (8, 9)):
        assert env.sample_tasks(k, 0, split) == env.sample_tasks(n, 0, split)[:k]
    if env_id == "MetaRL/CartPole-v0":
        batched = make_batched(env_id, 1)
        assert batched.sample_tasks(3, 0, split) == batched.sample_tasks(5, 0, split)[:3]
    env.close()


@pytest.mark.parametrize("k", [1, 5, 10])
def test_one_parameter_spaces_draw_the_same_tasks_as_before(k):
    from meta_rl_envs.bandits import bandit_space
    from meta_rl_envs.navigation import goal_space

    cases = ((goal_space(), "train"), (goal_space(), "test"), (bandit_space(k), "test"))
    for space, split in cases:
        for n in (1, 3, 8, 50):
            rng = np.random.default_rng(n)
            tasks = space.sample(n, rng, split)
            want, after = _legacy_sample(space, n, n, split)
            assert tasks == want and rng.random() == after  # same tasks, same rng state after
