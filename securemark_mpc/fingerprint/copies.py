"""Issuing fingerprinted copies from a run folder, and verifying suspect files against it.

Issuing is serialised by a lock file in the run: a customer's codeword is drawn from
(key seed, customer index), so two concurrent issues must not both take the same next
index. The copy is written under a temporary name and only renamed into place once the
registry holds the customer, so a refused issue never overwrites an existing copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from securemark_mpc.blackbox.store import mark_copy
from securemark_mpc.config import ConfigError
from securemark_mpc.data import DataError, load_splits
from securemark_mpc.fingerprint.align import ALIGNMENT_IMAGES
from securemark_mpc.fingerprint.embed import embed
from securemark_mpc.fingerprint.guide import CarrierGuide
from securemark_mpc.fingerprint.key import (
    EmbedConfig,
    FingerprintConfig,
    FingerprintKey,
    codeword_for,
    fresh_seed,
    keygen,
    load_key,
    save_key,
)
from securemark_mpc.fingerprint.trace import TraceReport
from securemark_mpc.fingerprint.verify import verify_model
from securemark_mpc.models import ModelFileError, ModelSpec, build_model, load_model
from securemark_mpc.models.model_file import read_run_spec, save_model
from securemark_mpc.registry import Customer, Registry, RegistryError, validate_name
from securemark_mpc.run_folder import RunFolder


@dataclass(frozen=True)
class IssuedCopy:
    customer: Customer
    path: Path
    key_created: bool


def _check_key(key: FingerprintKey, spec: ModelSpec, config: FingerprintConfig | None) -> None:
    # the embedding settings are the key's: a config with today's defaults (the CLI's)
    # accepts a key made with older ones; only settings asked for explicitly must match
    if config is not None and (
        key.code != config.code
        or config.embed not in (key.embed, EmbedConfig())
        or config.carrier not in (None, key.carrier)
    ):
        raise ConfigError(
            f"the run's fingerprint key was made with other settings ({key.length} bits, "
            f"carrier {key.carrier}); every copy of a run uses the same key"
        )
    carrier = build_model(spec, seed=0).state_dict().get(key.carrier)
    if carrier is None or tuple(carrier.shape) != key.carrier_shape:
        raise ConfigError(f"the fingerprint key's carrier {key.carrier!r} does not fit this model")


def ensure_key(
    *, run: RunFolder, spec: ModelSpec, config: FingerprintConfig | None, seed: int | None
) -> tuple[FingerprintKey, bool]:
    """The run's key, made on first use (from ``seed``, else OS entropy); True if just made."""
    if run.key_path.exists():
        key = load_key(run.key_path)
        _check_key(key, spec, config)
        return key, False
    key = keygen(
        spec=spec,
        config=config or FingerprintConfig(),
        seed=fresh_seed() if seed is None else seed,
    )
    save_key(run.key_path, key)
    return key, True


GUIDE_CACHE = "fingerprint_guide.json"  # holds no key material: one bit per model and key


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def issue_copy(
    *,
    run: RunFolder,
    name: str,
    reissue: bool = False,
    config: FingerprintConfig | None = None,
    key_seed: int | None = None,
) -> IssuedCopy:
    """Embed customer ``name``'s codeword into a copy of the run's model and register it.

    Writes ``RUN/copies/NAME.pt`` and records name, codeword, the copy's SHA-256 and the
    time. A known name is refused unless ``reissue``, which re-embeds the same codeword.
    ``config`` and ``key_seed`` only matter when the run has no key yet.
    """
    validate_name(name)
    spec = read_run_spec(run.model_path)
    model, _ = load_model(run.model_path, expected=spec)
    features, labels = run.load_features()
    with run.lock("issue"):
        key, created = ensure_key(run=run, spec=spec, config=config, seed=key_seed)
        registry = Registry(run.registry_path)
        known = registry.get(name)
        if known is not None and not reissue:
            raise RegistryError(
                f"customer {name!r} already has a copy; pass --reissue to replace it"
            )
        index = registry.next_index() if known is None else known.index
        codeword = codeword_for(key=key, index=index)
        marked = embed(
            model=model, spec=spec, key=key, codeword=codeword, features=features, labels=labels
        )
        # Black-box tracing (securemark_mpc.blackbox): the behavioural mark, carrier untouched.
        marked = mark_copy(
            run=run,
            unmarked=model,
            model=marked,
            spec=spec,
            index=index,
            features=features,
            labels=labels,
            carrier=key.carrier,
            seed=key_seed,
        )
        path = run.copy_path(name)
        temporary = path.with_name(f".{name}.pt.tmp")
        try:
            save_model(temporary, model=marked, spec=spec)
            customer = registry.add(
                name=name, codeword=codeword, copy_sha256=_sha256(temporary), reissue=reissue
            )
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
    return IssuedCopy(customer=customer, path=path, key_created=created)


