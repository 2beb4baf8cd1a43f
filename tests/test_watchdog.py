"""--trial-timeout's watchdog (sweep/watchdog.py) without Ray: when it fires, when it keeps quiet,
and the hung.json it leaves for the driver. A hung trial end to end: tests/test_sweep.py."""

from __future__ import annotations

import json
import threading
import time

from mnist_addition.sweep.fencing import Lease
from mnist_addition.sweep.storage import Store
from mnist_addition.sweep.watchdog import EXIT_HUNG, Watchdog, hang_of, mark_hung


class Fired:
    def __init__(self) -> None:
        self.hung: list[tuple[float, str]] = []
        self.ended: list[int] = []
        self.done = threading.Event()

    def on_hung(self, idle: float, stack: str) -> None:
        self.hung.append((idle, stack))

    def end(self, code: int) -> None:
        self.ended.append(code)
        self.done.set()


def sits_still_in_a_named_frame(fired: Fired) -> bool:
    return fired.done.wait(10)


def test_a_watchdog_without_beats_hands_over_the_main_threads_stack_and_ends_the_process():
    fired = Fired()
    with Watchdog(0.3, fired.on_hung, end=fired.end):
        assert sits_still_in_a_named_frame(fired)
    (idle, stack), = fired.hung
    assert fired.ended == [EXIT_HUNG] and idle > 0.3
    assert "sits_still_in_a_named_frame" in stack  # where the main thread was: the trial's hung.json says it


def test_beats_and_pauses_keep_the_watchdog_quiet_and_it_stops_with_its_trial():
    fired = Fired()
    with Watchdog(0.3, fired.on_hung, end=fired.end) as watchdog:
        for _ in range(20):  # 1 s of steps, each well within the timeout
            time.sleep(0.05)
            watchdog.beat()
        with watchdog.paused():  # a report waiting on the driver for longer than the timeout
            time.sleep(1.0)
    time.sleep(0.6)  # after the trial: the next trial in this process must not be stopped for it
    assert fired.hung == [] and fired.ended == []
    with Watchdog(0, fired.on_hung, end=fired.end):  # --trial-timeout 0: nothing watches
        time.sleep(0.3)
    assert fired.hung == []


def test_hung_json_counts_hangs_and_names_the_attempt_that_hung(tmp_path):
    store = Store(str(tmp_path))
    first = Lease(store, "trial-a", None, "node")
    first.take()
    assert hang_of(store, "trial-a") == (0, False)
    mark_hung(store, "trial-a", first.attempt, 5.2, "stack")
    assert hang_of(store, "trial-a") == (1, True)  # the trial's latest attempt hung: it is "hung"
    retry = Lease(store, "trial-a", None, "node")
    retry.take()
    assert hang_of(store, "trial-a") == (1, False)  # the retry did not (yet): it may still finish
    mark_hung(store, "trial-a", retry.attempt, 6.0, "stack")
    assert hang_of(store, "trial-a") == (2, True)
    marker = json.loads((tmp_path / "trial-a" / "hung.json").read_text())
    assert marker["attempt"] == retry.attempt and marker["idle_seconds"] == 6.0
    (tmp_path / "trial-a" / "hung.json").write_text('{"attempt": 3, "hangs": "many"}')  # not ours: still one line
    assert hang_of(store, "trial-a") == (1, False)
