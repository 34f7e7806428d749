"""Model files: save the decrypted model, and load untrusted model files safely.

A model file is ``{"format", "spec", "state_dict"}`` saved with ``torch.save``. It is
always read back with ``weights_only=True`` (never full unpickling), so a malicious
file cannot run code. Plain state dicts and ``.safetensors`` files are accepted too,
given the architecture they should match.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from securemark_mpc.models.presets import ModelSpec, build_model

FORMAT = "securemark-model/1"


class ModelFileError(ValueError):
    """The file is missing, unreadable, not a model, or not this architecture (exit 2)."""


def save_model(path: Path, *, model: nn.Module, spec: ModelSpec) -> None:
    """Write a model file that loads back into plain PyTorch with this package alone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    torch.save({"format": FORMAT, "spec": spec.to_json(), "state_dict": state}, path)


def _python_objects(path: Path, error: Exception) -> list[str]:
    """The Python objects (classes, functions) a refused file would have unpickled."""
    named = re.findall(r"GLOBAL ([\w.]+)", str(error))
    if named:
        return named
    try:  # reads the pickle's opcodes without running them
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip checkpoint at all: it is garbage, not objects
        return []


def _refusal(path: Path, error: Exception) -> str:
    """Why a file was refused, in this project's words.

    torch's own message advises re-running with ``weights_only=False``, i.e. running
    whatever code the file carries: it is never relayed.
    """
    objects = _python_objects(path, error)
    if objects:
        return (
            f"{path}: not a readable PyTorch model file: it holds more than tensors (Python "
            f"objects: {', '.join(sorted(set(objects)))}), so it was not loaded; a model file "
            "must hold only tensors, because loading objects can run code from the file"
        )
    lines = str(error).strip().splitlines()
    detail = lines[0] if lines and "weights" not in str(error).lower() else type(error).__name__
    return f"{path}: not a readable PyTorch model file ({detail})"


def _read_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover - depends on the environment
            raise ModelFileError(
                f"{path}: reading .safetensors needs the 'safetensors' package"
            ) from None
        try:
            return load_file(str(path)), None
        except Exception as error:  # safetensors raises its own error types
            raise ModelFileError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    # On garbage the weights-only unpickler raises almost anything (IndexError for text, ...).
    except Exception as error:
        raise ModelFileError(_refusal(path, error)) from None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        state, spec = payload.get("state_dict"), payload.get("spec")
        if not (isinstance(state, dict) and isinstance(spec, dict)):
            raise ModelFileError(f"{path}: a {FORMAT} file without a state dict and spec")
        return state, spec
    if isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return payload, None
    raise ModelFileError(f"{path}: holds a {type(payload).__name__}, not a model state dict")


def load_model(path: Path, *, expected: ModelSpec | None = None) -> tuple[nn.Sequential, ModelSpec]:
    """Load a model file safely and check it against the expected architecture.

    Raises ModelFileError for a truncated file, a non-model, another architecture,
    wrongly shaped tensors, or non-finite weights.
    """
    state, spec_json = _read_state(Path(path))
    try:
        spec = ModelSpec.from_json(spec_json) if spec_json is not None else expected
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: unreadable architecture in the file ({error!r})") from None
    if spec is None:
        raise ModelFileError(f"{path}: a bare state dict needs the run's architecture to load")
    if expected is not None and spec.to_json()["layers"] != expected.to_json()["layers"]:
        raise ModelFileError(
            f"{path}: architecture {spec.preset!r} differs from the run's {expected.preset!r}"
        )
    model = build_model(spec, seed=0)
    reference = model.state_dict()
    missing = sorted(set(reference) - set(state))
    extra = sorted(set(state) - set(reference))
    if missing or extra:
        raise ModelFileError(
            f"{path}: not this architecture (missing {missing[:4]}, unexpected {extra[:4]})"
        )
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(
            reference[name].shape
        ):
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ModelFileError(
                f"{path}: tensor {name!r} has shape {got}, expected {tuple(reference[name].shape)}"
            )
        if not torch.isfinite(tensor.float()).all():
            raise ModelFileError(f"{path}: tensor {name!r} holds NaN or infinite values")
    model.load_state_dict({name: tensor.float() for name, tensor in state.items()})
    return model, spec


def read_run_spec(path: Path) -> ModelSpec:
    """The architecture of a run's own (trusted) model file."""
    _, spec_json = _read_state(Path(path))
    if spec_json is None:
        raise ModelFileError(f"{path}: not a securemark model file")
    return ModelSpec.from_json(spec_json)
