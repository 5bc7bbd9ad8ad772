"""Suite-wide fixtures: a leaked-thread check and small analytic RGB-D scenes."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("NUMBA_THREADING_LAYER", "omp")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch and numba share 2 cores in the tests
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: GUI tests wait for state, and a wait's deadline only catches a hang: on a machine whose cores are busy
#: with other work every deadline stretches this many times
HANG_GUARD_SCALE = 5


@pytest.fixture
def qtbot(qtbot):
    """pytest-qt's qtbot with every waitUntil deadline stretched by HANG_GUARD_SCALE."""
    wait = qtbot.waitUntil

    def patient_wait(callback, *, timeout: int = 5000):
        return wait(callback, timeout=int(timeout * HANG_GUARD_SCALE))

    qtbot.waitUntil = patient_wait
    return qtbot


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves a thread running (10 s grace for threads that are finishing on a busy machine)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not leaked, f"test left threads running: {[t.name for t in leaked]}"


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real sensor data {path} is absent")
    return path


def one_line_error(fn, *names, kind=None):
    """Run fn, expect `kind` (SourceError by default); its message is one line and names each of `names`."""
    from fusion.errors import SourceError

    with pytest.raises(kind or SourceError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg
    for name in names:
        assert name in msg, msg
    return msg
