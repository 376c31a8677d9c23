"""Process checks shared by the launcher tests: which processes of a job are still alive."""
import time
from typing import List

import psutil


def job_processes(marker: str) -> List[psutil.Process]:
    """Live processes (zombies excluded) whose command line or working directory mentions `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "cwd", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if marker in text and proc.pid != psutil.Process().pid:
            found.append(proc)
    return found


def leftovers(marker: str, settle: float = 2.0) -> List[str]:
    """Descriptions of job processes still alive after `settle` seconds (reparented ones may need a moment)."""
    deadline = time.monotonic() + settle
    while True:
        alive = job_processes(marker)
        if not alive or time.monotonic() > deadline:
            return [f"{p.pid} {' '.join(p.info['cmdline'] or [])}" for p in alive]
        time.sleep(0.1)
