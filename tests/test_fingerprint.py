"""Fingerprint keys, embedding, extraction, issuing and verification on the digits model."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import stat
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from securemark_mpc.attacks import AttackContext, parse_chain, spec_of
from securemark_mpc.config import ConfigError, TrainConfig
from securemark_mpc.data import load_splits
from securemark_mpc.fingerprint import guide as guide_module
from securemark_mpc.fingerprint.align import AlignmentError, align
from securemark_mpc.fingerprint.codes import CodeConfig, sample_biases
from securemark_mpc.fingerprint.copies import GUIDE_CACHE, issue_copy, verify_file
from securemark_mpc.fingerprint.embed import EmbeddingError, embed, margins
from securemark_mpc.fingerprint.extract import extract
from securemark_mpc.fingerprint.guide import CarrierGuide, share_closest_to_own
from securemark_mpc.fingerprint.key import (
    EmbedConfig,
    FingerprintConfig,
    FingerprintKey,
    codeword_for,
    default_carrier,
    keygen,
    load_key,
    projection_matrix,
    save_key,
)
from securemark_mpc.fingerprint.verify import verify_model
from securemark_mpc.models import load_model, public_part
from securemark_mpc.models.model_file import read_run_spec, save_model
from securemark_mpc.plaintext import write_plaintext_run
from securemark_mpc.registry import Registry, RegistryError
from securemark_mpc.run_folder import RunFolder

seeds = st.integers(min_value=0, max_value=2**64 - 1)
quick = settings(max_examples=15, deadline=None)
CUSTOMERS = ("alice", "bob", "carol", "dave")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = RunFolder(tmp_path_factory.mktemp("fingerprint") / "run")
    result = write_plaintext_run(run, TrainConfig())
    features, labels = run.load_features()
    return SimpleNamespace(
        run=run, model=result.model, spec=result.spec, features=features, labels=labels
    )


@pytest.fixture(scope="module")
def key(trained):
    return keygen(spec=trained.spec, config=FingerprintConfig(), seed=1)


@pytest.fixture(scope="module")
def issued(trained, tmp_path_factory):
    """A copy of the trained run with four customers issued (key from a fixed seed)."""
    root = tmp_path_factory.mktemp("issued") / "run"
    root.mkdir()
    for path in (trained.run.config_path, trained.run.model_path, trained.run.features_path):
        (root / path.name).write_bytes(path.read_bytes())
    run = RunFolder(root)
    for name in CUSTOMERS:
        issue_copy(run=run, name=name, key_seed=3)
    return run


def small_key(*, seed: int, length: int, shape: tuple[int, ...] = (8, 16)) -> FingerprintKey:
    code = CodeConfig(length=length)
    biases = sample_biases(config=code, rng=np.random.default_rng(seed))
    return FingerprintKey(
        projection_seed=seed,
        codeword_seed=seed + 1,
        carrier="0.weight",
        carrier_shape=shape,
        biases=tuple(biases.tolist()),
        code=code,
        embed=EmbedConfig(),
    )


def linear_with(weight: torch.Tensor) -> nn.Sequential:
    model = nn.Sequential(nn.Linear(weight.shape[1], weight.shape[0]))
    with torch.no_grad():
        model[0].weight.copy_(weight)
    return model


# Keys ---------------------------------------------------------------------------------


def test_default_carrier_is_the_largest_hidden_plaintext_linear_weight(trained, key):
    public = list(trained.model.named_children())[trained.spec.split :]
    linears = {f"{n}.weight": m.weight.numel() for n, m in public if isinstance(m, nn.Linear)}
    hidden = dict(list(linears.items())[:-1])  # never the output layer when another exists
    assert default_carrier(trained.spec) == max(hidden, key=hidden.get) == key.carrier
    assert key.carrier_shape == tuple(trained.model.state_dict()[key.carrier].shape)
    assert linears[key.carrier] >= 8 * key.length  # room for the code
    assert key.length == 304 and len(key.biases) == 304


def test_carrier_in_the_private_partition_is_refused(trained):
    with pytest.raises(ConfigError, match="plaintext partition"):
        keygen(spec=trained.spec, config=FingerprintConfig(carrier="0.weight"), seed=0)


@quick
@given(seed=seeds, length=st.sampled_from([16, 304, 1024]))
def test_keygen_is_a_function_of_its_seed_and_round_trips_through_json(trained, seed, length):
    config = FingerprintConfig(code=CodeConfig(length=length))
    key = keygen(spec=trained.spec, config=config, seed=seed)
    assert key == keygen(spec=trained.spec, config=config, seed=seed)
    assert (
        key.projection_seed
        != keygen(spec=trained.spec, config=config, seed=seed + 1).projection_seed
    )
    assert len({key.projection_seed, key.codeword_seed}) == 2
    assert FingerprintKey.from_json(json.loads(json.dumps(key.to_json()))) == key


def test_saved_key_is_private_and_loads_back(tmp_path, key):
    path = tmp_path / "key.json"
    save_key(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key
    path.write_text("{}")
    with pytest.raises(ConfigError, match="not a valid fingerprint key"):
        load_key(path)
    with pytest.raises(ConfigError, match="no fingerprint key"):
        load_key(tmp_path / "missing.json")


@quick
@given(seed=seeds, index=st.integers(min_value=0, max_value=10**6))
def test_codewords_are_seeded_by_key_and_index(seed, index):
    key = small_key(seed=seed, length=304)
    bits = codeword_for(key=key, index=index)
    assert bits.shape == (304,) and set(np.unique(bits)) <= {0, 1}
    assert np.array_equal(bits, codeword_for(key=key, index=index))
    assert not np.array_equal(bits, codeword_for(key=key, index=index + 1))


# Projection and extraction ------------------------------------------------------------


@quick
@given(seed=seeds, length=st.integers(min_value=1, max_value=300))
def test_projection_matrix_is_a_seeded_sign_matrix(seed, length):
    key = small_key(seed=seed, length=length)
    matrix = projection_matrix(key)
    assert matrix.shape == (length, 128) and matrix.dtype == torch.float32
    assert set(matrix.unique().tolist()) <= {-1.0, 1.0}
    assert torch.equal(matrix, projection_matrix(key))
    other = projection_matrix(dataclasses.replace(key, projection_seed=seed + 1))
    assert not torch.equal(matrix, other)


@quick
@given(seed=seeds, scale=st.floats(min_value=1e-3, max_value=1e3))
def test_extraction_ignores_positive_rescaling_of_units_and_flips_under_negation(seed, scale):
    key = small_key(seed=seed, length=64)
    rng = np.random.default_rng(seed)
    weight = torch.from_numpy(rng.standard_normal((8, 16))).float()
    bits, z = extract(model=linear_with(weight), key=key)
    per_unit = torch.from_numpy(scale ** rng.uniform(-1, 1, (8, 1))).float()  # one a > 0 a row
    scaled_bits, scaled_z = extract(model=linear_with(weight * per_unit), key=key)
    assert np.array_equal(bits, scaled_bits) and np.allclose(z, scaled_z, atol=1e-4)
    negated_bits, negated_z = extract(model=linear_with(-weight), key=key)
    assert np.allclose(negated_z, -z, atol=1e-5)
    assert np.array_equal(negated_bits[z != 0], 1 - bits[z != 0])


@settings(max_examples=5, deadline=None)
@given(seed=seeds)
def test_an_independent_carrier_gives_standard_projections_and_fair_bits(seed):
    key = small_key(seed=seed, length=2048, shape=(32, 64))
    weight = torch.from_numpy(np.random.default_rng(seed + 7).standard_normal((32, 64))).float()
    bits, z = extract(model=linear_with(weight), key=key)
    assert abs(z.mean()) < 0.15 and 0.85 < z.std() < 1.15
    assert abs(bits.mean() - 0.5) < 0.06


def test_an_all_zero_carrier_extracts_zeros_not_nan():
    bits, z = extract(model=linear_with(torch.zeros(8, 16)), key=small_key(seed=0, length=32))
    assert np.all(z == 0) and np.all(bits == 0)


# Embedding ----------------------------------------------------------------------------


@settings(max_examples=4, deadline=None)
@given(seed=seeds, kind=st.sampled_from(["tardos", "uniform"]))
@example(seed=0, kind="zeros")
@example(seed=0, kind="ones")
def test_extract_of_embed_is_the_codeword(trained, key, seed, kind):
    rng = np.random.default_rng(seed)
    codeword = {
        "tardos": lambda: codeword_for(key=key, index=seed % 1000),
        "uniform": lambda: rng.integers(0, 2, key.length).astype(np.uint8),
        "zeros": lambda: np.zeros(key.length, dtype=np.uint8),
        "ones": lambda: np.ones(key.length, dtype=np.uint8),
    }[kind]()
    before = {name: t.clone() for name, t in trained.model.state_dict().items()}
    marked = embed(
        model=trained.model,
        spec=trained.spec,
        key=key,
        codeword=codeword,
        features=trained.features,
        labels=trained.labels,
    )
    bits, z = extract(model=marked, key=key)
    assert np.array_equal(bits, codeword)
    signed = margins(z=torch.from_numpy(z), bits=torch.from_numpy(codeword).double())
    assert signed.min() >= key.embed.margin
    # The KL term keeps the copy answering like the unmarked model on the owner's data.
    with torch.no_grad():
        answers = [
            public_part(m, trained.spec)(trained.features).argmax(1)
            for m in (trained.model, marked)
        ]
    assert (answers[0] == answers[1]).float().mean() >= 0.99
    # The input is untouched; the copy differs from it in the plaintext head only, so
    # its private partition is the decrypted model's, and it carries no gradients.
    assert marked is not trained.model
    private = {f"{name}." for name, _ in list(trained.model.named_children())[: trained.spec.split]}
    for name, tensor in trained.model.state_dict().items():
        assert torch.equal(tensor, before[name])
        if name.startswith(tuple(private)):
            assert torch.equal(marked.state_dict()[name], tensor), name
    assert not torch.equal(marked.state_dict()[key.carrier], before[key.carrier])
    assert all(p.grad is None for p in marked.parameters())


def test_embedding_that_cannot_reach_the_margin_raises(trained, key):
    hurried = dataclasses.replace(key, embed=EmbedConfig(max_steps=1))
    with pytest.raises(EmbeddingError, match="below margin"):
        embed(
            model=trained.model,
            spec=trained.spec,
            key=hurried,
            codeword=codeword_for(key=key, index=0),
            features=trained.features,
            labels=trained.labels,
        )


def test_embedding_rejects_a_codeword_of_the_wrong_length(trained, key):
    with pytest.raises(ValueError, match="304 bits"):
        embed(
            model=trained.model,
            spec=trained.spec,
            key=key,
            codeword=np.zeros(10, dtype=np.uint8),
            features=trained.features,
            labels=trained.labels,
        )


# Issuing and verifying ----------------------------------------------------------------


@pytest.mark.parametrize("name", CUSTOMERS)
def test_each_copy_is_ours_and_accuses_exactly_its_customer(issued, name):
    report, customers = verify_file(run=issued, suspect=issued.copy_path(name))
    assert customers == len(CUSTOMERS)
    assert report.ours and report.matching_bits == report.length
    assert [a.customer for a in report.accused] == [name]
    assert report.accused[0].p_value <= report.epsilon
    assert max(s for n, s in report.scores.items() if n != name) < report.threshold


@pytest.mark.parametrize("seed", [1, 2])
def test_independent_models_are_not_ours(issued, tmp_path, seed):
    other = RunFolder(tmp_path / "other")
    write_plaintext_run(other, TrainConfig(seed=seed))
    report, _ = verify_file(run=issued, suspect=other.model_path)
    assert not report.ours and report.accused == []
    assert report.ours_p_value > report.epsilon


def test_the_unmarked_model_is_not_a_fingerprinted_copy(issued):
    report, _ = verify_file(run=issued, suspect=issued.model_path)
    assert not report.ours and report.accused == []


def test_registry_records_customers_and_files_stay_private(issued):
    registry = Registry(issued.registry_path)
    key = load_key(issued.key_path)
    for customer in registry.customers():
        assert np.array_equal(customer.codeword, codeword_for(key=key, index=customer.index))
        copy = issued.copy_path(customer.name)
        assert hashlib.sha256(copy.read_bytes()).hexdigest() == customer.copy_sha256
        # A copy holds the model and its architecture, nothing of the key.
        payload = torch.load(copy, weights_only=True)
        assert set(payload) == {"format", "spec", "state_dict"}
        assert str(key.projection_seed) not in copy.read_bytes().decode("latin-1")
    for path in (issued.key_path, issued.registry_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_issuing_a_known_name_needs_reissue_which_keeps_the_codeword(issued):
    before = Registry(issued.registry_path).get("bob")
    with pytest.raises(RegistryError, match="--reissue"):
        issue_copy(run=issued, name="bob")
    after = issue_copy(run=issued, name="bob", reissue=True).customer
    assert after.index == before.index
    assert np.array_equal(after.codeword, before.codeword)
    report, _ = verify_file(run=issued, suspect=issued.copy_path("bob"))
    assert [a.customer for a in report.accused] == ["bob"]


def test_a_key_with_other_settings_is_refused(issued):
    longer = FingerprintConfig(code=CodeConfig(length=512))
    with pytest.raises(ConfigError, match="other settings"):
        issue_copy(run=issued, name="zoe", config=longer)
    assert Registry(issued.registry_path).get("zoe") is None
    assert not issued.copy_path("zoe").exists()


def test_a_key_made_with_older_embedding_defaults_still_issues(trained, tmp_path):
    """`issue --bits N` passes today's EmbedConfig; a key made before a default changed
    keeps its own settings, and only the code length must match."""
    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    for path in (trained.run.config_path, trained.run.model_path, trained.run.features_path):
        (run.root / path.name).write_bytes(path.read_bytes())
    older = FingerprintConfig(embed=EmbedConfig(mark_weight=2.0, learning_rate=0.1))
    save_key(run.key_path, keygen(spec=trained.spec, config=older, seed=4))
    same_length = FingerprintConfig(code=CodeConfig(length=load_key(run.key_path).length))
    issue_copy(run=run, name="yan", config=same_length)
    report, _ = verify_file(run=run, suspect=run.copy_path("yan"))
    assert [a.customer for a in report.accused] == ["yan"]
    with pytest.raises(ConfigError, match="other settings"):
        issue_copy(run=run, name="zed", config=FingerprintConfig(embed=EmbedConfig(margin=2.0)))


def test_with_nobody_registered_nothing_is_traced(trained, key):
    report = verify_model(
        model=trained.model, key=key, names=[], codewords=np.zeros((0, 0), dtype=np.uint8)
    )
    assert not report.ours and report.accused == []


# Guided alignment: what the owner knows about where marks live ------------------------


def _projector(rng: np.random.Generator, inputs: int, kept: int) -> torch.Tensor:
    basis, _ = torch.linalg.qr(torch.from_numpy(rng.standard_normal((inputs, kept))))
    return basis @ basis.T


@quick
@given(seed=st.integers(0, 2**32 - 1), scale=st.floats(0.05, 20.0))
def test_restoring_keeps_a_marked_row_and_drops_what_a_thief_wrote_outside_the_mark(seed, scale):
    rng = np.random.default_rng(seed)
    excited = _projector(rng, 12, 4)
    guide = CarrierGuide(key=small_key(seed=seed, length=8, shape=(6, 12)), excited=excited)
    reference = torch.from_numpy(rng.standard_normal((6, 12)))
    marked = scale * (reference + torch.from_numpy(rng.standard_normal((6, 12))) @ excited)
    assert torch.allclose(guide.restore(marked, reference), marked, atol=1e-9)
    junk = torch.from_numpy(rng.standard_normal((6, 12))) @ (torch.eye(12) - excited.double())
    restored = guide.restore(marked @ excited + junk, reference)
    assert torch.allclose(restored @ excited, marked @ excited, atol=1e-9)
    outside = restored - restored @ excited
    reference_outside = reference - reference @ excited
    for row, ref in zip(outside, reference_outside, strict=True):  # a k >= 0 multiple of ours
        k = float(row @ ref / (ref @ ref))
        assert k >= -1e-9 and torch.allclose(row, k * ref, atol=1e-9)


def test_units_are_recognised_by_response_until_a_change_outweighs_their_differences():
    generator = torch.Generator().manual_seed(0)
    ours = torch.randn(400, 16, generator=generator) @ torch.randn(16, 16, generator=generator)
    assert share_closest_to_own(ours=ours, theirs=3 * ours + 1) == 1.0
    assert share_closest_to_own(ours=ours, theirs=ours[:, torch.arange(16).roll(1)]) == 0.0
    slightly = ours + 0.05 * ours.std() * torch.randn(400, 16, generator=generator)
    assert share_closest_to_own(ours=ours, theirs=slightly) == 1.0


def test_on_the_digits_twin_the_mark_blurs_responses_so_the_key_pairs_the_carrier(trained, key):
    """The default mark turns the twin's carrier units past telling them apart by
    response (45-47% closest to their own unit): rows and the key must pair them."""
    guide = CarrierGuide.of(
        key=key,
        model=trained.model,
        spec=trained.spec,
        features=trained.features,
        labels=trained.labels,
    )
    assert not guide.responses_identify


@pytest.mark.parametrize("dormant", ["dormant-project", "dormant-reinit"])
def test_a_design_aware_chain_on_a_copy_is_still_traced(issued, tmp_path, dormant):
    """Permute and widen every layer, zero or rewrite what the data never excites,
    fine-tune: the chains that removed the trace before alignment was guided by the key."""
    spec = read_run_spec(issued.model_path)
    leaked, _ = load_model(issued.copy_path("carol"), expected=spec)
    context = AttackContext(spec=spec, aux=load_splits(issued.load_config().data).aux, seed=0)
    chain = f"permute:1,dummy:1,{dormant}:0.99,finetune-all:10"
    attacked = parse_chain(chain)([leaked], context)
    suspect = tmp_path / "attacked.pt"
    save_model(suspect, model=attacked, spec=spec_of(attacked, spec))
    report, _ = verify_file(run=issued, suspect=suspect)
    assert report.alignment["changed"]
    assert report.ours and [a.customer for a in report.accused] == ["carol"]


def test_a_suspect_with_non_finite_weights_is_refused(trained):
    """Files are refused on loading; in memory (a diverged attack) alignment refuses."""
    broken = copy.deepcopy(trained.model)
    with torch.no_grad():
        broken[0].weight[0, 0, 0, 0] = float("nan")
    images = trained.features.new_zeros((4, *trained.spec.input_shape))
    with pytest.raises(AlignmentError, match="non-finite"):
        align(suspect=broken, reference=trained.model, images=images)


def test_verifying_measures_the_guide_once_per_model_and_key(issued, tmp_path, monkeypatch):
    """The throw-away embedding that tells whether responses identify the carrier's units
    is kept in the run; a new key (or model) measures again."""
    calls = []
    measure = guide_module._responses_identify

    def counted(**kwargs):
        calls.append(1)
        return measure(**kwargs)

    monkeypatch.setattr(guide_module, "_responses_identify", counted)
    (issued.root / GUIDE_CACHE).unlink(missing_ok=True)
    for _ in range(2):
        report, _ = verify_file(run=issued, suspect=issued.copy_path("carol"))
        assert [a.customer for a in report.accused] == ["carol"]
    assert len(calls) == 1
    cached = json.loads((issued.root / GUIDE_CACHE).read_text())
    cached["stamp"]["key_sha256"] = "0" * 64
    (issued.root / GUIDE_CACHE).write_text(json.dumps(cached))
    verify_file(run=issued, suspect=issued.copy_path("carol"))
    assert len(calls) == 2
    (issued.root / GUIDE_CACHE).write_text("[1, 2]")  # damaged: measured again, no crash
    verify_file(run=issued, suspect=issued.copy_path("carol"))
    assert len(calls) == 3
