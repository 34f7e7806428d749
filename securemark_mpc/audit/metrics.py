"""Reconstruction quality: SSIM, PSNR and MSE between private images and an attacker's guesses.

SSIM and PSNR come from scikit-image, so the numbers are comparable with the
literature (He et al., ACSAC 2019 report SSIM on 28x28 MNIST). Images are in [0, 1],
so ``data_range=1``. SSIM uses a uniform window of about a quarter of the image side:
scikit-image's default 7x7 on 28x28 MNIST and larger images, 3x3 on 8x8 digits. A
7x7 window on an 8x8 digit has only 2x2 valid positions, so SSIM would collapse to
one global comparison in which even the mean digit scores 0.59; with 3x3 it scores
0.38. Either way SSIM on 64 pixels is noisy per image: read it as a mean over many.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

SSIM_WINDOW = 7  # scikit-image's default and largest window used here
PSNR_CAP_DB = 100.0  # an exact copy has infinite PSNR; capped so that the JSON stays finite


@dataclass(frozen=True)
class Scores:
    """Mean reconstruction quality over a batch of images."""

    ssim: float
    psnr: float
    mse: float

    def to_json(self) -> dict[str, float]:
        return asdict(self)


def ssim_window(*, height: int, width: int) -> int:
    """An odd window of about a quarter of the shorter side, between 3 and SSIM_WINDOW."""
    side = min(max(min(height, width) // 4, 3), SSIM_WINDOW)
    return side if side % 2 == 1 else side - 1


def _pairs(original: torch.Tensor, reconstructed: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    if original.shape != reconstructed.shape or original.ndim != 4:
        raise ValueError(
            f"expected two (N, C, H, W) batches of one shape, got {tuple(original.shape)} "
            f"and {tuple(reconstructed.shape)}"
        )
    as_numpy = lambda batch: batch.detach().cpu().double().clamp(0, 1).numpy()  # noqa: E731
    return as_numpy(original), as_numpy(reconstructed)


def ssim_per_image(*, original: torch.Tensor, reconstructed: torch.Tensor) -> np.ndarray:
    """SSIM of each image pair (channels first), from scikit-image."""
    truth, guess = _pairs(original, reconstructed)
    window = ssim_window(height=truth.shape[2], width=truth.shape[3])
    return np.array(
        [
            structural_similarity(a, b, data_range=1.0, win_size=window, channel_axis=0)
            for a, b in zip(truth, guess, strict=True)
        ]
    )


def psnr_per_image(*, original: torch.Tensor, reconstructed: torch.Tensor) -> np.ndarray:
    """PSNR in dB of each image pair, from scikit-image, capped at PSNR_CAP_DB."""
    truth, guess = _pairs(original, reconstructed)
    values = []
    for a, b in zip(truth, guess, strict=True):
        if np.array_equal(a, b):
            values.append(PSNR_CAP_DB)
        else:
            values.append(min(peak_signal_noise_ratio(a, b, data_range=1.0), PSNR_CAP_DB))
    return np.array(values)


def score(*, original: torch.Tensor, reconstructed: torch.Tensor) -> Scores:
    """Mean SSIM, PSNR and MSE (pixels in [0, 1]) over a batch."""
    truth, guess = _pairs(original, reconstructed)
    return Scores(
        ssim=float(ssim_per_image(original=original, reconstructed=reconstructed).mean()),
        psnr=float(psnr_per_image(original=original, reconstructed=reconstructed).mean()),
        mse=float(((truth - guess) ** 2).mean()),
    )
