"""predict: MNIST-style preprocessing of any image, the command, and its bad inputs."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from mnist_addition.commands.cli import main
from mnist_addition.commands.predict import ImageError, read_image, to_mnist
from mnist_addition.core.data import normalize
from mnist_addition.core.synthetic import synthetic_digits

from .helpers import REAL_MNIST


def _save(array: torch.Tensor, path, mode: str = "L"):
    Image.fromarray(array.to(torch.uint8).numpy()).convert(mode).save(path)
    return path


def test_mnist_style_28x28_is_used_unchanged(tmp_path):
    images, _ = synthetic_digits(1, seed=3)
    path = _save(images[0], tmp_path / "raw.png")
    assert torch.equal(to_mnist(read_image(path)), normalize(images)[0])


def test_dark_ink_on_white_is_inverted(tmp_path):
    images, _ = synthetic_digits(1, seed=3)
    raw, inverted = _save(images[0], tmp_path / "raw.png"), _save(255 - images[0], tmp_path / "inv.png", "RGB")
    assert torch.allclose(to_mnist(read_image(inverted)), to_mnist(read_image(raw)), atol=1e-5)


def test_large_off_centre_drawing_is_cropped_scaled_and_centred(tmp_path):
    canvas = torch.full((200, 300), 255)
    canvas[20:120, 200:250] = 0  # a dark 100x50 bar in the top-right corner
    out = to_mnist(read_image(_save(canvas, tmp_path / "drawn.png")))[0] * 0.3081 + 0.1307  # back to [0, 1]
    rows, cols = torch.nonzero(out > 0.5, as_tuple=True)
    assert rows.max() - rows.min() + 1 == 20 and 9 <= cols.max() - cols.min() + 1 <= 11  # aspect kept
    ys, xs = torch.arange(28.0), torch.arange(28.0)
    com = ((out.sum(1) * ys).sum() / out.sum(), (out.sum(0) * xs).sum() / out.sum())
    assert abs(com[0] - 13.5) <= 1 and abs(com[1] - 13.5) <= 1


def test_transparent_png_is_composited_on_white(tmp_path):
    rgba = torch.zeros(40, 40, 4)
    rgba[10:30, 18:22] = torch.tensor([0, 0, 0, 255])  # opaque black stroke, transparent elsewhere
    Image.fromarray(rgba.to(torch.uint8).numpy(), "RGBA").save(tmp_path / "t.png")
    out = to_mnist(read_image(tmp_path / "t.png"))
    assert out.max() > 2.0 and out[0, 0, 0] < 0  # light stroke on the (normalised) black background


@pytest.fixture(scope="module")
def run_dir(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "run"
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(out), "--width", "8", "--epochs", "3",
                 "--batch-size", "32", "--lr", "0.01", "--val-size", "100", "--mixed-precision", "no"]) == 0
    return out


def test_single_image_json(run_dir, tmp_path, capsys):
    images, _ = synthetic_digits(1, seed=3)
    path = _save(images[0], tmp_path / "a.png")
    assert main(["predict", str(run_dir), str(path), "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["number"] == 4 and 0 <= out["digit"] <= 9 and 0 <= out["sum"] <= 18
    assert abs(sum(out["digit_probs"]) - 1) < 1e-4 and len(out["sum_probs"]) == 19


def test_folder_writes_csv_in_sorted_order(run_dir, tmp_path):
    images, _ = synthetic_digits(3, seed=4)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, img in zip(("b.png", "a.png", "c.bmp"), images):
        _save(img, folder / name)
    (folder / "notes.txt").write_text("not an image, ignored")
    out = tmp_path / "out.csv"
    assert main(["predict", str(run_dir), str(folder), "--numbers", "1,2,3", "--csv", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "file,number,digit,sum,digit_prob,sum_prob"
    assert [line.split(",")[0].rsplit("/", 1)[-1] for line in lines[1:]] == ["a.png", "b.png", "c.bmp"]
    assert [line.split(",")[1] for line in lines[1:]] == ["1", "2", "3"]


def _bad(tmp_path, run_dir, case):
    """Build the inputs for one row of the README's bad-input table; return argv."""
    good = _save(synthetic_digits(1, seed=3)[0][0], tmp_path / "good.png")
    if case == "missing image":
        return [str(run_dir), str(tmp_path / "nope.png"), "3"]
    if case == "folder as image":
        return [str(run_dir), str(tmp_path), "3"]
    if case == "not an image":
        (tmp_path / "text.png").write_text("hello")
        return [str(run_dir), str(tmp_path / "text.png"), "3"]
    if case == "empty file":
        (tmp_path / "empty.png").write_bytes(b"")
        return [str(run_dir), str(tmp_path / "empty.png"), "3"]
    if case == "truncated png":
        (tmp_path / "cut.png").write_bytes(good.read_bytes()[:60])
        return [str(run_dir), str(tmp_path / "cut.png"), "3"]
    if case == "1x1 image":
        return [str(run_dir), str(_save(torch.zeros(1, 1), tmp_path / "dot.png")), "3"]
    if case == "all white":
        return [str(run_dir), str(_save(torch.full((50, 50), 255), tmp_path / "white.png")), "3"]
    if case == "all black":
        return [str(run_dir), str(_save(torch.zeros(28, 28), tmp_path / "black.png")), "3"]
    if case in ("-1", "10", "3.5", "seven"):
        return [str(run_dir), str(good), case]
    if case == "no number":
        return [str(run_dir), str(good)]
    if case == "run without weights":
        half = tmp_path / "half"
        half.mkdir()
        (half / "config.json").write_text((run_dir / "config.json").read_text())
        return [str(half), str(good), "3"]
    if case == "truncated weights":
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "config.json").write_text((run_dir / "config.json").read_text())
        (bad / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes()[:200])
        return [str(bad), str(good), "3"]
    if case == "random-bytes weights":
        bad = tmp_path / "rnd"
        bad.mkdir()
        (bad / "config.json").write_text((run_dir / "config.json").read_text())
        (bad / "model.safetensors").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
        return [str(bad), str(good), "3"]
    if case in ("config does not match weights", "config names another stem", "config names another crop"):
        other = tmp_path / "other"
        other.mkdir()
        config = json.loads((run_dir / "config.json").read_text())
        config["config"].update({"config does not match weights": {"width": 16}, "config names another stem":
                                  {"stem": "stride"}, "config names another crop": {"crop": 2}}[case])
        (other / "config.json").write_text(json.dumps(config))
        (other / "model.safetensors").write_bytes((run_dir / "model.safetensors").read_bytes())
        return [str(other), str(good), "3"]
    if case == "config swaps crop 2 for crop 1":  # the same tensors, names and shapes: only the header differs
        from mnist_addition.core.config import TrainConfig
        from mnist_addition.core.model import build_model
        from mnist_addition.rundir.contents import save_weights

        other = tmp_path / "cropped"
        other.mkdir()
        config = json.loads((run_dir / "config.json").read_text())
        config["config"]["crop"] = 1
        (other / "config.json").write_text(json.dumps(config))
        save_weights(build_model("fast", 8, crop=2), other / "model.safetensors",
                     TrainConfig.from_preset("fast", width=8, crop=2))
        return [str(other), str(good), "3"]
    if case == "csv exists":
        (tmp_path / "out.csv").write_text("keep me\n")
        return [str(run_dir), str(good), "3", "--csv", str(tmp_path / "out.csv")]
    if case == "folder without numbers":
        return [str(run_dir), str(tmp_path)]
    if case == "wrong count of numbers":
        return [str(run_dir), str(tmp_path), "--numbers", "1,2"]  # the folder holds one image
    if case == "csv in a missing folder":
        return [str(run_dir), str(good), "3", "--csv", str(tmp_path / "nope" / "out.csv")]
    if case == "csv onto a device":
        return [str(run_dir), str(good), "3", "--csv", "/dev/null", "--overwrite"]
    if case == "image is a device":
        return [str(run_dir), "/dev/zero", "3"]
    raise AssertionError(case)


