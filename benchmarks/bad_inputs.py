"""Feed the command line the bad inputs and faults of issues 11, 15 and 18 and count the clean answers
(not a test).

Each case runs ``mnist-addition`` in a fresh process on tiny synthetic MNIST (the tests' fixture
files) and is "clean" when it exits with the expected code, prints no traceback, ends with exactly
one error line (when it fails), and leaves what must not change untouched. A full disk is a file
size limit (RLIMIT_FSIZE) on the process; a Ctrl-C at a given moment is a ``sitecustomize`` the
case puts on the process's path (the product reads no test switch). Prints one line per case and
the count.

    python benchmarks/bad_inputs.py [--only SUBSTRING]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from mnist_addition.core.synthetic import write_mnist

ROOT = Path(__file__).resolve().parents[1]

TINY = ["--width", "8", "--epochs", "1", "--batch-size", "32", "--val-size", "100", "--mixed-precision", "no", "--cpu",
        "--no-download"]


def cli(*args: str, cwd: Path | None = None, inject: str = "", file_limit: int = 0,
        config_home: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``mnist-addition ARGS`` in a fresh process. ``inject``: Python run at its start-up (a
    sitecustomize: how a case makes Ctrl-C land at a given moment); ``file_limit``: no file it
    writes may grow past this many bytes (a full disk)."""
    path = [str(ROOT)]
    if inject:
        site = Path(tempfile.mkdtemp(prefix="inject-"))
        (site / "sitecustomize.py").write_text(inject)
        path.insert(0, str(site))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **(env or {}))
    if config_home is not None:
        env["XDG_CONFIG_HOME"] = config_home

    def limit() -> None:
        if file_limit:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_limit, file_limit))

    return subprocess.run([sys.executable, "-m", "mnist_addition", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600, preexec_fn=limit)


# A Ctrl-C raised inside NAME of MODULE (a sitecustomize for ``cli(inject=...)``).
INTERRUPT = """
import importlib, sys
def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt
_module = importlib.import_module({module!r})
{before}
setattr(_module, {name!r}, {wrapper})
"""


def interrupt_in(module: str, name: str, after: bool = False) -> str:
    """Ctrl-C when ``module.name`` is called (``after``: once it has returned)."""
    if not after:
        return INTERRUPT.format(module=module, name=name, before="", wrapper="_interrupt")
    before = (f"_real = getattr(_module, {name!r})\n"
              "def _after(*args, **kwargs):\n    _real(*args, **kwargs)\n    raise KeyboardInterrupt")
    return INTERRUPT.format(module=module, name=name, before=before, wrapper="_after")


PRECIOUS = b"someone's file: must never change\n"
LONG = "x" * 300


def snapshot(folder: Path) -> dict[str, bytes]:
    skip = (".lock",)
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.name not in skip} \
        if folder.exists() else {}


def clean(proc: subprocess.CompletedProcess, code: int) -> str:
    """'' if the answer is clean, else what is wrong."""
    err = proc.stderr.strip().splitlines()
    if "Traceback" in proc.stderr:
        return "traceback"
    if proc.returncode != code:
        return f"exit {proc.returncode}, expected {code}"
    said = err[-1] if err else ""
    if code == 130:  # Ctrl-C: "mnist-addition CMD: interrupted..." (what is left, in training)
        return "" if said.startswith("mnist-addition") and ": interrupted" in said else "no one-line interrupt"
    if code == 75:  # SIGTERM: "mnist-addition CMD: ... SIGTERM ...", and the command that continues
        return "" if said.startswith("mnist-addition") and "SIGTERM" in said else "no one-line stop"
    if code and not (said.startswith("mnist-addition ") and ": error: " in said):
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
        """A copy as if killed after its last checkpoint (metrics.json, written last, marks a finished run)."""
        run = self.copy(name)
        for item in ("metrics.json", "model.safetensors", "curves.png", "confusion_digit.png", "confusion_sum.png",
                     "samples.png", "mistakes.png"):
            (run / item).unlink()
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
            **Issue15(self).all(),
            **Issue18(self).all(),
            **Issue19(self).all(),
            **Issue41(self).all(),
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
        from mnist_addition.rundir.checkpoint import _files, _sha256, list_checkpoints
        from mnist_addition.rundir.names import MANIFEST

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
        from mnist_addition.rundir.checkpoint import _files, _sha256, list_checkpoints
        from mnist_addition.rundir.names import MANIFEST

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
        # --lr 1e30 made it diverge before --lr had a range; a NaN learning rate from step 5 does now
        out = self.work / "nan"
        poison = ("import mnist_addition.training.step as t\n_real = t.lr_schedule\n"
                  "t.lr_schedule = lambda c, n: (lambda f: lambda s: float('nan') if s >= 5 else f(s))(_real(c, n))\n")
        proc = cli("train", "--data-dir", str(self.data), "--output-dir", str(out), *TINY, "--checkpoint-every", "3",
                   inject=poison)
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


