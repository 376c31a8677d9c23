"""The worker side of the launcher's supervision, for any Python worker (pure stdlib, no MindSpore).

The launcher puts two per-rank paths in each worker's environment:
- ``LAUNCHER_ERROR_FILE``: a worker that dies of an uncaught exception writes what happened there
  (rank, host, pid, time, exception type, message, file:line, exit code, traceback) as JSON, so the
  launcher can name the root cause: the earliest failure, not the peers that failed because of it.
- ``LAUNCHER_HEARTBEAT_FILE``: a worker that touches it shows it is alive; with ``--hang-timeout S`` a
  rank whose heartbeat is older than S seconds is hung (never touched: never watched).

Use in a worker: ``@record`` on its ``main`` (or ``install()`` once at start-up) and ``heartbeat()`` in
its loop; a rank that waits in a collective while a peer works wraps the wait in ``beat_while_waiting()``.
``install()`` also makes SIGUSR1 dump every thread's Python stack to stderr (the launcher asks for it before
stopping a hung rank) and turns SIGTERM into a request to stop at the next safe point
(``stop_requested()``): a worker that then saves and exits with ``PREEMPTED_EXIT_CODE`` is reported as
"pre-empted, resumable".
"""
import contextlib
import faulthandler
import functools
import io
import json
import os
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Optional

from launcher.errors import USER_ERROR_EXIT_CODE, UserError

ERROR_FILE = "LAUNCHER_ERROR_FILE"
HEARTBEAT_FILE = "LAUNCHER_HEARTBEAT_FILE"
RANK = "LAUNCHER_RANK"
VARIABLES = (ERROR_FILE, HEARTBEAT_FILE, RANK)
# EX_TEMPFAIL: the job stopped on request with a checkpoint and can be resumed.
PREEMPTED_EXIT_CODE = 75
# Written into the heartbeat file by workers whose SIGUSR1 dumps their stack (see install()).
STACK_ON_SIGUSR1 = "stack-on-SIGUSR1"

_stop_signal: Optional[int] = None
_stack_registered = False
_hook_installed = False
_HEARTBEAT_EVERY = 1.0
_last_beat = 0.0


def worker_env(error_file: str, heartbeat_file: str, rank: int) -> dict:
    """Launcher side: the supervision variables of one worker."""
    return {ERROR_FILE: error_file, HEARTBEAT_FILE: heartbeat_file, RANK: str(rank)}


def error_record(exc: BaseException, rank: Optional[str] = None) -> dict:
    """What the launcher needs to name a root cause, from an exception (pure apart from the clock/pid)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else ""
    # exit_code: what the worker is about to exit with, for a launcher that acts before the process is gone:
    # a UserError becomes one `error:` line and exit 2 (launcher.errors), any other exception exits 1
    return {"rank": rank if rank is not None else os.environ.get(RANK, ""), "host": socket.gethostname(),
            "pid": os.getpid(), "time": time.time(), "type": type(exc).__name__,
            "message": str(exc).splitlines()[0] if str(exc) else "", "where": where,
            "exit_code": USER_ERROR_EXIT_CODE if isinstance(exc, UserError) else 1,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


def write_error_file(exc: BaseException) -> None:
    """Record `exc` in the launcher's error file, if there is one; the first error of a process wins."""
    path = os.environ.get(ERROR_FILE)
    if not path or os.path.exists(path):
        return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(error_record(exc), handle)
        os.replace(tmp, path)
    except OSError:
        pass  # the error itself is what matters; its log line still reaches the launcher


def record(main):
    """Decorator for a worker's entry point: an uncaught exception is written to the error file, then
    propagates as usual (SystemExit and KeyboardInterrupt are not errors)."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except Exception as exc:
            write_error_file(exc)
            raise
    return wrapper


def heartbeat(force: bool = False) -> None:
    """Show the launcher this worker is alive (cheap: touches the file at most once a second)."""
    global _last_beat
    path = os.environ.get(HEARTBEAT_FILE)
    now = time.monotonic()
    if not path or (not force and now - _last_beat < _HEARTBEAT_EVERY):
        return
    _last_beat = now
    # A heartbeat that cannot be written (log dir removed, disk full) must never fail the training step:
    # the launcher then sees a stale beat and reports the hang, which is the useful outcome.
    with contextlib.suppress(OSError):
        if not os.path.exists(path):
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(STACK_ON_SIGUSR1 if _stack_registered else "")
        os.utime(path)


def _request_stop(signum, _frame) -> None:
    global _stop_signal
    _stop_signal = signum


def stop_requested() -> bool:
    """True once SIGTERM arrived (after install()): stop at the next safe point, save, exit PREEMPTED."""
    return _stop_signal is not None


@contextlib.contextmanager
def beat_while_waiting(limit: float):
    """For a rank that waits in a collective while a peer works (the other ranks while rank 0 evaluates): a
    daemon thread keeps this rank's heartbeat fresh for at most `limit` seconds, so the waiting rank is not
    taken for hung. Use it only where the peer beats as it works: a real hang is then caught on the peer,
    whose stack shows where it stopped. A no-op without a heartbeat file or with limit <= 0."""
    if not os.environ.get(HEARTBEAT_FILE) or limit <= 0:
        yield
        return
    deadline = time.monotonic() + limit
    done = threading.Event()

    def beat() -> None:
        while time.monotonic() < deadline:
            heartbeat(force=True)
            if done.wait(min(max(_HEARTBEAT_EVERY, 0.05), max(0.0, deadline - time.monotonic()))):
                return

    thread = threading.Thread(target=beat, name="heartbeat-while-waiting", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def install(stop_on_sigterm: bool = False) -> None:
    """Once at start-up (again is harmless): SIGUSR1 dumps every thread's stack to stderr; uncaught
    exceptions go to the error file; with `stop_on_sigterm`, SIGTERM only sets stop_requested()."""
    global _stack_registered, _hook_installed
    try:
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
        _stack_registered = True
    except (AttributeError, RuntimeError, ValueError, io.UnsupportedOperation):
        # stderr is not a file (a host that replaced it, a test capturing it): no stack on SIGUSR1, so the
        # heartbeat file does not claim one and the launcher falls back to py-spy
        _stack_registered = False
    if not _hook_installed:
        previous = sys.excepthook

        def hook(kind, exc, tb):
            if not issubclass(kind, (SystemExit, KeyboardInterrupt)):
                write_error_file(exc)
            previous(kind, exc, tb)
        sys.excepthook = hook
        _hook_installed = True
    if stop_on_sigterm:
        signal.signal(signal.SIGTERM, _request_stop)
