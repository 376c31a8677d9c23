"""A plain Python program under the launcher, using none of its helpers: it touches the heartbeat file the
launcher names a few times, then sleeps for good. tests/test_diagnosis.py expects the launcher's hang report
to show the sleeping line (found by py-spy, from outside the process)."""
import os
import signal
import sys
import time

# --claim-sigusr1: announce a SIGUSR1 stack dump (as launcher.worker.install() does) but ignore the signal,
# so the launcher must fall back to py-spy.
CLAIM = "stack-on-SIGUSR1" if "--claim-sigusr1" in sys.argv else ""
if CLAIM:
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def wait_forever():
    time.sleep(600)  # the sleeping line


for _ in range(3):
    with open(os.environ["LAUNCHER_HEARTBEAT_FILE"], "w", encoding="utf-8") as beat:
        beat.write(CLAIM)
    time.sleep(0.1)
wait_forever()
