"""Dataset readers on tiny files written here in the real formats; batching and augmentation."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from nets.datasets import (
    BatchIterator,
    DatasetChecksumError,
    DatasetDownloadError,
    DatasetFormatError,
    DatasetNotFoundError,
    ImageDataset,
    RandomCropFlip,
    load_cifar10,
    load_dataset,
    load_mnist,
    read_idx,
)
from nets.datasets import cifar10 as cifar10_module
from nets.datasets import mnist as mnist_module

# ------------------------------------------------------------------------------------ file writers


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX encoding written independently of the reader: 0x0000, 0x08 (ubyte), ndim, >i4 dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(directory: Path, n_train: int = 12, n_test: int = 6, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    md5 = {}
    for name, array in arrays.items():
        blob = gzip.compress(idx_bytes(array), mtime=0)
        (directory / name).write_bytes(blob)
        md5[name] = hashlib.md5(blob).hexdigest()
    return {"arrays": arrays, "md5": md5}


def cifar_batch_bytes(data: np.ndarray, labels: list[int], *, protocol: int = 2, tag: bytes = b"x") -> bytes:
    """A CIFAR-10 python batch: pickled dict with byte-string keys, as the official files."""
    batch = {
        b"batch_label": b"tiny batch " + tag,
        b"labels": labels,
        b"data": data,
        b"filenames": [tag + b"_%05d.png" % i for i in range(len(labels))],
    }
    return pickle.dumps(batch, protocol=protocol)


def content_sha(data: np.ndarray, labels) -> str:
    return hashlib.sha256(
        data.astype(np.uint8).tobytes() + np.asarray(labels).astype(np.uint8).tobytes()
    ).hexdigest()


def make_cifar(n_per_batch: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    batches = {}
    for name in (*cifar10_module.CIFAR10_BATCHES["train"], "test_batch"):
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        batches[name] = (data, labels)
    return {"batches": batches, "sha": {name: content_sha(d, lab) for name, (d, lab) in batches.items()}}


def write_cifar_dir(root: Path, cifar: dict) -> Path:
    batch_dir = root / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True, exist_ok=True)
    for name, (data, labels) in cifar["batches"].items():
        (batch_dir / name).write_bytes(cifar_batch_bytes(data, labels))
    return batch_dir


def write_cifar_tarball(path: Path, cifar: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, (data, labels) in cifar["batches"].items():
            blob = cifar_batch_bytes(data, labels)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
    monkeypatch.delenv("NR_DATA_DIR", raising=False)


# ------------------------------------------------------------------------------------------ MNIST


@pytest.mark.parametrize("layout", [".", "MNIST/raw"])
def test_mnist_reads_gzipped_idx_in_both_layouts(tmp_path, layout):
    files = write_mnist(tmp_path / layout)
    for split, (img, lab) in {
        "train": ("train-images", "train-labels"),
        "test": ("t10k-images", "t10k-labels"),
    }.items():
        dataset = load_mnist(split, tmp_path, checksums=files["md5"])
        images = files["arrays"][f"{img}-idx3-ubyte.gz"]
        labels = files["arrays"][f"{lab}-idx1-ubyte.gz"]
        assert dataset.images.dtype == torch.uint8 and dataset.labels.dtype == torch.int64
        assert tuple(dataset.images.shape) == (len(labels), 1, 28, 28)
        assert np.array_equal(dataset.images[:, 0].numpy(), images)
        assert np.array_equal(dataset.labels.numpy(), labels)
        assert dataset.split == split and dataset.name == "mnist" and dataset.num_classes == 10


def test_mnist_data_dir_from_environment_and_module_table(tmp_path, monkeypatch):
    files = write_mnist(tmp_path)
    monkeypatch.setenv("NR_DATA_DIR", str(tmp_path))
    for name, digest in files["md5"].items():
        monkeypatch.setitem(mnist_module.MNIST_MD5, name, digest)
    assert len(load_dataset("mnist", "test")) == 6


def test_official_checksums_reject_tiny_files(tmp_path):
    write_mnist(tmp_path)
    with pytest.raises(DatasetChecksumError, match="t10k-images-idx3-ubyte.gz"):
        load_mnist("test", tmp_path)
    assert len(load_mnist("test", tmp_path, verify=False)) == 6


def test_mnist_missing_file_error_names_expected_files_and_places(tmp_path):
    files = write_mnist(tmp_path / "MNIST" / "raw")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_mnist("test", tmp_path, checksums=files["md5"])
    message = str(info.value)
    assert "t10k-labels-idx1-ubyte.gz" in message and "t10k-images-idx3-ubyte.gz" in message
    assert str(tmp_path / "MNIST" / "raw") in message
    assert isinstance(info.value, FileNotFoundError)


def test_mnist_corrupt_file_is_rejected(tmp_path):
    files = write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(DatasetChecksumError, match="train-images-idx3-ubyte.gz"):
        load_mnist("train", tmp_path, checksums=files["md5"])
    path.write_bytes(gzip.compress(idx_bytes(files["arrays"][path.name])[:-5]))  # truncated payload
    with pytest.raises(DatasetFormatError, match="truncated"):
        load_mnist("train", tmp_path, verify=False)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetFormatError, match="gzip"):
        load_mnist("train", tmp_path, verify=False)


def test_mnist_image_label_count_mismatch(tmp_path):
    files = write_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    with pytest.raises(DatasetFormatError, match="do not match"):
        load_mnist("test", tmp_path, verify=False)
    assert files  # the other split is untouched


def test_read_idx_rejects_bad_headers():
    good = idx_bytes(np.arange(6, dtype=np.uint8).reshape(2, 3))
    assert read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(DatasetFormatError, match="magic"):
        read_idx(b"\x01" + good[1:])
    with pytest.raises(DatasetFormatError, match="unsigned byte"):
        read_idx(good[:2] + b"\x0d" + good[3:])
    with pytest.raises(DatasetFormatError, match="truncated"):
        read_idx(good[:9])


def test_no_data_dir_anywhere_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="NR_DATA_DIR"):
        load_mnist("train")
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_mnist("train", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split"):
        load_mnist("validation", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("imagenet", "train", tmp_path)


def test_mnist_download_is_checked_and_atomic(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    files = write_mnist(mirror)
    monkeypatch.setattr(mnist_module, "MNIST_MIRRORS", ("file:///nonexistent-mirror/", mirror.as_uri() + "/"))
    target = tmp_path / "data"
    dataset = load_mnist("test", target, download=True, checksums=files["md5"], progress=False)
    assert np.array_equal(dataset.labels.numpy(), files["arrays"]["t10k-labels-idx1-ubyte.gz"])
    assert sorted(p.name for p in (target / "MNIST" / "raw").iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    bad = dict(files["md5"], **{"train-labels-idx1-ubyte.gz": "0" * 32})
    with pytest.raises(DatasetDownloadError, match="MD5"):
        load_mnist("train", target, download=True, checksums=bad, progress=False)
    assert not (target / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").exists()
    assert not [p for p in (target / "MNIST" / "raw").iterdir() if p.name.endswith(".part")]
    monkeypatch.setattr(mnist_module, "MNIST_MIRRORS", ("file:///nonexistent-mirror/",))
    with pytest.raises(DatasetDownloadError, match="offline"):
        load_mnist("train", tmp_path / "other", download=True, checksums=files["md5"], progress=False)


# --------------------------------------------------------------------------------------- CIFAR-10


def test_cifar_reads_batches_directory(tmp_path):
    cifar = make_cifar()
    write_cifar_dir(tmp_path, cifar)
    train = load_cifar10("train", tmp_path, checksums=cifar["sha"])
    expected = np.concatenate([cifar["batches"][f"data_batch_{i}"][0] for i in range(1, 6)])
    labels = sum((cifar["batches"][f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert tuple(train.images.shape) == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == labels
    # channel planes: 1024 red values row-major, then green, then blue
    assert np.array_equal(train.images[3, 0].numpy(), expected[3, :1024].reshape(32, 32))
    assert np.array_equal(train.images[3, 2].numpy(), expected[3, 2048:].reshape(32, 32))
    assert train.classes[0] == "airplane" and train.num_classes == 10
    assert len(load_cifar10("test", tmp_path, checksums=cifar["sha"])) == 4


def test_cifar_reads_tarball_without_extracting(tmp_path):
    cifar = make_cifar(seed=1)
    write_cifar_tarball(tmp_path / "cifar-10-python.tar.gz", cifar)
    test = load_cifar10("test", tmp_path, checksums=cifar["sha"])
    data, labels = cifar["batches"]["test_batch"]
    assert np.array_equal(test.images.reshape(4, -1).numpy(), data) and test.labels.tolist() == labels
    assert len(load_cifar10("train", tmp_path, checksums=cifar["sha"])) == 20
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]


def test_cifar_content_checksum_accepts_a_repickled_identical_copy(tmp_path):
    cifar = make_cifar(seed=2)
    batch_dir = write_cifar_dir(tmp_path, cifar)
    data, labels = cifar["batches"]["test_batch"]
    repickled = pickle.dumps(
        {"data": data.copy(), "labels": np.asarray(labels, np.int64), "filenames": ["other"]}, protocol=4
    )
    assert repickled != (batch_dir / "test_batch").read_bytes()
    (batch_dir / "test_batch").write_bytes(repickled)
    assert load_cifar10("test", tmp_path, checksums=cifar["sha"]).labels.tolist() == labels


def test_cifar_changed_pixel_or_label_fails_verification(tmp_path):
    cifar = make_cifar(seed=3)
    batch_dir = write_cifar_dir(tmp_path, cifar)
    data, labels = cifar["batches"]["data_batch_4"]
    changed = data.copy()
    changed[1, 7] ^= 1
    (batch_dir / "data_batch_4").write_bytes(cifar_batch_bytes(changed, labels))
    with pytest.raises(DatasetChecksumError, match="data_batch_4"):
        load_cifar10("train", tmp_path, checksums=cifar["sha"])
    (batch_dir / "data_batch_4").write_bytes(cifar_batch_bytes(data, [(labels[0] + 1) % 10, *labels[1:]]))
    with pytest.raises(DatasetChecksumError, match="content SHA-256"):
        load_cifar10("train", tmp_path, checksums=cifar["sha"])
    with pytest.raises(DatasetChecksumError):  # the official constants reject tiny files
        load_cifar10("test", tmp_path)


def test_cifar_corrupt_or_foreign_files(tmp_path):
    cifar = make_cifar(seed=4)
    batch_dir = write_cifar_dir(tmp_path, cifar)
    blob = (batch_dir / "test_batch").read_bytes()
    (batch_dir / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetFormatError, match="test_batch"):
        load_cifar10("test", tmp_path, verify=False)
    (batch_dir / "test_batch").write_bytes(pickle.dumps({b"data": OrderedDict(), b"labels": []}, protocol=2))
    with pytest.raises(DatasetFormatError, match="refusing global collections.OrderedDict"):
        load_cifar10("test", tmp_path, verify=False)
    data, labels = cifar["batches"]["test_batch"]
    (batch_dir / "test_batch").write_bytes(cifar_batch_bytes(data[:, :100], labels))
    with pytest.raises(DatasetFormatError, match="3072"):
        load_cifar10("test", tmp_path, verify=False)
    (batch_dir / "test_batch").write_bytes(cifar_batch_bytes(data, [10] * len(labels)))
    with pytest.raises(DatasetFormatError, match="labels outside"):
        load_cifar10("test", tmp_path, verify=False)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "cifar-10-python.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DatasetFormatError, match="tar.gz"):
        load_cifar10("test", tmp_path / "elsewhere", verify=False)


def test_cifar_missing_error_names_batches_and_archive(tmp_path):
    cifar = make_cifar(seed=5)
    batch_dir = write_cifar_dir(tmp_path, cifar)
    (batch_dir / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        load_cifar10("train", tmp_path, checksums=cifar["sha"])
    message = str(info.value)
    for expected in (
        "data_batch_1",
        "data_batch_5",
        "missing: data_batch_3",
        "cifar-10-python.tar.gz",
        str(batch_dir),
    ):
        assert expected in message
    assert len(load_cifar10("test", tmp_path, checksums=cifar["sha"])) == 4


def test_cifar_download_checks_archive_md5(tmp_path, monkeypatch):
    cifar = make_cifar(seed=6)
    archive = write_cifar_tarball(tmp_path / "mirror" / "cifar-10-python.tar.gz", cifar)
    monkeypatch.setattr(cifar10_module, "CIFAR10_URLS", (archive.as_uri(),))
    monkeypatch.setattr(cifar10_module, "CIFAR10_ARCHIVE_MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    dataset = load_cifar10("test", tmp_path / "data", download=True, checksums=cifar["sha"], progress=False)
    assert dataset.labels.tolist() == cifar["batches"]["test_batch"][1]
    assert (tmp_path / "data" / "cifar-10-python.tar.gz").read_bytes() == archive.read_bytes()
    monkeypatch.setattr(cifar10_module, "CIFAR10_ARCHIVE_MD5", "f" * 32)
    with pytest.raises(DatasetDownloadError, match="MD5"):
        load_cifar10("test", tmp_path / "data2", download=True, checksums=cifar["sha"], progress=False)
    assert not list((tmp_path / "data2").iterdir())


# ---------------------------------------------------------------------------------- batching


def numbered_dataset(n: int, shape=(3, 6, 5), seed: int = 0) -> ImageDataset:
    images = torch.randint(
        0, 256, (n, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )
    return ImageDataset(images, torch.arange(n), name="numbered")


def collect(iterator) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*list(iterator))
    return torch.cat(xs), torch.cat(ys)


def test_batches_cover_each_sample_once_as_floats_in_unit_interval():
    dataset = numbered_dataset(23)
    iterator = BatchIterator(dataset, 5, shuffle=True, seed=3)
    sizes = [y.numel() for _, y in iterator]
    assert sizes == [5, 5, 5, 5, 3] and len(iterator) == 5
    x, y = collect(iterator)
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (23, 3, 6, 5)
    assert sorted(y.tolist()) == list(range(23)) and y.tolist() != list(range(23))
    assert torch.equal(x, dataset.images[y].float() / 255)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert [b[1].numel() for b in BatchIterator(dataset, 5, drop_last=True)] == [5] * 4
    assert collect(BatchIterator(dataset, 7))[1].tolist() == list(range(23))


def test_batches_are_seeded_and_the_generator_state_replays_epochs():
    dataset = numbered_dataset(17)
    augment = RandomCropFlip(padding=2)
    first = BatchIterator(dataset, 4, shuffle=True, augment=augment, seed=11)
    second = BatchIterator(dataset, 4, shuffle=True, augment=augment, seed=11)
    epoch1 = collect(first)
    assert all(torch.equal(a, b) for a, b in zip(epoch1, collect(second)))
    saved = first.state_dict()
    epoch2 = collect(first)
    assert not torch.equal(epoch1[1], epoch2[1])
    replay = BatchIterator(dataset, 4, shuffle=True, augment=augment, seed=999)
    replay.load_state_dict(saved)
    assert all(torch.equal(a, b) for a, b in zip(epoch2, collect(replay)))
    other = collect(BatchIterator(dataset, 4, shuffle=True, augment=augment, seed=12))
    assert not torch.equal(epoch1[1], other[1])


@pytest.mark.parametrize("n", [24, 7])
def test_sharded_batches_reassemble_the_global_batches(n):
    dataset = numbered_dataset(n)
    world, per_rank = 3, 2
    augment = RandomCropFlip(padding=3)
    single = list(BatchIterator(dataset, per_rank * world, shuffle=True, augment=augment, seed=5))
    ranks = [
        list(
            BatchIterator(dataset, per_rank, shuffle=True, augment=augment, seed=5, rank=r, world_size=world)
        )
        for r in range(world)
    ]
    assert len({len(batches) for batches in ranks}) == 1
    if n % (per_rank * world) == 0:  # exact equivalence with the single-process global batches
        for k, (x, y) in enumerate(single):
            parts = [ranks[r][k] for r in range(world)]
            assert sorted(torch.cat([p[1] for p in parts]).tolist()) == sorted(y.tolist())
            for rank_x, rank_y in parts:
                for i, label in enumerate(rank_y.tolist()):
                    assert torch.equal(rank_x[i], x[(y == label).nonzero()[0, 0]])
    else:  # DistributedSampler padding: every sample seen, ranks equal length, ceil(n / world) each
        seen = torch.cat([torch.cat([b[1] for b in batches]) for batches in ranks])
        assert set(seen.tolist()) == set(range(n)) and seen.numel() == world * -(-n // world)


def test_batch_iterator_rejects_bad_arguments():
    dataset = numbered_dataset(4)
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(dataset, 0)
    with pytest.raises(ValueError, match="rank"):
        BatchIterator(dataset, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="empty"):
        BatchIterator(dataset.subset(0), 2)
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 1, 3, 3), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        ImageDataset(torch.zeros(2, 1, 3, 3, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


# ------------------------------------------------------------------------------------ augmentation


def reference_crop_flip(image: np.ndarray, dy: int, dx: int, flip: bool, padding: int) -> np.ndarray:
    channels, height, width = image.shape
    padded = np.zeros((channels, height + 2 * padding, width + 2 * padding), dtype=image.dtype)
    padded[:, padding : padding + height, padding : padding + width] = image
    crop = padded[:, dy : dy + height, dx : dx + width]
    return crop[:, :, ::-1] if flip else crop


@given(
    height=st.integers(1, 7),
    width=st.integers(1, 7),
    padding=st.integers(0, 4),
    batch=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_crop_flip_matches_per_sample_reference(height, width, padding, batch, seed):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 2, height, width), dtype=torch.uint8, generator=generator)
    augment = RandomCropFlip(padding=padding)
    params = augment.sample(batch, generator)
    assert params["offsets"].min() >= 0 and params["offsets"].max() <= 2 * padding
    out = augment.apply(images, params).numpy()
    for i in range(batch):
        dy, dx = params["offsets"][i].tolist()
        expected = reference_crop_flip(images[i].numpy(), dy, dx, bool(params["flips"][i]), padding)
        assert np.array_equal(out[i], expected)


def test_random_crop_flip_is_per_sample_and_seeded():
    images = torch.full((400, 1, 8, 8), 255, dtype=torch.uint8)
    images[:, :, :, 0] = 7  # mark the left column to detect flips
    out = RandomCropFlip(padding=4)(images, torch.Generator().manual_seed(0))
    again = RandomCropFlip(padding=4)(images, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    zero_pixels = (out == 0).flatten(1).sum(1)
    # E[zero fraction] = 1 - (1 - E|d - 4| / 8)^2 with d uniform on 0..8, E|d - 4| = 20 / 9
    assert abs(zero_pixels.float().mean() / 64 - (1 - (1 - 20 / 9 / 8) ** 2)) < 0.04
    assert len(set(zero_pixels.tolist())) > 10  # different crops per sample
    params = RandomCropFlip(padding=0).sample(400, torch.Generator().manual_seed(1))
    assert 150 < int(params["flips"].sum()) < 250
    flipped = RandomCropFlip(padding=0).apply(images, params)
    assert torch.equal((flipped[:, 0, 0, -1] == 7), params["flips"])
    identity = RandomCropFlip(padding=0, flip=False)(images, torch.Generator().manual_seed(2))
    assert torch.equal(identity, images)
