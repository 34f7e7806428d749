"""The run folder's black-box material, and the steps that use it: issue, export, verify.

RUN/blackbox_key.json      the black-box key (mode 0600)
RUN/blackbox_queries.npz   the keyed queries (``images``) and the tilt (``directions``,
                           ``design``; see :mod:`.tilt`), mode 0600

Both are made once per run, on first use, from the unmarked model, the owner's own
images (the test split, which the model owner holds) and the cached training features,
under a lock so that concurrent issues cannot make two different keys.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from securemark_mpc.blackbox.embed import embed_tilt
from securemark_mpc.blackbox.key import (
    BehaviourConfig,
    BlackboxKey,
    codeword_for,
    load_key,
    sample_code_biases,
    save_key,
    split_seed,
)
from securemark_mpc.blackbox.protocol import EndpointClient
from securemark_mpc.blackbox.queries import QuerySet, base_indices, make_queries
from securemark_mpc.blackbox.tilt import (
    Tilt,
    boundary_metric,
    layer_inputs,
    make_tilt,
    output_layer,
)
from securemark_mpc.blackbox.trace import read_answers, trace_answers
from securemark_mpc.config import ConfigError
from securemark_mpc.data import LabeledImages, load_splits
from securemark_mpc.fingerprint.key import fresh_seed
from securemark_mpc.fingerprint.trace import TraceReport
from securemark_mpc.models import ModelSpec
from securemark_mpc.models.model_file import read_run_spec
from securemark_mpc.registry import Registry
from securemark_mpc.run_folder import RunFolder

KEY_NAME = "blackbox_key.json"
QUERIES_NAME = "blackbox_queries.npz"


def key_path(run: RunFolder) -> Path:
    return run.root / KEY_NAME


def queries_path(run: RunFolder) -> Path:
    return run.root / QUERIES_NAME


def _write_npz(path: Path, arrays: dict[str, np.ndarray], *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        np.savez(handle, **arrays)
    os.replace(temporary, path)


def write_query_images(path: Path, images: torch.Tensor) -> None:
    """An .npz holding only ``images`` (float32, N×C×H×W): what may be shown to a suspect."""
    _write_npz(path, {"images": images.numpy().astype(np.float32)}, mode=0o644)


def _read_queries(path: Path, key: BlackboxKey) -> tuple[torch.Tensor, Tilt]:
    if not path.is_file():
        raise ConfigError(f"{path}: the run's keyed queries are missing")
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = torch.from_numpy(archive["images"])
            tilt = Tilt(directions=archive["directions"], design=archive["design"])
    except (KeyError, ValueError, OSError) as error:
        raise ConfigError(f"{path}: not the run's keyed queries ({error})") from None
    if len(images) != key.queries or tilt.design.shape != (key.queries, key.length):
        raise ConfigError(
            f"{path}: {len(images)} queries and a {tilt.design.shape} design; the black-box "
            f"key expects {key.queries} queries and {key.length} positions"
        )
    return images, tilt


def load_blackbox(run: RunFolder) -> tuple[BlackboxKey, QuerySet]:
    """The run's black-box key and queries; ConfigError if the run has none yet."""
    key = load_key(key_path(run))
    images, _ = _read_queries(queries_path(run), key)
    queries = QuerySet(
        images=images, first=torch.tensor(key.first), second=torch.tensor(key.second)
    )
    return key, queries


def load_tilt(run: RunFolder, key: BlackboxKey) -> Tilt:
    """The run's tilt directions and design (owner-only)."""
    return _read_queries(queries_path(run), key)[1]


def owner_bases(run: RunFolder, *, seed: int) -> LabeledImages:
    """The owner's images that the queries mix: a keyed half of its test split."""
    owner = load_splits(run.load_config().data).test
    return owner.subset(base_indices(len(owner), seed=seed))


