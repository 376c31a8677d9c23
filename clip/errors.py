"""User-facing errors: one line, exit code 2, never a traceback (shared with the launcher)."""
from launcher.errors import UserError, exit_on_user_error

__all__ = ["UserError", "exit_on_user_error"]
