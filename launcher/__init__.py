"""Launcher for MindSpore data-parallel jobs (never imports MindSpore), and the worker side of its contract.

A worker written by anyone uses the worker side as torch workers use `torch.distributed.elastic`'s `record`:
`from launcher import record, heartbeat` (pure stdlib; see launcher.worker)."""
from launcher.worker import beat_while_waiting, heartbeat, install, record, stop_requested

__all__ = ["record", "heartbeat", "install", "beat_while_waiting", "stop_requested"]
