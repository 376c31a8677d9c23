"""The kill-anything soak: one 2-rank training job interrupted again and again, each time the way a real
machine would interrupt it, and restarted the way a user or a scheduler would restart it.

Three kinds of fault, at a moment drawn from a seeded generator:
- `kill`: SIGKILL of one rank (its number drawn too); the launcher's `--max-restarts` restarts the group,
  which resumes from its last checkpoint (`train.resume: auto`);
- `sigterm`: SIGTERM to the launcher (a scheduler's pre-emption); the workers save and exit 75, and a fresh
  launcher invocation with `train.resume: auto` continues;
- `disk_full`: the output directory's file system (a tmpfs mounted for the run) is filled up, leaving room for
  the small files but not for a checkpoint, so the next checkpoint write fails with ENOSPC; the launcher
  restarts, and the space is given back as soon as the failure is reported (an operator freeing the disk).
A moment is "after the attempt's n-th new training step, plus d seconds": n = 0 is during start-up (import,
cluster formation, compilation, restoring the checkpoint), n >= 1 is mid-training, where a step, a checkpoint
save or the pruning of the previous one may be in flight. Half the kills instead strike while rank 0 writes
a checkpoint (its temporary file seen), the moment that leaves a half-written file behind.

Shared by tests/test_soak.py and bench/bench_recovery.py (the time from each fault to the next completed step).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import psutil
from training_runs import BIND, REPO, TINY, clean_env, train_command

from launcher import worker
from launcher.backends import dynamic
from launcher.plan import attempt_log_dir

KINDS = ("kill", "sigterm", "disk_full")
WORLD = 2
# Each step saves (train.save_every=1), so every fault finds a checkpoint at most one step old and a
# full disk always meets a checkpoint write soon.
OVERRIDES = [o for o in TINY if not o.startswith(("train.max_steps", "train.resume"))] + [
    "train.batch_size=4", "loss.mode=local", "train.save_every=1", "train.keep_last=1", "train.log_every=1",
    "train.resume=auto"]
DISK_MB = 192           # two 45 MB checkpoints (the kept one and the one being written) with room to spare
DISK_KEEP = 1 << 20     # bytes left free by a fill: config.yaml and metrics.jsonl fit, a checkpoint does not
START_UP_WINDOW = 8.0   # n = 0: the fault lands within this many seconds of the attempt's start
STEP_WINDOW = 0.6       # n >= 1: within this many seconds after the n-th step (a step and its save)
GRACE = 1.0             # launcher --grace-period: a killed peer's survivors are SIGKILLed after this
PREEMPT_GRACE = 60.0    # launcher --preempt-grace
WAIT = 180.0            # the longest any one wait of the soak may take before it is a hang
_STEP_LINE = re.compile(r"^\[rank 0\] step (\d+)/(\d+) ")
_RESTART_LINE = "launcher: restarting the whole group"


@dataclass(frozen=True)
class Fault:
    kind: str
    after_steps: int     # new steps the attempt completes first (0: start-up)
    delay: float         # then this many seconds
    rank: int = 0        # the victim of a kill
    during_save: bool = False  # a kill: then at once when rank 0 is next seen writing a checkpoint


def schedule(seed: int, count: int) -> List[Fault]:
    """`count` faults, every kind as often as the count allows, in a seeded random order and at seeded
    random moments."""
    rng = random.Random(seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(count)]
    rng.shuffle(kinds)
    faults = []
    for kind in kinds:
        after = rng.choice((0, 1, 1, 2))
        delay = rng.uniform(0.0, START_UP_WINDOW if after == 0 else STEP_WINDOW)
        kill = kind == "kill"
        faults.append(Fault(kind, after, round(delay, 3), rng.randrange(WORLD) if kill else 0,
                            kill and rng.random() < 0.5))
    return faults


SPARE_STEPS = 3  # per fault: steps an attempt may complete beyond its fault's count before the fault lands


def total_steps(faults: List[Fault]) -> int:
    """Enough steps that the job cannot finish before the last fault: an attempt completes its fault's
    `after_steps`, the step in flight, and as many more as fit in the fault's delay (a start-up delay on a warm
    compile cache lets a few steps run: measured up to 3), which the spare steps cover for every fault."""
    return sum(f.after_steps + 1 + SPARE_STEPS for f in faults) + 2


@dataclass
class Event:
    """What happened to one fault: when it was struck (monotonic), what the launcher said, and when the
    next training step completed after it."""
    fault: Fault
    struck: Optional[float] = None
    reported: Optional[float] = None   # disk_full: when the failed checkpoint write was reported
    recovered: Optional[float] = None
    step_before: int = 0
    where: tuple = (0, 0)              # (launcher invocation, attempt) struck: recovery is a later one's step
    note: str = ""

    def recovery_s(self) -> Optional[float]:
        start = self.reported if self.fault.kind == "disk_full" else self.struck
        return None if start is None or self.recovered is None else round(self.recovered - start, 3)


class Launch:
    """One launcher invocation; its console (stdout and stderr together) read line by line with times."""

    def __init__(self, cmd: list, log_dir: Path, max_restarts: int, env: dict):
        self.log_dir, self.max_restarts = log_dir, max_restarts
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace")
        self.lines: List[tuple] = []
        self.attempt_starts = [(time.monotonic(), 0)]  # (time, index into lines) of each attempt
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            now = time.monotonic()
            self.lines.append((now, line.rstrip("\n")))
            if line.startswith(_RESTART_LINE):
                self.attempt_starts.append((now, len(self.lines)))

    @property
    def attempt(self) -> int:
        return len(self.attempt_starts) - 1

    def steps_since(self, index: int) -> List[tuple]:
        """(time, step) of the training steps reported after line `index`."""
        return [(t, int(m.group(1))) for t, line in self.lines[index:] if (m := _STEP_LINE.match(line))]

    def steps_by_attempt(self) -> List[tuple]:
        """(attempt, (time, step)) of every training step reported."""
        starts = [index for _, index in self.attempt_starts]
        return [(sum(index >= s for s in starts) - 1, (t, int(m.group(1))))
                for index, (t, line) in enumerate(self.lines) if (m := _STEP_LINE.match(line))]

    def last_step(self) -> int:
        steps = self.steps_since(0)
        return steps[-1][1] if steps else 0

    def worker(self, rank: int) -> Optional[psutil.Process]:
        """The current attempt's worker process of `rank`, if it is running."""
        attempt_dir = attempt_log_dir(str(self.log_dir), self.attempt, self.max_restarts)
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return None
        for child in children:
            with contextlib.suppress(psutil.Error):
                env = child.environ()
                if (env.get(dynamic.MS_ROLE) == dynamic.WORKER and env.get(dynamic.MS_NODE_ID) == str(rank)
                        and os.path.dirname(env.get(worker.ERROR_FILE, "")) == attempt_dir):
                    return child
        return None

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def finish(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=10)
        return self.proc.returncode