def _retained(
    *,
    model: nn.Sequential,
    split: int,
    features: torch.Tensor,
    labels: torch.Tensor,
    bases: LabeledImages,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output-layer inputs and labels of the data a copy keeps in place: the cached
    training features (taken at layer ``split``) and the owner's images the queries mix."""
    head = model[split : output_layer(model)].eval()
    with torch.no_grad():
        inputs = torch.cat([head(features.float()), layer_inputs(model, bases.images).float()])
    return inputs, torch.cat([labels.long(), bases.labels.long()])


def ensure_blackbox(
    *,
    run: RunFolder,
    model: nn.Sequential,
    config: BehaviourConfig | None = None,
    seed: int | None = None,
) -> tuple[BlackboxKey, QuerySet]:
    """The run's key and queries (and tilt), made on first use from ``model`` (the unmarked one).

    ``seed`` makes the key reproducible (tests, benchmarks); by default it comes from
    OS entropy. ``config`` only matters when the key is made.
    """
    with run.lock("blackbox"):
        if key_path(run).exists():
            return load_blackbox(run)
        config = config or BehaviourConfig()
        query_seed, codeword_seed, bias_seed, rotation_seed = split_seed(
            fresh_seed() if seed is None else seed
        )
        bases = owner_bases(run, seed=query_seed)
        queries = make_queries(
            model=model,
            images=bases.images,
            labels=bases.labels,
            count=config.queries,
            seed=query_seed,
        )
        features, labels = run.load_features()
        inputs, labels = _retained(
            model=model,
            split=read_run_spec(run.model_path).split,
            features=features,
            labels=labels,
            bases=bases,
        )
        with torch.no_grad():
            logits = model[output_layer(model)](inputs)
        try:
            tilt = make_tilt(
                inputs=layer_inputs(model, queries.images),
                first=queries.first,
                second=queries.second,
                classes=model[output_layer(model)].out_features,
                positions=config.positions,
                gap=config.embed.gap,
                seed=rotation_seed,
                metric=boundary_metric(
                    inputs,
                    logits,
                    labels,
                    temperature=config.embed.temperature,
                    ridge=config.embed.ridge,
                ),
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None
        key = BlackboxKey(
            query_seed=query_seed,
            codeword_seed=codeword_seed,
            rotation_seed=rotation_seed,
            biases=tuple(sample_code_biases(config=config, seed=bias_seed).tolist()),
            code=config.code,
            embed=config.embed,
            first=tuple(queries.first.tolist()),
            second=tuple(queries.second.tolist()),
        )
        arrays = {
            "images": queries.images.numpy().astype(np.float32),
            "directions": tilt.directions,
            "design": tilt.design,
        }
        _write_npz(queries_path(run), arrays, mode=0o600)
        save_key(key_path(run), key)  # last: a key on disk means the queries are there too
        return key, queries


def mark_copy(
    *,
    run: RunFolder,
    unmarked: nn.Sequential,
    model: nn.Sequential,
    spec: ModelSpec,
    index: int,
    features: torch.Tensor,
    labels: torch.Tensor,
    carrier: str,
    seed: int | None = None,
) -> nn.Sequential:
    """Customer ``index``'s behavioural mark on ``model`` (its weight-marked copy).

    The run's queries are made from ``unmarked`` on first use; ``carrier`` (the weight
    mark's carrier tensor) is left alone. The copy keeps the owner's images that the
    queries mix and the cached training features (with ``labels``) inside their classes.
    """
    key, queries = ensure_blackbox(run=run, model=unmarked, seed=seed)
    tilt = load_tilt(run, key)
    data_inputs, data_labels = _retained(
        model=model,
        split=spec.split,
        features=features,
        labels=labels,
        bases=owner_bases(run, seed=key.query_seed),
    )
    marked, _ = embed_tilt(
        model=model,
        tilt=tilt,
        codeword=codeword_for(key=key, index=index),
        first=queries.first,
        second=queries.second,
        query_inputs=layer_inputs(model, queries.images),
        data_inputs=data_inputs,
        data_labels=data_labels,
        config=key.embed,
        carrier=carrier,
    )
    return marked


def registered_codewords(run: RunFolder, key: BlackboxKey) -> tuple[list[str], np.ndarray]:
    """Names and behavioural codewords (n × m) of the registered customers, by index."""
    if not run.registry_path.exists():  # verifying must not create a registry
        return [], np.zeros((0, key.length), dtype=np.uint8)
    customers = Registry(run.registry_path).customers()
    if not customers:
        return [], np.zeros((0, key.length), dtype=np.uint8)
    codewords = np.stack([codeword_for(key=key, index=c.index) for c in customers])
    return [c.name for c in customers], codewords


@dataclass(frozen=True)
class AnswerSource:
    """Where the suspect's answers come from: an answers file or a served model's URL."""

    answers: Path | None = None
    endpoint: str | None = None

    def __post_init__(self) -> None:
        if (self.answers is None) == (self.endpoint is None):
            raise ConfigError("give exactly one of --answers FILE and --endpoint URL")

    def __str__(self) -> str:
        return str(self.answers) if self.answers is not None else str(self.endpoint)

    def labels(self, queries: QuerySet, *, num_classes: int) -> np.ndarray:
        if self.answers is not None:
            return read_answers(self.answers, count=len(queries), num_classes=num_classes)
        client = EndpointClient(url=str(self.endpoint))
        return client.labels(queries.images.numpy(), num_classes=num_classes)


def verify_answers(*, run: RunFolder, source: AnswerSource) -> tuple[TraceReport, int]:
    """Trace a suspect from its answers on the run's queries; also return the customer count."""
    key, queries = load_blackbox(run)
    tilt = load_tilt(run, key)
    spec = read_run_spec(run.model_path)
    labels = source.labels(queries, num_classes=spec.num_classes)
    names, codewords = registered_codewords(run, key)
    report = trace_answers(key=key, tilt=tilt, labels=labels, names=names, codewords=codewords)
    return report, len(names)
