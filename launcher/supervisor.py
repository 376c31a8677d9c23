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
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, TextIO, Tuple

import psutil

from launcher import diagnosis, worker
from launcher.diagnosis import describe_returncode, exit_code_of
from launcher.errors import UserError
from launcher.plan import WorkerSpec
from launcher.safe_write import write_text

POLL_INTERVAL = 0.05
TAIL_LINES = 20
TREE_GONE_TIMEOUT = 10.0           # how long stop() waits for every process it started to be gone
STACK_DUMP_WAIT = 3.0              # how long a hung rank gets to write its stack before it is stopped
PY_SPY_TIMEOUT = 10.0              # one `py-spy dump` (it pauses the process for milliseconds)
PY_SPY_CANDIDATES = 8              # processes of one rank tried by py-spy: the leader, then its descendants
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


@dataclass
class Outcome:
    """How one attempt ended; `failed` is the first process whose exit failed the job."""
    exit_code: int
    reason: str                    # "success", "failed", "interrupted", "preempted", "timeout", "hang"
    failed: Optional[WorkerSpec] = None
    returncode: Optional[int] = None


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


# MindSpore's own INFO lines (`[INFO] DISTRIBUTED(pid,...): ... Event base dispatch success!`, printed even
# with GLOG_v=3 as a worker exits) stay in the worker log.
_MS_INFO = re.compile(rb"^\[INFO\] [A-Z_]+\(\d+,")


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
                if (line or not final) and not _MS_INFO.match(line):
                    self.out.write(self.prefix[path] + line.decode("utf-8", errors="replace") + "\n")
        self.out.flush()


class _Interrupts:
    """SIGINT, SIGTERM and SIGUSR1 to the launcher are remembered, then handled by the poll loop: SIGINT
    goes to every process group; SIGTERM and SIGUSR1 (a scheduler's pre-emption notice) reach each
    worker as SIGTERM, so that it can save and exit (see launcher.worker)."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous = {}

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, _frame):
        self.signum = signum

    def __exit__(self, *_exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def error_file(spec: WorkerSpec) -> str:
    return os.path.join(os.path.dirname(spec.log_path), f"error_{spec.rank}.json")


def heartbeat_file(spec: WorkerSpec) -> str:
    return os.path.join(os.path.dirname(spec.log_path), f"heartbeat_{spec.rank}")


class Group:
    """The processes of one attempt, each the leader of its own session."""

    def __init__(self, specs: Sequence[WorkerSpec]):
        self.specs = list(specs)
        self.procs: Dict[int, subprocess.Popen] = {}
        self.exited_at: Dict[int, float] = {}

    def start(self) -> None:
        parent = os.getpid()
        for index, spec in enumerate(self.specs):
            env = {**os.environ, **spec.env}
            if spec.role == "worker":
                env.update(worker.worker_env(error_file(spec), heartbeat_file(spec), spec.rank))
                for stale in (error_file(spec), heartbeat_file(spec)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(stale)
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
        codes = {index: proc.poll() for index, proc in self.procs.items()}
        now = time.time()
        for index, code in codes.items():
            if code is not None:
                self.exited_at.setdefault(index, now)
        return codes

    def signal_all(self, signum: int) -> None:
        """Signal every process group, including groups whose leader already exited."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signum)

    def alive(self) -> List[int]:
        return [index for index, code in self.returncodes().items() if code is None]

    def tree(self) -> List[psutil.Process]:
        """Every live process this group started: the leaders, their sessions and their descendants."""
        sessions = set(proc.pid for proc in self.procs.values())
        found = {}
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                if proc.pid in sessions or os.getsid(proc.pid) in sessions:
                    found[proc.pid] = proc
        for pid in sessions:
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(pid).children(recursive=True):
                    found[child.pid] = child
        return [p for p in found.values() if _running(p)]

    def stop(self, grace: float, signum: int = signal.SIGTERM, leaders_only: bool = False) -> List[str]:
        """`signum` to everyone (or to the worker leaders only), SIGKILL to whatever is left after `grace`
        seconds, then wait until the whole tree is gone (bounded); returns what survived, named."""
        if leaders_only:
            for index in self.alive():
                if self.specs[index].role == "worker":
                    with contextlib.suppress(ProcessLookupError):
                        self.procs[index].send_signal(signum)
        else:
            self.signal_all(signum)
        waited_for = [i for i, spec in enumerate(self.specs) if spec.role == "worker" or not leaders_only]
        deadline = time.monotonic() + grace
        while set(self.alive()) & set(waited_for) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.returncodes()
        stragglers = self.tree()
        self.signal_all(signal.SIGKILL)
        for straggler in stragglers:  # descendants that left their session
            with contextlib.suppress(psutil.Error):
                straggler.kill()
        for proc in self.procs.values():
            proc.wait()
        self.returncodes()
        deadline = time.monotonic() + TREE_GONE_TIMEOUT
        alive = [p for p in stragglers if _running(p)]  # a zombie is gone: it holds no card and no memory
        while alive and time.monotonic() < deadline:
            time.sleep(0.02)
            alive = [p for p in alive if _running(p)]
        return [f"pid {p.pid} ({_name(p)})" for p in alive]


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _name(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:80] or proc.name()
    except psutil.Error:
        return "?"


