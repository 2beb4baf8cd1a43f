"""Files in folders that someone else may have prepared: written without following a link, read
only inside their folder, locked with ``flock``. Standard library only.

Run and sweep folders travel between people, so any name in them may be a planted symbolic link
(``curves.png -> ~/.bashrc``). Every file the project writes goes through ``write_bytes`` /
``write_via``: the data goes into a new temporary file beside the target (``O_CREAT | O_EXCL``
never opens an existing name, link or not) which is then renamed onto the target. A rename
replaces a link at the final name instead of writing through it, and the old file stays whole
until the new one is.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from pathlib import Path
from typing import Callable

from .names import stamp

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def temp_path(path: Path, suffix: str = ".tmp") -> Path:
    """A fresh hidden name beside ``path`` (kept short: a long target name must not make it too long)."""
    return path.with_name(f".{path.name[:80]}.{secrets.token_hex(4)}{suffix}")


def _create(path: Path) -> tuple[int, Path]:
    for _ in range(16):  # 2**32 names: a clash is a planted file, not bad luck
        tmp = temp_path(path)
        try:
            return os.open(tmp, _CREATE, 0o666), tmp  # the umask applies, as for any new file
        except FileExistsError:
            continue
        except OSError as e:
            raise _named(e, path) from None
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, never following a link at ``path``. OSError (disk
    full, read-only, ``path`` a folder) propagates after the temporary file is removed."""
    def fill(fd: int, tmp: Path) -> None:
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    _replace(Path(path), fill)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def write_via(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """For libraries that want a file name: ``write(tmp)`` fills a new temporary file that this
    process created, which then replaces ``path`` as in ``write_bytes``."""
    def fill(fd: int, tmp: Path) -> None:
        os.close(fd)
        write(tmp)

    _replace(Path(path), fill)


def _replace(path: Path, fill: Callable[[int, Path], None]) -> None:
    fd, tmp = _create(path)
    try:
        fill(fd, tmp)
        os.replace(tmp, path)  # a rename: a link at ``path`` is replaced, not followed
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise _named(e, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _named(error: OSError, path: Path) -> OSError:
    """The error as the user should see it: about ``path``, not the temporary file beside it."""
    return OSError(error.errno, error.strerror or str(error), str(path))


def make_temp_dir(parent: Path, prefix: str) -> Path:
    """A new, empty folder ``parent/prefix<random>`` that nobody can have prepared."""
    for _ in range(16):
        folder = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary folder name", str(parent))


def is_real_dir(path: Path) -> bool:
    """A folder itself, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def is_real_file(path: Path) -> bool:
    """A regular file itself, not a link to one."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path``, links followed, lies within ``root`` (links followed too)."""
    top, real = os.path.realpath(root), os.path.realpath(path)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def make_dirs(path: Path) -> list[Path]:
    """``mkdir -p``, returning the folders this call created (outermost first)."""
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        path = path.parent
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
            created.append(folder)
        except FileExistsError:  # made by someone else meanwhile: theirs, not ours to remove
            pass
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (innermost last in the list) that are empty."""
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (someone else's files), or gone: leave it and its parents


class FolderLock:
    """An exclusive ``flock`` on one file: held until ``release`` or until the process dies (the
    kernel releases it, so a killed run never blocks its own resume). The holder writes a note
    (who it is) into the lock file itself, so whoever is refused can say who holds it. A link
    planted at the lock's name is replaced, never opened."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, note: bytes = b"") -> bool:
        """Take the lock and write ``note`` into it; False if another process holds it. OSError if
        the file cannot be made."""
        fd = _open_lock(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, note, 0)
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def lock_note(path: Path, wait: float = 2.0) -> bytes:
    """The note of the process holding ``path`` (b"" if none could be read). A holder writes its
    note just after it takes the lock: an empty note is read again for up to ``wait`` seconds."""
    import time

    deadline = time.monotonic() + wait
    while True:
        try:
            fd = _open_lock(path, os.O_RDONLY)
            try:
                note = os.pread(fd, 4096, 0)
            finally:
                os.close(fd)
        except OSError:
            return b""
        if note or time.monotonic() > deadline:
            return note
        time.sleep(0.05)


def lock_holder(path: Path) -> str:
    """Who holds the lock file ``path``, as its note says (``{"pid", "host", "since"}``)."""
    import json

    try:
        owner = json.loads(lock_note(path))
        return f"process {owner['pid']} on {owner['host']} (since {owner['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def holder_note() -> bytes:
    """The note a lock's holder writes: this process, this machine, now."""
    import json
    import platform

    return json.dumps({"pid": os.getpid(), "host": platform.node(),
                       "since": stamp()}).encode()


def lock_is_held(path: Path) -> bool:
    """Whether another process holds the lock file ``path`` (a shared probe: it never takes a lock
    a writer could be refused by for longer than this call)."""
    try:
        fd = _open_lock(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EINVAL):  # a link or a fifo: not a lock anyone holds
            return False
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _open_lock(path: Path, flags: int) -> int:
    for attempt in range(2):
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP and attempt == 0 and flags & os.O_CREAT:
                os.unlink(path)  # a link where the lock lives: never a lock of ours
                continue
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a fifo or device planted at the lock's name
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return fd
    raise AssertionError("unreachable")
