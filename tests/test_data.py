"""Data sources, splits and per-owner shards."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from securemark_mpc.data import (
    DATASETS,
    PARTITIONERS,
    DataConfig,
    DataError,
    DataInfo,
    LabeledImages,
    load_own_folder,
    load_splits,
    partition_shards,
    simulated_party_data,
)
from securemark_mpc.data.party import folder_format
from securemark_mpc.data.splits import attacker_half
from tests.conftest import write_image_folder

MNIST_T10K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist-t10k"


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file of unsigned bytes (gzipped if the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)


@pytest.fixture
def numbered_source(monkeypatch: pytest.MonkeyPatch) -> int:
    """Register a source whose image i is filled with i / n, so splits reveal their indices."""
    n = 203

    def load(*, data_root: str | None) -> tuple[LabeledImages, DataInfo]:
        images = (torch.arange(n, dtype=torch.float32) / n).reshape(n, 1, 1, 1).expand(n, 1, 2, 2)
        labels = torch.tensor([i % 7 if i % 3 else 0 for i in range(n)])  # uneven classes
        info = DataInfo(image_shape=(1, 2, 2), class_names=tuple("abcdefg"), normalisation="i/n")
        return LabeledImages(images=images.contiguous(), labels=labels), info

    monkeypatch.setitem(DATASETS, "numbered", load)
    return n


def split_ids(config: DataConfig, n: int) -> dict[str, list[int]]:
    splits = load_splits(config)
    return {
        name: torch.round(getattr(splits, name).images[:, 0, 0, 0] * n).long().tolist()
        for name in ("train", "test", "aux")
    }


def test_digits_source_is_real_8x8_digits_in_unit_range():
    pool, info = DATASETS["digits"](data_root=None)
    assert pool.images.shape == (1797, 1, 8, 8)
    assert pool.images.dtype == torch.float32 and pool.labels.dtype == torch.int64
    assert pool.images.min() == 0 and pool.images.max() == 1
    assert (
        info.num_classes == 10
        and info.normalisation == "pixels / 16"
        and sorted(pool.labels.unique().tolist()) == list(range(10))
    )


def test_digits_splits_have_expected_sizes_and_metadata():
    splits = load_splits(DataConfig())
    assert (len(splits.train), len(splits.test), len(splits.aux)) == (1258, 359, 180)
    assert splits.image_shape == (1, 8, 8) and splits.num_classes == 10 and splits.name == "digits"


def test_splits_are_disjoint_cover_the_pool_and_are_stratified(numbered_source):
    ids = split_ids(
        DataConfig(dataset="numbered", test_fraction=0.25, aux_fraction=0.15), numbered_source
    )
    everything = ids["train"] + ids["test"] + ids["aux"]
    assert sorted(everything) == list(range(numbered_source))
    assert len(ids["test"]) == round(0.25 * numbered_source)
    labels = torch.tensor([i % 7 if i % 3 else 0 for i in range(numbered_source)])
    class_sizes = torch.bincount(labels)
    test_sizes = torch.bincount(labels[ids["test"]], minlength=7)
    assert torch.all((test_sizes - 0.25 * class_sizes).abs() <= 1)


def test_attacker_half_splits_the_test_set_in_two_stratified_disjoint_halves():
    test = load_splits(DataConfig(aux_fraction=0)).test
    ids = torch.arange(len(test)).float()[:, None, None, None]  # each image is its own index
    test = LabeledImages(images=ids, labels=test.labels)
    thief, kept = attacker_half(test, seed=0)
    thief_ids, kept_ids = thief.images.flatten().long(), kept.images.flatten().long()
    assert sorted(thief_ids.tolist() + kept_ids.tolist()) == list(range(len(test)))
    assert len(thief) == len(test) // 2
    sizes = torch.bincount(test.labels, minlength=10)
    assert torch.all((torch.bincount(thief.labels, minlength=10) - sizes / 2).abs() <= 1)
    assert torch.equal(attacker_half(test, seed=0)[0].images, thief.images)
    with pytest.raises(DataError, match="cannot be halved"):
        attacker_half(test.subset(torch.tensor([0])), seed=0)


def test_splits_are_deterministic_per_seed(numbered_source):
    config = DataConfig(dataset="numbered", seed=3)
    assert split_ids(config, numbered_source) == split_ids(config, numbered_source)
    other = split_ids(DataConfig(dataset="numbered", seed=4), numbered_source)
    assert other["test"] != split_ids(config, numbered_source)["test"]


def test_max_images_caps_the_pool_before_splitting(numbered_source):
    ids = split_ids(DataConfig(dataset="numbered", max_images=50), numbered_source)
    assert sum(len(part) for part in ids.values()) == 50
    assert len(set(ids["train"]) | set(ids["test"]) | set(ids["aux"])) == 50


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_source_reads_plain_and_gzipped_files(tmp_path, suffix):
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / f"tiny-images-idx3-ubyte{suffix}", pixels)
    write_idx(tmp_path / f"tiny-labels-idx1-ubyte{suffix}", np.array([0, 2, 1, 2, 0]))
    pool, info = DATASETS["idx"](data_root=str(tmp_path))
    assert pool.images.shape == (5, 1, 4, 3) and info.class_names == ("0", "1", "2")
    assert torch.allclose(pool.images[:, 0], torch.from_numpy(pixels / 255).float())
    assert pool.labels.tolist() == [0, 2, 1, 2, 0]


def test_idx_source_rejects_a_truncated_file(tmp_path):
    write_idx(tmp_path / "images-idx3-ubyte", np.zeros((5, 4, 3)))
    write_idx(tmp_path / "labels-idx1-ubyte", np.zeros(5))
    images = tmp_path / "images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-1])
    with pytest.raises(DataError, match="truncated"):
        DATASETS["idx"](data_root=str(tmp_path))


def test_idx_source_rejects_a_label_count_mismatch(tmp_path):
    write_idx(tmp_path / "images-idx3-ubyte", np.zeros((5, 4, 3)))
    write_idx(tmp_path / "labels-idx1-ubyte", np.zeros(4))
    with pytest.raises(DataError, match="5 images but 4 labels"):
        DATASETS["idx"](data_root=str(tmp_path))


def test_idx_source_rejects_a_bad_magic_number(tmp_path):
    write_idx(tmp_path / "images-idx3-ubyte", np.zeros((5, 4, 3)))
    (tmp_path / "labels-idx1-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="magic"):
        DATASETS["idx"](data_root=str(tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_T10K.is_dir(), reason=f"benchmark data not found at {MNIST_T10K}")
def test_idx_source_reads_the_real_mnist_test_set():
    pool, info = DATASETS["idx"](data_root=str(MNIST_T10K))
    assert pool.images.shape == (10_000, 1, 28, 28) and info.num_classes == 10
    assert torch.bincount(pool.labels).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError, match="digits"):
        load_splits(DataConfig(dataset="imagenet"))


@pytest.mark.parametrize("dataset", ["idx", "imagefolder", "mnist", "fashionmnist", "cifar10"])
def test_sources_outside_the_package_need_an_existing_data_root(dataset, tmp_path):
    with pytest.raises(DataError, match="data-root"):
        load_splits(DataConfig(dataset=dataset))
    with pytest.raises(DataError, match="not an existing folder"):
        load_splits(DataConfig(dataset=dataset, data_root=str(tmp_path / "missing")))


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ("mnist", "MNIST/raw"),
        ("fashionmnist", "FashionMNIST/raw"),
        ("cifar10", "cifar-10-batches-py"),
    ],
)
def test_torchvision_sources_say_where_files_are_expected(dataset, expected, tmp_path):
    with pytest.raises(DataError, match=expected):
        load_splits(DataConfig(dataset=dataset, data_root=str(tmp_path)))


@pytest.mark.parametrize(
    ("test_fraction", "aux_fraction"),
    [(0.0, 0.1), (1.0, 0.0), (0.2, -0.1), (0.6, 0.4), (float("nan"), 0.1)],
)
def test_bad_fractions_are_rejected(test_fraction, aux_fraction):
    with pytest.raises(DataError, match="fraction"):
        load_splits(DataConfig(test_fraction=test_fraction, aux_fraction=aux_fraction))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_images=st.integers(1, 300),
    data=st.data(),
    scheme=st.sampled_from(sorted(PARTITIONERS)),
)
def test_shards_are_disjoint_sorted_nonempty_and_cover_all_images(seed, num_images, data, scheme):
    labels = torch.from_numpy(np.random.default_rng(seed).integers(0, 10, num_images))
    num_owners = data.draw(st.integers(1, min(num_images, 12)), label="num_owners")
    shards = partition_shards(labels=labels, num_owners=num_owners, scheme=scheme, seed=seed)
    assert len(shards) == num_owners
    assert all(
        s.dtype == torch.int64 and len(s) > 0 and torch.equal(s, s.sort().values) for s in shards
    )
    assert torch.equal(torch.cat(shards).sort().values, torch.arange(num_images))
    if scheme == "iid":
        sizes = [len(s) for s in shards]
        assert max(sizes) - min(sizes) <= 1


def label_distance(shards: list[torch.Tensor], labels: torch.Tensor) -> float:
    """Mean total-variation distance between each owner's label mix and the overall one."""
    overall = torch.bincount(labels, minlength=10) / len(labels)
    return float(
        np.mean(
            [
                (torch.bincount(labels[s], minlength=10) / len(s) - overall).abs().sum() / 2
                for s in shards
            ]
        )
    )


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_owners=st.integers(2, 10))
def test_label_skew_shards_are_more_skewed_than_iid(seed, num_owners):
    labels = torch.arange(1797) % 10
    skewed = partition_shards(labels=labels, num_owners=num_owners, scheme="label-skew", seed=seed)
    iid = partition_shards(labels=labels, num_owners=num_owners, scheme="iid", seed=seed)
    assert label_distance(skewed, labels) > label_distance(iid, labels) + 0.1