def _report_failure(spec: WorkerSpec, returncode: Optional[int], error: Optional[dict], err: TextIO) -> None:
    how = f"{error.get('type')} (still exiting)" if returncode is None and error else describe_returncode(returncode)
    err.write(f"launcher: {spec.name} failed with {how}; "
              f"last lines of {spec.log_path}:\n")
    for line in tail(spec.log_path):
        err.write(f"  | {line}\n")
    err.flush()


def _failures(group: Group, workers: Sequence[int], codes: Dict[int, Optional[int]],
              stopped_at: Optional[float] = None) -> List[diagnosis.Failure]:
    """Ranks that failed on their own: an error file, or a non-zero exit before the launcher stopped them."""
    failures = []
    for index in workers:
        spec, code = group.specs[index], codes[index]
        error = diagnosis.read_error_file(error_file(spec))
        exited = group.exited_at.get(index)
        own_exit = code not in (None, 0) and (stopped_at is None or (exited or 0) <= stopped_at)
        if error is None and not own_exit:
            continue
        when = error["time"] if error else exited
        failures.append(diagnosis.Failure(spec.rank, spec.name, spec.log_path, when,
                                          code if own_exit or code is not None else None, error))
    return failures


def find_py_spy() -> Optional[str]:
    """py-spy beside the launcher's own interpreter first (it is a dependency of the launcher, so it sits in the
    same venv, which need not be on PATH), then on PATH."""
    here = os.path.dirname(sys.executable) if sys.executable else ""
    return (shutil.which("py-spy", path=here) if here else None) or shutil.which("py-spy")