def _same_layout(found: ModelSpec, spec: ModelSpec) -> bool:
    """Same layers and split, widths aside (a thief may add dummy units)."""

    def layout(model_spec: ModelSpec) -> list[dict]:
        return [{k: v for k, v in layer.items() if k != "out"} for layer in model_spec.layers]

    return (
        layout(found) == layout(spec)
        and found.split == spec.split
        and found.layers[-1] == spec.layers[-1]
    )


def load_suspect(path: Path, spec: ModelSpec) -> nn.Sequential:
    """Load an untrusted model (weights only): the run's architecture, or the same layers widened.

    Anything else raises ModelFileError.
    """
    try:
        return load_model(path, expected=spec)[0]
    except ModelFileError as mismatch:
        try:
            model, found = load_model(path)  # a model file that names its own, wider, layers
        except ModelFileError:
            raise mismatch from None
        if not _same_layout(found, spec):
            raise mismatch from None
        return model


def verify_file(*, run: RunFolder, suspect: Path) -> tuple[TraceReport, int]:
    """Trace an untrusted model file against the run's registry; also return the customer count.

    The suspect is loaded safely (weights only); it must have the run's layers, possibly
    widened by dummy units, else ModelFileError. It is aligned with the run's unmarked
    model on the owner's test images before its mark is read.
    """
    spec = read_run_spec(run.model_path)
    key = load_key(run.key_path)
    reference, _ = load_model(run.model_path, expected=spec)
    try:
        images = load_splits(run.load_config().data).test.images[:ALIGNMENT_IMAGES]
    except (ConfigError, DataError) as error:  # e.g. a host that holds no test images
        warnings.warn(
            f"cannot load the owner's test images ({error}): reading the suspect unaligned, "
            "so permuted, rescaled or widened copies will not be traced",
            stacklevel=2,
        )
        images = None
    # widened layers can only be read once aligned
    model = (
        load_suspect(suspect, spec) if images is not None else load_model(suspect, expected=spec)[0]
    )
    names: list[str] = []
    codewords = np.zeros((0, key.length), dtype=np.uint8)
    if run.registry_path.exists():  # verifying must not create a registry
        names, codewords = Registry(run.registry_path).codeword_matrix()
    report = verify_model(
        model=model,
        key=key,
        names=names,
        codewords=codewords,
        reference=reference,
        images=images,
        guide=_guide(run=run, key=key, reference=reference, spec=spec),
    )
    return report, len(names)


def _guide(
    *, run: RunFolder, key: FingerprintKey, reference: nn.Sequential, spec: ModelSpec
) -> CarrierGuide | None:
    """The key's help in pairing and cleaning the carrier's units, if the run still has its
    features. Whether responses identify the carrier's units costs one throw-away
    embedding (seconds on MNIST-t10k), so it is kept in GUIDE_CACHE for this model and key.
    """
    try:
        features, labels = run.load_features()
    except ConfigError as error:
        warnings.warn(
            f"{error}: pairing the carrier's units without the key's help, so copies whose "
            "dormant weights were rewritten may not be traced",
            stacklevel=3,
        )
        return None
    stamp = {
        "model_sha256": _sha256(run.model_path),
        "key_sha256": hashlib.sha256(run.key_path.read_bytes()).hexdigest(),
    }
    try:
        cached = run.read_json(GUIDE_CACHE)
    except ConfigError:
        cached = {}
    known = (
        cached.get("responses_identify")
        if isinstance(cached, dict) and cached.get("stamp") == stamp
        else None
    )
    if not isinstance(known, bool):  # missing, stale or damaged: measure again
        known = None
    guide = CarrierGuide.of(
        key=key,
        model=reference,
        spec=spec,
        features=features,
        labels=labels,
        responses_identify=known,
    )
    if known is None:
        with contextlib.suppress(OSError):  # a read-only run folder: measure next time
            run.write_json(
                GUIDE_CACHE, {"stamp": stamp, "responses_identify": guide.responses_identify}
            )
    return guide
