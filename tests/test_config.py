"""Typed configs: validation, overrides, YAML, JSON round trip; checkpoints: round trip,
atomic writes, corrupt files."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pytest
import torch

from meta_rl import checkpoint as ckpt
from meta_rl.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from meta_rl.config import (
    BaseConfig,
    ConfigError,
    apply_overrides,
    bounds,
    choice,
    describe,
    diff,
    field_docs,
)


@dataclass
class Optim:
    lr: float = field(default=1e-3, metadata=bounds(gt=0))
    """learning rate"""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas"""


@dataclass
class ToyConfig(BaseConfig):
    algorithm: Literal["maml", "fomaml", "reptile"] = "maml"
    """outer objective"""
    inner_lr: float = field(default=0.4, metadata=bounds(gt=0))
    """inner step size"""
    hidden: tuple[int, ...] = (40, 40)
    """hidden widths"""
    first_order: bool = False
    """drop second-order terms"""
    norm: str = field(default="none", metadata=choice("none", "batch", "layer"))
    """normalisation layer"""
    ways: int | None = None
    """classes per episode (None: the task's own)"""
    optim: Optim = field(default_factory=Optim)
    """outer optimizer"""


# -------------------------------------------------------------------------------- config
def test_defaults_and_json_round_trip():
    c = ToyConfig()
    data = c.to_dict()
    json.dumps(data)  # JSON-able
    assert data["hidden"] == [40, 40] and data["optim"] == {"lr": 1e-3, "betas": [0.9, 0.999]}
    assert ToyConfig.from_dict(json.loads(json.dumps(data))) == c


def test_overrides_coerce_by_field_type():
    c = apply_overrides(
        ToyConfig(),
        [
            "inner_lr=1e-2",
            "hidden=[8, 16]",
            "first_order=true",
            "algorithm=fomaml",
            "ways=5",
            "seed=7",
            "optim.lr=0.5",
            "optim.betas=0.5,0.9",
            "device=cpu",
        ],
    )
    assert c.inner_lr == 0.01 and isinstance(c.inner_lr, float)
    assert c.hidden == (8, 16) and c.first_order is True and c.algorithm == "fomaml"
    assert c.ways == 5 and c.seed == 7 and c.device == "cpu"
    assert c.optim == Optim(lr=0.5, betas=(0.5, 0.9))
    assert apply_overrides(c, ["ways=none"]).ways is None
    assert apply_overrides(c, {"iterations": 3}).iterations == 3
    assert diff(ToyConfig(), c) == sorted(
        [
            "algorithm",
            "device",
            "first_order",
            "hidden",
            "inner_lr",
            "optim.betas",
            "optim.lr",
            "seed",
            "ways",
        ]
    )


@pytest.mark.parametrize(
    "override, words",
    [
        ("inner_lr=-1", ["inner_lr", "-1.0", "> 0"]),
        ("optim.lr=0", ["optim.lr", "0", "> 0"]),
        ("algorithm=mamml", ["algorithm", "mamml", "'maml'", "'reptile'"]),
        ("device=gpu", ["device", "gpu", "'auto'", "'cpu'", "'cuda'"]),
        ("norm=group", ["norm", "group", "'layer'"]),
        ("iterations=2.5", ["iterations", "2.5", "integer"]),
        ("iterations=0", ["iterations", "0", ">= 1"]),
        ("first_order=maybe", ["first_order", "maybe", "true or false"]),
        ("hidden=[1, x]", ["hidden[1]", "x", "integer"]),
        ("optim.betas=[1]", ["optim.betas", "2 items"]),
        ("inner_lrr=1", ["inner_lrr", "did you mean 'inner_lr'"]),
        ("optim.lrr=1", ["optim.lrr", "did you mean 'optim.lr'"]),
        ("seed.x=1", ["seed", "not a nested config"]),
        ("seed", ["key=value"]),
    ],
)
def test_bad_overrides_name_field_value_and_allowed(override, words):
    with pytest.raises(ConfigError) as info:
        apply_overrides(ToyConfig(), [override])
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_direct_construction_is_checked():
    with pytest.raises(ConfigError, match="keep_checkpoints = 0 is out of range"):
        ToyConfig(keep_checkpoints=0)
    with pytest.raises(ConfigError, match="seed = True"):
        ToyConfig(seed=True)  # a bool is not an int
    with pytest.raises(ConfigError, match="unknown config key 'sed'.*'seed'"):
        ToyConfig.from_dict({"sed": 1})


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("algorithm: reptile\nhidden: [4, 4, 4]\ninner_lr: 1e-3\noptim:\n  lr: 0.2\n")
    c = ToyConfig.from_yaml(path, ["seed=3"])
    assert (c.algorithm, c.hidden, c.inner_lr, c.optim.lr, c.seed) == (
        "reptile",
        (4, 4, 4),
        1e-3,
        0.2,
        3,
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("algorithm: [unclosed\n")
    with pytest.raises(ConfigError, match="malformed YAML in .*bad.yaml"):
        ToyConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match="cannot read config file .*missing.yaml"):
        ToyConfig.from_yaml(tmp_path / "missing.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        ToyConfig.from_yaml(scalar)


def test_field_docs_and_describe():
    docs = field_docs(ToyConfig)
    assert docs["inner_lr"] == "inner step size" and docs["seed"].startswith("seed of every")
    rows = {r["name"]: r for r in describe(ToyConfig)}
    assert rows["device"]["constraint"] == "one of 'auto', 'cpu', 'cuda'"
    assert rows["inner_lr"]["constraint"] == "must be > 0"


# ---------------------------------------------------------------------------- checkpoint
def _trained_adam(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.8, 0.95), amsgrad=True)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 3, generator=gen)).pow(2).mean().backward()
        opt.step()
    return model, opt, gen


