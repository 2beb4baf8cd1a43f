"""The IDX reader, the data folder, the paired task and batching."""

from __future__ import annotations

import pytest
import torch

from mnist_addition.core import data as D
from mnist_addition.core.data import DataError
from mnist_addition.core.synthetic import synthetic_digits, write_idx, write_mnist

from .helpers import REAL_MNIST


def test_idx_round_trip(tmp_path):
    images, _ = synthetic_digits(7, seed=0)
    write_idx(tmp_path / "x", images)
    assert torch.equal(D.read_idx(tmp_path / "x"), images)


def test_truncated_idx_names_the_file(tmp_path):
    images, _ = synthetic_digits(7, seed=0)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte .*truncated"):
        D.read_idx(path)


def test_wrong_magic_names_the_file(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(20))  # a gzip header: the classic mistake
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte is not an MNIST IDX file \(bad magic number 1f8b0800\)"):
        D.read_idx(path)


def test_load_mnist_reads_torchvision_layout(mnist_dir):
    mnist = D.load_mnist(mnist_dir, download=False)
    assert mnist.train_images.shape == (600, 28, 28) and mnist.test_images.shape == (200, 28, 28)
    assert mnist.train_labels.dtype == torch.int64 and set(mnist.train_labels.tolist()) == set(range(10))


def test_load_mnist_accepts_the_raw_folder_itself(mnist_dir):
    assert len(D.load_mnist(mnist_dir / "MNIST" / "raw", download=False).test_labels) == 200


def test_mismatched_label_file_is_reported(tmp_path):
    root = write_mnist(tmp_path, n_train=30, n_test=20)
    write_idx(root / "MNIST/raw" / D.FILES["test_labels"], torch.zeros(19, dtype=torch.uint8))
    with pytest.raises(DataError, match="19 labels for 20 images"):
        D.load_mnist(root, download=False)


def test_missing_data_without_download_says_where_and_how(tmp_path):
    with pytest.raises(DataError) as err:
        D.load_mnist(tmp_path / "empty", download=False)
    message = str(err.value)
    assert str(tmp_path / "empty") in message and "--data-dir" in message and D.ENV_DATA_DIR in message
    assert "\n" not in message


def test_failed_download_is_one_line(tmp_path, monkeypatch):
    def offline(root):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(D, "download_mnist", offline)
    with pytest.raises(DataError, match=r"download failed: .*name resolution.*--data-dir"):
        D.load_mnist(tmp_path, download=True)


def test_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv(D.ENV_DATA_DIR, str(tmp_path / "env"))
    assert D.resolve_data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert D.resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv(D.ENV_DATA_DIR)
    assert D.resolve_data_dir(None) == D.Path(D.DEFAULT_DATA_DIR).expanduser()


def test_split_sizes_and_fixed_numbers(mnist_dir):
    mnist = D.load_mnist(mnist_dir, download=False)
    a, b = D.make_splits(mnist, val_size=100), D.make_splits(mnist, val_size=100)
    assert (len(a.train), len(a.val), len(a.test)) == (500, 100, 200)
    # val/test numbers are the same on every call (every model sees the same pairs) and cover 0..9
    assert torch.equal(a.val.numbers, b.val.numbers) and torch.equal(a.test.numbers, b.test.numbers)
    assert set(a.test.numbers.tolist()) == set(range(10))
    assert a.train.numbers is None  # drawn per epoch
    assert a.train.images.shape[1:] == (1, 28, 28) and a.train.images.dtype == torch.float32
    # the split is a partition of the training file: every image in exactly one of train and val
    index = {D.normalize(img[None])[0].numpy().tobytes(): i for i, img in enumerate(mnist.train_images)}
    assert len(index) == 600  # the synthetic images are all distinct
    train_ids = [index[img.numpy().tobytes()] for img in a.train.images]
    val_ids = [index[img.numpy().tobytes()] for img in a.val.images]
    assert len(set(train_ids)) == 500 and len(set(val_ids)) == 100
    assert set(train_ids) | set(val_ids) == set(range(600)) and not set(train_ids) & set(val_ids)
    assert [int(mnist.train_labels[i]) for i in val_ids] == a.val.digits.tolist()  # labels travel with images


def test_val_size_0_trains_on_every_training_image(mnist_dir):
    """The refit after choosing on validation: an empty validation split, the whole training file trains."""
    mnist = D.load_mnist(mnist_dir, download=False)
    refit = D.make_splits(mnist, val_size=0)
    assert (len(refit.train), len(refit.val), len(refit.test)) == (600, 0, 200)
    assert sorted(refit.train.digits.tolist()) == sorted(mnist.train_labels.tolist())
    assert torch.equal(refit.test.numbers, D.make_splits(mnist, val_size=100).test.numbers)  # the same test pairs