class SmallDisk:
    """A tmpfs mounted for the run (the tests run as root, as tests/test_disk_full.py does); fill() takes all
    but DISK_KEEP bytes, free() gives them back."""

    def __init__(self, mount: Path, megabytes: int = DISK_MB):
        self.mount, self.filler = mount, mount / "filler"
        mount.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(mount)], check=True)

    def fill(self) -> None:
        stat = os.statvfs(self.mount)
        if stat.f_bavail * stat.f_frsize <= DISK_KEEP:
            return
        with open(self.filler, "ab") as handle:
            with contextlib.suppress(OSError):  # a save in flight may take the space first: full either way
                handle.write(b"\0" * max(stat.f_bavail * stat.f_frsize - DISK_KEEP, 0))
                handle.flush()

    def free(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.mount)], check=True)


@dataclass
class Soak:
    """Runs the schedule against one output directory; `events` says what each fault did."""
    seed: int
    faults: List[Fault]
    out: Path                     # on the small disk
    logs: Path                    # elsewhere: one directory per launcher invocation
    disk: SmallDisk
    events: List[Event] = field(default_factory=list)
    launches: List[Launch] = field(default_factory=list)
    exit_code: Optional[int] = None

    @property
    def steps(self) -> int:
        return total_steps(self.faults)

    @property
    def cache(self) -> Path:
        """The job's own compile cache, beside its logs (the uninterrupted job uses it too)."""
        return self.logs.parent / "compile-cache"

    def launch(self) -> Launch:
        log_dir = self.logs / f"launch_{len(self.launches)}"
        restarts = len(self.faults) + 2
        cmd = [sys.executable, "-m", "launcher", "run", "--backend", "cluster", "-n", str(WORLD), BIND,
               "--max-restarts", str(restarts), "--grace-period", str(GRACE), "--preempt-grace", str(PREEMPT_GRACE),
               "--log-dir", str(log_dir), "--no-chdir", "--tee", "0", "--"] + train_command(
            OVERRIDES + [f"train.max_steps={self.steps}", f"output_dir={self.out}"])
        self.launches.append(Launch(cmd, log_dir, restarts, soak_env(self.cache)))
        return self.launches[-1]

    def saving(self) -> bool:
        """Whether rank 0 is writing a checkpoint now (its temporary file exists)."""
        from launcher.safe_write import leftover_temporaries

        return bool(leftover_temporaries(str(self.out / "checkpoints")))

    def describe(self) -> str:
        """The seed, the schedule and what happened: printed when the soak fails, so that it reproduces."""
        lines = [f"soak seed {self.seed} ({len(self.faults)} faults, {self.steps} steps); rerun with "
                 f"CLIP_SOAK_SEED={self.seed}"]
        for i, fault in enumerate(self.faults):
            event = self.events[i] if i < len(self.events) else None
            done = (f" -> struck at step {event.step_before}, recovered in {event.recovery_s()} s {event.note}"
                    if event else " -> not reached")
            lines.append(f"  {i:2d}: {asdict(fault)}{done}")
        for launch in self.launches:
            lines.append(f"--- launcher {launch.log_dir} (exit {launch.proc.returncode}), last lines:")
            lines += [f"  {line}" for _, line in launch.lines[-40:]]
        return "\n".join(lines)

    def run(self) -> None:
        launch = self.launch()
        for fault in self.faults:
            event = Event(fault)
            self.events.append(event)
            launch = self._strike(launch, event)
            if launch is None:
                return
        self.exit_code = launch.finish(WAIT)
        self._mark_recovered(launch)

    def _wait(self, what: str, condition, launch: Launch) -> None:
        deadline = time.monotonic() + WAIT
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"soak: no {what} within {WAIT:g} s")
            time.sleep(0.02)

    def _strike(self, launch: Launch, event: Event) -> Optional[Launch]:
        fault = event.fault
        start_index = launch.attempt_starts[-1][1]
        attempt = launch.attempt
        self._wait(f"step {fault.after_steps} of attempt {attempt}",
                   lambda: len(launch.steps_since(start_index)) >= fault.after_steps or launch.proc.poll() is not None,
                   launch)
        self._mark_recovered(launch)
        victim = None
        if fault.kind == "kill":  # found first, so that a kill during a save is not late
            self._wait(f"rank {fault.rank} process of attempt {attempt}",
                       lambda: launch.worker(fault.rank) is not None or launch.proc.poll() is not None, launch)
            victim = launch.worker(fault.rank)
        if fault.during_save:
            self._wait("a checkpoint save", lambda: self.saving() or launch.proc.poll() is not None, launch)
        else:
            time.sleep(fault.delay)
        if launch.proc.poll() is not None:
            event.note = f"the launcher had exited ({launch.proc.returncode}) first"
            self.exit_code = launch.finish(WAIT)
            return None
        event.step_before = launch.last_step()
        event.where = (len(self.launches) - 1, attempt)
        event.struck = time.monotonic()
        if fault.kind == "kill":
            try:
                victim.kill()
            except (AttributeError, psutil.Error):
                event.note = "the rank was gone first"
                return launch
            self._wait("restart after a killed rank", lambda: launch.attempt > attempt or launch.proc.poll() is not None,
                       launch)
            return launch if launch.proc.poll() is None else self._relaunch(launch, event)
        if fault.kind == "disk_full":
            # Kept full until the failure: pruning the previous checkpoint frees a checkpoint's worth, which the
            # filler takes back, as the other writers of a full disk would.
            self._wait("restart after a full disk", lambda: self.disk.fill() or launch.attempt > attempt
                       or launch.proc.poll() is not None, launch)
            self.disk.free()
            event.reported = launch.attempt_starts[-1][0]
            failed = [line for _, line in launch.lines[start_index:] if "disk full" in line]
            event.note = "(disk full reported)" if failed else "(failed otherwise)"
            return launch if launch.proc.poll() is None else self._relaunch(launch, event)
        launch.proc.send_signal(signal.SIGTERM)
        code = launch.finish(WAIT)
        event.note = f"(launcher exit {code})"
        # 143: a worker got it before installing its handler; -15: the launcher itself had not installed its own
        assert code in (worker.PREEMPTED_EXIT_CODE, 128 + signal.SIGTERM, -signal.SIGTERM), \
            f"SIGTERM to the launcher: exit code {code}, expected 75 (pre-empted) or 143 / -15 (during start-up)"
        return self.launch()

    def _relaunch(self, launch: Launch, event: Event) -> Launch:
        code = launch.finish(WAIT)
        raise AssertionError(f"soak: the launcher exited ({code}) after a {event.fault.kind} fault instead of "
                             f"restarting")

    def _mark_recovered(self, launch: Launch) -> None:
        """For each struck fault, when the first training step of a later attempt completed."""
        steps = [(t, (i, attempt)) for i, lch in enumerate(self.launches) for attempt, (t, _) in lch.steps_by_attempt()]
        for event in self.events:
            if event.recovered is None and event.struck is not None:
                later = [t for t, where in steps if where > event.where]
                if later:
                    event.recovered = min(later)


