"""Checkpoints hold no pickle: safetensors + JSON only, optimizer / schedule / scaler / RNG states
round-trip exactly, and checkpoints that need pickle files are refused unless
trainer.allow_pickle_checkpoint=true."""

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.utils import DistributedType

from t2i_align.training import state_io
from t2i_align.training.checkpoint import PickleCheckpointError, list_checkpoints, load_checkpoint
from t2i_align.training.optim import build_lr_scheduler, build_optimizer
from tests.training.helpers import final_weights, train

TINY_RUN = ["trainer.max_steps=4", "trainer.checkpoint_every=1", "trainer.keep_last=2"]
RUNS = {"dpo-full": ["method=dpo"],
        "mapo-lora": ["method=mapo", "trainer.lora.enabled=true"],
        "dpo-adafactor": ["method=dpo", "trainer.optimizer=adafactor"]}


def _is_pickle_or_zip(head: bytes) -> bool:
    # pickle protocol 2-5 starts with PROTO (0x80) + the protocol number; torch.save writes a zip
    return (len(head) >= 2 and head[0] == 0x80 and head[1] in (2, 3, 4, 5)) or head.startswith(b"PK\x03\x04")


def test_pickle_detector_catches_torch_save_and_pickle(tmp_path):
    import pickle

    torch.save({"a": torch.ones(2)}, tmp_path / "t.bin")
    for protocol in (2, 3, 4, 5):
        (tmp_path / f"p{protocol}.pkl").write_bytes(pickle.dumps({"a": 1}, protocol=protocol))
    for path in tmp_path.iterdir():
        assert _is_pickle_or_zip(path.read_bytes()[:4]), path.name


@pytest.mark.parametrize("name", list(RUNS))
def test_checkpoint_folder_holds_no_pickle(tmp_path, name):
    # what kills leave behind: a cut write and a cut delete; the next save removes them
    for leftover in [".tmp-step_7", ".trash-step_1"]:
        (tmp_path / name / "checkpoints" / leftover / "unet").mkdir(parents=True)
    run_dir, _ = train(tmp_path / name, TINY_RUN + RUNS[name])
    # checkpoints at steps 1, 2, 3 (none at max_steps): keep_last=2 pruned step_1 and left no trash
    assert [s for s, _ in list_checkpoints(run_dir)] == [2, 3]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_2", "step_3"]
    for _, folder in list_checkpoints(run_dir):
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        for rel in files:
            assert rel.endswith((".safetensors", ".json")), rel
            assert not _is_pickle_or_zip((folder / rel).read_bytes()[:4]), rel
            if rel.endswith(".json"):
                json.loads((folder / rel).read_text())  # plain JSON
        common = {"optimizer.json", "optimizer.safetensors", "lr_scheduler.json", "rng_state.safetensors",
                  "trainer_state.json"}
        model = ({"unet_lora.safetensors", "pytorch_lora_weights.safetensors"} if "lora" in name
                 else {"unet/config.json", "unet/diffusion_pytorch_model.safetensors"})
        assert set(files) == common | model
        step = json.loads((folder / "trainer_state.json").read_text())["step"]
        assert json.loads((folder / "lr_scheduler.json").read_text())["state"]["last_epoch"] == step
        opt = state_io.read_optimizer_state(folder)
        first = opt["state"][0]
        if "adafactor" in name:
            assert first["step"] == step and type(first["step"]) is int
            assert opt["param_groups"][0]["eps"] == (1e-30, 1e-3)
        else:
            assert first["step"].dtype == torch.float32 and first["step"].item() == step
            assert opt["param_groups"][0]["betas"] == (0.9, 0.999)


def _run_steps(model, optimizer, scheduler, steps, seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = model(torch.randn(5, 4, generator=g)).pow(2).sum()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["adamw", "adafactor"])
def test_optimizer_state_round_trip_is_exact(tmp_path, name):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = build_optimizer(model.parameters(), name, lr=1e-2)
    scheduler = build_lr_scheduler(optimizer, "linear", warmup_steps=2, max_steps=10)
    _run_steps(model, optimizer, scheduler, 3, seed=1)
    state_io.save_optimizer_state(optimizer, tmp_path)
    state_io.save_scheduler_state(scheduler, tmp_path)

    fresh = torch.nn.Linear(4, 3)
    fresh.load_state_dict(model.state_dict())
    fresh_opt = build_optimizer(fresh.parameters(), name, lr=5.0)  # other hyper-parameters: all restored
    fresh_sched = build_lr_scheduler(fresh_opt, "linear", warmup_steps=2, max_steps=10)
    state_io.load_optimizer_state(fresh_opt, tmp_path)
    state_io.load_scheduler_state(fresh_sched, tmp_path)

    before, after = optimizer.state_dict(), fresh_opt.state_dict()
    assert after["param_groups"] == before["param_groups"]  # tuples (betas / eps) come back as tuples
    for index, entries in before["state"].items():
        assert after["state"][index].keys() == entries.keys()
        for key, value in entries.items():
            restored = after["state"][index][key]
            assert type(restored) is type(value), key
            if isinstance(value, torch.Tensor):
                assert restored.dtype == value.dtype and torch.equal(restored, value), key
            else:
                assert restored == value, key
    assert fresh_sched.state_dict() == scheduler.state_dict()

    _run_steps(model, optimizer, scheduler, 2, seed=2)
    _run_steps(fresh, fresh_opt, fresh_sched, 2, seed=2)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()


