"""The SQLite customer registry."""

from __future__ import annotations

import hashlib
import stat

import numpy as np
import pytest

from securemark_mpc.registry import Registry, RegistryError


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bits(seed: int, m: int = 304) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, m).astype(np.uint8)


@pytest.fixture
def registry(tmp_path):
    return Registry(tmp_path / "registry.sqlite")


def test_add_get_list_round_trip(registry):
    alice = registry.add(name="alice", codeword=bits(1), copy_sha256=sha("a"))
    bob = registry.add(name="bob", codeword=bits(2, 304), copy_sha256=sha("b"))
    assert (alice.index, bob.index) == (0, 1)
    assert registry.next_index() == 2
    got = registry.get("alice")
    assert got == alice and np.array_equal(got.codeword, bits(1))
    assert got.issued_at.endswith("+00:00")
    assert registry.get("carol") is None
    assert [c.name for c in registry.customers()] == ["alice", "bob"]
    names, matrix = registry.codeword_matrix()
    assert names == ["alice", "bob"] and matrix.dtype == np.uint8
    assert np.array_equal(matrix, np.stack([bits(1), bits(2)]))


@pytest.mark.parametrize("m", [1, 7, 8, 304, 1023])
def test_codeword_round_trips_for_any_length(tmp_path, m):
    registry = Registry(tmp_path / "r.sqlite")
    registry.add(name="x", codeword=bits(m, m), copy_sha256=sha("x"))
    assert np.array_equal(registry.get("x").codeword, bits(m, m))


def test_empty_registry(registry):
    assert registry.customers() == [] and registry.next_index() == 0
    names, matrix = registry.codeword_matrix()
    assert names == [] and matrix.shape == (0, 0)


def test_duplicate_name_is_refused(registry):
    registry.add(name="alice", codeword=bits(1), copy_sha256=sha("a"))
    with pytest.raises(RegistryError, match="already registered"):
        registry.add(name="alice", codeword=bits(1), copy_sha256=sha("a2"))
    assert registry.get("alice").copy_sha256 == sha("a")


def test_reissue_keeps_index_and_codeword(registry):
    first = registry.add(name="alice", codeword=bits(1), copy_sha256=sha("a"))
    registry.add(name="bob", codeword=bits(2), copy_sha256=sha("b"))
    again = registry.add(name="alice", codeword=bits(1), copy_sha256=sha("a2"), reissue=True)
    assert again.index == first.index and again.copy_sha256 == sha("a2")
    assert np.array_equal(again.codeword, first.codeword)
    assert registry.next_index() == 2
    with pytest.raises(RegistryError, match="keep its registered codeword"):
        registry.add(name="alice", codeword=bits(9), copy_sha256=sha("a3"), reissue=True)


@pytest.mark.parametrize(
    "name", ["", "a/b", "..", ".", "a\\b", "x" * 101, "tab\there", "new\nline", " pad", "nul\0"]
)
def test_bad_names_are_refused(registry, name):
    with pytest.raises(RegistryError, match="customer name"):
        registry.add(name=name, codeword=bits(1), copy_sha256=sha("a"))
    assert registry.customers() == []


def test_bad_codewords_and_hashes_are_refused(registry):
    for codeword in (np.array([0, 1, 2]), np.zeros((2, 2)), np.array([])):
        with pytest.raises(RegistryError, match="codeword"):
            registry.add(name="a", codeword=codeword, copy_sha256=sha("a"))
    with pytest.raises(RegistryError, match="sha256"):
        registry.add(name="a", codeword=bits(1), copy_sha256="not-a-hash")
    registry.add(name="a", codeword=bits(1), copy_sha256=sha("a"))
    with pytest.raises(RegistryError, match="bits"):
        registry.add(name="b", codeword=bits(1, 512), copy_sha256=sha("b"))


def test_unicode_and_long_names_are_accepted(registry):
    for name in ("Zoë Ltd.", "x" * 100, "acme-corp_2"):
        registry.add(name=name, codeword=bits(1), copy_sha256=sha(name))
    assert len(registry.customers()) == 3


def test_file_is_private(tmp_path):
    path = tmp_path / "registry.sqlite"
    Registry(path).add(name="a", codeword=bits(1), copy_sha256=sha("a"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_persists_across_instances(tmp_path):
    path = tmp_path / "registry.sqlite"
    Registry(path).add(name="alice", codeword=bits(1), copy_sha256=sha("a"))
    reopened = Registry(path)
    assert reopened.get("alice").copy_sha256 == sha("a")
    reopened.add(name="bob", codeword=bits(2), copy_sha256=sha("b"))
    assert [c.index for c in Registry(path).customers()] == [0, 1]