def leftovers(folders: List[Path]) -> List[str]:
    """Temporary files (ours are '.<name>.*.tmp*', MindSpore's '*.tmp') under the folders."""
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if ".tmp" in path.name or (path.name.startswith(".") and path.is_file()):
                found.append(str(path))
    return found


def held_locks(folder: Path) -> List[str]:
    """Lock files under `folder` that some process still holds."""
    held = []
    for path in folder.rglob("*.lock"):
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    held.append(str(path))
    return held


def soak_env(cache: Path) -> dict:
    """The job's environment with a compile cache of its own: the suite runs other modules beside this one
    (pytest-xdist), whose runs may hold the shared cache's locks at any moment."""
    return {**clean_env(), "CLIP_COMPILE_CACHE_DIR": str(cache)}


def shm_names() -> set:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def orphaned(names: set) -> set:
    """The /dev/shm names among `names` that no live process has open or mapped: what a killed job leaves
    behind, unlike the live segments of whatever else runs on the machine meanwhile."""
    held = set()
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(psutil.Error, OSError):
            held.update(os.path.basename(m.path) for m in proc.memory_maps(grouped=True)
                        if m.path.startswith("/dev/shm/"))
            held.update(os.path.basename(f.path) for f in proc.open_files() if f.path.startswith("/dev/shm/"))
    return {name for name in names if os.path.exists(f"/dev/shm/{name}") and name not in held}


def processes_using(path: Path) -> List[str]:
    """Live processes whose command line names `path` (the soak's launchers, workers, schedulers)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and any(str(path) in arg for arg in proc.info["cmdline"] or ()):
                found.append(f"{proc.pid}: {' '.join(proc.info['cmdline'])[:120]}")
    return found