def test_generic_state_round_trip_keeps_types_and_dtypes(tmp_path):
    # the shape of bitsandbytes' 8-bit Adam state: uint8 codes, float absmax / qmaps, int step
    state = {"state": {0: {"step": 7, "state1": torch.randint(0, 255, (8,), dtype=torch.uint8),
                           "absmax1": torch.rand(2), "qmap1": torch.linspace(-1, 1, 256)},
                       1: {"half": torch.randn(3, dtype=torch.float16), "bf": torch.randn(3, dtype=torch.bfloat16),
                           "flag": True, "none": None, "ratio": 0.1 + 0.2, "mask": torch.tensor([True, False])}},
             "param_groups": [{"betas": (0.9, 0.995), "params": [0, 1], "name": "x", "__tensor__": 1}],
             "nested": [(1, (2.5, "a")), {3: "int key", "3": "str key"}]}
    state_io.save_tensor_tree(state, tmp_path, "thing", max_shard_bytes=64)  # forces several shards
    assert len(list(tmp_path.glob("thing-*-of-*.safetensors"))) > 1
    back = state_io.read_tensor_tree(tmp_path, "thing")
    assert back.keys() == state.keys() and back["param_groups"] == state["param_groups"]
    assert back["nested"] == state["nested"] and type(back["nested"][0]) is tuple
    for index, entries in state["state"].items():
        for key, value in entries.items():
            restored = back["state"][index][key]
            if isinstance(value, torch.Tensor):
                assert restored.dtype == value.dtype and torch.equal(restored, value), key
            else:
                assert type(restored) is type(value) and restored == value, key


def test_state_that_needs_pickle_is_refused_at_save_time_naming_the_key(tmp_path):
    state = {"state": {0: {"step": np.float32(3.0)}}, "param_groups": []}
    with pytest.raises(state_io.StateFormatError, match=r"state\.0\.step.*numpy"):
        state_io.save_tensor_tree(state, tmp_path, "optimizer")
    with pytest.raises(state_io.StateFormatError, match=r"param_groups\.0\.dtype"):
        state_io.save_tensor_tree({"param_groups": [{"dtype": torch.float32}]}, tmp_path, "optimizer")
    assert not (tmp_path / "optimizer.json").exists()


def test_rng_and_scaler_round_trip(tmp_path):
    torch.manual_seed(3)
    random.seed(4)
    np.random.seed(5)
    random.gauss(0, 1)  # leaves a cached gauss_next in Python's state
    np.random.standard_normal()
    state_io.save_rng_states([state_io.capture_rng_state()], tmp_path)
    expected = (torch.rand(4), random.random(), random.gauss(0, 1), np.random.standard_normal())
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    state_io.load_rng_state(tmp_path, rank=0)
    got = (torch.rand(4), random.random(), random.gauss(0, 1), np.random.standard_normal())
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]

    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    scaler.load_state_dict({**scaler.state_dict(), "scale": 256.0, "_growth_tracker": 3})
    assert state_io.save_scaler_state(scaler, tmp_path)
    fresh = torch.amp.GradScaler("cpu")
    assert state_io.load_scaler_state(fresh, tmp_path)
    assert fresh.state_dict() == scaler.state_dict()
    assert not state_io.save_scaler_state(torch.amp.GradScaler("cpu", enabled=False), tmp_path / "none")


class FakeAccelerator:
    """Just what load_checkpoint reads before it decides to refuse; records load_state calls."""

    def __init__(self, distributed_type=DistributedType.NO):
        self.distributed_type = distributed_type
        self.loaded = []

    def load_state(self, folder):
        self.loaded.append(folder)


def _old_format_folder(tmp_path) -> Path:
    folder = tmp_path / "checkpoints" / "step_3"
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"step": 3}))
    torch.save({"state": {}, "param_groups": []}, folder / "optimizer.bin")
    return folder


