"""Few-shot backbones and learners: shapes, functional_call / vmap, and small learning runs.

Learning tests run on a structured synthetic image set (each class a random arrangement of
blobs; samples are shifted, noisy copies; held-out classes are new arrangements) and, for
ProtoNets and MANN, on a small glyph set rendered into a temporary folder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap

from meta_rl.fewshot.data import EpisodeSampler, ImageSet
from meta_rl.fewshot.mann import MANN, accuracy_by_instance, image_features, previous_labels
from meta_rl.fewshot.metric import (
    ProtoNet,
    SiameseNet,
    contrastive_loss,
    evaluate_accuracy,
    prototypes,
    verification_accuracy,
)
from meta_rl.fewshot.models import MLP, Conv4, seeded


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convolutions run faster on one thread, above all on a shared, busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# structured synthetic images
# ---------------------------------------------------------------------------------------------
def blob_images(
    n_classes: int, per_class: int, size: int = 16, noise: float = 0.25, seed: int = 0
) -> ImageSet:
    """Class c = 3-5 Gaussian blobs at random places; samples shift by up to 2 px and get noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.zeros((n_classes, per_class, size, size), np.float32)
    for c in range(n_classes):
        proto = np.zeros((size, size))
        for _ in range(rng.integers(3, 6)):
            cy, cx = rng.uniform(2, size - 2, 2)
            s = rng.uniform(0.8, 1.8)
            proto += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
        for j in range(per_class):
            shifted = np.roll(proto, tuple(rng.integers(-2, 3, 2)), (0, 1))
            images[c, j] = shifted + noise * rng.standard_normal((size, size))
    u8 = (np.clip(images, 0, 1) * 255).astype(np.uint8).reshape(-1, size, size)
    labels = np.repeat(np.arange(n_classes), per_class)
    names = [f"c{c}" for c in range(n_classes)]
    return ImageSet(u8, labels, names, [f"g{c // 10}" for c in range(n_classes)])


@pytest.fixture(scope="module")
def blobs() -> dict[str, ImageSet]:
    data = blob_images(160, 8)
    return {"train": data.select_classes(range(120)), "test": data.select_classes(range(120, 160))}


# ---------------------------------------------------------------------------------------------
# backbones
# ---------------------------------------------------------------------------------------------
def test_mlp_and_conv4_shapes_and_errors():
    mlp = MLP([1, 40, 40, 1])
    assert mlp(torch.zeros(7, 1)).shape == (7, 1)
    assert sum(isinstance(m, torch.nn.ReLU) for m in mlp.modules()) == 2
    with pytest.raises(ValueError, match="sizes"):
        MLP([3])
    with pytest.raises(ValueError, match=r"sizes\[1\]=0"):
        MLP([3, 0, 1])
    with pytest.raises(ValueError, match="last dimension must be 1"):
        mlp(torch.zeros(2, 3))
    net = Conv4(1, 8, 5, 28)
    assert net(torch.zeros(4, 1, 28, 28)).shape == (4, 5)
    assert net.embed(torch.zeros(4, 1, 28, 28)).shape == (4, 8)
    assert Conv4(3, 8, None, 84)(torch.zeros(2, 3, 84, 84)).shape == (2, 8 * 5 * 5)
    with pytest.raises(ValueError, match="expected \\[N, 1, 28, 28\\]"):
        net(torch.zeros(4, 28, 28))
    with pytest.raises(ValueError, match="image_size=8"):
        Conv4(1, 8, 5, 8)
    # batch norm keeps no running statistics (nothing mutated by a forward pass)
    assert not list(net.buffers())


