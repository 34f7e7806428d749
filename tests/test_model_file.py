"""Refused model files are described in this project's words, never with torch's advice."""

from __future__ import annotations

import pickle

import pytest
import torch

from securemark_mpc.models import load_model
from securemark_mpc.models.model_file import ModelFileError


class Payload:
    """Anything that is not a tensor: loading it would mean unpickling an object."""

    def __reduce__(self):
        return (print, ("this ran while loading",))


@pytest.mark.parametrize("legacy", [False, True])
def test_a_file_holding_objects_is_refused_in_our_words(tmp_path, capsys, legacy):
    path = tmp_path / "hostile.pt"
    torch.save(
        {"state_dict": {"w": torch.ones(2)}, "extra": Payload()},
        path,
        **({"_use_new_zipfile_serialization": False} if legacy else {}),
    )
    with pytest.raises(ModelFileError) as refused:
        load_model(path)
    message = str(refused.value)
    assert "holds more than tensors" in message and "was not loaded" in message
    assert "print" in message  # names what it would have run
    assert "weights_only" not in message and "trust" not in message.lower()
    assert "this ran" not in capsys.readouterr().out


def test_garbage_is_refused_without_torchs_advice(tmp_path):
    for name, payload in {
        "text.pt": b"not a model",
        "pickle.pt": pickle.dumps([1, 2], protocol=2),
    }.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(ModelFileError, match="not a readable PyTorch model file") as refused:
            load_model(tmp_path / name)
        assert "weights_only" not in str(refused.value)