class Issue15:
    """The cases of issue 15: folders from someone else, refused writers, interrupts, tracebacks,
    hangs and inputs that were accepted silently."""

    def __init__(self, base: Cases) -> None:
        self.base, self.work, self.data, self.run = base, base.work / "i15", str(base.data), base.run
        self.work.mkdir()
        self._sweep: Path | None = None
        self._altered = 0

    def all(self) -> dict[str, Callable[[], str]]:
        d, w, r = self.data, self.work, str(self.run)
        cases: dict[str, Callable[[], str]] = {
            # -- nothing from someone else's folder runs or writes outside it
            "tune --resume of a sweep whose tuner.pkl runs code (set aside, never run)": self.sweep_payload,
            "report with mistakes.png linked to a file outside the run": self.report_link,
            "train into a folder of dangling links curves.png, metrics.jsonl": self.dangling_links,
            "train --output-dir /": lambda: self.unchanged(Path("/"), lambda: cli(
                "train", "--data-dir", d, "--output-dir", "/", *TINY), 2),
            "export --output RUN/model.safetensors --overwrite": lambda: self.unchanged(self.base.copy("x1"), lambda c: cli(
                "export", str(c), "--output", str(c / "model.safetensors"), "--overwrite"), 2, pass_folder=True),
            # -- a refused command changes nothing; an interrupt says what is true
            "train SOMEWHERE/../RUN and --overwrite while RUN trains": self.refused_writer,
            "Ctrl-C while the final pictures are drawn, then --resume": self.interrupt_in_pictures,
            "Ctrl-C just after metrics.json": self.interrupt_after_metrics,
            "a run diverged before its first checkpoint is trained again": self.failed_then_again,
            # -- tracebacks that are one line now
            "--seed 4294967296": lambda: self.refused("train", "--data-dir", d, "--output-dir", str(w / "s1"), *TINY,
                                                     "--seed", "4294967296"),
            "--seed above 2**64": lambda: self.refused("train", "--data-dir", d, "--output-dir", str(w / "s2"), *TINY,
                                                      "--seed", str(2**64 + 5)),
            "--config with seed 4294967296": lambda: self.config_file('{"seed": 4294967296}'),
            "predict --random-numbers --seed 2**70": lambda: self.refused(
                "predict", r, str(self.folder_of_images()), "--random-numbers", "--seed", str(2**70)),
            "--width 10000000000": lambda: self.refused("train", "--data-dir", d, "--output-dir", str(w / "w1"), *TINY,
                                                       "--width", "10000000000"),
            "--config with width 1e30": lambda: self.config_file('{"width": 1e30}'),
            "--lr 1e308": lambda: self.refused("train", "--data-dir", d, "--output-dir", str(w / "l1"), *TINY,
                                              "--lr", "1e308"),
            "--lr 1e308 --overwrite keeps the run": lambda: self.base.same(self.base.copy("l2"), lambda c: cli(
                "train", "--data-dir", d, "--output-dir", str(c), *TINY, "--lr", "1e308", "--overwrite"), 2),
            "--config nested 100,000 levels": lambda: self.config_file("[" * 100_000 + "]" * 100_000),
            "evaluate of a run whose config.json is nested 100,000 levels": self.deep_run_config,
            "--config a symlink loop": lambda: self.refused("train", "--config", str(self.loop("c.json"))),
            "--config below a regular file": lambda: self.refused("train", "--config", str(self.run / "config.json" / "c")),
            "--config name too long": lambda: self.refused("train", "--config", str(w / LONG)),
            "--output-dir name too long": lambda: self.refused("train", "--data-dir", d, "--output-dir", str(w / LONG),
                                                              *TINY),
            "export --output name too long": lambda: self.refused("export", r, "--output", str(w / LONG)),
            "predict of an image whose name is too long": lambda: self.refused("predict", r, str(w / LONG), "3"),
            "a data folder with zero training images (train)": lambda: self.empty_data("train"),
            "a data folder with zero test images (report)": lambda: self.empty_data("report"),
            "a full disk at the first checkpoint under --overwrite": lambda: self.base.same(self.base.copy("df"), lambda c: cli(
                "train", "--data-dir", d, "--output-dir", str(c), *TINY, "--overwrite", file_limit=30_000), 2),
            "report with a full disk": lambda: clean(cli("report", str(self.base.copy("rf")), "--data-dir", d,
                                                         "--no-download", file_limit=10_000), 2),
            "report with samples.png a folder": self.report_folder_in_the_way,
            "report with mistakes.png a link to /dev/full": self.report_dev_full,
            **{f"resume with the newest checkpoint's {how} (its manifest matching)": (lambda how=how: self.altered(how))
               for how in ("MANIFEST.json a list", "MANIFEST.json mapping a file to a number",
                           "samples_per_process 1e30", "history of non-objects", "optimizer moment of the wrong shape")},
            **{f"evaluate of a run whose config.json setup is {what}": (lambda value=value: self.bad_setup(value))
               for what, value in (("a string", '"cuda"'), ("a list", "[1, 2]"))},
            **{f"tune --resume where sweep.json {what}": (lambda text=text: self.sweep_json(text))
               for what, text in (("is not JSON", "not json"), ("is {}", "{}"), ("is a folder", None),
                                  ("names a metric that does not exist", "metric"))},
            "tune --storage-path nosuch://x": lambda: self.refused("tune", "--data-dir", d, "--storage-path", "nosuch://x"),
            "tune --seed -1": lambda: self.refused("tune", "--data-dir", d, "--storage-path", str(w / "sw1"), "--seed", "-1"),
            "tune --cpus-per-trial 0.00001 leaves no folder": lambda: self.refused(
                "tune", "--data-dir", d, "--storage-path", str(w / "sw2"), "--cpus-per-trial", "0.00001")
            or ("left a sweep folder" if (w / "sw2").exists() else ""),
            "tune with a space that is a symlink loop": lambda: self.refused(
                "tune", "--data-dir", d, "--storage-path", str(w / "sw3"), "--space", str(self.loop("s.yaml"))),
            "tune with a space fixing seed 4294967296": lambda: self.refused(
                "tune", "--data-dir", d, "--storage-path", str(w / "sw4"), "--space",
                str(self.text("big-seed.yaml", "fixed: {seed: 4294967296}\nsearch: {lr: {uniform: [0.001, 0.01]}}\n"))),
            "Ctrl-C while Python loads torch": self.interrupt_imports,
            "Ctrl-C in evaluate --all-numbers": lambda: self.interrupted(
                interrupt_in("mnist_addition.commands.evaluate", "evaluate_all_numbers"), "evaluate", r, "--all-numbers"),
            "Ctrl-C while predicting a large image": lambda: self.interrupted(
                interrupt_in("mnist_addition.commands.predict", "load_image"), "predict", r, self.base.image(), "3"),
            "Ctrl-C in the tune space check": lambda: self.interrupted(
                interrupt_in("mnist_addition.sweep.folder", "load_space"), "tune", "--storage-path", str(w / "sw5")),
            # -- hangs and memory
            "a YAML alias bomb in a choice list": lambda: self.quick(lambda: self.refused(
                "tune", "--storage-path", str(w / "sw6"), "--space", str(self.text("b1.yaml", BOMB + "search:\n  width: {choice: *c}\n")))),
            "a YAML alias bomb as a fixed value": lambda: self.quick(lambda: self.refused(
                "tune", "--storage-path", str(w / "sw7"), "--space", str(self.text(
                    "b2.yaml", BOMB + "fixed: {label_smoothing: *c}\nsearch: {lr: {uniform: [0.001, 0.01]}}\n")))),
            "a space with two keys of 3,000 choices": lambda: self.quick(lambda: self.refused(
                "tune", "--storage-path", str(w / "sw8"), "--space", str(self.text("many.yaml", MANY)))),
            "a 3 GiB sparse IDX file": self.sparse_idx,
            "--config with epochs 1e23": lambda: self.config_file('{"epochs": 1e23}'),
            "--config with a 3M-element list: a short error line": self.long_value,
            # -- accepted silently before
            **{f"resume with every checkpoint's {how}": (lambda how=how: self.altered(how, every=True))
               for how in ("world 0", "train_seconds -1e300")},
            "resume of a run whose config.json setup is a string": lambda: self.bad_setup('"cuda"', resume=True),
            "weights cast to int8 (evaluate)": lambda: self.int8("evaluate"),
            "weights cast to int8 (predict)": lambda: self.int8("predict"),
            "--data-dir ''": lambda: self.refused("train", "--data-dir", "", "--output-dir", str(w / "dd"), *TINY),
            "a 32-bit image holding 0..255 reads like its 8-bit version": lambda: self.same_prediction("i32"),
            "one NaN pixel in a float image reads like the image without it": lambda: self.same_prediction("nan"),
            "evaluate of an --eval-limit run scores metrics.json's pairs": self.eval_limit,
        }
        return {f"[15] {name}": case for name, case in cases.items()}

    # -- helpers -----------------------------------------------------------------------------------
    def refused(self, *args: str, code: int = 2) -> str:
        return clean(cli(*args), code)

    def unchanged(self, folder: Path, run: Callable, code: int, pass_folder: bool = False) -> str:
        before = sorted(os.listdir(folder)) if folder == Path("/") else snapshot(folder)
        problem = clean(run(folder) if pass_folder else run(), code)
        after = sorted(os.listdir(folder)) if folder == Path("/") else snapshot(folder)
        return problem or ("" if after == before else "changed the folder")

    def text(self, name: str, content: str) -> Path:
        path = self.work / name
        path.write_text(content)
        return path

    def config_file(self, content: str) -> str:
        return self.refused("train", "--config", str(self.text("c.json", content)))

    def loop(self, name: str) -> Path:
        a, b = self.work / f"loop-a-{name}", self.work / f"loop-b-{name}"
        if not a.is_symlink():
            a.symlink_to(b)
            b.symlink_to(a)
        return a

    def quick(self, case: Callable[[], str], seconds: float = 20.0) -> str:
        start = time.perf_counter()
        problem = case()
        took = time.perf_counter() - start
        return problem or (f"took {took:.0f} s" if took > seconds else "")

    def folder_of_images(self) -> Path:
        folder = self.work / "images"
        if not folder.exists():
            folder.mkdir()
            shutil.copy(self.base.image(), folder / "a.png")
        return folder

    def outside(self, name: str, content: bytes | None = PRECIOUS) -> Path:
        target = self.work / "outside" / name
        target.parent.mkdir(exist_ok=True)
        if content is not None:
            target.write_bytes(content)
        return target

    # -- cases -------------------------------------------------------------------------------------
    def sweep(self) -> Path:
        """A tiny finished sweep on a local Ray, made once."""
        if self._sweep is None:
            space = self.text("space.yaml", "fixed: {epochs: 1, width: 8, batch_size: 32, val_size: 100, "
                                            "mixed_precision: 'no'}\nsearch: {lr: {loguniform: [0.005, 0.02]}}\n")
            proc = cli("tune", "--space", str(space), "--data-dir", self.data, "--storage-path", str(self.work / "sweeps"),
                       "--name", "s", "--num-samples", "2", "--cpus-per-trial", "1", "--scheduler", "fifo")
            if proc.returncode:
                raise RuntimeError(f"the sweep to tamper with failed: {proc.stderr[-300:]}")
            self._sweep = self.work / "sweeps" / "s"
        return self._sweep

    def sweep_payload(self) -> str:
        copy = self.work / "sweeps" / "payload"
        shutil.copytree(self.sweep(), copy)
        marker = self.work / "sweep-payload-ran"

        class Boom:
            def __reduce__(self):
                return (os.mkdir, (str(marker),))

        (copy / "tuner.pkl").write_bytes(pickle.dumps(Boom()))
        # (issue 41: the sweep is this user's, its sweep.json signed: Ray's state is set aside, never
        # loaded, and the sweep goes on from sweep.json and its trials' checkpoints)
        problem = clean(cli("tune", "--resume", "--name", "payload", "--storage-path", str(self.work / "sweeps")), 0)
        aside = list((copy / ".unverified").rglob("tuner.pkl"))
        return "the payload ran" if marker.exists() else problem or ("" if aside else "tuner.pkl not set aside")

    def sweep_json(self, text: str | None) -> str:
        copy = self.work / "sweeps" / f"edited-{len(list((self.work / 'sweeps').iterdir()))}"
        shutil.copytree(self.sweep(), copy)
        target = copy / "sweep.json"
        if text is None:
            target.unlink()
            target.mkdir()
        elif text == "metric":
            saved = json.loads(target.read_text())
            saved["options"]["metric"] = "val_nonsense"
            target.write_text(json.dumps(saved))
        else:
            target.write_text(text)
        return clean(cli("tune", "--resume", "--name", copy.name, "--storage-path", str(self.work / "sweeps")), 2)

    def report_link(self) -> str:
        run = self.base.copy("rl")
        target = self.outside("mistakes-target")
        (run / "mistakes.png").unlink()
        (run / "mistakes.png").symlink_to(target)
        problem = clean(cli("report", str(run), "--data-dir", self.data, "--no-download"), 0)
        return problem or ("" if target.read_bytes() == PRECIOUS else "wrote through the link")

    def dangling_links(self) -> str:
        folder = self.work / "dl"
        folder.mkdir()
        targets = [self.outside(f"dl-{n}", None) for n in ("curves", "metrics")]
        (folder / "curves.png").symlink_to(targets[0])
        (folder / "metrics.jsonl").symlink_to(targets[1])
        problem = clean(cli("train", "--data-dir", self.data, "--output-dir", str(folder), *TINY), 2)
        return problem or ("created an outside file" if any(t.exists() for t in targets) else "")

    def refused_writer(self) -> str:
        run = self.work / "busy"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        first = subprocess.Popen([sys.executable, "-m", "mnist_addition", "train", "--data-dir", self.data, "--output-dir",
                                  str(run), *TINY, "--epochs", "40"], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True, env=env)
        try:
            from mnist_addition.rundir.files import lock_is_held

            deadline = time.monotonic() + 120
            while not (run / "config.json").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            problems = []
            for extra in ([], ["--overwrite"]):
                proc = cli("train", "--data-dir", self.data, "--output-dir", str(self.work / "nowhere" / ".." / "busy"),
                           *TINY, *extra)
                problems.append(clean(proc, 2) or ("" if f"in use by process {first.pid}" in proc.stderr
                                                   else "did not name the process"))
            if (self.work / "nowhere").exists():
                problems.append("created the missing folder")
            if not lock_is_held(run / ".lock"):
                problems.append("the running run lost its lock")
            code = first.wait(timeout=600)
            rows = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
            if code or rows != list(range(1, 41)):
                problems.append(f"the running run ended {code} with epochs {rows[:3]}...")
            return "; ".join(p for p in problems if p)
        finally:
            if first.poll() is None:
                first.kill()

    def interrupt_in_pictures(self) -> str:
        run = self.work / "pictures"
        proc = cli("train", "--data-dir", self.data, "--output-dir", str(run), *TINY,
                   inject=interrupt_in("mnist_addition.rundir.pictures", "write_pictures"))
        problem = clean(proc, 130) or ("" if f"resume with  mnist-addition train --resume {run}" in proc.stderr
                                       else "did not say how to resume")
        return problem or clean(cli("train", "--resume", str(run)), 0) or \
            ("" if (run / "metrics.json").exists() and (run / "mistakes.png").exists() else "resume did not finish it")

    def interrupt_after_metrics(self) -> str:
        run = self.work / "after"
        inject = ("import mnist_addition.rundir.contents as r\n_real = r.write_json\n"
                  "def _w(path, data):\n    _real(path, data)\n    if path.name == 'metrics.json':\n"
                  "        raise KeyboardInterrupt\nr.write_json = _w\n")
        proc = cli("train", "--data-dir", self.data, "--output-dir", str(run), *TINY, inject=inject)
        return clean(proc, 130) or ("" if "is complete" in proc.stderr else "did not say the run is complete")

    def failed_then_again(self) -> str:
        run = self.work / "again"
        poison = ("import mnist_addition.training.step as t\n_real = t.lr_schedule\n"
                  "t.lr_schedule = lambda c, n: (lambda f: lambda s: float('nan') if s >= 2 else f(s))(_real(c, n))\n")
        args = ("train", "--data-dir", self.data, "--output-dir", str(run), *TINY)
        return clean(cli(*args, inject=poison), 1) or clean(cli(*args), 0)

    def deep_run_config(self) -> str:
        run = self.base.copy("deep")
        (run / "config.json").write_text("[" * 100_000 + "]" * 100_000)
        return clean(cli("evaluate", str(run)), 2)

    def empty_data(self, command: str) -> str:
        import torch

        from mnist_addition.core.synthetic import write_idx

        data = write_mnist(self.work / f"empty-{command}")
        prefix = "train" if command == "train" else "t10k"
        write_idx(data / "MNIST" / "raw" / f"{prefix}-images-idx3-ubyte", torch.zeros(0, 28, 28))
        write_idx(data / "MNIST" / "raw" / f"{prefix}-labels-idx1-ubyte", torch.zeros(0))
        if command == "train":
            return clean(cli("train", "--data-dir", str(data), "--output-dir", str(self.work / "e"), *TINY), 1)
        return clean(cli("report", str(self.run), "--data-dir", str(data), "--no-download"), 1)

    def report_folder_in_the_way(self) -> str:
        run = self.base.copy("rw")
        (run / "samples.png").unlink()
        (run / "samples.png").mkdir()
        return clean(cli("report", str(run), "--data-dir", self.data, "--no-download"), 2)

    def report_dev_full(self) -> str:
        run = self.base.copy("rd")
        (run / "mistakes.png").unlink()
        (run / "mistakes.png").symlink_to("/dev/full")
        problem = clean(cli("report", str(run), "--data-dir", self.data, "--no-download"), 0)
        return problem or ("" if Path("/dev/full").is_char_device() and (run / "mistakes.png").is_file() else "not replaced")

    def altered(self, how: str, every: bool = False) -> str:
        import torch
        from safetensors.torch import load_file, save_file

        from mnist_addition.rundir.checkpoint import _files, _sha256, list_checkpoints
        from mnist_addition.rundir.names import MANIFEST

        self._altered += 1
        run = self.base.unfinished(f"alt-{self._altered}")
        found = list_checkpoints(run)
        for checkpoint in (found if every else found[-1:]):
            state = json.loads((checkpoint / "trainer_state.json").read_text())
            if how.startswith("MANIFEST"):
                (checkpoint / MANIFEST).write_text("[]" if "list" in how else '{"model.safetensors": 3}')
                continue
            if how == "samples_per_process 1e30":
                state["samples_per_process"] = 10**30
            elif how == "history of non-objects":
                state["history"] = [1] * len(state["history"]) or [1]
            elif how == "world 0":
                state["world"] = 0
            elif how == "train_seconds -1e300":
                state["train_seconds"] = -1e300
            else:
                tensors = load_file(str(checkpoint / "optimizer.safetensors"))
                tensors[next(k for k in tensors if k.endswith("exp_avg"))] = torch.zeros(3)
                save_file(tensors, str(checkpoint / "optimizer.safetensors"))
            (checkpoint / "trainer_state.json").write_text(json.dumps(state))
            (checkpoint / MANIFEST).write_text(json.dumps({str(p.relative_to(checkpoint)): {
                "bytes": p.stat().st_size, "sha256": _sha256(p)} for p in _files(checkpoint)}))
        if every:
            return self.base.same(run, lambda r: cli("train", "--resume", str(r)), 2)
        proc = cli("train", "--resume", str(run))
        return clean(proc, 0) or ("" if f"warning: checkpoint {found[-1]}" in proc.stderr and
                                  f"resuming from {found[-2].name}" in proc.stderr else "not reported, or not the one before")

    def bad_setup(self, value: str, resume: bool = False) -> str:
        self._altered += 1
        name = f"setup-{self._altered}-{'resume' if resume else 'evaluate'}"
        run = self.base.unfinished(name) if resume else self.base.copy(name)
        config = json.loads((run / "config.json").read_text())
        config["setup"] = json.loads(value)
        (run / "config.json").write_text(json.dumps(config))
        return self.base.same(run, lambda r: cli(*(["train", "--resume"] if resume else ["evaluate"]), str(r)), 2)

    def interrupt_imports(self) -> str:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-m", "mnist_addition", "evaluate", "nowhere"], stderr=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        return clean(done, 130) or ("" if err.strip().endswith("interrupted") else "no 'interrupted' line")

    def interrupted(self, inject: str, *args: str) -> str:
        proc = cli(*args, inject=inject)
        return clean(proc, 130) or ("" if proc.stderr.strip().endswith("interrupted") else "no 'interrupted' line")

    def sparse_idx(self) -> str:
        data = write_mnist(self.work / "sparse")
        path = data / "MNIST" / "raw" / "train-images-idx3-ubyte"
        n = 4_000_000  # 3.1 GB promised by a header that matches the file's size, all holes
        with path.open("wb") as f:
            f.write(bytes([0, 0, 8, 3]) + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
            f.truncate(16 + n * 784)
        return self.quick(lambda: clean(cli("train", "--data-dir", str(data), "--output-dir", str(self.work / "sp"),
                                            *TINY), 1), seconds=15)

    def long_value(self) -> str:
        path = self.text("huge.json", '{"lr": [' + ",".join(["0"] * 3_000_000) + "]}")
        proc = cli("train", "--config", str(path))
        line = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
        return clean(proc, 2) or ("" if len(line) < 300 else f"an error line of {len(line):,} characters")

    def int8(self, command: str) -> str:
        import torch
        from safetensors.torch import load_file, save_file

        run = self.base.copy(f"int8-{command}")
        weights = {k: v.to(torch.int8) if v.is_floating_point() else v
                   for k, v in load_file(str(run / "model.safetensors")).items()}
        save_file(weights, str(run / "model.safetensors"))
        args = [str(run)] if command == "evaluate" else [str(run), self.base.image(), "3"]
        return clean(cli(command, *args), 2)

    def same_prediction(self, kind: str) -> str:
        import numpy as np
        from PIL import Image

        eight = np.zeros((28, 28), dtype=np.uint8)
        eight[6:22, 10:16] = 255
        Image.fromarray(eight).save(self.work / "p8.png")
        if kind == "i32":
            Image.fromarray(eight.astype(np.int32), mode="I").save(self.work / "p.tiff")
        else:
            values = eight.astype(np.float32) / 255
            values[0, 0] = np.nan
            Image.fromarray(values, mode="F").save(self.work / "p.tiff")
        a = cli("predict", str(self.run), str(self.work / "p8.png"), "3", "--json")
        b = cli("predict", str(self.run), str(self.work / "p.tiff"), "3", "--json")
        if a.returncode or b.returncode:
            return f"exit {a.returncode}/{b.returncode}: {b.stderr.strip()[-120:]}"
        return "" if json.loads(a.stdout)["digit"] == json.loads(b.stdout)["digit"] else "reads differently"

    def eval_limit(self) -> str:
        run = self.work / "limited"
        if clean(cli("train", "--data-dir", self.data, "--output-dir", str(run), *TINY, "--eval-limit", "50"), 0):
            return "could not train"
        proc = cli("evaluate", str(run), "--json")
        want = json.loads((run / "metrics.json").read_text())["test"]
        return clean(proc, 0) or ("" if json.loads(proc.stdout)["test"]["n"] == want["n"] == 50 else "other pairs")


class Issue18:
    """The cases of issue 18: trackers, `runs` and `compare`."""

    def __init__(self, base: Cases) -> None:
        self.base, self.work, self.data = base, base.work / "i18", str(base.data)
        self.work.mkdir()

    def all(self) -> dict[str, Callable[[], str]]:
        d, w, r = self.data, self.work, str(self.base.run)
        train = ("train", "--data-dir", d, *TINY)
        cases: dict[str, Callable[[], str]] = {
            "train --log-with mlfow": lambda: clean(cli(*train, "--output-dir", str(w / "t1"), "--log-with", "mlfow"), 2),
            "train --log-with mlflow,mlflow": lambda: clean(cli(*train, "--output-dir", str(w / "t2"), "--log-with",
                                                                "mlflow,mlflow"), 2),
            "train --log-with clearml (not installed)": lambda: clean(cli(*train, "--output-dir", str(w / "t3"),
                                                                          "--log-with", "clearml"), 2),
            "resume with trackers.json a list": lambda: self.resume_with_trackers("[1, 2]"),
            "resume with trackers.json a link outside the run": lambda: self.resume_with_trackers(None),
            "resume in another MLFLOW_TRACKING_URI": self.other_store,
            "tune --log-with mlfow": lambda: clean(cli("tune", "--data-dir", d, "--storage-path", str(w / "sw"),
                                                       "--log-with", "mlfow"), 2),
            "runs of a missing folder": lambda: clean(cli("runs", str(w / "nowhere")), 2),
            "runs of a folder holding no runs": lambda: clean(cli("runs", str(self.folder("empty"))), 2),
            "runs --sort speed": lambda: clean(cli("runs", r, "--sort", "speed"), 2),
            "runs of a folder with a garbage config.json and a link loop": self.garbage_runs,
            "compare of one run": lambda: clean(cli("compare", r), 2),
            "compare of a run and a folder that is no run": lambda: clean(cli("compare", r, str(self.folder("no"))), 2),
            "compare --output RUN/curves.png --overwrite": lambda: self.base.same(self.base.copy("c1"), lambda c: cli(
                "compare", str(c), r, "--output", str(c / "curves.png"), "--overwrite"), 2),
        }
        return {f"[18] {name}": case for name, case in cases.items()}

    def folder(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(exist_ok=True)
        return path

    def resume_with_trackers(self, text: str | None) -> str:
        run = self.base.unfinished("tr-link" if text is None else "tr-text")
        if text is None:
            outside = self.work / "secret.json"
            outside.write_text('{"mlflow": {"run_id": "x"}}')
            os.symlink(outside, run / "trackers.json")
        else:
            (run / "trackers.json").write_text(text)
        return self.base.same(run, lambda c: cli("train", "--resume", str(c), "--log-with", "tensorboard"), 2)

    def other_store(self) -> str:
        run = self.work / "mf"
        first = cli("train", "--data-dir", self.data, "--output-dir", str(run), *TINY, "--checkpoint-every", "5",
                    "--log-with", "mlflow", env={"MLFLOW_TRACKING_URI": f"sqlite:///{self.work / 'a.db'}"})
        if first.returncode:
            return f"could not train: {first.stderr.strip()[-200:]}"
        (run / "metrics.json").unlink()  # as if killed after its last checkpoint: resumable
        return self.base.same(run, lambda c: cli("train", "--resume", str(c), env={
            "MLFLOW_TRACKING_URI": f"sqlite:///{self.work / 'b.db'}"}), 2)

    def garbage_runs(self) -> str:
        root = self.folder("garbage")
        broken = root / "broken"
        broken.mkdir()
        (broken / "config.json").write_text("{not json")
        (broken / "metrics.jsonl").write_text("")
        os.symlink(root / "loop", root / "loop")
        proc = cli("runs", str(root), "--json")
        if clean(proc, 0):
            return clean(proc, 0)
        return "" if json.loads(proc.stdout)[0]["status"].startswith("broken") else "not listed as broken"


class Issue19:
    """The cases of issue 19: schedules in config files, population-based training's options, --crop."""

    def __init__(self, base: Cases) -> None:
        self.base, self.work, self.data = base, base.work / "i19", str(base.data)
        self.work.mkdir()

    def all(self) -> dict[str, Callable[[], str]]:
        d, w = self.data, self.work
        tiny = {"width": 8, "epochs": 3, "batch_size": 32, "val_size": 100, "schedule": "constant"}

        def schedule(name: str, changes: Any, **extra: Any) -> Callable[[], str]:
            return lambda: self.base.write_and_run(
                w / f"{name}.json", json.dumps({**tiny, **extra, "hparam_schedule": changes}),
                lambda p: cli("train", "--config", str(p), "--data-dir", d, "--output-dir", str(w / name)))

        tune = ("tune", "--smoke", "--data-dir", d, "--storage-path", str(w / "sw"))
        cases: dict[str, Callable[[], str]] = {
            "hparam_schedule a string": schedule("s1", "lr=0.1"),
            "hparam_schedule out of order": schedule("s2", [{"epoch": 3, "lr": 0.1}, {"epoch": 2, "lr": 0.2}]),
            "hparam_schedule beyond the run": schedule("s3", [{"epoch": 9, "lr": 0.1}]),
            "hparam_schedule changing width": schedule("s4", [{"epoch": 2, "width": 64}]),
            "hparam_schedule lr NaN": lambda: self.base.write_and_run(
                w / "s5.json", '{"schedule": "constant", "epochs": 3, "hparam_schedule": [{"epoch": 2, "lr": NaN}]}',
                lambda p: cli("train", "--config", str(p), "--data-dir", d, "--output-dir", str(w / "s5"))),
            "hparam_schedule lr under onecycle": schedule("s6", [{"epoch": 2, "lr": 0.1}], schedule="onecycle"),
            "hparam_schedule of 20,000 changes": schedule(
                "s7", [{"epoch": e, "sum_weight": 0.5} for e in range(2, 20_002)], epochs=50_000),
            "tune --scheduler pbt with two metrics": lambda: clean(cli(
                *tune, "--scheduler", "pbt", "--metric", "val_both_acc", "--metric", "train_seconds"), 2),
            "tune --scheduler pbt --perturbation-epochs 5 (2 epochs)": lambda: clean(cli(
                *tune, "--scheduler", "pbt", "--perturbation-epochs", "5"), 2),
            "tune --scheduler pbt on a space searching no scheduled field": lambda: self.base.write_and_run(
                w / "widths.yaml", "fixed: {epochs: 4}\nsearch:\n  width: {choice: [8, 16]}\n",
                lambda p: cli("tune", "--space", str(p), "--data-dir", d, "--storage-path", str(w / "sw"),
                              "--scheduler", "pbt")),
            "train --crop 5 (into the digits)": lambda: clean(cli(
                "train", "--crop", "5", "--data-dir", d, "--output-dir", str(w / "c1")), 2),
            "train --preset seed --crop 2": lambda: clean(cli(
                "train", "--preset", "seed", "--crop", "2", "--data-dir", d, "--output-dir", str(w / "c2")), 2),
            "train --tta 3 (5 or 9 views)": lambda: clean(cli(
                "train", "--tta", "3", "--data-dir", d, "--output-dir", str(w / "t1")), 2),
            "train --preset seed --tta 5": lambda: clean(cli(
                "train", "--preset", "seed", "--tta", "5", "--data-dir", d, "--output-dir", str(w / "t2")), 2),
            "train --elastic 20 (pixels)": lambda: clean(cli(
                "train", "--elastic", "20", "--data-dir", d, "--output-dir", str(w / "e1")), 2),
            "train --dropout 1": lambda: clean(cli(
                "train", "--dropout", "1", "--data-dir", d, "--output-dir", str(w / "e2")), 2),
            "train --depth 8 (4, 5 or 6 convs)": lambda: clean(cli(
                "train", "--depth", "8", "--data-dir", d, "--output-dir", str(w / "d1")), 2),
            "train --preset seed --depth 6": lambda: clean(cli(
                "train", "--preset", "seed", "--depth", "6", "--data-dir", d, "--output-dir", str(w / "d2")), 2),
            "a space searching tta 4": lambda: self.base.write_and_run(
                w / "ttas.yaml", "search:\n  tta: {choice: [1, 4]}\n",
                lambda p: cli("tune", "--space", str(p), "--data-dir", d, "--storage-path", str(w / "sw"))),
            "a space fixing val_size 0 (a sweep ranks on validation)": lambda: self.base.write_and_run(
                w / "refit.yaml", "fixed: {val_size: 0}\nsearch:\n  lr: {uniform: [0.001, 0.01]}\n",
                lambda p: cli("tune", "--space", str(p), "--data-dir", d, "--storage-path", str(w / "sw"))),
            "a space searching crop 6": lambda: self.base.write_and_run(
                w / "crops.yaml", "search:\n  crop: {choice: [3, 6]}\n",
                lambda p: cli("tune", "--space", str(p), "--data-dir", d, "--storage-path", str(w / "sw"))),
        }
        return {f"[19] {name}": case for name, case in cases.items()}


class Issue41:
    """The cases of issue 41: sweeps stopped at any moment, trackers, the run catalog, old corners."""

    def __init__(self, base: Cases) -> None:
        self.base, self.work, self.data = base, base.work / "i41", str(base.data)
        self.work.mkdir()
        self.space = self.work / "space.yaml"
        self.space.write_text("fixed: {epochs: 3, width: 8, batch_size: 32, val_size: 100, mixed_precision: 'no'}\n"
                              "search:\n  lr: {loguniform: [0.005, 0.02]}\n")

    def all(self) -> dict[str, Callable[[], str]]:
        d, w, r = self.data, self.work, str(self.base.run)
        train = ("train", "--data-dir", d, *TINY)
        mlflow = lambda uri, name="m": lambda: clean(cli(*train, "--output-dir", str(w / name), "--log-with", "mlflow",  # noqa: E731
                                                         env={"MLFLOW_TRACKING_URI": uri.format(w=w)}, cwd=w), 2) \
            or ("created the store's folder" if Path("/nonexistent").exists() else "")
        cases: dict[str, Callable[[], str]] = {
            "tune SIGKILL just after Ray's first save, then --resume": lambda: self.stopped_sweep("k1", signal.SIGKILL),
            "tune SIGTERM mid-trial (exit 75), then --resume": lambda: self.stopped_sweep("k2", signal.SIGTERM),
            "tune Ctrl-C mid-trial (exit 130), then --resume": lambda: self.stopped_sweep("k3", signal.SIGINT),
            "the same tune --name twice at once": self.two_sweeps,
            "compare --output RUN/.lock --overwrite (another run's lock)": lambda: self.base.same(
                self.base.copy("i41-l1"), lambda c: cli("compare", r, str(self.base.copy("i41-l1b")), "--output",
                                                    str(c / ".lock"), "--overwrite"), 2),
            "compare --output RUN/model.onnx --overwrite": self.onnx_kept,
            "trackers.json naming an Aim repository outside the run": self.aim_outside,
            "MLFLOW_TRACKING_URI=http://127.0.0.1:1 (nothing listening)": mlflow("http://127.0.0.1:1", "m1"),
            "MLFLOW_TRACKING_URI a file store below a file": mlflow(f"{self.base.run}/config.json/store", "m2"),
            "MLFLOW_TRACKING_URI=nonsense://x": mlflow("nonsense://x", "m3"),
            "MLFLOW_TRACKING_URI a sqlite file that is not a database": mlflow(f"sqlite:///{self.base.run}/config.json", "m4"),
            "MLFLOW_TRACKING_URI an unwritable sqlite path": mlflow("sqlite:////proc/x.db", "m5"),
            "MLFLOW_TRACKING_URI=sqlite:////nonexistent/dir/x.db": mlflow("sqlite:////nonexistent/dir/x.db", "m6"),
            "MLFLOW_EXPERIMENT_NAME of 600 characters": lambda: clean(cli(
                *train, "--output-dir", str(w / "m7"), "--log-with", "mlflow", cwd=w,
                env={"MLFLOW_TRACKING_URI": f"sqlite:///{w}/ok.db", "MLFLOW_EXPERIMENT_NAME": "x" * 600}), 2),
            "trackers.json naming an MLflow run the store lacks": self.mlflow_run_missing,
            "the signing key a folder": lambda: self.key("folder"),
            "the signing key a fifo": lambda: self.key("fifo"),
            "the signing key readable by everyone (0644)": lambda: self.key("0644"),
            "a fifo planted in a sweep folder, then --resume": self.fifo_in_sweep,
            "config.json's data_dir outside, then evaluate": self.data_outside,
            "runs of runs with values of other types, a deep line, NaN": self.hostile_runs,
            "compare --output of 300 characters": lambda: clean(cli("compare", r, str(self.base.copy("i41-n1")), "--output",
                                                                    str(w / LONG)), 2),
            "tune --name of 300 characters": lambda: clean(cli("tune", "--space", str(self.space), "--data-dir", d,
                                                               "--storage-path", str(w / "sw"), "--name", LONG), 2),
            "a search space with a key given twice": lambda: self.base.write_and_run(
                w / "dup.yaml", "search:\n  lr: {uniform: [0.001, 0.01]}\n  lr: {uniform: [0.1, 1]}\n",
                lambda p: cli("tune", "--space", str(p), "--data-dir", d, "--storage-path", str(w / "sw"))),
            "--resume after SIGKILL before the first checkpoint: the advice leads out": self.advice,
            "--resume with status.json a folder": self.status_folder,
            "export of a missing run": lambda: clean(cli("export", str(w / "nope")), 2) or (
                "" if "run folder" in cli("export", str(w / "nope")).stderr else "speaks of --output"),
            "Ctrl-C while Python exits after a command": self.ctrl_c_at_exit,
            "a real full disk (ENOSPC) at a checkpoint": self.enospc,
            "a real full disk (ENOSPC) under a sweep": lambda: self.enospc(sweep=True),
        }
        return {f"[41] {name}": case for name, case in cases.items()}

    # -- sweeps ------------------------------------------------------------------------------------
    def tune(self, name: str, *extra: str) -> list[str]:
        return ["tune", "--space", str(self.space), "--data-dir", self.data, "--storage-path", str(self.work / "sw"),
                "--name", name, "--num-samples", "2", "--scheduler", "fifo", *extra]

    def stopped_sweep(self, name: str, signum: int) -> str:
        """Stop a sweep (SIGKILL: just after Ray's first save; else at its first epoch), then resume it."""
        env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        proc = subprocess.Popen([sys.executable, "-m", "mnist_addition", *self.tune(name)], stderr=subprocess.PIPE,
                                text=True, env=env)
        sweep, lines = self.work / "sw" / name, []
        while proc.poll() is None:
            if signum == signal.SIGKILL and list(sweep.glob("experiment_state-*.json")):
                break
            line = proc.stderr.readline() if signum != signal.SIGKILL else ""
            lines.append(line)
            if " epoch 1/" in line:
                break
            time.sleep(0 if line else 0.01)
        proc.send_signal(signum)
        rest = proc.communicate(timeout=300)[1]
        if signum != signal.SIGKILL:
            problem = clean(subprocess.CompletedProcess([], proc.returncode, "", "".join(lines) + rest),
                            75 if signum == signal.SIGTERM else 130)
            if problem:
                return f"stopping: {problem}"
            if (sweep / "best_config.json").exists() or "stopped early" in (sweep / "trials.csv").read_text():
                return "an interrupted sweep looks finished"
        resumed = cli("tune", "--resume", "--name", name, "--storage-path", str(self.work / "sw"))
        problem = clean(resumed, 0)
        return problem or ("" if (sweep / "best_config.json").exists() else "no best_config.json after the resume")

    def two_sweeps(self) -> str:
        env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
        first = subprocess.Popen([sys.executable, "-m", "mnist_addition", *self.tune("twice")], stderr=subprocess.PIPE,
                                 text=True, env=env)
        time.sleep(0.5)
        second = cli(*self.tune("twice"))
        first.communicate(timeout=600)
        return clean(second, 2) or ("" if "in use by process" in second.stderr or "already exists" in second.stderr
                                    else second.stderr[-200:])

    def fifo_in_sweep(self) -> str:
        name = "fifo"
        if cli(*self.tune(name)).returncode != 0:
            return "the sweep to plant in did not run"
        os.mkfifo(self.work / "sw" / name / "planted.pkl")
        return clean(cli("tune", "--resume", "--name", name, "--storage-path", str(self.work / "sw")), 2)

    def key(self, how: str) -> str:
        home = self.work / f"key-{how}"
        key = home / "mnist-addition" / "sweep-signing.key"
        key.parent.mkdir(parents=True)
        if how == "folder":
            key.mkdir()
        elif how == "fifo":
            os.mkfifo(key)
        else:
            key.write_bytes(os.urandom(32))
            key.chmod(0o644)
        return clean(cli(*self.tune(f"key-{how}"), config_home=str(home)), 2)

    # -- trackers ----------------------------------------------------------------------------------
    def aim_outside(self) -> str:
        run = self.base.unfinished("i41-a1")
        outside = self.work / "outside-aim"
        (run / "trackers.json").write_text(json.dumps({"aim": {"run_hash": "0" * 24, "repo": str(outside / ".aim")}}))
        problem = clean(cli("train", "--resume", str(run), "--log-with", "aim", cwd=self.work), 2)
        return problem or ("created the outside folder" if outside.exists() else "")

    def mlflow_run_missing(self) -> str:
        run = self.base.unfinished("i41-a2")
        uri = f"sqlite:///{self.work}/ok.db"
        (run / "trackers.json").write_text(json.dumps({"mlflow": {"run_id": "f" * 32, "tracking_uri": uri}}))
        return clean(cli("train", "--resume", str(run), "--log-with", "mlflow", cwd=self.work,
                         env={"MLFLOW_TRACKING_URI": uri}), 2)

    # -- runs, run folders, corners ----------------------------------------------------------------
    def onnx_kept(self) -> str:
        run = self.base.copy("i41-x1")
        (run / "model.onnx").write_bytes(b"its own export")
        problem = clean(cli("compare", str(run), str(self.base.run), "--output", str(run / "model.onnx"), "--overwrite"), 2)
        return problem or ("" if (run / "model.onnx").read_bytes() == b"its own export" else "replaced model.onnx")

    def data_outside(self) -> str:
        run = self.base.copy("i41-d1")
        saved = json.loads((run / "config.json").read_text())
        saved["config"]["data_dir"] = str(self.work / "elsewhere")
        (run / "config.json").write_text(json.dumps(saved))
        problem = clean(cli("evaluate", str(run)), 1)
        return problem or ("created the folder config.json names" if (self.work / "elsewhere").exists() else "")

    def hostile_runs(self) -> str:
        root = self.work / "hostile"
        for i, (width, epochs, preset) in enumerate((("abc", [1], {"x": 1}), (7, 2, "[/x]"))):
            run = shutil.copytree(self.base.run, root / f"h{i}")
            saved = json.loads((run / "config.json").read_text())
            saved["config"].update(width=width, epochs=epochs, preset=preset)
            (run / "config.json").write_text(json.dumps(saved))
        with (root / "h0" / "metrics.jsonl").open("a") as f:
            f.write("[" * 100_000 + "]" * 100_000 + "\n")
        final = json.loads((root / "h0" / "metrics.json").read_text())
        final["val"]["sum_acc"] = float("nan")
        (root / "h0" / "metrics.json").write_text(json.dumps(final))
        for args in (["--sort", "width"], ["--sort", "preset", "--json"], []):
            done = cli("runs", str(root), *args)
            problem = clean(done, 0) or ("NaN in --json" if "NaN" in done.stdout else "")
            if problem:
                return f"runs {' '.join(args)}: {problem}"
        return ""

    def advice(self) -> str:
        run = self.base.copy("i41-v1")
        shutil.rmtree(run / "checkpoints")
        for name in ("metrics.json", "model.safetensors", "metrics.jsonl"):
            (run / name).unlink()
        refused = cli("train", "--resume", str(run))
        if clean(refused, 2):
            return clean(refused, 2)
        command = refused.stderr.strip().split("start it again with  ")[-1].split()
        return clean(cli(*command[1:]), 0) if command[:2] == ["mnist-addition", "train"] else "no command given"

    def status_folder(self) -> str:
        run = self.base.unfinished("i41-s1")
        (run / "status.json").unlink(missing_ok=True)
        (run / "status.json").mkdir()
        return clean(cli("train", "--resume", str(run)), 2)

    def ctrl_c_at_exit(self) -> str:
        """Ctrl-C once the command is done, while Python runs its clean-up at exit."""
        inject = "import atexit, os, signal\natexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
        done = cli("runs", str(self.base.run), inject=inject)
        return clean(done, 130) or ("" if "interrupted while exiting" in done.stderr else "another line")

    def enospc(self, sweep: bool = False) -> str:
        """A small tmpfs filled by a run's checkpoints, or by a sweep (root only: mounting needs it)."""
        mount = self.work / ("small-sweep" if sweep else "small")
        mount.mkdir()
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={200 if sweep else 300}k", "tmpfs",
                                                str(mount)]).returncode:
            return ""  # not root here: the in-process test simulates ENOSPC instead
        try:
            if sweep:
                return clean(cli("tune", "--space", str(self.space), "--data-dir", self.data, "--storage-path",
                                 str(mount), "--name", "full", "--num-samples", "2", "--scheduler", "fifo"), 2)
            done = cli("train", "--data-dir", self.data, "--output-dir", str(mount / "run"), "--width", "10", "--epochs",
                       "3", "--batch-size", "32", "--val-size", "100", "--mixed-precision", "no", "--cpu",
                       "--checkpoint-every", "5", "--keep-checkpoints", "3")
            left = [p.name for p in (mount / "run" / "checkpoints").glob(".tmp-*")] if (mount / "run").exists() else []
            return clean(done, 2) or (f"left {left[0]}" if left else "")
        finally:
            subprocess.run(["umount", str(mount)])

BOMB = 'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n'
MANY = "search:\n  width: {choice: [%s]}\n  eval_batch_size: {choice: [%s]}\n" % (
    ", ".join(str(8 + i) for i in range(3000)), ", ".join(str(8 + i) for i in range(3000)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run only the cases whose name holds this text")
    only = parser.parse_args().only
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")  # the sweep signing key of this run only
        cases = Cases(Path(tmp))
        results = {}
        start = time.perf_counter()
        for name, case in cases.all().items():
            if only not in name:
                continue
            try:
                results[name] = case()
            except Exception as e:  # a case that cannot even be set up is not clean either
                results[name] = f"case failed: {type(e).__name__}: {e}"
            print(f"{'clean' if not results[name] else 'NOT CLEAN: ' + results[name][:200]:<40} {name}", flush=True)
    good = sum(1 for problem in results.values() if not problem)
    print(f"\n{good} of {len(results)} bad inputs and faults answered cleanly ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
