"""Launcher for MindSpore data-parallel jobs. Never imports MindSpore."""