def test_old_pickled_checkpoint_is_refused_unless_opted_in(tmp_path):
    folder = _old_format_folder(tmp_path)
    accelerator = FakeAccelerator()
    for allow in (None, False, "yes", 1):  # only True opts in
        with pytest.raises(PickleCheckpointError) as err:
            load_checkpoint(accelerator, None, folder, allow_pickle=allow)
        message = str(err.value)
        assert "\n" not in message
        assert str(folder) in message and "old-format" in message and "optimizer.bin" in message
        assert "trainer.allow_pickle_checkpoint=true" in message
    assert accelerator.loaded == []
    assert load_checkpoint(accelerator, None, folder, allow_pickle=True) == {"step": 3}
    assert accelerator.loaded == [str(folder)]


def test_sharded_checkpoint_is_refused_unless_opted_in(tmp_path):
    folder = tmp_path / "step_2"
    (folder / "pytorch_model").mkdir(parents=True)
    (folder / "trainer_state.json").write_text(json.dumps({"step": 2}))
    torch.save({}, folder / "pytorch_model" / "mp_rank_00_model_states.pt")
    accelerator = FakeAccelerator(DistributedType.DEEPSPEED)
    with pytest.raises(PickleCheckpointError, match=r"DeepSpeed/FSDP.*trainer\.allow_pickle_checkpoint=true"):
        load_checkpoint(accelerator, None, folder)
    assert load_checkpoint(accelerator, None, folder, allow_pickle=True) == {"step": 2}


def test_list_checkpoints_ignores_incomplete_and_hidden_folders(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ["step_1", "step_2", ".tmp-step_3", ".trash-step_0", "step_x"]:
        (root / name).mkdir(parents=True)
    for name in ["step_1", ".tmp-step_3", ".trash-step_0", "step_x"]:
        (root / name / "trainer_state.json").write_text("{}")
    assert list_checkpoints(tmp_path) == [(1, root / "step_1")]


def _to_old_format(folder: Path) -> None:
    """Rewrite a checkpoint as the previous version's accelerate.save_state left it (same file
    names and contents: optimizer.bin, custom_checkpoint_0.pkl for the LR schedule,
    random_states_0.pkl), keeping the model files."""
    from safetensors import safe_open

    torch.save(state_io.read_optimizer_state(folder), folder / "optimizer.bin")
    doc = json.loads((folder / "lr_scheduler.json").read_text())
    torch.save(state_io.scheduler_state_from_json(doc["state"]), folder / "custom_checkpoint_0.pkl")
    with safe_open(str(folder / "rng_state.safetensors"), framework="pt") as f:
        cpu = f.get_tensor("rank0.torch_cpu")
    torch.save({"step": 0, "random_state": random.getstate(), "numpy_random_seed": np.random.get_state(),
                "torch_manual_seed": cpu}, folder / "random_states_0.pkl")
    for name in ["optimizer.json", "optimizer.safetensors", "lr_scheduler.json", "rng_state.safetensors"]:
        (folder / name).unlink()


def test_old_format_checkpoint_resumes_only_with_the_opt_in(tmp_path):
    """An old-format checkpoint (pickles) is refused by a resume; with
    trainer.allow_pickle_checkpoint=true it loads through accelerate and ends like an
    uninterrupted run. LoRA dropout: the restored torch RNG matters."""
    common = ["method=mapo", "trainer.lora.enabled=true", "trainer.lora.dropout=0.5", "trainer.max_steps=4",
              "trainer.checkpoint_every=2", "trainer.keep_last=1"]
    _, final_a = train(tmp_path / "a", common)
    run_b = tmp_path / "b"
    train(run_b, common + ["trainer.stop_after_steps=3"])
    (_, folder), = list_checkpoints(run_b)
    _to_old_format(folder)
    with pytest.raises(PickleCheckpointError, match="trainer.allow_pickle_checkpoint"):
        train(run_b, common + ["trainer.resume=latest"])
    _, final_b = train(run_b, common + ["trainer.resume=latest", "trainer.allow_pickle_checkpoint=true"])
    a, b = final_weights(final_a), final_weights(final_b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_lora_dropout_resume_is_exact(tmp_path):
    """Resuming restores the torch RNG that LoRA dropout draws from (rng_state.safetensors)."""
    common = ["method=mapo", "trainer.lora.enabled=true", "trainer.lora.dropout=0.5", "trainer.max_steps=4",
              "trainer.checkpoint_every=2", "trainer.keep_last=1"]
    _, final_a = train(tmp_path / "a", common)
    run_b = tmp_path / "b"
    train(run_b, common + ["trainer.stop_after_steps=3"])
    torch.manual_seed(12345)  # whatever the process did in between
    _, final_b = train(run_b, common + ["trainer.resume=latest"])
    a, b = final_weights(final_a), final_weights(final_b)
    for key in a:
        assert torch.equal(a[key], b[key]), key