def _step_all(model, opt, gen, n=2):
    for _ in range(n):
        opt.zero_grad()
        model(torch.randn(8, 3, generator=gen)).pow(2).mean().backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_checkpoint_round_trip_with_adam_and_rngs(tmp_path):
    model, opt, gen = _trained_adam()
    nrng = np.random.default_rng(5)
    nrng.random(3)
    state = {
        "optimizer": opt.state_dict(),
        "rng": {"torch": rng_state(gen), "numpy": rng_state(nrng)},
        "history": [1, 2.5, None, "x", (1, 2)],
        "array": np.arange(4.0),
    }
    path = save_checkpoint(tmp_path, 3, model.state_dict(), state, config={"seed": 0})
    assert path.name == "step_00000003.json"
    json.loads(path.read_text())  # the sidecar is plain JSON

    ck = load_checkpoint(tmp_path)  # a folder means its newest checkpoint
    assert ck.step == 3 and ck.config == {"seed": 0}
    assert ck.state["history"] == [1, 2.5, None, "x", (1, 2)]
    np.testing.assert_array_equal(ck.state["array"], np.arange(4.0))
    sd, loaded = opt.state_dict(), ck.state["optimizer"]
    assert loaded["param_groups"] == sd["param_groups"]  # betas stay a tuple, ids stay ints
    assert sorted(loaded["state"]) == sorted(sd["state"])
    for k in sd["state"]:
        for name, t in sd["state"][k].items():
            assert torch.equal(loaded["state"][k][name], t), (k, name)

    # Restore into fresh objects: the continued training matches exactly.
    model2, opt2, _ = _trained_adam(seed=99)
    model2.load_state_dict(ck.tensors)
    opt2.load_state_dict(ck.state["optimizer"])
    gen2 = torch.Generator()
    set_rng_state(gen2, ck.state["rng"]["torch"])
    nrng2 = np.random.default_rng()
    set_rng_state(nrng2, ck.state["rng"]["numpy"])
    assert nrng2.random() == nrng.random()
    assert torch.equal(_step_all(model, opt, gen), _step_all(model2, opt2, gen2))


def test_tied_and_non_contiguous_tensors(tmp_path):
    w = torch.arange(6.0).reshape(2, 3)
    tensors = {"encoder.weight": w, "decoder.weight": w, "transposed": w.t()}
    save_checkpoint(tmp_path, 1, tensors, {"same": w})
    ck = load_checkpoint(tmp_path)
    assert torch.equal(ck.tensors["decoder.weight"], w) and torch.equal(
        ck.tensors["transposed"], w.t()
    )
    assert torch.equal(ck.state["same"], w)