def test_partition_shards_are_deterministic_per_seed():
    labels = torch.arange(500) % 10
    first = partition_shards(labels=labels, num_owners=4, scheme="label-skew", seed=1)
    again = partition_shards(labels=labels, num_owners=4, scheme="label-skew", seed=1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize("num_owners", [0, -1, 11])
def test_bad_owner_counts_are_rejected(num_owners):
    with pytest.raises(DataError, match="num_owners"):
        partition_shards(labels=torch.arange(10), num_owners=num_owners)


def test_unknown_scheme_lists_the_known_ones():
    with pytest.raises(DataError, match="label-skew"):
        partition_shards(labels=torch.arange(10), num_owners=2, scheme="by-hospital")


# -- each party's own folder ---------------------------------------------------------


def test_image_folder_reads_classes_in_order_and_images_by_file_name(tmp_path):
    digits = load_splits(DataConfig(max_images=60)).train
    write_image_folder(tmp_path, digits, classes=[str(c) for c in range(10)])
    (tmp_path / "unused-notes").mkdir()  # a class folder without images still counts
    pool, info = DATASETS["imagefolder"](data_root=str(tmp_path))
    assert pool.labels.tolist() == digits.labels.tolist()  # numbered files keep their order
    assert torch.allclose(pool.images, digits.images, atol=0.5 / 255)
    assert info.image_shape == (1, 8, 8) and info.normalisation == "pixels / 255"
    assert info.class_names == (*[str(c) for c in range(10)], "unused-notes")


def test_image_folder_reads_rgb_and_16_bit_images(tmp_path):
    from PIL import Image

    (tmp_path / "rgb" / "cat").mkdir(parents=True)
    Image.new("RGB", (5, 4), (255, 0, 51)).save(tmp_path / "rgb" / "cat" / "a.png")
    pool, info = DATASETS["imagefolder"](data_root=str(tmp_path / "rgb"))
    assert info.image_shape == (3, 4, 5) and pool.images[0, :, 0, 0].tolist() == pytest.approx(
        [1, 0, 0.2]
    )
    (tmp_path / "deep" / "cat").mkdir(parents=True)
    Image.fromarray(np.full((4, 5), 65535, dtype=np.uint16)).save(
        tmp_path / "deep" / "cat" / "a.png"
    )
    pool, info = DATASETS["imagefolder"](data_root=str(tmp_path / "deep"))
    assert info.normalisation == "pixels / 65535" and pool.images.max() == 1


def test_image_folder_refuses_mixed_sizes_naming_the_file(tmp_path):
    from PIL import Image

    (tmp_path / "dog").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "dog" / "a.png")
    Image.new("L", (9, 8)).save(tmp_path / "dog" / "b.png")
    with pytest.raises(DataError, match="b.png"):
        DATASETS["imagefolder"](data_root=str(tmp_path))
    with pytest.raises(DataError, match="ImageFolder layout"):
        DATASETS["imagefolder"](data_root=str(tmp_path / "dog"))


