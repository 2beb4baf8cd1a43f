"""Feed the command line the bad inputs and faults of issue 11 and count the clean answers (not a test).

Each case runs ``mnist-addition`` in a fresh process on tiny synthetic MNIST (the tests' fixture
files) and is "clean" when it exits with the expected code, prints no traceback, ends with exactly
one error line (when it fails), and leaves what must not change untouched. Prints one table.

    python benchmarks/bad_inputs.py
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import write_mnist  # noqa: E402  (the fixtures' synthetic IDX files)

TINY = ["--width", "8", "--epochs", "1", "--batch-size", "32", "--val-size", "100", "--mixed-precision", "no", "--cpu",
        "--no-download"]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "mnist_addition", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def snapshot(folder: Path) -> dict[str, bytes]:
    skip = (".lock", ".lock-owner.json")
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name not in skip} \
        if folder.exists() else {}


def clean(proc: subprocess.CompletedProcess, code: int) -> str:
    """'' if the answer is clean, else what is wrong."""
    err = proc.stderr.strip().splitlines()
    if "Traceback" in proc.stderr:
        return "traceback"
    if proc.returncode != code:
        return f"exit {proc.returncode}, expected {code}"
    if code and not (err and err[-1].startswith("mnist-addition ") and ": error: " in err[-1]):
        return "no one-line error"
    return ""


class Cases:
    def __init__(self, work: Path) -> None:
        self.work, self.data = work, write_mnist(work / "mnist")
        self.run = work / "run"
        assert cli("train", "--data-dir", str(self.data), "--output-dir", str(self.run), *TINY,
                   "--checkpoint-every", "5").returncode == 0

    def copy(self, name: str) -> Path:
        dest = self.work / name
        shutil.copytree(self.run, dest)
        return dest

    def unfinished(self, name: str) -> Path:
        run = self.copy(name)
        (run / "model.safetensors").unlink()
        return run

    def all(self) -> dict[str, Callable[[], str]]:
        d, w = str(self.data), self.work
        return {
            "--overwrite --batch-size 70000 keeps the old run": lambda: self.same(
                self.copy("o1"), lambda r: cli("train", "--data-dir", d, "--output-dir", str(r), *TINY, "--overwrite",
                                               "--batch-size", "70000"), 2),
            "--batch-size 70000 leaves no empty folder": lambda: self.nothing(
                w / "o2", lambda r: cli("train", "--data-dir", d, "--output-dir", str(r), *TINY, "--batch-size", "70000")),
            "two trains at once, one folder": self.two_at_once,
            "pickle payload in a checkpoint never runs": self.payload,
            "--config with nested values": lambda: self.write_and_run(
                w / "nested.json", '{"lr": [[1]], "width": {"a": 1}}', lambda p: cli("train", "--config", str(p), *TINY)),
            "--output-dir below a regular file": lambda: clean(
                cli("train", "--data-dir", d, "--output-dir", str(self.run / "config.json" / "x"), *TINY), 2),
            "predict --csv into a missing folder": lambda: clean(
                cli("predict", str(self.run), self.image(), "3", "--csv", str(w / "nope" / "o.csv")), 2),
            "predict --csv /dev/full": lambda: clean(
                cli("predict", str(self.run), self.image(), "3", "--csv", "/dev/full", "--overwrite"), 2),
            "export --output into a missing folder": lambda: clean(
                cli("export", str(self.run), "--output", str(w / "nope" / "m.onnx")), 2),
            "export --output /dev/full --overwrite": lambda: clean(
                cli("export", str(self.run), "--output", "/dev/full", "--overwrite"), 2)
            or ("" if Path("/dev/full").is_char_device() else "/dev/full replaced"),
            "tune --storage-path a regular file": lambda: clean(
                cli("tune", "--smoke", "--data-dir", d, "--storage-path", str(self.run / "config.json")), 2),
            "tune --name ../../x": lambda: clean(
                cli("tune", "--smoke", "--data-dir", d, "--storage-path", str(w / "sw"), "--name", "../../x"), 2),
            "--width 100000": lambda: self.nothing(
                w / "wide", lambda r: cli("train", "--data-dir", d, "--output-dir", str(r), *TINY, "--width", "100000")),
            "config.json edited to width 100000, then evaluate": lambda: self.edited("e1", "evaluate"),
            "config.json edited to width 100000, then predict": lambda: self.edited("e2", "predict"),
            "--resume after config.json was edited": self.resume_edited,
            "--resume with a damaged trainer_state.json matching its manifest": self.damaged_state,
            "an image over Pillow's decompression-bomb limit": self.bomb,
            "a search space nested 3,000 levels deep": lambda: self.write_and_run(
                w / "deep.yaml", "search:\n  lr: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n",
                lambda p: cli("tune", "--space", str(p), "--data-dir", d)),
            "--lr inf": lambda: clean(cli("train", "--data-dir", d, "--output-dir", str(w / "inf"), *TINY,
                                          "--lr", "inf"), 2),
            "a run whose loss turns NaN": self.diverges,
            "--resume X --output-dir Y": lambda: clean(
                cli("train", "--resume", str(self.unfinished("r3")), "--output-dir", str(w / "y")), 2),
            "--val-size 60000": lambda: clean(cli("train", "--data-dir", d, "--output-dir", str(w / "vs"), *TINY[:6],
                                                  "--val-size", "60000"), 2),
            "model.safetensors byte-identical for identical runs": self.bytes_identical,
            "a 16-bit image reads like its 8-bit version": self.sixteen_bit,
        }

    # -- helpers -----------------------------------------------------------------------------------
    def same(self, folder: Path, run: Callable[[Path], subprocess.CompletedProcess], code: int) -> str:
        before = snapshot(folder)
        problem = clean(run(folder), code)
        return problem or ("" if snapshot(folder) == before else "changed the folder")

    def nothing(self, folder: Path, run: Callable[[Path], subprocess.CompletedProcess]) -> str:
        return clean(run(folder), 2) or ("left a folder behind" if folder.exists() else "")

    def write_and_run(self, path: Path, text: str, run: Callable[[Path], subprocess.CompletedProcess]) -> str:
        path.write_text(text)
        return clean(run(path), 2)

    def image(self) -> str:
        from PIL import Image

        path = self.work / "digit.png"
        if not path.exists():
            img = Image.new("L", (28, 28), 0)
            img.paste(255, (10, 6, 16, 22))
            img.save(path)
        return str(path)

    def two_at_once(self) -> str:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        out = self.work / "race"
        cmd = [sys.executable, "-m", "mnist_addition", "train", "--data-dir", str(self.data), "--output-dir", str(out),
               *TINY, "--epochs", "3"]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(2)]
        results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
        codes = sorted(code for code, _ in results)
        if codes != [0, 2]:
            return f"exit codes {codes}"
        refused = next(err for code, err in results if code == 2).strip().splitlines()[-1]
        rows = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        if rows != [1, 2, 3]:
            return f"mixed run folder (epochs {rows})"
        # refused by the lock, or (if the winner had already written config.json) by the new-run rule
        return "" if "is in use by process" in refused or "already holds a run" in refused else refused

    def payload(self) -> str:
        from mnist_addition.checkpoint import MANIFEST, _files, _sha256, list_checkpoints

        run, marker = self.unfinished("p"), self.work / "payload-ran"

        class Boom:
            def __reduce__(self):
                return (os.mkdir, (str(marker),))

        newest = list_checkpoints(run)[-1]
        for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"):
            (newest / name).write_bytes(pickle.dumps(Boom()))
        (newest / MANIFEST).write_text(json.dumps({str(p.relative_to(newest)): {"bytes": p.stat().st_size,
                                                                                 "sha256": _sha256(p)}
                                                   for p in _files(newest)}))
        problem = clean(cli("train", "--resume", str(run)), 0)
        return "payload ran" if marker.exists() else problem

    def edited(self, name: str, command: str) -> str:
        run = self.copy(name)
        config = json.loads((run / "config.json").read_text())
        config["config"]["width"] = 100000
        (run / "config.json").write_text(json.dumps(config))
        args = [str(run), "--data-dir", str(self.data), "--no-download"] if command == "evaluate" \
            else [str(run), self.image(), "3"]
        return self.same(run, lambda r: cli(command, *args), 2)

    def resume_edited(self) -> str:
        run = self.unfinished("r1")
        config = json.loads((run / "config.json").read_text())
        config["config"]["batch_size"] = 64
        (run / "config.json").write_text(json.dumps(config))
        return self.same(run, lambda r: cli("train", "--resume", str(r)), 2)

    def damaged_state(self) -> str:
        from mnist_addition.checkpoint import MANIFEST, _files, _sha256, list_checkpoints

        run = self.unfinished("r2")
        for checkpoint in list_checkpoints(run):
            (checkpoint / "trainer_state.json").write_text('{"epoch": "one"}')
            (checkpoint / MANIFEST).write_text(json.dumps({str(p.relative_to(checkpoint)): {
                "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(checkpoint)}))
        return self.same(run, lambda r: cli("train", "--resume", str(r)), 2)

    def bomb(self) -> str:
        from PIL import Image

        path = self.work / "bomb.png"
        Image.new("1", (20_000, 10_000), 0).save(path)  # 200M pixels, a few kB of PNG
        return clean(cli("predict", str(self.run), str(path), "3"), 2)

    def diverges(self) -> str:
        out = self.work / "nan"
        proc = cli("train", "--data-dir", str(self.data), "--output-dir", str(out), *TINY, "--optimizer", "sgd",
                   "--lr", "1e30", "--checkpoint-every", "3")
        problem = clean(proc, 1)
        return problem or ("saved weights" if (out / "model.safetensors").exists() else "")

    def bytes_identical(self) -> str:
        outs = [self.work / f"same{i}" for i in range(2)]
        for out in outs:
            cli("train", "--data-dir", str(self.data), "--output-dir", str(out), *TINY)
        return "" if (outs[0] / "model.safetensors").read_bytes() == (outs[1] / "model.safetensors").read_bytes() \
            else "different bytes"

    def sixteen_bit(self) -> str:
        import numpy as np
        from PIL import Image

        eight = np.zeros((28, 28), dtype=np.uint8)
        eight[6:22, 10:16] = 255
        Image.fromarray(eight).save(self.work / "d8.png")
        Image.fromarray(eight.astype(np.uint16) * 257).save(self.work / "d16.png")
        a = cli("predict", str(self.run), str(self.work / "d8.png"), "3", "--json")
        b = cli("predict", str(self.run), str(self.work / "d16.png"), "3", "--json")
        if a.returncode or b.returncode:
            return f"exit {a.returncode}/{b.returncode}"
        return "" if json.loads(a.stdout)["digit_probs"] == json.loads(b.stdout)["digit_probs"] else "reads differently"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cases = Cases(Path(tmp))
        results = {}
        for name, case in cases.all().items():
            results[name] = case()
            print(f"{'clean' if not results[name] else 'NOT CLEAN: ' + results[name]:<40} {name}", flush=True)
    good = sum(1 for problem in results.values() if not problem)
    print(f"\n{good} of {len(results)} bad inputs and faults answered cleanly")


if __name__ == "__main__":
    main()