def test_keep_last_k(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 5]
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    assert load_checkpoint(latest_checkpoint(tmp_path)).tensors["w"].tolist() == [5.0, 5.0]


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"w": torch.ones(3)}, {"note": "first"})

    # A crash while the new tensors file is being written (fsync fails).
    def boom(fd):
        raise OSError("disk went away")

    monkeypatch.setattr(ckpt.os, "fsync", boom)
    with pytest.raises(OSError, match="disk went away"):
        save_checkpoint(tmp_path, 2, {"w": torch.zeros(3)}, {"note": "second"})
    monkeypatch.undo()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was removed
    ck = load_checkpoint(tmp_path)
    assert ck.step == 1 and ck.state["note"] == "first" and ck.tensors["w"].tolist() == [1.0] * 3

    # A hard kill leaves a half-written temp file and a tensors file with no sidecar:
    # neither counts, and the next save cleans them up.
    (tmp_path / ".step_00000002.json.abc.tmp").write_text('{"format": "meta-rl-chec')
    (tmp_path / "step_00000002-deadbeef.safetensors").write_bytes(b"\x00" * 10)
    assert load_checkpoint(tmp_path).step == 1
    save_checkpoint(tmp_path, 2, {"w": torch.zeros(3)})
    assert not (tmp_path / "step_00000002-deadbeef.safetensors").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    assert load_checkpoint(tmp_path).step == 2


def test_corrupt_truncated_missing_and_newer_checkpoints(tmp_path):
    path = save_checkpoint(tmp_path, 7, {"w": torch.arange(100.0)})
    meta = json.loads(path.read_text())
    tensors = tmp_path / meta["tensors_file"]

    blob = tensors.read_bytes()
    tensors.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=f"{tensors.name}.*truncated"):
        load_checkpoint(path)
    flipped = bytearray(blob)
    flipped[-5] ^= 0xFF
    tensors.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=f"{tensors.name}.*corrupt"):
        load_checkpoint(path)
    tensors.unlink()
    with pytest.raises(CheckpointError, match=f"{tensors.name}.*cannot be read"):
        load_checkpoint(path)

    path.write_text(path.read_text()[:40])
    with pytest.raises(CheckpointError, match="step_00000007.json.*corrupt or truncated"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="nothing.json.*does not exist"):
        load_checkpoint(tmp_path / "nothing.json")

    newer = save_checkpoint(tmp_path, 8, {"w": torch.zeros(1)})
    meta = json.loads(newer.read_text())
    meta["version"] = ckpt.FORMAT_VERSION + 1
    newer.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="step_00000008.json.*version 2.*upgrade"):
        load_checkpoint(newer)


def test_state_rejects_unstorable_values(tmp_path):
    with pytest.raises(CheckpointError, match="state entry state/bad has type object"):
        save_checkpoint(tmp_path, 1, {}, {"bad": object()})
    assert list_checkpoints(tmp_path) == []


def test_num_threads_is_applied_only_when_set():
    before = torch.get_num_threads()
    try:
        BaseConfig(num_threads=0).apply_num_threads()
        assert torch.get_num_threads() == before
        BaseConfig(num_threads=1).apply_num_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(Exception, match="num_threads"):
        BaseConfig(num_threads=-1)


# ------------------------------------------------------- checkpoints hold only what they may
def rewrite_tensors(sidecar, change):
    """Rewrite a checkpoint's tensors file with ``change(tensors)`` and a matching sidecar
    (a checkpoint that is well formed but holds what its writer never should have)."""
    import hashlib

    import safetensors.torch

    meta = json.loads(sidecar.read_text())
    tfile = sidecar.parent / meta["tensors_file"]
    tensors = safetensors.torch.load(tfile.read_bytes())
    change(tensors)
    blob = safetensors.torch.save(tensors)
    tfile.write_bytes(blob)
    meta.update(tensors_bytes=len(blob), tensors_sha256=hashlib.sha256(blob).hexdigest())
    meta["tensor_names"] = sorted(k for k in tensors if not k.startswith("state/"))
    sidecar.write_text(json.dumps(meta))


def test_save_refuses_non_finite_tensors_and_keeps_the_last_finite_checkpoint(tmp_path):
    w = torch.tensor([1.0, float("nan"), 2.0])
    with pytest.raises(CheckpointError, match="NaN or inf in tensor 'w'.*there is none before"):
        save_checkpoint(tmp_path, 1, {"w": w}, keep=1)  # diverged before any checkpoint
    save_checkpoint(tmp_path, 1, {"w": torch.ones(3)}, keep=1)
    with pytest.raises(CheckpointError, match="step 2 not written: NaN or inf in tensor 'w'"):
        save_checkpoint(tmp_path, 2, {"w": w}, keep=1)
    m = torch.tensor([float("inf")])
    with pytest.raises(CheckpointError, match="NaN or inf in tensor 'state/adam/m'"):
        save_checkpoint(tmp_path, 2, {"w": torch.ones(3)}, {"adam": {"m": m}}, keep=1)
    big = torch.full((4,), 3e38)  # finite elements whose sum overflows: still saved
    assert ckpt.non_finite({"big": big, "n": torch.arange(3)}) == []
    # nothing of step 2 on disk, and keep=1 did not prune the last finite checkpoint
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    assert load_checkpoint(tmp_path).tensors["w"].tolist() == [1.0] * 3


