"""What ``tune --resume`` trusts: Ray's state files, signed with this user's key at every save.

Ray keeps a sweep's state as pickles (``tuner.pkl``, the searcher's ``*-state-*`` files, each
trial's ``params.pkl`` / ``error.pkl``) and as JSON that embeds pickles
(``experiment_state-*.json``); restoring a sweep unpickles them, so a sweep folder written by
someone else could run code on the machine that resumes it. The answer here is Jupyter's for
notebooks: a secret key that only this user has (``$XDG_CONFIG_HOME/mnist-addition/
sweep-signing.key``, default ``~/.config/...``, mode 0600, refused like ssh refuses a private key
when others can read it) signs, with HMAC-SHA256, every file Ray may unpickle, each time Ray saves
its state, and ``--resume`` checks every such file against the signatures before Ray reads
anything.

Signing races Ray: Ray writes its state into a staging folder, and uploads it to the sweep folder
in the background, file by file. The signatures of each new version are therefore written to the
sweep folder (atomically) *before* the upload starts, beside those of the versions before it, so
that whenever the driver is killed each file there is a version it signed: the old one or the new
one. ``sweep.json`` is signed before it is written, so it is never without its signature.

What ``--resume`` does with a file that fails (a kill in the middle of Ray's write of it, or a file
changed or planted since): it is never unpickled. If ``sweep.json`` itself is signed (the sweep is
this user's), the sweep goes on without Ray's state (``rebuild``); if not, or if the folder holds a
link, a fifo or a signature file it cannot read, it is refused in one line.

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

from ..core.errors import first_line
from ..rundir.names import (
    BEST_FILE,
    CSV_FILE,
    LOCK,
    PARETO_CSV,
    PARETO_PLOT,
    PLOT_FILE,
    SIGNATURES,
    SUMMARY_FILE,
    SWEEP_FILE,
    UNVERIFIED,
)
from .options import SweepError
from .storage import Store

KEY_FILE = "sweep-signing.key"
# At the top of a sweep folder: our results (written, never read back), the signatures themselves,
# the lock, and Ray's storage marker (its existence is checked, its bytes never read).
UNSIGNED = frozenset({CSV_FILE, BEST_FILE, PLOT_FILE, SUMMARY_FILE, PARETO_CSV, PARETO_PLOT, SIGNATURES, LOCK,
                      ".validate_storage_marker"})
HISTORY = 4  # signatures kept per file: the versions Ray's background upload may still leave there
MAX_STATE_BYTES = 256 << 20  # a state file of Ray's is kilobytes; anything this large is not one
MAX_KEY_BYTES = 1024
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
    """The key file, read only if it is a small regular file of this user's that nobody else can
    read (a fifo is opened without waiting, a folder or a link is never read)."""
    remove = "remove it to make a new one (sweeps signed with it can then not be resumed)"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SweepError(f"the sweep signing key {path} cannot be read ({e.strerror or e}): it must be a file of "
                         f"yours; {remove}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_KEY_BYTES:
            raise SweepError(f"the sweep signing key {path} is not a key this program made (not a small regular "
                             f"file): {remove}")
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            # ssh's rule for a private key: anyone who could read it could forge a sweep's signatures
            raise SweepError(f"the sweep signing key {path} can be read by others (mode {stat.S_IMODE(info.st_mode):04o}"
                             f"{'' if info.st_uid == os.getuid() else ', another owner'}), so they could sign sweeps "
                             f"as you: chmod 600 {path} if nobody else could have copied it, else {remove}")
        key = os.read(fd, MAX_KEY_BYTES)
    finally:
        os.close(fd)
    if len(key) < 32:
        raise SweepError(f"the sweep signing key {path} is not a key this program made (too short): {remove}")
    return key


def needs_signature(relpath: str) -> bool:
    """Whether Ray may unpickle the file ``relpath`` of a sweep folder (see the module docstring).
    What ``rebuild`` set aside is never read again, by Ray or by us."""
    if relpath.split("/", 1)[0] == UNVERIFIED:
        return False
    top = "/" not in relpath
    return (top and relpath not in UNSIGNED) or relpath.endswith(".pkl")


class Signer:
    """The signatures of one sweep folder, kept as Ray writes its state, and checked on resume.

    ``unverified`` (after ``verified``): the files Ray may unpickle that no signature of this
    user's matches, which ``--resume`` must not let Ray read."""

    def __init__(self, store: Store, key: bytes, signatures: dict[str, list[str]] | None = None) -> None:
        self.store, self.key = store, key
        self.signatures: dict[str, list[str]] = {k: list(v) for k, v in (signatures or {}).items()}
        self.unverified: list[str] = []

    @classmethod
    def new(cls, store: Store) -> "Signer":
        return cls(store, signing_key(create=True))

    @classmethod
    def verified(cls, store: Store) -> "Signer":
        """The signer of a sweep to resume, after checking every file Ray may unpickle (before Ray
        reads any). SweepError when the sweep is not provably this user's: no key, an unreadable
        signature file, ``sweep.json`` unsigned, a link or a fifo in the folder."""
        key = signing_key(create=False)
        if key is None:
            raise SweepError(f"--resume: {store.uri} was not started by you on this machine (there is no signing key "
                             f"at {key_path()}): Ray's state in it is never loaded, it could run code; start a new "
                             "sweep under another --name")
        entries = store.walk()
        strange = next(((relpath, kind) for relpath, kind in entries if kind != "file"), None)
        if strange is not None:
            relpath, kind = strange
            what = "a link" if kind == "link" else "not a regular file (a fifo, socket or device)"
            raise SweepError(f"--resume: {store.where(relpath)} is {what}: a sweep folder of ours holds none, so this "
                             "one was altered; remove it, or start a new sweep under another --name")
        signer = cls(store, key, _read_signatures(store))
        if not signer.check(SWEEP_FILE):
            raise SweepError(f"--resume: {store.where(SWEEP_FILE)} is not signed by your key (the sweep was written by "
                             "someone else, or changed since): Ray's state is never loaded from it, it could run "
                             "code; start a new sweep under another --name")
        signer.unverified = [relpath for relpath, _ in entries if needs_signature(relpath) and not signer.check(relpath)]
        return signer

    def _mac(self, relpath: str, blocks: object) -> str:
        mac = hmac.new(self.key, _DOMAIN + relpath.encode() + b"\0", hashlib.sha256)
        for block in blocks:  # type: ignore[attr-defined]
            mac.update(block)
        return mac.hexdigest()

    def check(self, relpath: str) -> bool:
        """Whether the stored ``relpath`` is a version this user's key signed. An unsigned path is
        refused without a read; a signed one is read in blocks, at most ``MAX_STATE_BYTES``."""
        known = self.signatures.get(relpath)
        if not known:
            return False
        try:
            mac = self._mac(relpath, self.store.chunks(relpath, MAX_STATE_BYTES))
        except OSError:
            return False
        return any(hmac.compare_digest(mac, k) for k in known)

    def sign(self, relpath: str, data: bytes) -> None:
        """Add the signature of this version of ``relpath`` (the last few stay valid)."""
        mac = self._mac(relpath, [data])
        self.signatures[relpath] = [mac, *(k for k in self.signatures.get(relpath, []) if k != mac)][:HISTORY]

    def forget(self, relpath: str) -> None:
        self.signatures.pop(relpath, None)

    def sign_folder(self, folder: Path) -> None:
        """Sign the files of a local copy of the sweep folder that need it (Ray's staging folder)."""
        for path in sorted(folder.rglob("*")):
            relpath = path.relative_to(folder).as_posix()
            if relpath != SIGNATURES and needs_signature(relpath) and path.is_file() and not path.is_symlink():
                self.sign(relpath, path.read_bytes())

    def sign_stored(self, relpath: str) -> None:
        """Sign ``relpath`` as the storage holds it (``tuner.pkl``, which Ray writes straight there)."""
        self.sign(relpath, self.store.read_small(relpath, MAX_STATE_BYTES))

    def payload(self) -> bytes:
        return json.dumps({"format": 2, "files": self.signatures}, indent=1, sort_keys=True).encode()

    def save(self) -> None:
        self.store.write(SIGNATURES, self.payload())


def _read_signatures(store: Store) -> dict[str, list[str]]:
    """The signature file: {"format": 2, "files": {path: [hex, ...]}}, newest signature first."""
    problem = None
    try:
        data = json.loads(store.read_small(SIGNATURES)) if store.exists(SIGNATURES) else None
    except (OSError, ValueError, RecursionError) as e:
        data, problem = None, first_line(e, 80)
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, list) and
                                              all(isinstance(x, str) for x in v) for k, v in files.items()):
        raise SweepError(f"--resume: {store.where(SIGNATURES)} is missing or unreadable{f' ({problem})' if problem else ''}, "
                         "so nothing proves the sweep is yours: Ray's state is never loaded from it, it could run "
                         "code; start a new sweep under another --name")
    return files
