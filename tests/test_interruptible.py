"""cloudclear.cli.options.interruptible: a signal always stops the run, even one whose exception
Python would drop."""

from __future__ import annotations

import os
import signal
import sys
import time
import weakref

import pytest
import typer

from cloudclear.cli.options import interruptible


def _run_signalled_inside_a_weakref_callback(sig: int) -> str:
    """Signal this process while Python runs a weakref callback (as the garbage collector does at
    any moment): the handler's exception is raised inside the callback, where Python drops it."""

    class Thing:
        pass

    def callback(_: object) -> None:
        os.kill(os.getpid(), sig)
        for _ in range(100_000):  # the handler runs at one of these lines, inside the callback
            pass

    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing  # the callback runs here
    assert ref() is None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # without the redelivery, the run goes on to the end
        time.sleep(0.01)
    return "finished"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_dropped_inside_a_weakref_callback_still_stops_the_run(capsys, sig):
    started = time.monotonic()
    with pytest.raises(typer.Exit) as stop:
        interruptible(lambda: _run_signalled_inside_a_weakref_callback(sig), "output")
    assert stop.value.exit_code == 130
    assert time.monotonic() - started < 4  # stopped at once, not after the run's 5 s
    assert "interrupted; no partial output was left" in capsys.readouterr().err


def test_the_handlers_and_the_hook_are_restored(capsys):
    term, hook = signal.getsignal(signal.SIGTERM), sys.unraisablehook
    assert interruptible(lambda: "done", "output") == "done"
    assert signal.getsignal(signal.SIGTERM) == term and sys.unraisablehook is hook
    with pytest.raises(typer.Exit):
        interruptible(lambda: os.kill(os.getpid(), signal.SIGTERM) or time.sleep(5), "output")
    assert signal.getsignal(signal.SIGTERM) == term and sys.unraisablehook is hook