def test_load_refuses_non_finite_weights(tmp_path):
    path = save_checkpoint(tmp_path, 3, {"w": torch.ones(4), "n": torch.arange(3)})
    rewrite_tensors(path, lambda t: t["w"].__setitem__(2, float("inf")))
    with pytest.raises(CheckpointError, match="step_00000003.json.*non-finite weights.*'w'"):
        load_checkpoint(path)
    assert load_checkpoint(path, allow_non_finite=True).tensors["w"][2] == float("inf")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"step": -5}, r"step = -5 is not a non-negative integer"),
        ({"step": 10}, r"step = 10 does not match its file name step_00000040.json"),
        ({"step": "forty"}, r"step = 'forty' is not a non-negative integer"),
        ({"step": True}, r"step = True is not a non-negative integer"),
        ({"tensors_file": "../outside.safetensors"}, r"tensors_file = '../outside.*own folder"),
        ({"tensors_file": "/etc/passwd"}, r"tensors_file = '/etc/passwd' is not a .safetensors"),
        ({"tensors_bytes": "12"}, r"tensors_bytes = '12' is not a byte count"),
        ({"state": [1, 2]}, r"state = \[1, 2\] is not a mapping"),
        ({"tensor_names": ["w", "extra"]}, r"lists tensors \['extra', 'w'\] but its tensors"),
    ],
)
def test_load_checks_every_sidecar_field(tmp_path, change, message):
    folder = tmp_path / "checkpoints"
    path = save_checkpoint(folder, 40, {"w": torch.ones(2)}, {"note": "x"})
    meta = json.loads(path.read_text())
    # a tensors file outside the folder that would pass the size and hash checks
    (tmp_path / "outside.safetensors").write_bytes((folder / meta["tensors_file"]).read_bytes())
    path.write_text(json.dumps({**meta, **change}))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_tensors_file_may_not_link_outside_its_folder(tmp_path):
    folder = tmp_path / "checkpoints"
    path = save_checkpoint(folder, 1, {"w": torch.ones(2)})
    meta = json.loads(path.read_text())
    real = folder / meta["tensors_file"]
    outside = tmp_path / "elsewhere.safetensors"
    real.rename(outside)
    real.symlink_to(outside)
    with pytest.raises(CheckpointError, match="links outside the checkpoint's folder"):
        load_checkpoint(path)


def test_a_damaged_generator_state_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="saved torch generator state is damaged"):
        set_rng_state(torch.Generator(), {"kind": "torch", "state": "not base64!"})
    with pytest.raises(CheckpointError, match="saved numpy generator state is damaged"):
        set_rng_state(np.random.default_rng(), {"kind": "numpy"})


def test_config_classes_come_from_a_closed_registry():
    from meta_rl.config import config_class, register_config
    from meta_rl.rl.maml import MAMLConfig
    from meta_rl.rl.oracle import OracleNavConfig

    assert config_class("meta_rl.rl.maml:MAMLConfig") is MAMLConfig
    assert config_class("MAMLConfig") is MAMLConfig
    # an older run folder naming a class of ours in a module it has moved from
    assert config_class("meta_rl.presets:OracleNavConfig") is OracleNavConfig
    with pytest.raises(ConfigError, match="'evil_cfg:Cfg' is not one of meta-rl's config"):
        config_class("evil_cfg:Cfg")
    with pytest.raises(ConfigError, match="'evil_cfg:MAMLConfig' is not one of meta-rl's"):
        config_class("evil_cfg:MAMLConfig")  # our name in someone else's module: not ours
    with pytest.raises(ConfigError, match="not one of"):
        config_class("test_config:ToyConfig")  # a class outside meta_rl, never registered
    assert register_config(ToyConfig) is ToyConfig
    assert config_class(f"{ToyConfig.__module__}:ToyConfig") is ToyConfig

    @dataclass
    class MAMLConfig(BaseConfig):  # a user's class named like ours
        pass

    MAMLConfig.__qualname__ = "MAMLConfig"  # as if defined at the top of the user's module
    with pytest.raises(ConfigError, match="would shadow meta-rl's meta_rl.rl.maml.MAMLConfig"):
        register_config(MAMLConfig)
