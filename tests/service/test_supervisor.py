"""The supervisor's health watch, driven by heartbeat files and a clock of the test's own."""
import json
import signal
import subprocess
import time

import pytest

from service import supervisor as S


@pytest.fixture
def watched(tmp_path, monkeypatch):
    """A supervisor watching one worker (a real process that only sleeps), and a way to write its heartbeat."""
    proc = subprocess.Popen(["sleep", "60"])
    sup = S.Supervisor.__new__(S.Supervisor)  # only what watch_health reads
    sup.run_dir, sup.n, sup.procs, sup.last_up, sup._last_watch = str(tmp_path), 1, {0: proc}, {}, 0.0
    clock = [1000.0]
    monkeypatch.setattr(S.time, "monotonic", lambda: clock[0])
    (tmp_path / "workers").mkdir()

    def beat(**status):
        (tmp_path / "workers" / "0.json").write_text(json.dumps({"id": 0, "pid": proc.pid, "time": time.time(),
                                                                 **status}))
    yield sup, proc, clock, beat
    proc.kill()
    proc.wait()


def test_a_worker_that_failed_before_the_watch_saw_it_up_is_still_replaced(watched):
    sup, proc, clock, beat = watched
    beat(healthy=False, served=True)  # healthy once, between two looks of the watch, then broken
    sup.watch_health()
    clock[0] += S.UNHEALTHY_RESTART_S - 1
    sup.watch_health()
    assert proc.poll() is None  # not yet: it may recover
    clock[0] += 2
    beat(healthy=False, served=True)
    sup.watch_health()
    assert proc.wait(5) == -signal.SIGTERM


def test_a_worker_still_starting_is_left_alone(watched):
    sup, proc, clock, beat = watched
    for _ in range(5):
        beat(healthy=False, served=False)
        sup.watch_health()
        clock[0] += S.UNHEALTHY_RESTART_S
    assert proc.poll() is None


def test_a_draining_worker_is_left_to_finish(watched):
    sup, proc, clock, beat = watched
    beat(healthy=True, served=True)
    sup.watch_health()
    for _ in range(3):
        clock[0] += S.UNHEALTHY_RESTART_S
        beat(healthy=True, served=True, draining=True)
        sup.watch_health()
    assert proc.poll() is None


def test_run_folders_of_killed_supervisors_are_removed_and_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(S.tempfile, "tempdir", str(tmp_path))
    alive = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        for pid in (alive.pid, dead.pid):
            (tmp_path / f"rnnserve-run-{pid}-x1y2" / "workers").mkdir(parents=True)
        (tmp_path / "rnnserve-run-abc").mkdir()  # not ours to judge
        S.remove_dead_run_dirs()  # the dead one's folder changed just now: perhaps another pid namespace's
        assert len(list(tmp_path.iterdir())) == 3
        S.remove_dead_run_dirs(quiet_for=-1)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"rnnserve-run-{alive.pid}-x1y2",
                                                                      "rnnserve-run-abc"])
    finally:
        alive.kill()
        alive.wait()