def test_train_numbers_are_seeded_per_epoch():
    assert torch.equal(D.train_numbers(1000, seed=3, epoch=1), D.train_numbers(1000, seed=3, epoch=1))
    assert not torch.equal(D.train_numbers(1000, seed=3, epoch=1), D.train_numbers(1000, seed=3, epoch=2))
    assert not torch.equal(D.train_numbers(1000, seed=3, epoch=1), D.train_numbers(1000, seed=4, epoch=1))


def _split(n=64):
    images, labels = synthetic_digits(n, seed=5)
    return D.Split(D.normalize(images), labels.long(), None)


def test_train_batches_pair_sums_and_cover_the_epoch():
    split = _split(64)
    batches = list(D.train_batches(split, batch_size=16, seed=0, epoch=1))
    assert len(batches) == 4
    for images, numbers, digits, sums in batches:
        assert images.shape == (16, 1, 28, 28)
        assert torch.equal(sums, digits + numbers) and numbers.min() >= 0 and numbers.max() <= 9
    seen = torch.cat([b[0] for b in batches])
    assert torch.allclose(seen.sum(0), split.images.sum(0), atol=1e-3)  # a permutation of the whole split


def test_train_batches_shard_without_overlap():
    split = _split(64)
    whole = list(D.train_batches(split, 16, seed=0, epoch=2, shift=1))
    shards = [list(D.train_batches(split, 16, seed=0, epoch=2, shift=1, rank=r, world=2)) for r in range(2)]
    for step, (images, numbers, digits, sums) in enumerate(whole):
        joined = torch.cat([shards[0][step][0], shards[1][step][0]])
        assert shards[0][step][0].shape[0] == 8
        assert torch.equal(joined, images) and torch.equal(torch.cat([shards[0][step][1], shards[1][step][1]]), numbers)


def test_eval_batches_shard_each_sample_once():
    ids = torch.arange(50)
    split = D.Split(ids.float().view(50, 1, 1, 1).expand(50, 1, 28, 28), ids % 10, D.fixed_numbers(50, 1))
    shards = [[int(img[0, 0, 0]) for b in D.eval_batches(split, 7, rank=r, world=3) for img in b[0]] for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(50))  # each sample exactly once
    assert [i for shard in shards for i in shard] == list(range(50))  # contiguous shards, in order
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_random_shift_moves_content_within_bounds():
    images = torch.full((4, 1, 28, 28), -0.42)
    images[:, :, 14, 14] = 3.0  # one bright pixel
    offsets = torch.tensor([[0, 4, 2, 1], [4, 0, 2, 3]])  # dy + 2, dx + 2
    moved = D.random_shift(images, offsets, 2)
    assert moved.shape == images.shape
    for i, img in enumerate(moved):
        (y, x), = torch.nonzero(img[0] > 1).tolist()
        # content moves opposite to the crop offset: crop row r shows source row r + dy
        assert (y, x) == (14 - (offsets[0, i] - 2), 14 - (offsets[1, i] - 2))
    assert torch.all(moved[moved < 1] == -0.42)  # the border fills with background, not zeros
    assert torch.equal(D.random_shift(images, offsets, 0), images)


def test_resuming_mid_epoch_yields_the_same_remaining_batches():
    split = _split(64)
    whole = list(D.train_batches(split, 16, seed=0, epoch=3, shift=2))
    rest = list(D.train_batches(split, 16, seed=0, epoch=3, shift=2, start_step=2))
    assert len(rest) == 2
    for a, b in zip(whole[2:], rest):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_random_warp_rotates_and_scales_about_the_centre():
    image = torch.full((1, 1, 28, 28), -0.42)
    image[0, 0, 4:10, 13:15] = 3.0  # a bar above the centre
    quarter = D.random_warp(image, torch.tensor([[1.0], [0.0]]), 90.0, 0.0)  # +90 degrees, no scaling
    assert torch.allclose(quarter, torch.rot90(image, -1, dims=(2, 3)), atol=1e-5)  # clockwise on screen: exact
    bigger = D.random_warp(image, torch.tensor([[0.0], [1.0]]), 0.0, 0.5)  # 1.5x about the centre
    rows = torch.nonzero(bigger[0, 0].amax(1) > 0).flatten()
    assert rows.min() < 4 and rows.max() < 14 - 1  # the bar grows away from the centre, and stays above it
    assert torch.allclose(bigger[0, 0, :, 0], torch.full((28,), -0.42))  # the background fills in, not zeros
    assert torch.equal(D.random_warp(image, torch.tensor([[0.7], [0.3]]), 0.0, 0.0), image)  # off


