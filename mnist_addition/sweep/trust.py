"""What ``tune --resume`` trusts: Ray's state files, signed with this user's key at every save.

Ray keeps a sweep's state as pickles (``tuner.pkl``, the searcher's ``*-state-*`` files, each
trial's ``params.pkl`` / ``error.pkl``) and as JSON that embeds pickles
(``experiment_state-*.json``); restoring a sweep unpickles them, so a sweep folder written by
someone else could run code on the machine that resumes it. The answer here is Jupyter's for
notebooks: a secret key that only this user has (``$XDG_CONFIG_HOME/mnist-addition/
sweep-signing.key``, default ``~/.config/...``, mode 0600) signs, with HMAC-SHA256, every file Ray
may unpickle, each time Ray saves its state, and ``--resume`` checks every such file against the
signatures before Ray reads anything. A folder with a file that is unsigned, signed by another key
or changed since is refused in one line; nothing in it is unpickled.

Signed: every file at the top of the sweep folder (but our own results, which are never read back)
and every ``*.pkl`` below it. Not signed, and never unpickled: the trials' run folders and
checkpoints (safetensors and JSON behind their own manifest), Ray's JSON results and CSVs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path

from .options import BEST_FILE, CSV_FILE, PLOT_FILE, SUMMARY_FILE, SweepError
from .storage import Store

SIGNATURES = "state-signatures.json"
KEY_FILE = "sweep-signing.key"
# At the top of a sweep folder: our results (written, never read back), the signatures themselves,
# and Ray's storage marker (its existence is checked, its bytes never read).
UNSIGNED = frozenset({CSV_FILE, BEST_FILE, PLOT_FILE, SUMMARY_FILE, SIGNATURES, ".validate_storage_marker"})
_DOMAIN = b"mnist-addition sweep state v1\0"


def key_path() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(config) / "mnist-addition" / KEY_FILE


def signing_key(create: bool) -> bytes | None:
    """This user's key (made on first use when ``create``); None if there is none."""
    path = key_path()
    try:
        return _read_key(path)
    except FileNotFoundError:
        if not create:
            return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{KEY_FILE}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)  # publish whole, never over a key another sweep made meanwhile
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return _read_key(path)
    except OSError as e:
        raise SweepError(f"cannot make the sweep signing key {path} ({e.strerror or e}): make its folder writable, "
                         "or set XDG_CONFIG_HOME to a folder of yours") from None


def _read_key(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SweepError(f"the sweep signing key {path} cannot be read ({e.strerror or e}): it must be a file of "
                         "yours; remove it to make a new one (sweeps signed with it can then not be resumed)") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        key = f.read(1024)
    if not stat.S_ISREG(info.st_mode) or len(key) < 32:
        raise SweepError(f"the sweep signing key {path} is not a key this program made: remove it to make a new one "
                         "(sweeps signed with it can then not be resumed)")
    return key


def needs_signature(relpath: str) -> bool:
    """Whether Ray may unpickle the file ``relpath`` of a sweep folder (see the module docstring)."""
    top = "/" not in relpath
    return (top and relpath not in UNSIGNED) or relpath.endswith(".pkl")


class Signer:
    """The signatures of one sweep folder, kept as Ray writes its state, and checked on resume."""

    def __init__(self, store: Store, key: bytes, signatures: dict[str, str] | None = None) -> None:
        self.store, self.key = store, key
        self.signatures: dict[str, str] = dict(signatures or {})

    @classmethod
    def new(cls, store: Store) -> "Signer":
        return cls(store, signing_key(create=True))

    @classmethod
    def verified(cls, store: Store) -> "Signer":
        """The signer of a sweep to resume: every file Ray may unpickle is signed by this user's key,
        else SweepError, before anything in the folder is read by Ray."""
        key = signing_key(create=False)
        if key is None:
            raise SweepError(f"--resume: {store.uri} was not started by you on this machine (there is no signing key "
                             f"at {key_path()}): Ray's state in it is never loaded, it could run code; start a new "
                             "sweep under another --name")
        signer = cls(store, key, _read_signatures(store))
        for relpath, is_link in store.walk():
            if is_link:
                raise SweepError(f"--resume: {store.where(relpath)} is a link: a sweep folder of ours holds none, so this "
                                 "one was altered; start a new sweep under another --name")
            if needs_signature(relpath) and not signer.matches(relpath, store.read(relpath)):
                raise SweepError(f"--resume: {store.where(relpath)} is not signed by your key (the sweep was written by "
                                 "someone else, or changed since): Ray's state is never loaded from it, it could run "
                                 "code; start a new sweep under another --name")
        return signer

    def _mac(self, relpath: str, data: bytes) -> str:
        return hmac.new(self.key, _DOMAIN + relpath.encode() + b"\0" + data, hashlib.sha256).hexdigest()

    def matches(self, relpath: str, data: bytes) -> bool:
        return hmac.compare_digest(self.signatures.get(relpath, ""), self._mac(relpath, data))

    def sign(self, relpath: str, data: bytes) -> None:
        self.signatures[relpath] = self._mac(relpath, data)

    def sign_folder(self, folder: Path) -> None:
        """Sign the files of a local copy of the sweep folder that need it (Ray's staging folder)."""
        for path in sorted(folder.rglob("*")):
            relpath = path.relative_to(folder).as_posix()
            if relpath != SIGNATURES and needs_signature(relpath) and path.is_file() and not path.is_symlink():
                self.sign(relpath, path.read_bytes())

    def sign_stored(self) -> None:
        """Sign what the storage holds now (after Ray's last save, when the sweep ends)."""
        for relpath, is_link in self.store.walk():
            if needs_signature(relpath) and not is_link:
                self.sign(relpath, self.store.read(relpath))

    def payload(self) -> bytes:
        return json.dumps({"format": 1, "files": self.signatures}, indent=1, sort_keys=True).encode()

    def save(self) -> None:
        self.store.write(SIGNATURES, self.payload())


def _read_signatures(store: Store) -> dict[str, str]:
    try:
        data = json.loads(store.read(SIGNATURES)) if store.exists(SIGNATURES) else None
    except (OSError, ValueError, RecursionError):
        data = None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise SweepError(f"--resume: {store.where(SIGNATURES)} is missing or unreadable, so nothing proves the sweep is "
                         "yours: Ray's state is never loaded from it, it could run code; start a new sweep under "
                         "another --name")
    return files