@pytest.mark.parametrize("kind", ["mlp", "conv4"])
def test_backbones_under_functional_call_and_vmap(kind):
    with seeded(0):
        model = MLP([6, 16, 3]) if kind == "mlp" else Conv4(1, 8, 3, 16)
    tasks = 3
    gen = torch.Generator().manual_seed(1)
    shape = (tasks, 10, 6) if kind == "mlp" else (tasks, 10, 1, 16, 16)
    x = torch.randn(shape, generator=gen)
    # per-task parameters: the shared weights plus a different perturbation per task
    params = {
        k: v.detach().expand(tasks, *v.shape) + 0.1 * torch.randn(tasks, *v.shape, generator=gen)
        for k, v in model.named_parameters()
    }
    out = vmap(lambda p, xb: functional_call(model, p, (xb,)))(params, x)
    loop = torch.stack(
        [functional_call(model, {k: v[i] for k, v in params.items()}, (x[i],)) for i in range(3)]
    )
    assert out.shape == (tasks, 10, 3)
    assert torch.allclose(out, loop, atol=1e-5)
    assert not torch.allclose(out[0], out[1])
    # gradients through vmap reach the stacked parameters
    grads = torch.func.grad(
        lambda p: vmap(lambda pp, xb: functional_call(model, pp, (xb,)))(p, x).pow(2).mean()
    )(params)
    assert all(g.shape == params[k].shape and g.abs().sum() > 0 for k, g in grads.items())


def test_seeded_init_is_deterministic_and_leaves_the_global_rng_alone():
    before = torch.random.get_rng_state()
    with seeded(3):
        a = Conv4(1, 8, 5, 16)
    with seeded(3):
        b = Conv4(1, 8, 5, 16)
    with seeded(4):
        c = Conv4(1, 8, 5, 16)
    assert torch.equal(torch.random.get_rng_state(), before)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["head.weight"], sc["head.weight"])


# ---------------------------------------------------------------------------------------------
# prototypical networks and Siamese nets on synthetic images
# ---------------------------------------------------------------------------------------------
def test_prototypes_are_class_means():
    z = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]]])
    y = torch.tensor([[0, 0, 1]])
    assert torch.equal(prototypes(z, y, 2), torch.tensor([[[2.0, 1.0], [0.0, 5.0]]]))


def _fit(model, sampler, steps, loss_fn, lr=3e-3):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        xs, ys, xq, yq = sampler.sample(2)
        loss = loss_fn(xs, ys, xq, yq)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_protonet_learns_held_out_classes(blobs):
    torch.manual_seed(0)  # not used by the code under test; guards against hidden global draws
    with seeded(0):
        model = ProtoNet(1, 16, 16)
    test = EpisodeSampler(blobs["test"], 5, 1, 5, seed=7)
    before = evaluate_accuracy(model, test, episodes=100)["accuracy"]
    train = EpisodeSampler(blobs["train"], 5, 1, 5, seed=1)
    _fit(
        model,
        train,
        60,
        lambda xs, ys, xq, yq: F.cross_entropy(model(xs, ys, xq, 5).flatten(0, 1), yq.flatten()),
    )
    after = evaluate_accuracy(model, EpisodeSampler(blobs["test"], 5, 1, 5, seed=7), episodes=100)
    assert after["accuracy"] > 0.6, (before, after)  # 0.74 here; untrained 0.33, chance 0.2
    assert after["accuracy"] > before + 0.25, (before, after)
    assert 0 < after["ci95"] < 0.06


def test_siamese_learns_pair_verification(blobs):
    with seeded(0):
        model = SiameseNet(1, 16, 16)
    test = EpisodeSampler(blobs["test"], 5, 1, 5, seed=7)
    before = verification_accuracy(model, test, margin=1.0, episodes=50)
    train = EpisodeSampler(blobs["train"], 5, 1, 5, seed=1)

    def loss_fn(xs, ys, xq, yq):
        same = yq[:, :, None] == ys[:, None, :]
        return contrastive_loss(model.distances(xs, xq), same, 1.0)

    _fit(model, train, 60, loss_fn)
    test = EpisodeSampler(blobs["test"], 5, 1, 5, seed=7)
    after = verification_accuracy(model, test, margin=1.0, episodes=50)
    assert after > 0.75 and after > before + 0.2, (before, after)  # 0.83 here; untrained 0.57
    one_shot = evaluate_accuracy(
        model, EpisodeSampler(blobs["test"], 5, 1, 5, seed=7), episodes=100
    )
    assert one_shot["accuracy"] > 0.6, one_shot  # 0.75 here; chance 0.2


def test_contrastive_loss_values():
    d = torch.tensor([[0.5, 0.2, 1.5]])
    same = torch.tensor([[True, False, False]])
    # positives: 0.25; negatives: mean of (1 - 0.2)^2 and 0
    assert torch.isclose(contrastive_loss(d, same, 1.0), torch.tensor(0.25 + 0.32))


