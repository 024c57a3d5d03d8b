import pickle

import numpy as np
import pytest
import torch

from hessnb.reference import data


def test_digits_is_standardised_and_shaped():
    ds = data.digits()
    x, y = ds.tensors
    assert x.shape == (1797, 1, 8, 8) and y.shape == (1797,)
    assert abs(float(x.mean())) < 1e-5 and abs(float(x.std()) - 1) < 1e-4
    assert set(y.tolist()) == set(range(10))
    flat = data.digits(images=False, size=100).tensors[0]
    assert flat.shape == (100, 64)
    padded = data.digits(pad_to=32, channels=3).tensors[0]
    assert padded.shape == (1797, 3, 32, 32)
    with pytest.raises(ValueError, match="size"):
        data.digits(size=0)


def test_fixed_batches_keep_order_and_uneven_last_batch():
    ds = data.digits(images=False, size=100)
    batches = data.fixed_batches(ds, 32)
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), ds.tensors[0])
    again = data.fixed_batches(ds, 32)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))


def write_fake_cifar(root, per_batch=20, seed=0):
    """A tiny CIFAR-10 in its on-disk format (cifar-10-batches-py, pickled dicts)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "labels": [int(v) for v in np.arange(per_batch) % 10],
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(batch, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, handle)
    return names


def test_cifar10_reads_the_on_disk_format(tmp_path):
    write_fake_cifar(tmp_path)
    train = data.cifar10(tmp_path, download=False, verify=False)
    assert len(train) == 100
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
    subset = data.cifar10(tmp_path, download=False, verify=False, subset=30)
    assert len(subset) == 30
    assert sorted(int(subset[i][1]) for i in range(30)) == sorted(list(range(10)) * 3)
    test = data.cifar10(tmp_path, train=False, download=False, verify=False)
    assert len(test) == 20


def test_cifar10_missing_without_network_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="digits"):
        data.cifar10(tmp_path / "nothing", download=False)


def test_load_spec():
    assert len(data.load("digits")) == 1797
    with pytest.raises(ValueError, match="unknown data"):
        data.load("mnist")