BAD = [
    ("missing image", "does not exist"),
    ("folder as image", "is a folder: give --numbers or --random-numbers"),
    ("not an image", "is not an image Pillow can read"),
    ("empty file", "is not an image Pillow can read"),
    ("truncated png", "is damaged or truncated"),
    ("1x1 image", "is only 1x1 pixels"),
    ("all white", "is blank"),
    ("all black", "is blank"),
    ("-1", "NUMBER must be a whole number in 0..9, got '-1'"),
    ("10", "got '10'"),
    ("3.5", "got '3.5'"),
    ("seven", "got 'seven'"),
    ("no number", "missing NUMBER"),
    ("run without weights", "has no model.safetensors"),
    ("truncated weights", "is unreadable"),
    ("random-bytes weights", "is unreadable"),
    ("config does not match weights", "does not match config.json"),
    ("config names another stem", "stem stride, "),  # same shapes, other names: refused, not loaded
    ("config names another crop", "crop 2, depth 4: "),  # the same: a Crop layer in front
    ("config swaps crop 2 for crop 1", "crop 1, depth 4: its header says crop 2)"),
    ("csv exists", "exists: choose another --csv, or pass --overwrite"),
    ("folder without numbers", "pass exactly one of --numbers"),
    ("wrong count of numbers", "--numbers has 2 values for 1 images"),
    ("csv in a missing folder", "/nope does not exist: create it, or choose another --csv"),
    ("csv onto a device", "/dev/null is not a regular file (a folder, device or pipe), so it is never replaced"),
    ("image is a device", "/dev/zero is not a regular file"),
]


