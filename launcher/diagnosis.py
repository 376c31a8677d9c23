"""Why a job failed or hung, in one summary: the root cause is the earliest failure by time, not the
peers that failed later because of it. Pure functions over what the supervisor collected, plus the
small readers of the files workers leave (error files, heartbeats, stack dumps in logs)."""
import json
import os
import re
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import List, Optional, Sequence

from launcher import worker
from launcher.errors import UserError
from launcher.safe_write import write_json

SIGNAL_HINTS = {
    signal.SIGKILL: "often the out-of-memory killer",
    signal.SIGSEGV: "a crash in native code",
    signal.SIGABRT: "an abort, often a failed check in native code",
    signal.SIGBUS: "a bad memory access, often a full /dev/shm",
}
FAILURE_FILE = "failure.json"


@dataclass
class Failure:
    """One rank that failed: when, how it ended, and what it wrote to its error file (if anything)."""
    rank: int
    name: str
    log_path: str
    time: float                              # error-file time, else when the launcher saw it exit
    returncode: Optional[int] = None         # None: still running when its error file was found
    error: Optional[dict] = None             # the worker's error file (launcher.worker.error_record)
    log_tail: List[str] = field(default_factory=list)


def exit_code_of(returncode: int) -> int:
    """Shell convention: a process killed by signal N counts as exit code 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_returncode(returncode: Optional[int]) -> str:
    if returncode is None:
        return "an uncaught exception (still running)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
        hint = SIGNAL_HINTS.get(-returncode)
        return f"signal {name} (exit code {exit_code_of(returncode)})" + (f", {hint}" if hint else "")
    return f"exit code {returncode}"


def read_error_file(path: str) -> Optional[dict]:
    """A worker's error record, or None when it wrote none (or something unreadable)."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("time"), (int, float)) else None


def root_cause(failures: Sequence[Failure]) -> Failure:
    """The earliest failure by time; ties go to the lower rank."""
    return min(failures, key=lambda f: (f.time, f.rank))


def cause_line(failure: Failure) -> str:
    """`rank 2 on host (pid 7): ValueError: boom, raised at job.py:12` or the decoded exit."""
    error = failure.error
    if error:
        where = f", raised at {error['where']}" if error.get("where") else ""
        host = f" on {error['host']} (pid {error['pid']})" if error.get("host") else ""
        message = f"{error.get('type', 'Exception')}: {error.get('message', '')}".rstrip(": ")
        return f"{failure.name}{host}: {message}{where}"
    return f"{failure.name}: {describe_returncode(failure.returncode)}, no error file (died without a Python exception)"


def summary(root: Failure, later: Sequence[Failure]) -> List[str]:
    lines = [f"launcher: root cause (earliest failure, {time.strftime('%H:%M:%S', time.localtime(root.time))}"
             f".{int(root.time * 1000) % 1000:03d}): {cause_line(root)}"]
    if later:
        lines.append("launcher: failed after it (not the cause): " + "; ".join(
            f"{f.name} ({f.error['type'] if f.error else describe_returncode(f.returncode)})" for f in later))
    return lines


def failure_record(reason: str, root: Optional[Failure], later: Sequence[Failure], exit_code: int,
                   hung: Sequence[dict] = ()) -> dict:
    """What `<log-dir>/failure.json` holds: the same as the console summary, as data."""
    return {"reason": reason, "exit_code": exit_code,
            "root_cause": asdict(root) | {"summary": cause_line(root),
                                          "exit": describe_returncode(root.returncode)} if root else None,
            "later_failures": [asdict(f) | {"summary": cause_line(f)} for f in later],
            "hung": list(hung)}


def write_failure_file(log_dir: str, record: dict) -> str:
    """`<log-dir>/failure.json`, written safely; "" when it cannot be (the console summary still stands)."""
    try:
        return write_json(os.path.join(log_dir, FAILURE_FILE), record)
    except (OSError, UserError):
        return ""


def heartbeat_age(path: str, now: float) -> Optional[float]:
    """Seconds since the worker last touched its heartbeat file; None when it never did (not watched)."""
    try:
        return now - os.stat(path).st_mtime
    except OSError:
        return None


def dumps_stack_on_sigusr1(heartbeat_path: str) -> bool:
    try:
        with open(heartbeat_path, encoding="utf-8") as handle:
            return handle.read().strip() == worker.STACK_ON_SIGUSR1
    except OSError:
        return False


_FRAME = re.compile(r'^\s*File "(?P<file>[^"]+)", line (?P<line>\d+) in (?P<func>\S+)')
_SPY_FRAME = re.compile(r"^\s+(?P<func>\S+) \((?P<file>[^()]+):(?P<line>\d+)\)\s*$")


def stack_frames(dump: str) -> List[str]:
    """The main thread's frames, innermost first, as `file:line in func`, from a faulthandler dump (SIGUSR1) or
    a `py-spy dump`; the last main thread in the text wins, since a log can hold several dumps. py-spy names
    the main thread only when the program imported threading; otherwise it is the thread whose id is the pid."""
    blocks = re.split(r"(?m)^(?=(?:Current thread|Thread) 0x[0-9a-f]+|Thread \d+ \(|Process \d+:)", dump)
    pids = set(re.findall(r"(?m)^Process (\d+):", dump))
    main = ([b for b in blocks if b.startswith("Current thread")]
            or [b for b in blocks if '"MainThread"' in b.split("\n", 1)[0]]
            or [b for b in blocks if b.split(" ", 2)[:2] in [["Thread", pid] for pid in pids]])
    for block in reversed(main or blocks):
        frames = []
        for line in block.splitlines():
            match = _FRAME.match(line) or _SPY_FRAME.match(line)
            if match:
                frames.append(f"{match['file']}:{match['line']} in {match['func']}")
        if frames:
            return frames
    return []


def innermost_frame(dump: str) -> Optional[str]:
    """`file:line in func` where the main thread was (see stack_frames); None when the text holds no stack."""
    frames = stack_frames(dump)
    return frames[0] if frames else None
