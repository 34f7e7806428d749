"""Split-model architectures and model files (plain PyTorch, no CrypTen)."""

from securemark_mpc.models.model_file import FORMAT, ModelFileError, load_model, save_model
from securemark_mpc.models.presets import (
    PRESETS,
    ModelSpec,
    build_model,
    make_spec,
    preset_for_shape,
    private_part,
    public_part,
    recommended_optimisation,
)

__all__ = [
    "FORMAT",
    "PRESETS",
    "ModelFileError",
    "ModelSpec",
    "build_model",
    "load_model",
    "make_spec",
    "preset_for_shape",
    "private_part",
    "public_part",
    "recommended_optimisation",
    "save_model",
]