@pytest.mark.parametrize("case,match", BAD, ids=[c for c, _ in BAD])
def test_bad_input_is_one_line_exit_2(case, match, run_dir, tmp_path, capsys):
    argv = _bad(tmp_path, run_dir, case)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    try:
        code = main(["predict", *argv])
    except SystemExit as e:  # argparse rejects NUMBER
        code = e.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and "\n" not in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_weight_headers_from_before_the_net_fields_still_load():
    """Files saved before the header held stem, crop and depth (preset and width only) are checked on
    what they hold; a header that is not a JSON object is a mismatch, not a crash."""
    from mnist_addition.core.config import TrainConfig
    from mnist_addition.rundir.contents import header_mismatch

    config = TrainConfig.from_preset("fast", width=8, crop=2)
    for header, problem in (({"preset": "fast", "width": 8}, None), ({"preset": "fast", "width": 16}, "its header says width 16"),
                            ({}, None), ([2], "its header is not a JSON object")):
        assert header_mismatch({"mnist_addition": json.dumps(header)}, config) == problem
    assert header_mismatch({"mnist_addition": "{"}, config) == "its header is not JSON"
    assert header_mismatch({}, config) is None  # a safetensors file from elsewhere: no header


@pytest.mark.slow
@pytest.mark.skipif(not (REAL_MNIST / "MNIST" / "raw").is_dir(), reason="real MNIST not at ../shared/mnist")
def test_real_digits_raw_and_redrawn(tmp_path):
    """MNIST test digits saved as raw 28x28 PNGs, and inverted, 4x enlarged, off-centre JPEGs."""
    from mnist_addition.core.data import load_mnist

    run = tmp_path / "smoke"
    assert main(["train", "--smoke", "--no-download", "--data-dir", str(REAL_MNIST), "--output-dir", str(run),
                 "--mixed-precision", "no"]) == 0
    mnist = load_mnist(REAL_MNIST, download=False)
    raw, drawn = tmp_path / "raw", tmp_path / "drawn"
    raw.mkdir()
    drawn.mkdir()
    n = 20
    for i in range(n):
        img = mnist.test_images[i]
        _save(img, raw / f"{i:02d}.png")
        big = Image.fromarray((255 - img).numpy()).resize((112, 112), Image.BILINEAR)
        canvas = Image.new("L", (320, 240), 255)
        canvas.paste(big, (10 + 9 * i, 100 - 4 * i))
        canvas.convert("RGB").save(drawn / f"{i:02d}.jpg", quality=95)
    numbers = ",".join(str(i % 10) for i in range(n))
    results = {}
    for name, folder in (("raw", raw), ("drawn", drawn)):
        assert main(["predict", str(run), str(folder), "--numbers", numbers, "--csv", str(tmp_path / f"{name}.csv")]) == 0
        rows = [line.split(",") for line in (tmp_path / f"{name}.csv").read_text().splitlines()[1:]]
        results[name] = [(int(r[2]), int(r[3])) for r in rows]
    truth = [(int(mnist.test_labels[i]), int(mnist.test_labels[i]) + i % 10) for i in range(n)]
    for name in ("raw", "drawn"):
        right = sum(got == want for got, want in zip(results[name], truth))
        assert right >= n - 1, (name, results[name], truth)  # the smoke model is ~97% accurate


# ------------------------------------------------------------------------------------------------
# Every image mode Pillow opens, read the way a person sees it
# ------------------------------------------------------------------------------------------------
def _digit_u8() -> torch.Tensor:
    """A 28x28 MNIST-style digit: light ink (255) on black."""
    images, _ = synthetic_digits(1, seed=3)
    return images[0].clone()


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "CMYK", "P", "1", "RGB", "LA"])
def test_every_image_mode_reads_as_its_8_bit_grey_version(mode, tmp_path):
    import numpy as np

    digit = _digit_u8()
    grey = Image.fromarray(digit.numpy(), mode="L")
    if mode == "I;16":  # 16-bit: the same picture at 257x the values (255 -> 65535)
        img = Image.fromarray(digit.numpy().astype(np.uint16) * 257)
    elif mode == "I":  # 32-bit integers, 16-bit data (how Pillow opens many 16-bit PNGs)
        img = Image.fromarray(digit.numpy().astype(np.int32) * 257)
    elif mode == "F":  # float in [0, 1]
        img = Image.fromarray(digit.numpy().astype(np.float32) / 255.0)
    elif mode == "1":
        img = grey.point(lambda v: 255 if v > 127 else 0).convert("1")
        grey = img.convert("L")
    else:
        img = grey.convert(mode)
    assert img.mode == mode
    path = tmp_path / ("digit.tiff" if mode in ("I;16", "I", "F", "CMYK") else "digit.png")
    img.save(path)
    got = read_image(path)
    want = torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0)
    assert got.shape == (28, 28)
    assert (got - want).abs().max() <= 1.5 / 255  # at most 8-bit rounding (CMYK's round trip)
    assert got.max() > 0.9  # the ink is bright, not clipped or called blank