def test_elastic_field_displaces_by_its_pixels_and_zero_displaces_nothing():
    image = torch.full((1, 1, 28, 28), -0.42)
    image[0, 0, 6:22, 10:16] = 3.0
    right = torch.zeros(1, 2, D.ELASTIC_GRID, D.ELASTIC_GRID)
    right[:, 0] = 1.0  # every control point reads 2 pixels to the right: the content moves 2 pixels left
    moved = D.random_warp(image, torch.zeros(2, 1), 0.0, 0.0, right, 2.0)
    assert torch.allclose(moved[..., :-2], image[..., 2:], atol=1e-4)
    assert torch.allclose(moved[..., -2:], torch.full((1, 1, 28, 2), -0.42), atol=1e-4)  # background fills in
    still = D.random_warp(image, torch.zeros(2, 1), 0.0, 0.0, torch.zeros_like(right), 2.0)
    assert torch.allclose(still, image, atol=1e-5)
    field = torch.rand(1, 2, D.ELASTIC_GRID, D.ELASTIC_GRID) * 2 - 1
    bent = D.random_warp(image, torch.zeros(2, 1), 0.0, 0.0, field, 3.0)
    assert not torch.allclose(bent, image, atol=1e-2)  # a random field bends the bar
    assert torch.equal(D.random_warp(image, torch.zeros(2, 1), 0.0, 0.0, field, 0.0), image)  # off


def test_elastic_distortions_are_seeded_sharded_and_resume_mid_epoch():
    split = _split(64)
    plain = list(D.train_batches(split, 16, seed=0, epoch=3, shift=1))
    whole = list(D.train_batches(split, 16, seed=0, epoch=3, shift=1, elastic=2.0))
    again = list(D.train_batches(split, 16, seed=0, epoch=3, shift=1, elastic=2.0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole, again))
    assert not torch.equal(whole[0][0], plain[0][0])
    assert all(torch.equal(a[k], b[k]) for a, b in zip(whole, plain) for k in (1, 2, 3))
    other = list(D.train_batches(split, 16, seed=0, epoch=4, shift=1, elastic=2.0))
    assert not torch.equal(torch.cat([b[0] for b in other]).sum(0), torch.cat([b[0] for b in whole]).sum(0))
    # on top of rotations it bends the rotated images again; resuming and sharding keep both
    both = list(D.train_batches(split, 16, seed=0, epoch=3, shift=1, rotate=12.0, elastic=2.0))
    rotated = list(D.train_batches(split, 16, seed=0, epoch=3, shift=1, rotate=12.0))
    assert not torch.equal(both[0][0], rotated[0][0]) and not torch.equal(both[0][0], whole[0][0])
    rest = list(D.train_batches(split, 16, seed=0, epoch=3, shift=1, rotate=12.0, elastic=2.0, start_step=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(both[2:], rest))
    shards = [list(D.train_batches(split, 16, seed=0, epoch=3, shift=1, rotate=12.0, elastic=2.0, rank=r, world=2))
              for r in range(2)]
    assert all(torch.equal(torch.cat([shards[0][i][0], shards[1][i][0]]), both[i][0]) for i in range(len(both)))


def test_rotations_and_scalings_are_seeded_sharded_and_resume_mid_epoch():
    split = _split(64)
    plain = list(D.train_batches(split, 16, seed=0, epoch=3, shift=1))
    whole = list(D.train_batches(split, 16, seed=0, epoch=3, shift=1, rotate=12.0, scale=0.1))
    again = list(D.train_batches(split, 16, seed=0, epoch=3, shift=1, rotate=12.0, scale=0.1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole, again))  # the same (seed, epoch): the same images
    assert not torch.equal(whole[0][0], plain[0][0])  # they are warped
    assert all(torch.equal(a[k], b[k]) for a, b in zip(whole, plain) for k in (1, 2, 3))  # order and numbers kept
    other = list(D.train_batches(split, 16, seed=0, epoch=4, shift=1, rotate=12.0, scale=0.1))
    assert not torch.equal(torch.cat([b[0] for b in other]).sum(0), torch.cat([b[0] for b in whole]).sum(0))
    rest = list(D.train_batches(split, 16, seed=0, epoch=3, shift=1, rotate=12.0, scale=0.1, start_step=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(whole[2:], rest))
    shards = [list(D.train_batches(split, 16, seed=0, epoch=3, shift=1, rotate=12.0, scale=0.1, rank=r, world=2))
              for r in range(2)]
    assert all(torch.equal(torch.cat([shards[0][i][0], shards[1][i][0]]), whole[i][0]) for i in range(len(whole)))


@pytest.mark.skipif(not (REAL_MNIST / "MNIST" / "raw").is_dir(), reason="real MNIST not at ../shared/mnist")
def test_real_mnist_files_read():
    mnist = D.load_mnist(REAL_MNIST, download=False)
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (10000, 28, 28)
    splits = D.make_splits(mnist)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55000, 5000, 10000)
