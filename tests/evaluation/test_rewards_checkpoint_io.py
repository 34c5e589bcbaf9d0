"""Reward weight files are never unpickled unless the caller names the file (checkpoint_io)."""

import argparse
import os

import pytest
import torch

from t2i_align.evaluation.rewards.checkpoint_io import PickleNotAllowedError, pickle_allowed, read_weights


class TrainingState:
    """A custom class instance stored beside the weights, as some released checkpoints do."""

    def __init__(self, step):
        self.step = step


def _state():
    torch.manual_seed(0)
    return {"layers.0.weight": torch.randn(4, 3), "layers.0.bias": torch.randn(4)}


@pytest.fixture()
def pickled(tmp_path):
    path = tmp_path / "needs_pickle.pt"
    torch.save({"state_dict": _state(), "args": argparse.Namespace(lr=1e-5), "extra": TrainingState(7)}, path)
    return path


def test_plain_state_dict_needs_no_opt_in(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"state_dict": _state()}, path)
    torch.testing.assert_close(read_weights(path)["state_dict"], _state())


def test_pickled_file_refused_with_one_line_error_naming_it(pickled):
    with pytest.raises(PickleNotAllowedError) as err:
        read_weights(pickled)
    message = str(err.value)
    assert str(pickled) in message and f"allow_pickle={str(pickled)!r}" in message
    assert "Unsupported global" in message and "\n" not in message


def test_custom_class_instance_refused(tmp_path):
    path = tmp_path / "custom.pt"
    torch.save({"state_dict": _state(), "extra": TrainingState(3)}, path)
    with pytest.raises(PickleNotAllowedError, match="TrainingState"):
        read_weights(path)
    assert read_weights(path, allow_pickle=str(path))["extra"].step == 3


def test_opt_in_must_name_this_file(pickled, tmp_path):
    other = tmp_path / "other.pt"
    torch.save(_state(), other)
    for wrong in (str(other), [str(other)], [], str(tmp_path)):
        with pytest.raises(PickleNotAllowedError):
            read_weights(pickled, allow_pickle=wrong)
    for bad in (True, False, 1, [True]):
        with pytest.raises(TypeError):
            read_weights(pickled, allow_pickle=bad)
    loaded = read_weights(pickled, allow_pickle=[str(other), pickled])  # a list, Path entries
    torch.testing.assert_close(loaded["state_dict"], _state())
    assert loaded["args"].lr == 1e-5 and loaded["extra"].step == 7


def test_same_file_by_another_spelling_and_hub_alias(pickled, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "link.pt"
    os.symlink(pickled, link)
    assert pickle_allowed(pickled, allow_pickle=os.path.relpath(pickled))
    assert pickle_allowed(link, allow_pickle=str(pickled))  # the link resolves to the named file
    assert pickle_allowed(pickled, allow_pickle="org/repo", aliases=("org/repo",))
    assert not pickle_allowed(pickled, allow_pickle="org/other", aliases=("org/repo",))


def test_damaged_file_fails_loudly(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(PickleNotAllowedError, match="or is damaged"):
        read_weights(path)
    with pytest.raises(Exception):  # even when trusted it is an error, never an empty result
        read_weights(path, allow_pickle=str(path))


def test_safetensors_never_pickle(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file(_state(), str(path))
    torch.testing.assert_close(read_weights(path), _state())


def test_aesthetic_head_loader(pickled, tmp_path):
    from t2i_align.evaluation.rewards.aesthetic import load_head_state_dict

    with pytest.raises(PickleNotAllowedError, match=str(pickled).replace("\\", "\\\\")):
        load_head_state_dict(pickled)
    with pytest.raises(PickleNotAllowedError):
        load_head_state_dict(pickled, allow_pickle=str(tmp_path / "another.pth"))
    torch.testing.assert_close(load_head_state_dict(pickled, allow_pickle=str(pickled)), _state())


def test_image_reward_checkpoint_loader(pickled, tmp_path):
    from t2i_align.evaluation.rewards.image_reward import load_checkpoint

    with pytest.raises(PickleNotAllowedError, match="needs_pickle.pt"):
        load_checkpoint(str(pickled))
    with pytest.raises(PickleNotAllowedError):
        load_checkpoint(str(pickled), allow_pickle=str(tmp_path / "ImageReward.pt"))
    torch.testing.assert_close(load_checkpoint(str(pickled), allow_pickle=str(pickled)), _state())


def test_hps_state_dict_loader(pickled, tmp_path):
    from t2i_align.evaluation.rewards.hpsv2 import load_hps_state_dict

    with pytest.raises(PickleNotAllowedError, match="needs_pickle.pt"):
        load_hps_state_dict(str(pickled))
    with pytest.raises(PickleNotAllowedError):
        load_hps_state_dict(str(pickled), allow_pickle=str(tmp_path / "HPS_v2.1_compressed.pt"))
    torch.testing.assert_close(load_hps_state_dict(str(pickled), allow_pickle=str(pickled)), _state())
