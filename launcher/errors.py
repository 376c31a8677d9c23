"""User-facing errors: one line, exit code 2, never a traceback (launcher and CLIP alike)."""
import argparse
import sys

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A mistake in the user's input (file, key or value), reported as one line."""


def one_line(text: str) -> str:
    """`text` safe to print as one line: control characters (a newline, an escape sequence from a file name) and
    undecodable bytes (argv's invalid UTF-8, kept as lone surrogates) are written as escapes, never raw."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   for c in str(text))


def exit_on_user_error(main):
    """Decorator for command-line entry points: UserError -> 'error: ...' on stderr and exit 2."""
    import functools

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr)
            raise SystemExit(USER_ERROR_EXIT_CODE)

    return wrapper


def read_user_file(path, what: str, missing_hint: str = "") -> str:
    """Text of a file the user named; a missing or unreadable one is a UserError naming it and `what` it is."""
    from pathlib import Path

    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found{missing_hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read {what} ({exc.__class__.__name__}: {exc})") from None


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error format: a usage mistake is one line `error: PROG: ...` and exit 2.

    `--help` is untouched; sub-commands inherit the class, so they report the same way.
    """

    def error(self, message):
        print(f"error: {one_line(self.prog)}: {one_line(message)}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_CODE)
