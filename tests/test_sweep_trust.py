"""What ``tune --resume`` trusts, without Ray: the signatures of a sweep folder, the signing key, and
which earlier trial a rebuilt sweep's trial continues. (End to end, with Ray: test_sweep.py.)"""

from __future__ import annotations

import os
import signal
import stat
from contextlib import contextmanager
from pathlib import Path

import pytest

from mnist_addition.commands.cli import main
from mnist_addition.sweep import trust
from mnist_addition.sweep.options import SweepError
from mnist_addition.sweep.rebuild import Earlier, match
from mnist_addition.sweep.storage import Store
from mnist_addition.sweep.trust import HISTORY, Signer


@contextmanager
def at_most(seconds: int):
    """Fail instead of hanging: a read of a fifo would wait forever."""
    def hung(*args):
        raise AssertionError(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def signed_folder(root: Path, files: dict[str, bytes]) -> Path:
    """A sweep folder holding ``files`` (sweep.json among them), each signed with this user's key."""
    folder = root / "sweep"
    store = Store(str(folder))
    signer = Signer.new(store)
    for name, data in {"sweep.json": b"{}", **files}.items():
        store.write(name, data)
        signer.sign(name, data)
    signer.save()
    return folder


def test_the_last_versions_of_a_file_verify_and_older_ones_do_not(tmp_path):
    """Ray uploads its state in the background: whichever of the last few versions a kill leaves
    there is one this user signed. Older ones, and any other bytes, are not."""
    folder = signed_folder(tmp_path, {})
    store = Store(str(folder))
    signer = Signer.verified(store)
    versions = [f"state {i}".encode() for i in range(HISTORY + 1)]
    for data in versions:
        signer.sign("experiment_state-x.json", data)
    signer.save()
    for i, data in enumerate(versions):
        (folder / "experiment_state-x.json").write_bytes(data)
        assert (Signer.verified(store).unverified == []) == (i >= 1), i  # the oldest fell out of the history
    (folder / "experiment_state-x.json").write_bytes(b"state 9")
    assert Signer.verified(store).unverified == ["experiment_state-x.json"]


def test_an_unsigned_file_is_never_read_and_a_huge_one_never_whole(tmp_path, monkeypatch):
    folder = signed_folder(tmp_path, {"big.pkl": b"x" * 100})
    (folder / "planted.pkl").write_bytes(b"payload")
    (folder / "big.pkl").write_bytes(b"x" * 5000)  # a signed name, grown past the bound
    monkeypatch.setattr(trust, "MAX_STATE_BYTES", 1000)
    read = []
    real = Store.chunks

    def chunks(self, name, limit, block=1 << 20):
        read.append(name)
        return real(self, name, limit, block)

    monkeypatch.setattr(Store, "chunks", chunks)
    signer = Signer.verified(Store(str(folder)))
    assert sorted(signer.unverified) == ["big.pkl", "planted.pkl"]
    assert "planted.pkl" not in read  # no signature under its name: nothing to compare, nothing read


@pytest.mark.parametrize("where", ["fifo.json", "trial-1/params.pkl", "state-signatures.json", "sweep.json"])
def test_a_fifo_in_a_sweep_folder_is_refused_without_waiting(where, tmp_path):
    folder = signed_folder(tmp_path, {})
    (folder / where).parent.mkdir(exist_ok=True)
    (folder / where).unlink(missing_ok=True)
    os.mkfifo(folder / where)
    with at_most(20), pytest.raises(SweepError, match="is not a regular file .a fifo, socket or device.: a sweep folder "
                                                      "of ours holds none"):
        Signer.verified(Store(str(folder)))


def test_a_sweep_json_that_is_not_signed_is_refused_and_ray_state_that_is_not_is_listed(tmp_path):
    folder = signed_folder(tmp_path, {"tuner.pkl": b"tuner"})
    (folder / "experiment_state-1.json").write_text("{}")  # written, never signed: a kill, or a plant
    assert Signer.verified(Store(str(folder))).unverified == ["experiment_state-1.json"]
    (folder / "sweep.json").write_text('{"edited": true}')
    with pytest.raises(SweepError, match="sweep.json is not signed by your key"):
        Signer.verified(Store(str(folder)))


def test_what_a_rebuild_sets_aside_is_never_checked_or_read_again(tmp_path):
    from mnist_addition.sweep.rebuild import set_aside

    folder = signed_folder(tmp_path, {"tuner.pkl": b"tuner"})
    (folder / "experiment_state-1.json").write_text("{}")
    (folder / "trial-a").mkdir()
    (folder / "trial-a" / "params.pkl").write_bytes(b"planted")
    store = Store(str(folder))
    signer = Signer.verified(store)
    assert sorted(signer.unverified) == ["experiment_state-1.json", "trial-a/params.pkl"]
    moved = set_aside(store, signer)
    assert moved == ["experiment_state-1.json", "trial-a/params.pkl", "tuner.pkl"]  # Ray's top-level state goes too
    signer.save()
    assert Signer.verified(store).unverified == []
    (aside,) = (folder / ".unverified").iterdir()
    assert (aside / "trial-a" / "params.pkl").read_bytes() == b"planted" and (folder / "sweep.json").exists()


def test_a_rebuilt_trial_continues_the_earlier_trial_with_its_number_and_values():
    a = Earlier("trial-old_00000", 0, {"lr": 0.01}, ("trial-old_00000/checkpoint_000001",))
    b = Earlier("trial-old_00001", 1, {"lr": 0.02}, ("trial-old_00001/checkpoint_000001",))
    twin = Earlier("trial-old_00002", 2, {"lr": 0.02}, ("trial-old_00002/checkpoint_000001",))
    assert match([a, b], "new_00000", {"lr": 0.01}) is a
    assert match([a, b], "new_00001", {"lr": 0.01}) is a  # the values decide when they are unique
    assert match([a, b], "new_00001", {"lr": 0.03}) is None  # a new config: trained from scratch
    assert match([a, b, twin], "new_00002", {"lr": 0.02}) is twin  # twins: the sample number decides
    assert match([a, b, twin], "deadbeef", {"lr": 0.02}) is None  # twins, no number (Optuna): neither
    assert match([a, b], "new_00001", {"lr": 0.5}, by_index_only=True) is b  # PBT: its values moved on


def _tune(tmp_path: Path, *extra: str) -> list[str]:
    space = tmp_path / "space.yaml"
    space.write_text("search:\n  lr: {uniform: [0.001, 0.01]}\n")
    return ["tune", "--space", str(space), "--storage-path", str(tmp_path / "sweeps"), "--name", "s", *extra]


@pytest.mark.parametrize("plant,says", [
    (lambda key: key.mkdir(parents=True), "is not a key this program made (not a small regular file)"),
    (lambda key: (key.parent.mkdir(parents=True), os.mkfifo(key)), "is not a key this program made"),
    (lambda key: (key.parent.mkdir(parents=True), key.write_bytes(os.urandom(32)), key.chmod(0o644)),
     "can be read by others (mode 0644), so they could sign sweeps as you: chmod 600"),
])
def test_the_signing_key_is_read_only_if_it_is_a_private_file(plant, says, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    plant(trust.key_path())
    with at_most(20):
        assert main(_tune(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err, err
    assert not (tmp_path / "sweeps").exists()  # the refusal made no folder
    if stat.S_ISREG(os.lstat(trust.key_path()).st_mode):
        assert stat.S_IMODE(os.stat(trust.key_path()).st_mode) == 0o644  # left as it was: the user decides


def test_a_new_key_is_private(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    key = trust.signing_key(create=True)
    assert len(key) == 32 and stat.S_IMODE(os.stat(trust.key_path()).st_mode) == 0o600
    assert trust.signing_key(create=False) == key


def test_a_sweep_name_too_long_for_a_folder_is_one_line_before_anything_is_made(tmp_path, capsys):
    args = _tune(tmp_path)
    args[args.index("--name") + 1] = "x" * 300
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--name is 300 bytes long, more than a folder name may be (255)" in err
    assert not (tmp_path / "sweeps").exists()
