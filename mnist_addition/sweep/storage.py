"""The sweep's folder on any storage Ray accepts: a local path or a URI (s3://, gs://, file://...).

Everything goes through ``pyarrow.fs``, as Ray itself does, so the driver and every trial write to
the same ``STORAGE/NAME/`` whether it is a local disk, a shared mount or a bucket. On a local disk
files are written as ``files`` writes them (a link planted at a name is replaced, never written
through).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Iterator

from ..core.errors import first_line
from ..rundir import files


def experiment_uri(storage_path: str, name: str) -> str:
    return f"{storage_path.rstrip('/')}/{name}"


def absolute(storage_path: str) -> str:
    """Local paths made absolute (trials run elsewhere); URIs as they are."""
    return storage_path if "://" in storage_path else os.path.abspath(os.path.expanduser(storage_path))


class Store:
    """Files in one folder of a (possibly remote) filesystem."""

    def __init__(self, uri: str) -> None:
        import pyarrow.fs

        from .options import SweepError

        try:
            self.fs, self.root = pyarrow.fs.FileSystem.from_uri(uri)  # an absolute path or a URI
        except (ValueError, NotImplementedError, OSError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise SweepError(f"--storage-path: {uri} is not a storage pyarrow can open ({first_line(e, 100)}): "
                             "use a local folder or a URI such as s3://bucket/sweeps or gs://bucket/sweeps") from None
        self.uri = uri
        self.local = isinstance(self.fs, pyarrow.fs.LocalFileSystem)

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def exists(self, name: str = "") -> bool:
        import pyarrow.fs

        return self.fs.get_file_info(self._path(name)).type != pyarrow.fs.FileType.NotFound

    def write(self, name: str, data: bytes) -> None:
        """Write ``name`` whole (folders are created as needed)."""
        self.fs.create_dir(self._path(name).rsplit("/", 1)[0], recursive=True)
        if self.local:
            files.write_bytes(self._path(name), data)
            return
        with self.fs.open_output_stream(self._path(name)) as f:  # an object store: no links, whole objects
            f.write(data)

    def move(self, name: str, to: str) -> None:
        """Rename ``name`` to ``to`` in the folder (a link or fifo moves as itself, never opened)."""
        self.fs.create_dir(self._path(to).rsplit("/", 1)[0], recursive=True)
        if self.local:
            os.replace(self._path(name), self._path(to))
            return
        self.fs.move(self._path(name), self._path(to))

    def walk(self) -> list[tuple[str, str]]:
        """Every entry below the folder as (relative path, kind): "file", "link" (a symbolic link,
        never followed) or "other" (a fifo, socket or device: never opened, it could block a read)."""
        import pyarrow.fs

        if self.local:
            found = []
            for top, dirs, names in os.walk(self.root):  # links are listed, never followed
                for name in [*names, *(d for d in dirs if os.path.islink(os.path.join(top, d)))]:
                    path = os.path.join(top, name)
                    mode = os.lstat(path).st_mode
                    kind = "link" if stat.S_ISLNK(mode) else "file" if stat.S_ISREG(mode) else "other"
                    found.append((os.path.relpath(path, self.root).replace(os.sep, "/"), kind))
            return sorted(found)
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self.root, recursive=True))
        return sorted((info.path[len(self.root):].lstrip("/"), "file") for info in infos
                      if info.type == pyarrow.fs.FileType.File)

    def chunks(self, name: str, limit: int, block: int = 1 << 20) -> Iterator[bytes]:
        """The bytes of ``name`` in blocks (never the whole file in memory); OSError (EFBIG) before
        anything is read if it is larger than ``limit``, or (EINVAL) if it is not a regular file."""
        import pyarrow.fs

        info = self.fs.get_file_info(self._path(name))
        if self.local and not files.is_real_file(Path(self._path(name))) or info.type != pyarrow.fs.FileType.File:
            raise OSError(errno.EINVAL, "not a regular file", self.where(name))
        if info.size > limit:
            raise OSError(errno.EFBIG, f"{info.size:,} bytes, more than the {limit:,} a file of a sweep may hold",
                          self.where(name))
        with self.fs.open_input_stream(self._path(name)) as f:
            while block_bytes := f.read(block):
                yield block_bytes

    def read_small(self, name: str, limit: int = 16 << 20) -> bytes:
        """A file we wrote that must be small (JSON): whole, after the checks of ``chunks``."""
        return b"".join(self.chunks(name, limit))

    def upload(self, local: Path, name: str, skip: tuple[str, ...] = ()) -> int:
        """Copy the files of the local folder ``local`` to ``name``, leaving out folders named in
        ``skip`` (at any depth: each seed's of a K-seed run); returns how many files were copied."""
        copied = 0
        for path in sorted(local.rglob("*")):
            relative = path.relative_to(local)
            if path.is_file() and not set(relative.parts[:-1]) & set(skip) and not path.name.endswith(".tmp"):
                self.write(f"{name}/{relative.as_posix()}", path.read_bytes())
                copied += 1
        return copied

    def where(self, name: str) -> str:
        return f"{self.uri}/{name}"
