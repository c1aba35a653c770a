"""Where the library's messages go when mutualat runs as a program.

Library modules report through :mod:`logging` (``logging.getLogger(__name__)``), never
``print``, so that code importing mutualat decides what it sees. The command line (and the
compare worker processes) call :func:`setup_logging`: INFO and above to stdout, warnings
prefixed ``warning:``, written with ``tqdm.write`` so a message never tears a progress bar.
They also stop on SIGTERM as on Ctrl-C (:func:`interrupts_once`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import threading
from typing import Any, Iterator

from tqdm import tqdm


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"warning: {text}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class TqdmHandler(logging.Handler):
    """Writes each record above any progress bar in place (``tqdm.write``), to the
    ``sys.stdout`` of the moment (so redirections and test captures see it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stdout)
            sys.stdout.flush()
        except BrokenPipeError:
            if not stdout_reader_gone():  # not stdout's reader: reported as any other fault
                self.handleError(record)
                return
            # `mutualat train ... | head`: the reader took what it wanted; the run goes on
            # (metrics.jsonl has every number) and its messages go nowhere.
            silence_stdout()
        except Exception:  # logging must never raise into the program
            self.handleError(record)


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe (or socket) whose reading end has closed: an error
    condition on its file descriptor (Linux and macOS; False where it cannot be asked)."""
    if not hasattr(select, "poll"):
        return False
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        # A pipe without a reader reports POLLERR; a socket whose peer closed, POLLHUP.
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (a capture, closed)
        return False


def silence_stdout() -> None:
    """Point stdout's file descriptor at the null device, so every later write (a print,
    a log record, Python's own flush at exit) succeeds and goes nowhere."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def setup_logging(level: int = logging.INFO) -> None:
    """Send the ``mutualat`` loggers' records at ``level`` and above to stdout (idempotent).

    Also gives tqdm a thread lock: its default is a multiprocessing semaphore, registered
    with a resource tracker that calls it "leaked" on the terminal when its process is killed
    (a compare task killed with its scheduler did). No mutualat process shares progress bars
    with another process."""
    tqdm.set_lock(threading.RLock())
    root = logging.getLogger("mutualat")
    for handler in list(root.handlers):
        if isinstance(handler, TqdmHandler):
            root.removeHandler(handler)
    handler = TqdmHandler()
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    root.setLevel(level)


class Terminated(KeyboardInterrupt):
    """A SIGTERM (``kill``'s default; how a batch system, a container runtime or systemd
    stops a job), raised where the program is, as Ctrl-C raises KeyboardInterrupt: whatever
    cleans up after an interrupt (a study's running tasks and their records) does so for it
    too, and the run resumes from its last checkpoint."""


@contextlib.contextmanager
def interrupts_once() -> Iterator[None]:
    """Within: the first SIGTERM raises :class:`Terminated` and the first SIGINT
    KeyboardInterrupt, as Python's own handler does. After either, both signals are taken by
    a handler that does nothing, so that no second one (a batch system repeating its SIGTERM,
    Ctrl-C on top of a kill) cuts the clean-up short. Only a signal left at Python's default
    is taken: one that is ignored (a script's background job inherits SIGINT so), handled by
    the caller, or already taken by an enclosing scope stays as it is. What it changed is
    back on leaving. Outside the main thread, where Python sets no handler, it does nothing."""
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    changed = _swap({s: _interrupt for s, default in defaults.items()
                     if _main_thread() and signal.getsignal(s) is default})
    try:
        yield
    finally:
        _swap(changed)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Within: SIGINT and SIGTERM do nothing, wherever they would have gone, so that a
    clean-up already under way (a study stopping its tasks, which then record it) is not cut
    short by a second one. What it changed is back on leaving; outside the main thread it
    does nothing."""
    changed = _swap({s: ignore_signal for s in (signal.SIGINT, signal.SIGTERM)
                     if _main_thread() and signal.getsignal(s) is not None})
    try:
        yield
    finally:
        _swap(changed)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _swap(handlers: dict[int, Any]) -> dict[int, Any]:
    """Set each signal's handler; returns the ones they replaced."""
    return {s: signal.signal(s, handler) for s, handler in handlers.items()}


def _interrupt(signum: int, frame: Any) -> None:
    for s in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(s) is _interrupt:
            signal.signal(s, ignore_signal)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def ignore_signal(signum: int, frame: Any) -> None:
    """A handler that does nothing. Unlike SIG_IGN it also quietly takes a signal that was
    already pending when it was set (Python reports that one "ignored due to race
    condition")."""
