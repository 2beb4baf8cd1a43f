"""Where the experiment trackers write, checked in seconds before a run starts (``--log-with``).

A tracker that cannot reach or write its store fails late and loudly: MLflow retries an HTTP server
that is not there for minutes, a sqlite file in a folder that does not exist or cannot be written
ends in 200 lines of SQLAlchemy, and an unknown URI scheme in a traceback. Here each store is
looked at first, with the tracker's own variables resolved as the tracker resolves them, and
every problem is one line naming the variable to fix (exit 2):

* MLflow (``MLFLOW_TRACKING_URI``, MLflow's default ``sqlite:///mlflow.db``): a folder or
  ``file:`` store must be a folder that can be made and written; a ``sqlite:`` file must be a
  SQLite database (or new) in a writable folder; an ``http(s)``/database server must accept a
  connection within ``PROBE_SECONDS``, and MLflow's HTTP retries are bounded (``MLFLOW_HTTP_REQUEST_
  MAX_RETRIES``/``_TIMEOUT`` set to ``HTTP_RETRIES``/``HTTP_TIMEOUT`` unless the user set them);
  ``MLFLOW_EXPERIMENT_NAME`` within MLflow's 500 characters; a resumed run's id must be in the store.
* Aim: the repository (the nearest ``.aim`` above the working directory, else this folder) must
  be writable; a resumed run's hash must be in it.

A store that fails once training runs does not stop it: the run's own files are what matters, so
the trackers are dropped with one warning and training goes on (``tracking``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..core.config import ConfigError
from ..core.errors import first_line, shown

PROBE_SECONDS = 3.0
HTTP_RETRIES, HTTP_TIMEOUT = "2", "10"  # MLflow's defaults: 7 retries with backoff, 120 s each
MLFLOW_NAME_LIMIT = 500  # MLflow's MAX_EXPERIMENT_NAME_LENGTH
SERVER_SCHEMES = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}
SQLITE_HEADER = b"SQLite format 3\0"


class TrackerError(ConfigError):
    """A tracker cannot be used (not installed, its store unreachable or unwritable, another store than the run's)."""


def check(names: tuple[str, ...]) -> None:
    """The stores of the trackers ``names`` (those this module knows), each within seconds."""
    if "mlflow" in names:
        check_mlflow_store()
    if "aim" in names:
        _writable(Path(aim_default_repo()), "--log-with aim: the Aim repository (the nearest .aim above this folder, "
                  "else this folder)", "run from a folder of yours, or 'aim init' in one")


def _mlflow_uri() -> tuple[str, str]:
    import mlflow

    uri = mlflow.get_tracking_uri()
    value = repr(uri) if len(uri) <= 300 else shown(uri)  # whole, to be copied, unless absurdly long
    given = "MLFLOW_TRACKING_URI" in os.environ
    return uri, f"MLFLOW_TRACKING_URI={value}" if given else f"MLflow's default store {value} (MLFLOW_TRACKING_URI unset)"


def check_mlflow_store() -> None:
    """MLflow's tracking store and experiment name, as MLflow will resolve them."""
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "")
    if len(name) > MLFLOW_NAME_LIMIT:
        raise TrackerError(f"MLFLOW_EXPERIMENT_NAME is {len(name):,} characters, more than MLflow's {MLFLOW_NAME_LIMIT}: "
                           "set a shorter one")
    uri, said = _mlflow_uri()
    parsed = urlparse(uri)
    scheme = parsed.scheme.split("+")[0].lower()
    fix = "set MLFLOW_TRACKING_URI to a folder, sqlite:///FILE or http(s)://SERVER"
    if scheme in ("", "file"):
        _check_folder(Path(parsed.path if scheme else uri).expanduser(), said, fix)
    elif scheme == "sqlite":
        _check_sqlite(uri, said, fix)
    elif scheme in SERVER_SCHEMES:
        if scheme in ("http", "https"):  # a server that stops answering: minutes of retries otherwise
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_RETRIES)
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT)
        _probe(parsed.hostname, parsed.port or SERVER_SCHEMES[scheme], said, fix)
    elif not scheme.startswith("databricks"):  # Databricks: reachable only with its own credentials
        raise TrackerError(f"{said}: MLflow has no store for the scheme {shown(scheme)}: {fix}")


