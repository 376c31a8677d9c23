"""The MindFormers-style front door (`Trainer`, `python -m clip --run_mode`) over the same pieces as the
commands."""
