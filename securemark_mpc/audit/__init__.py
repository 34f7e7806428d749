"""Privacy audit: what the model owner can reconstruct of the private training images.

- ``attacks``: the attacks (and reference rows) in a registry keyed by name.
- ``metrics``: SSIM, PSNR and MSE between the private images and the guesses.
- ``twin``: plaintext training with the reveal noise simulated, for quick sweeps.
- ``report``: attack one run folder's revealed features (``securemark audit --run``).
- ``sweep``: train and attack across the privacy knobs (``securemark audit --sweep``).
- ``plots``: the reconstruction grid and the privacy-utility curve.
"""