def _check_folder(path: Path, said: str, fix: str) -> None:
    """A folder store: it, or the folder it will be made in, must be a writable folder."""
    for folder in [path, *path.parents]:
        if os.path.lexists(folder):
            if not folder.is_dir():
                raise TrackerError(f"{said}: {folder} is a file, not a folder: {fix}")
            _writable(folder, said, fix)
            return


def _writable(folder: Path, said: str, fix: str) -> None:
    """A file can be made in ``folder`` (tried, not guessed: root passes every permission check,
    not a read-only or virtual filesystem)."""
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise TrackerError(f"{said}: nothing can be written in {folder} ({e.strerror or first_line(e)}): {fix}") from None


def _check_sqlite(uri: str, said: str, fix: str) -> None:
    """A sqlite store: a SQLite file (or none yet) that can be written, in a folder that exists."""
    path_text = uri.split(":///", 1)[1] if ":///" in uri else ""
    if not path_text or path_text.startswith(":memory:"):
        return
    path = Path(path_text.split("?", 1)[0]).expanduser()
    if not path.parent.is_dir():
        raise TrackerError(f"{said}: the folder {path.parent} does not exist: create it, or {fix}")
    _writable(path.parent, said, fix)
    if not os.path.lexists(path):
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            regular = os.path.isfile(path) and not os.path.islink(path)
            header = f.read(len(SQLITE_HEADER)) if regular else b""
    except OSError as e:
        raise TrackerError(f"{said}: {path} cannot be read ({e.strerror or first_line(e)}): {fix}") from None
    if not regular or header not in (SQLITE_HEADER, b""):
        raise TrackerError(f"{said}: {path} is not a SQLite database: {fix}")
    if not os.access(path, os.W_OK):
        raise TrackerError(f"{said}: {path} cannot be written (permission denied): {fix}")


def _probe(host: str | None, port: int, said: str, fix: str) -> None:
    """Something accepts connections at host:port within ``PROBE_SECONDS``."""
    try:
        with socket.create_connection((host or "localhost", port), timeout=PROBE_SECONDS):
            return
    except (OSError, ValueError) as e:
        raise TrackerError(f"{said}: nothing answers at {host}:{port} ({first_line(e, 80)}): start the server, or "
                           f"{fix}") from None


def check_mlflow_run(run_id: str, where: Path) -> None:
    """A resumed run's MLflow run must be in the store it will log to."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri, said = _mlflow_uri()
    try:
        mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException as e:
        raise TrackerError(f"{where} names MLflow run {shown(run_id)}, which {said} does not hold "
                           f"({first_line(e, 80)}): point MLFLOW_TRACKING_URI at the store it was logged to, or "
                           f"remove \"mlflow\" from {where.name} to start a new MLflow run") from None


def aim_default_repo() -> str:
    """The repository Aim uses from this working directory: the nearest ``.aim`` above it, else here."""
    from aim import Repo

    return Repo.default_repo_path()


def same_aim_repo(a: Path, b: Path) -> bool:
    """Whether two ways of naming an Aim repository (its folder, or the ``.aim`` in it) are one."""
    def folder(p: Path) -> str:
        return os.path.realpath(p.parent if p.name == ".aim" else p)

    return folder(a) == folder(b)


def check_aim_run(repo: Path, run_hash: str, where: Path) -> None:
    """A resumed run's Aim run must be in the repository it will log to."""
    from aim import Repo

    root = str(repo.parent if repo.name == ".aim" else repo)  # Aim names a repository by the folder holding .aim
    if not Repo.exists(root) or run_hash not in Repo(root).list_all_runs():  # (get_run misses an unfinished one)
        raise TrackerError(f"{where} names Aim run {shown(run_hash)}, which the repository {repo} does not hold: "
                           f"remove \"aim\" from {where.name} to start a new Aim run")