def test_a_party_folder_is_read_in_its_own_format(tmp_path):
    (tmp_path / "idx").mkdir()
    write_idx(tmp_path / "idx" / "mine-images-idx3-ubyte", np.zeros((3, 4, 4)))
    write_idx(tmp_path / "idx" / "mine-labels-idx1-ubyte", np.array([0, 1, 1]))
    assert folder_format(tmp_path / "idx", dataset="digits") == "idx"
    assert folder_format(tmp_path, dataset="mnist") == "mnist"
    assert folder_format(tmp_path, dataset="imagefolder") == "imagefolder"
    assert len(load_own_folder(tmp_path / "idx", dataset="digits").images) == 3
    with pytest.raises(DataError, match="not an existing folder"):
        load_own_folder(tmp_path / "missing", dataset="digits")


def test_simulated_parties_hold_the_test_set_or_their_own_shard():
    config = DataConfig(max_images=200)
    splits = load_splits(config)
    owner = simulated_party_data(config, rank=0, num_owners=2, scheme="iid", seed=0)
    shards = [
        simulated_party_data(config, rank=rank, num_owners=2, scheme="iid", seed=0)
        for rank in (1, 2)
    ]
    assert torch.equal(owner.images.images, splits.test.images)
    assert sum(len(shard.images) for shard in shards) == len(splits.train)
    assert all(shard.info == splits.info for shard in shards)
