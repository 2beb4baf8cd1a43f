"""The fence of a trial attempt (sweep/fencing.py): it writes only while it can reach the head and
holds the trial's lease. With the cluster stood in; the real partition: tests/test_sweep_machines.py."""

from __future__ import annotations

import socket

import pytest

from mnist_addition.sweep.fencing import Lease, Superseded, head_reachable
from mnist_addition.sweep.storage import Store


@pytest.fixture
def head():
    """A listening socket standing in for the GCS; its host:port."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"127.0.0.1:{server.getsockname()[1]}"


def test_the_attempt_that_took_the_trial_last_writes_and_an_earlier_one_is_refused(tmp_path, head):
    store = Store(str(tmp_path))
    first = Lease(store, "trial-a", head, "198.51.100.2")
    first.take()
    first.check("epoch 1")  # its own lease, the head in reach: nothing raised
    second = Lease(store, "trial-a", head, "198.51.100.3")
    second.take()  # Ray ran the trial again elsewhere
    second.check("epoch 2")
    with pytest.raises(Superseded, match=r"not writing epoch 2: another attempt of this trial \(on 198.51.100.3\)"):
        first.check("epoch 2")
    other = Lease(store, "trial-b", head, "198.51.100.2")  # another trial's lease is its own
    other.take()
    other.check("epoch 1")


def test_an_attempt_that_cannot_reach_the_head_writes_nothing(tmp_path, head):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    assert head_reachable(head) and not head_reachable(closed) and not head_reachable("no-port")
    lease = Lease(Store(str(tmp_path)), "trial-a", closed, "198.51.100.2")
    lease.take()
    with pytest.raises(Superseded, match="cannot reach the head at 127.0.0.1:"):
        lease.check("epoch 1")


def test_a_lease_gone_or_damaged_refuses_too(tmp_path, head):
    store = Store(str(tmp_path))
    lease = Lease(store, "trial-a", head, "198.51.100.2")
    lease.take()
    (tmp_path / "trial-a" / "attempt.json").write_text("{not json")
    with pytest.raises(Superseded):
        lease.check("epoch 1")
    (tmp_path / "trial-a" / "attempt.json").unlink()
    with pytest.raises(Superseded):
        lease.check("epoch 1")


def test_a_refused_token_is_told_apart_from_a_missing_cluster():
    from mnist_addition.sweep.driver import _refused_token

    try:
        try:
            raise RuntimeError("Failed to get cluster ID from GCS server: Unauthenticated: RPC error: InvalidAuthToken")
        except RuntimeError as inner:
            raise ConnectionError("Failed to connect to Ray cluster at 198.51.100.1:6390") from inner
    except ConnectionError as e:
        assert _refused_token(e)
    assert not _refused_token(ConnectionError("Failed to connect to Ray cluster at 198.51.100.1:6390"))