def _py_spy_dump(py_spy: str, pid: int) -> Tuple[str, str]:
    """(dump, "") of the worker's Python stack, else ("", why not). A worker started through a shell or another
    non-Python wrapper is not Python itself: then its first descendant that is, in pid order."""
    try:
        pids = [pid] + sorted(child.pid for child in psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return "", "the process is gone"
    why = ""
    for candidate in pids[:PY_SPY_CANDIDATES]:
        try:
            done = subprocess.run([py_spy, "dump", "--full-filenames", "--pid", str(candidate)],
                                  capture_output=True, text=True, timeout=PY_SPY_TIMEOUT)
        except subprocess.TimeoutExpired:
            why = why or f"py-spy dump did not finish in {PY_SPY_TIMEOUT:g} s"
            continue
        except OSError as exc:
            return "", f"cannot run {py_spy}: {exc.strerror}"
        if done.returncode == 0 and diagnosis.stack_frames(done.stdout):
            return done.stdout, ""
        first = next((line for line in done.stderr.splitlines() if line.strip()), "no Python stack")
        why = why or "py-spy: " + first.removeprefix("Error: ").strip()
    return "", why


def _dump_stacks(group: Group, hung: Sequence[int], err: TextIO) -> List[dict]:
    """Each hung rank's Python stack and where it was. Workers that announced a SIGUSR1 stack dump (our helper
    installed faulthandler) are asked that way first: it needs no ptrace permission and comes from inside the
    process. Every other worker, and one that did not answer SIGUSR1, gets `py-spy dump --pid` (any Python
    program). The dumps go to the rank's log; returns one report per rank (line None when unknown)."""
    py_spy = find_py_spy()
    offsets, frames, how = {}, {}, {}
    asked = [i for i in hung if diagnosis.dumps_stack_on_sigusr1(heartbeat_file(group.specs[i]))]
    for index in hung:
        spec = group.specs[index]
        offsets[index] = os.path.getsize(spec.log_path) if os.path.exists(spec.log_path) else 0
        if index in asked:
            with contextlib.suppress(ProcessLookupError):
                group.procs[index].send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + STACK_DUMP_WAIT
    while asked and time.monotonic() < deadline and not all(i in frames for i in asked):
        for index in asked:
            if index not in frames:
                frames[index] = diagnosis.stack_frames(_read_from(group.specs[index].log_path, offsets[index]))
                if not frames[index]:
                    del frames[index]
                else:
                    how[index] = "SIGUSR1"
        time.sleep(0.1)
    for index in hung:
        if index in frames:
            continue
        spec = group.specs[index]
        tried = "it did not answer SIGUSR1 with a stack; " if index in asked else ""
        if not py_spy:
            how[index] = (tried + "no stack: " + ("" if tried else "it does not dump on SIGUSR1 and ") +
                          "py-spy is not installed beside " + sys.executable + " nor on PATH (pip install py-spy)")
            continue
        dump, why = _py_spy_dump(py_spy, group.procs[index].pid)
        if dump:
            with open(spec.log_path, "a", encoding="utf-8") as log:
                log.write(f"launcher: py-spy dump of {spec.name} (hung)\n{dump}")
            frames[index], how[index] = diagnosis.stack_frames(dump), "py-spy"
        else:
            how[index] = tried + why
    report = []
    for index in hung:
        spec = group.specs[index]
        stack = frames.get(index, [])
        line = stack[0] if stack else None
        report.append({"rank": spec.rank, "name": spec.name, "line": line, "stack": stack,
                       "how": f"its stack ({how[index]}) is in {spec.log_path}" if stack else how[index],
                       "log_path": spec.log_path,
                       "waiting": bool(line) and f"{os.sep}mindspore{os.sep}" in line})
    return report


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _note_survivors(survivors: Sequence[str], err: TextIO) -> None:
    if survivors:
        err.write(f"launcher: {len(survivors)} process(es) still alive {TREE_GONE_TIMEOUT:g} s after SIGKILL: "
                  f"{', '.join(survivors)}\n")


def supervise(specs: Sequence[WorkerSpec], *, grace: float, timeout: Optional[float],
              tee_ranks: Sequence[int], interrupts: _Interrupts, out: TextIO, err: TextIO,
              hang_timeout: Optional[float] = None, preempt_grace: float = 0.0) -> Outcome:
    """Run one attempt to its end: all workers exit 0, one fails, one hangs, the launcher is signalled,
    or time runs out."""
    group = Group(specs)
    tee = _Tee([s for s in specs if s.role == "worker" and s.rank in tee_ranks], out)
    started = time.monotonic()
    group.start()
    workers = [i for i, s in enumerate(specs) if s.role == "worker"]
    services = [i for i, s in enumerate(specs) if s.role != "worker"]
    log_dir = os.path.dirname(specs[workers[0]].log_path) if workers else ""
    outcome: Optional[Outcome] = None
    survivors: List[str] = []
    while outcome is None:
        codes = group.returncodes()
        failed = [i for i in workers if codes[i] not in (None, 0)]
        failed += [i for i in services if codes[i] not in (None, 0)]
        errored = [i for i in workers if codes[i] is None and os.path.exists(error_file(specs[i]))]
        hung = _hung(group, workers, codes, hang_timeout) if hang_timeout and not (failed or errored) else []
        if interrupts.signum is not None:
            signum = interrupts.signum
            err.write(f"launcher: received {signal.Signals(signum).name}; stopping "
                      f"{len(group.alive())} processes" + (" (workers get SIGTERM: save and exit)"
                                                           if signum in PREEMPTION_SIGNALS else "") + "\n")
            if signum in PREEMPTION_SIGNALS:
                survivors = group.stop(max(grace, preempt_grace), signal.SIGTERM, leaders_only=True)
            else:
                survivors = group.stop(grace, signum)
            codes = group.returncodes()
            if workers and all(codes[i] == worker.PREEMPTED_EXIT_CODE for i in workers):
                err.write(f"launcher: pre-empted, resumable: every worker saved and exited with "
                          f"{worker.PREEMPTED_EXIT_CODE}\n")
                outcome = Outcome(worker.PREEMPTED_EXIT_CODE, "preempted")
            else:
                outcome = Outcome(128 + signum, "interrupted")
        elif failed or errored:
            stopped_at = time.time()
            failures = _failures(group, workers, codes) or [diagnosis.Failure(
                specs[failed[0]].rank, specs[failed[0]].name, specs[failed[0]].log_path, stopped_at, codes[failed[0]])]
            root = diagnosis.root_cause(failures)
            root_index = next(i for i in workers + services if specs[i].name == root.name)
            _report_failure(specs[root_index], root.returncode, root.error, err)
            for line in diagnosis.summary(root, []):
                err.write(line + "\n")
            err.flush()
            survivors = group.stop(grace)
            codes = group.returncodes()
            later = [f for f in _failures(group, workers, codes, stopped_at) if f.name != root.name]
            if root.returncode:
                code = exit_code_of(root.returncode)
            elif root.error:  # still tearing down: the exit code its error file announces
                code = root.error.get("exit_code") if isinstance(root.error.get("exit_code"), int) else 1
            else:
                code = exit_code_of(codes[failed[0]]) if failed else 1
            root.log_tail = tail(root.log_path)
            path = diagnosis.write_failure_file(log_dir, diagnosis.failure_record("failed", root, later, code))
            if later:
                err.write(diagnosis.summary(root, later)[1] + "\n")
            if path:
                err.write(f"launcher: failure summary in {path}\n")
            outcome = Outcome(code, "failed", specs[root_index], root.returncode)
        elif hung:
            # The stuck rank and the ranks blocked in a collective waiting for it go silent within moments of
            # each other, in either order; so every rank silent for half the timeout is a suspect, and its
            # stack tells which is which.
            suspects = _silent(group, workers, codes, hang_timeout / 2)
            report = _dump_stacks(group, list(suspects), err)
            # a rank blocked inside MindSpore (a collective) is usually waiting for the one stuck in its own code
            stuck = [item for item in report if not item["waiting"]] or report
            for index, item in zip(suspects, report):
                what = "hung" if item in stuck else "waiting inside MindSpore, probably for the hung rank"
                err.write(f"launcher: {item['name']} {what}: no heartbeat for {suspects[index]:.0f} s; "
                          f"it was at {item['line'] or 'an unknown line'} ({item['how']})\n")
                item["hung"] = item in stuck
                item["silent_s"] = round(suspects[index], 1)
            survivors = group.stop(grace)
            path = diagnosis.write_failure_file(log_dir, diagnosis.failure_record("hang", None, [], 124, report))
            if path:
                err.write(f"launcher: failure summary in {path}\n")
            outcome = Outcome(124, "hang")
        elif all(codes[i] == 0 for i in workers) and not any(
                specs[i].awaited and codes[i] is None for i in services):
            survivors = group.stop(grace)
            outcome = Outcome(0, "success")
        elif timeout is not None and time.monotonic() - started > timeout:
            err.write(f"launcher: timeout after {timeout:g} s; stopping {len(group.alive())} processes\n")
            survivors = group.stop(grace)
            outcome = Outcome(124, "timeout")
        tee.pump(final=outcome is not None)
        if outcome is None:
            time.sleep(POLL_INTERVAL)
    _note_survivors(survivors, err)
    return outcome


def _hung(group: Group, workers: Sequence[int], codes: Dict[int, Optional[int]], hang_timeout: float) -> List[int]:
    """Running workers whose heartbeat is older than `hang_timeout` (never beating: not watched)."""
    return list(_silent(group, workers, codes, hang_timeout))


def _silent(group: Group, workers: Sequence[int], codes: Dict[int, Optional[int]],
            longer_than: float) -> Dict[int, float]:
    """Running workers whose heartbeat is older than `longer_than` seconds, with that age."""
    now = time.time()
    ages = {i: diagnosis.heartbeat_age(heartbeat_file(group.specs[i]), now) for i in workers if codes[i] is None}
    return {i: age for i, age in ages.items() if age is not None and age > longer_than}


def run_attempts(make_specs: Callable[[int], List[WorkerSpec]], *, max_restarts: int, grace: float,
                 timeout: Optional[float], tee_ranks: Sequence[int], hang_timeout: Optional[float] = None,
                 preempt_grace: float = 0.0, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Run the group, restarting it after a failure up to `max_restarts` times; the job's exit code."""
    attempt = 0
    with _Interrupts() as interrupts:
        while True:
            outcome = supervise(make_specs(attempt), grace=grace, timeout=timeout, tee_ranks=tee_ranks,
                                interrupts=interrupts, hang_timeout=hang_timeout, preempt_grace=preempt_grace,
                                out=out, err=err)
            if outcome.reason in ("success", "interrupted", "preempted") or attempt == max_restarts:
                return outcome.exit_code
            attempt += 1
            err.write(f"launcher: restarting the whole group (restart {attempt} of {max_restarts})\n")
            err.flush()
