"""How the command line takes SIGINT and SIGTERM (mutualat.console): the first raises,
later ones are held until the clean-up ends, and handlers the caller set are left alone.

Signals are sent to this test process itself; each is sent only once a handler is known to
take it, so that a fault fails the test instead of ending the test run."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mutualat.console import Terminated, interrupts_once, signals_held


def _send(sig: int, raises: type[BaseException] | None = None) -> None:
    """Send ``sig`` to this process and check what it raised: ``raises``, or nothing. An
    interrupt that escaped a test would end the whole test run, so it is turned into a
    failure here."""
    name = signal.Signals(sig).name
    assert signal.getsignal(sig) not in (signal.SIG_DFL, None), f"nothing would take {name}"
    try:
        os.kill(os.getpid(), sig)
        time.sleep(0.05)  # Python runs the handler here
    except KeyboardInterrupt as exc:
        if type(exc) is not raises:
            pytest.fail(f"{name} raised {type(exc).__name__}, expected {raises}")
        return
    assert raises is None, f"{name} raised nothing, expected {raises.__name__}"


@pytest.fixture(autouse=True)
def _python_defaults():
    before = {s: signal.signal(s, d) for s, d in ((signal.SIGINT, signal.default_int_handler),
                                                 (signal.SIGTERM, signal.SIG_DFL))}
    yield
    for s, handler in before.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("first, raised", [(signal.SIGTERM, Terminated),
                                           (signal.SIGINT, KeyboardInterrupt)])
def test_the_first_signal_raises_and_later_ones_of_either_kind_do_nothing(first, raised):
    with interrupts_once():
        _send(first, raises=raised)  # exactly: a SIGINT is no Terminated
        _send(signal.SIGINT)
        _send(signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_signal_the_caller_ignores_or_handles_is_left_as_it_is():
    seen = []
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a script's background job
    signal.signal(signal.SIGTERM, lambda s, f: seen.append(s))
    with interrupts_once():
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        _send(signal.SIGTERM)
    assert seen == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_nested_scope_neither_rearms_nor_restores_what_the_outer_one_holds():
    with interrupts_once():
        with interrupts_once():
            pass
        _send(signal.SIGTERM, raises=Terminated)
        with interrupts_once():  # entered during the clean-up: the signals stay held
            _send(signal.SIGTERM)
        _send(signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_held_signals_do_nothing_and_are_given_back():
    with signals_held():
        _send(signal.SIGINT)
        _send(signal.SIGTERM)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