def test_a_multi_frame_image_reads_its_first_frame(tmp_path):
    digit = Image.fromarray(_digit_u8().numpy(), mode="L")
    path = tmp_path / "frames.gif"
    digit.save(path, save_all=True, append_images=[Image.new("L", (28, 28), 255)])
    assert torch.allclose(read_image(path), _digit_u8().float() / 255, atol=1.5 / 255)


def test_a_decompression_bomb_is_refused_in_one_line(run_dir, tmp_path, monkeypatch, capsys):
    from PIL import Image as PILImage

    Image.new("L", (300, 300), 0).save(tmp_path / "big.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 20_000)  # 90,000 pixels is over twice the limit
    assert main(["predict", str(run_dir), str(tmp_path / "big.png"), "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "too large to open safely" in err
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 60_000)  # over the limit, under twice: a warning in Pillow
    with pytest.raises(ImageError, match="decompression-bomb limit"):
        read_image(tmp_path / "big.png")


def test_random_numbers_are_seeded_and_written_to_the_csv(run_dir, tmp_path):
    import csv

    folder = tmp_path / "digits"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(_digit_u8().numpy(), mode="L").save(folder / f"{i}.png")
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / f"{name}.csv"
        assert main(["predict", str(run_dir), str(folder), "--random-numbers", "--seed", str(seed),
                     "--csv", str(out)]) == 0
        rows = list(csv.DictReader(out.open()))
        assert [r["file"] for r in rows] == [str(folder / f"{i}.png") for i in range(6)]
        assert all(0 <= int(r["sum"]) <= 18 and 0 <= int(r["digit"]) <= 9 for r in rows)
        runs.append([int(r["number"]) for r in rows])
    assert runs[0] == runs[1] and runs[0] != runs[2] and all(0 <= n <= 9 for n in runs[0])


def test_an_image_is_read_as_a_viewer_shows_it_exif_orientation_applied(tmp_path):
    """A phone stores a photo sideways with an EXIF orientation; viewers turn it upright, and so do we."""
    canvas = torch.full((60, 40), 255)
    canvas[10:50, 18:22] = 0  # an upright stroke: tall, narrow
    canvas[10:14, 8:22] = 0  # a bar at its top left: a "7"
    upright = _save(canvas, tmp_path / "upright.png")
    stored = Image.fromarray(canvas.to(torch.uint8).numpy()).rotate(90, expand=True)  # as the sensor wrote it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to show"
    stored.save(tmp_path / "sideways.jpg", exif=exif, quality=100)
    assert torch.allclose(to_mnist(read_image(tmp_path / "sideways.jpg")), to_mnist(read_image(upright)), atol=0.35)
    assert not torch.allclose(to_mnist(read_image(tmp_path / "sideways.jpg")),
                              to_mnist(read_image(_save(torch.rot90(canvas), tmp_path / "turned.png"))), atol=0.35)


def test_a_folder_goes_through_the_net_in_bounded_batches(run_dir, tmp_path, monkeypatch):
    import mnist_addition.commands.predict as predict_module

    images, _ = synthetic_digits(10, seed=5)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(images):
        _save(img, folder / f"{i:02d}.png")
    whole = predict_module.predict_files(run_dir, sorted(folder.iterdir()), list(range(10)))
    sizes, real = [], predict_module.predict

    def counting(model, batch, numbers):
        sizes.append(len(batch))
        return real(model, batch, numbers)

    monkeypatch.setattr(predict_module, "BATCH", 4)
    monkeypatch.setattr(predict_module, "predict", counting)
    rows = predict_module.predict_files(run_dir, sorted(folder.iterdir()), list(range(10)))
    assert sizes == [4, 4, 2]
    assert [(r["file"], r["digit"], r["sum"]) for r in rows] == [(r["file"], r["digit"], r["sum"]) for r in whole]
