"""Start a plan's processes, watch them, fail fast, tear everything down, restart the group if asked.

Each process runs in its own session (so its data-loader children share its process group and die
with it) and with a parent-death signal (so nothing outlives a launcher killed with SIGKILL). Success
is judged by the workers' exit codes only (a service such as MindSpore's scheduler can exit 0 after a
worker failed); a failing service fails the job, and an `awaited` one must also have exited.
Nothing here depends on the start-up mode.
"""
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, TextIO

import psutil

from common.errors import UserError
from common.safe_write import write_text
from launcher.plan import WorkerSpec

POLL_INTERVAL = 0.05
TAIL_LINES = 20
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


@dataclass
class Outcome:
    """How one attempt ended; `failed` is the first process whose exit failed the job."""
    exit_code: int
    reason: str                    # "success", "failed", "interrupted", "timeout"
    failed: Optional[WorkerSpec] = None
    returncode: Optional[int] = None


def exit_code_of(returncode: int) -> int:
    """Shell convention: a process killed by signal N counts as exit code 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_returncode(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name} (exit code {exit_code_of(returncode)})"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def tail(path: str, lines: int = TAIL_LINES) -> List[str]:
    """Last lines of a log, read from the end so that huge logs cost nothing."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-lines:]


def _child_setup(cores: Optional[Sequence[int]], parent_pid: int) -> Callable[[], None]:
    """Runs in the child between fork and exec: die with the launcher, then pin to the given cores."""
    def setup() -> None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent_pid:      # the launcher died before prctl took effect
            os._exit(1)
        if cores:
            psutil.Process().cpu_affinity(list(cores))
    return setup


def _write_env_log(path: str, env: Dict[str, str]) -> None:
    write_text(path, "".join(f"{key}={env[key]}\n" for key in sorted(env)))


class _Tee:
    """Copies new complete lines of chosen workers' logs to the console with a `[rank N]` prefix."""

    def __init__(self, specs: Sequence[WorkerSpec], out: TextIO):
        self.out = out
        self.offsets = {spec.log_path: 0 for spec in specs}
        self.prefix = {spec.log_path: f"[{spec.name}] " for spec in specs}
        self.partial = {spec.log_path: b"" for spec in specs}

    def pump(self, final: bool = False) -> None:
        for path, offset in self.offsets.items():
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except OSError:
                continue
            self.offsets[path] = offset + len(data)
            buffered = self.partial[path] + data
            lines = buffered.split(b"\n")
            self.partial[path] = b"" if final else lines.pop()
            for line in lines:
                if line or not final:
                    self.out.write(self.prefix[path] + line.decode("utf-8", errors="replace") + "\n")
        self.out.flush()


class _Interrupts:
    """SIGINT/SIGTERM to the launcher are remembered, then forwarded by the poll loop to every group."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, _frame):
        self.signum = signum

    def __exit__(self, *_exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Group:
    """The processes of one attempt, each the leader of its own session."""

    def __init__(self, specs: Sequence[WorkerSpec]):
        self.specs = list(specs)
        self.procs: Dict[int, subprocess.Popen] = {}

    def start(self) -> None:
        parent = os.getpid()
        for index, spec in enumerate(self.specs):
            env = {**os.environ, **spec.env}
            os.makedirs(spec.cwd, exist_ok=True)
            os.makedirs(os.path.dirname(spec.log_path), exist_ok=True)
            if spec.env_log:
                _write_env_log(spec.env_log, env)
            with open(spec.log_path, "wb") as log:
                try:
                    self.procs[index] = subprocess.Popen(
                        list(spec.argv), cwd=spec.cwd, env=env, stdin=subprocess.DEVNULL,
                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                        preexec_fn=_child_setup(spec.cores, parent))
                except OSError as exc:
                    self.stop(grace=0.0)
                    raise UserError(f"cannot start {spec.name}: {spec.argv[0]}: {exc.strerror}") from None

    def returncodes(self) -> Dict[int, Optional[int]]:
        return {index: proc.poll() for index, proc in self.procs.items()}

    def signal_all(self, signum: int) -> None:
        """Signal every process group, including groups whose leader already exited."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signum)

    def alive(self) -> List[int]:
        return [index for index, code in self.returncodes().items() if code is None]

    def stop(self, grace: float, signum: int = signal.SIGTERM) -> None:
        """`signum` to everyone, SIGKILL to whatever is left after `grace` seconds, then reap."""
        self.signal_all(signum)
        deadline = time.monotonic() + grace
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.signal_all(signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait()


def _report_failure(spec: WorkerSpec, returncode: int, err: TextIO) -> None:
    err.write(f"launcher: {spec.name} failed with {describe_returncode(returncode)}; "
              f"last lines of {spec.log_path}:\n")
    for line in tail(spec.log_path):
        err.write(f"  | {line}\n")
    err.flush()


def supervise(specs: Sequence[WorkerSpec], *, grace: float, timeout: Optional[float],
              tee_ranks: Sequence[int], interrupts: _Interrupts,
              out: TextIO, err: TextIO) -> Outcome:
    """Run one attempt to its end: all workers exit 0, one fails, the launcher is signalled, or time runs out."""
    group = Group(specs)
    tee = _Tee([s for s in specs if s.role == "worker" and s.rank in tee_ranks], out)
    started = time.monotonic()
    group.start()
    workers = [i for i, s in enumerate(specs) if s.role == "worker"]
    services = [i for i, s in enumerate(specs) if s.role != "worker"]
    outcome: Optional[Outcome] = None
    while outcome is None:
        codes = group.returncodes()
        failed = [i for i in workers if codes[i] not in (None, 0)]
        failed += [i for i in services if codes[i] not in (None, 0)]
        if interrupts.signum is not None:
            err.write(f"launcher: received {signal.Signals(interrupts.signum).name}; stopping "
                      f"{len(group.alive())} processes\n")
            group.stop(grace, interrupts.signum)
            outcome = Outcome(128 + interrupts.signum, "interrupted")
        elif failed:
            first = specs[failed[0]]
            _report_failure(first, codes[failed[0]], err)
            group.stop(grace)
            outcome = Outcome(exit_code_of(codes[failed[0]]), "failed", first, codes[failed[0]])
        elif all(codes[i] == 0 for i in workers) and not any(
                specs[i].awaited and codes[i] is None for i in services):
            group.stop(grace)
            outcome = Outcome(0, "success")
        elif timeout is not None and time.monotonic() - started > timeout:
            err.write(f"launcher: timeout after {timeout:g} s; stopping {len(group.alive())} processes\n")
            group.stop(grace)
            outcome = Outcome(124, "timeout")
        tee.pump(final=outcome is not None)
        if outcome is None:
            time.sleep(POLL_INTERVAL)
    return outcome


def run_attempts(make_specs: Callable[[int], List[WorkerSpec]], *, max_restarts: int, grace: float,
                 timeout: Optional[float], tee_ranks: Sequence[int],
                 out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the group, restarting it after a failure up to `max_restarts` times; the job's exit code."""
    attempt = 0
    with _Interrupts() as interrupts:
        while True:
            outcome = supervise(make_specs(attempt), grace=grace, timeout=timeout, tee_ranks=tee_ranks,
                                interrupts=interrupts,
                                out=out, err=err)
            if outcome.reason in ("success", "interrupted") or attempt == max_restarts:
                return outcome.exit_code
            attempt += 1
            err.write(f"launcher: restarting the whole group (restart {attempt} of {max_restarts})\n")
            err.flush()
