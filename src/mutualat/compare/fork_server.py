"""Imported by a study's fork server alone, first (:data:`mutualat.compare.runner.PRELOAD`):
the server then ignores SIGTERM.

A batch system stops a job by sending SIGTERM to every process in it. Were the server to die
of it, the scheduler could no longer learn its tasks' exit status and would kill them at once
(a task whose server is lost is reported failed), possibly before they record "interrupted".
Ignoring it costs nothing: the server ends by itself when the scheduler does, and SIGKILL
still ends it. Its tasks set their own handlers when they start
(:func:`mutualat.compare.worker.stop_once_on_interrupt`), as multiprocessing's resource
tracker, which ignores SIGTERM too, shows is the custom.
"""

import signal

signal.signal(signal.SIGTERM, signal.SIG_IGN)