# ---------------------------------------------------------------------------------------------
# MANN
# ---------------------------------------------------------------------------------------------
def test_mann_inputs_and_instance_accuracy():
    y = torch.tensor([[2, 0, 2, 1, 2]])
    prev = previous_labels(y, 3)
    assert prev[0, 0].sum() == 0 and prev[0, 1].argmax() == 2 and prev[0, 4].argmax() == 1
    logits = F.one_hot(torch.tensor([[0, 1, 2, 1, 2]]), 3).float()
    acc = accuracy_by_instance(logits, y, (1, 2, 3, 4))
    assert acc[1] == pytest.approx(1 / 3) and acc[2] == 1.0 and acc[3] == 1.0
    assert np.isnan(acc[4])
    x = torch.rand(2, 5, 1, 28, 28)
    assert image_features(x, 14).shape == (2, 5, 196)
    with seeded(0):
        model = MANN(196, 3, hidden=16, slots=8, width=6, heads=1)
    out = model(image_features(x, 14), torch.randint(0, 3, (2, 5), generator=torch.Generator()))
    assert out.shape == (2, 5, 3)
    with pytest.raises(ValueError, match="expected x"):
        model(torch.zeros(2, 5), torch.zeros(2, 5, dtype=torch.long))


def _vector_sequences(protos: np.ndarray, batch: int, n_way: int, length: int, rng, noise=0.2):
    """MANN sequences of noisy class vectors: x [B, L, D], y [B, L] (fresh labels per episode)."""
    per = length // n_way
    classes = np.stack([rng.choice(len(protos), n_way, replace=False) for _ in range(batch)])
    y = np.stack([rng.permutation(np.repeat(np.arange(n_way), per)) for _ in range(batch)])
    x = protos[np.take_along_axis(classes, y, 1)]
    x = x + noise * rng.standard_normal(x.shape).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y)


