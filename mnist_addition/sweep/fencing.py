"""Fencing: a trial attempt cut off from the cluster writes nothing to the sweep's storage.

When a node is partitioned away, it keeps running. Ray marks it dead once its health checks fail
and starts the trial again on another node, from the last checkpoint the driver received; the
cut-off copy goes on training until its raylet gives up, and without a fence its next report
persists a checkpoint into the trial's folder, where the new attempt takes it for its own (seen:
a resumed trial continued from the cut-off copy's epoch). So each attempt, right before each of
its writes to storage (its run folder's upload, and the checkpoint Ray persists when it reports),
checks two things, and stops with ``Superseded`` instead of writing:

1. **it can reach the head** (a TCP connection to the GCS, within ``REACH_SECONDS``): a copy writes
   nothing while it is cut off;
2. **the trial's lease names it**: each attempt writes ``trial-ID/attempt.json`` when it starts,
   so a copy whose link comes back after a newer attempt started finds another attempt there.

What is left: a check and its write are two steps, so a partition that begins in the milliseconds
between them lets one write through; the driver alone writes ``trials.csv`` and
``best_config.json``, so no trial attempt can touch them.
"""

from __future__ import annotations

import json
import socket
import uuid
from typing import Any

from ..core.errors import UserError
from ..rundir.names import TRIAL_LEASE

REACH_SECONDS = 3.0


class Superseded(UserError):
    """This attempt of a trial was cut off, or another attempt took the trial over: it writes nothing."""


def head_reachable(gcs_address: str, seconds: float = REACH_SECONDS) -> bool:
    """Whether a TCP connection to the cluster's GCS (``host:port``) opens within ``seconds``."""
    host, _, port = gcs_address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds):
            return True
    except (OSError, ValueError):
        return False


class Lease:
    """One attempt's claim on its trial's folder in the sweep's storage (a ``storage.Store``)."""

    def __init__(self, store: Any, trial_dir: str, gcs_address: str | None, node: str) -> None:
        self.store, self.name, self.gcs = store, f"{trial_dir}/{TRIAL_LEASE}", gcs_address
        self.attempt, self.node = uuid.uuid4().hex, node

    def take(self) -> None:
        """Claim the trial for this attempt (a later attempt's claim replaces it)."""
        self.store.write(self.name, json.dumps({"attempt": self.attempt, "node": self.node}).encode())

    def holder(self) -> dict[str, Any]:
        try:
            return json.loads(self.store.read_small(self.name, limit=1 << 16))
        except (OSError, ValueError):
            return {}

    def check(self, what: str) -> None:
        """Before writing ``what``: raise ``Superseded`` unless this attempt may write."""
        if self.gcs and not head_reachable(self.gcs):
            raise Superseded(f"not writing {what}: this node ({self.node}) cannot reach the head at {self.gcs}; "
                             "Ray will run the trial again elsewhere from its last checkpoint")
        holder = self.holder()
        if holder.get("attempt") != self.attempt:
            raise Superseded(f"not writing {what}: another attempt of this trial (on {holder.get('node', '?')}) took "
                             f"it over while this one (on {self.node}) was cut off")