def test_mann_binds_labels_in_memory():
    """5-way sequences of 25 steps: after training, the 2nd instance of a class is recognised
    far more often than the 1st (which no model can know beyond guessing unseen labels)."""
    n_way, length, dim = 5, 25, 16
    protos = np.random.default_rng(0).standard_normal((300, dim)).astype(np.float32)
    with seeded(0):
        model = MANN(dim, n_way, hidden=64, slots=32, width=16, heads=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(1)
    for _ in range(200):
        x, y = _vector_sequences(protos[:200], 32, n_way, length, rng)
        loss = F.cross_entropy(model(x, y).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
    with torch.no_grad():
        x, y = _vector_sequences(protos[200:], 200, n_way, length, np.random.default_rng(2))
        acc = accuracy_by_instance(model(x, y), y, (1, 2, 5))
    assert acc[2] >= acc[1] + 0.30, acc  # here 0.70 vs 0.22 (untrained: 0.21 vs 0.19)
    assert acc[5] >= 0.7, acc  # here 0.92


# ---------------------------------------------------------------------------------------------
# trainers on a small glyph set (nine small scripts, rendered once into a temporary folder)
# ---------------------------------------------------------------------------------------------
SMALL_SCRIPTS = (
    "Armenian",
    "Hebrew",
    "Tifinagh",
    "Lao",
    "Old Italic",
    "Nko",
    "Ogham",
    "Coptic",
    "Lisu",
)
GLYPHS = {"image_size": 20, "samples_per_class": 8, "scripts": SMALL_SCRIPTS, "device": "cpu"}


@pytest.fixture(scope="module")
def glyph_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("glyphs")
    from meta_rl.fewshot.glyphs import load_glyphs

    load_glyphs(root=root, image_size=20, samples_per_class=8, scripts=list(SMALL_SCRIPTS))
    return str(root)


def test_every_glyph_learner_holds_out_the_same_scripts(glyph_root):
    """Gradient learners, ProtoNet, Siamese and MANN share one script split: it depends on
    ``split_seed`` only, never on the run's ``seed``."""
    from meta_rl.fewshot.gradient import GradientFewShotConfig
    from meta_rl.fewshot.mann import MANNConfig
    from meta_rl.fewshot.metric import ProtoNetConfig, SiameseConfig, glyph_splits

    data = {**GLYPHS, "data_root": glyph_root}
    configs = [
        ProtoNetConfig(seed=0, q_queries=5, **data),
        SiameseConfig(seed=1, **data),
        MANNConfig(seed=2, length=20, **data),
        GradientFewShotConfig(task="glyphs", seed=3, k_shot=1, q_queries=5, **data),
        GradientFewShotConfig(task="glyphs", seed=4, k_shot=1, q_queries=5, **data),
    ]
    held_out = [sorted(glyph_splits(c)["test"].groups) for c in configs]
    assert all(h == held_out[0] for h in held_out), held_out
    other = glyph_splits(
        GradientFewShotConfig(task="glyphs", split_seed=1, k_shot=1, q_queries=5, **data)
    )
    assert sorted(other["test"].groups) != held_out[0]


def test_protonet_trainer_on_held_out_scripts(glyph_root, tmp_path):
    from meta_rl.fewshot.metric import ProtoNetConfig, glyph_splits, train_protonet
    from meta_rl.runs import Run

    config = ProtoNetConfig(
        data_root=glyph_root,
        iterations=60,
        eval_every=0,
        checkpoint_every=30,
        hidden=32,
        train_way=10,
        q_queries=5,
        eval_episodes=200,
        **GLYPHS,
    )
    splits = glyph_splits(config)
    assert not set(splits["train"].groups) & set(splits["test"].groups)  # held-out scripts
    with seeded(config.seed):
        untrained = ProtoNet(1, 32, 20)
    test = EpisodeSampler(splits["test"], 5, 1, 5, seed=3)
    before = evaluate_accuracy(untrained, test, episodes=200)["accuracy"]
    with Run.create(tmp_path / "run", "protonet-glyphs", config) as run:
        final = train_protonet(config, run)
    assert final["test_accuracy"] >= 0.6 and final["test_accuracy"] > before + 0.2, (before, final)
    assert 0 < final["test_ci95"] < 0.05
    assert (tmp_path / "run" / "checkpoints").is_dir()
    assert "test_accuracy" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]


def _tiny_mann(glyph_root, **kw):
    from meta_rl.fewshot.mann import MANNConfig

    values = {
        "data_root": glyph_root,
        "n_way": 3,
        "length": 12,
        "batch_size": 4,
        "input_size": 10,
        "hidden": 16,
        "slots": 12,
        "width": 8,
        "heads": 2,
        "iterations": 4,
        "eval_every": 2,
        "checkpoint_every": 2,
        "log_every": 1,
        "eval_episodes": 10,
        **GLYPHS,
    }
    return MANNConfig(**{**values, **kw})


def test_mann_trainer_runs_resumes_and_repeats(glyph_root, tmp_path):
    from meta_rl.fewshot.mann import train
    from meta_rl.runs import Run

    config = _tiny_mann(glyph_root)
    with Run.create(tmp_path / "a", "mann-glyphs", config) as run:
        first = train(config, run)
    for key in ("test_accuracy", "test_instance_1", "test_instance_2", "test_instance_2_ci95"):
        assert key in first and np.isfinite(first[key]), key
    # same seed, same numbers
    again = train(config, None)
    assert again == first
    # resume the folder for 2 more steps: continues at step 4, same as an uninterrupted run
    with Run.resume(tmp_path / "a", ["iterations=6"]) as run:
        assert run.start_step == 4
        resumed = train(run.config, run)
    straight = train(_tiny_mann(glyph_root, iterations=6), None)
    assert resumed["loss"] == pytest.approx(straight["loss"], rel=1e-5)


def test_configs_reject_bad_values():
    from meta_rl.config import ConfigError
    from meta_rl.fewshot.mann import MANNConfig
    from meta_rl.fewshot.metric import ProtoNetConfig, SiameseConfig

    with pytest.raises(ConfigError, match="samples_per_class = 5 must be >= k_shot"):
        ProtoNetConfig(samples_per_class=5, k_shot=1, q_queries=15)
    with pytest.raises(ConfigError, match="heads = 9 must be <= slots = 8"):
        MANNConfig(heads=9, slots=8)
    with pytest.raises(ConfigError, match="margin"):
        SiameseConfig(margin=0.0)
    with pytest.raises(ConfigError, match="needs 30 images per class"):
        MANNConfig(n_way=2, length=60, samples_per_class=20)
