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
        line = f"{one_line(self.prog)}: {one_line(message)}"
        from launcher import worker  # a usage mistake on a rank is that rank's recorded failure, like any other

        worker.write_error_file(UserError(line))
        print(f"error: {line}", file=sys.stderr)
        raise SystemExit(USER_ERROR_EXIT_CODE)


# ---------------------------------------------------------------- what a text or a path may be (both halves)

INT32_MAX = 2**31 - 1
SHOWN = 300                # characters of a value quoted in a message: a 4000-digit number stays one short line
PATH_KINDS = ("file", "dir", "path", "maybe_file", "input", "output_file", "output_dir")


def shown(value) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN else f"{text[:SHOWN - 15]}...({len(text)} characters)"


def text_problem(value: str):
    """Why `value` cannot be a name, key or path here, or None: a NUL byte ends it in every C API, a control
    character corrupts logs and terminals, and argv's invalid UTF-8 (lone surrogates) fails when it is written."""
    if "\0" in value:
        return f"{shown(value)} contains a NUL byte"
    if any(c < " " and c != "\t" or "\x7f" <= c <= "\x9f" for c in value):
        return f"{shown(value)} contains a control character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{shown(value)} is not valid UTF-8"
    return None


def path_problem(path: str, kind: str):
    """Why `path` cannot serve as `kind`, or None, from what exists now:
      file, dir, path      must exist: a readable regular file, a directory, either;
      maybe_file, input    may be missing (the reader names what it expected); if present, a readable regular
                           file (maybe_file) or either (input);
      output_file          not a directory; its directory exists or is creatable (the writers create it), as
                           for output_dir;
      output_dir           a directory, or creatable: no file on the way, the nearest existing one writable.
    Never a FIFO, socket or device: opening one blocks or never ends."""
    problem = text_problem(path)
    if problem or kind not in PATH_KINDS:
        return problem or f"unknown path kind {kind!r}"
    if not path:
        return "an empty path"
    import os
    import stat

    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # the second: a file on the way, named below
        st = None
    except OSError as exc:
        return f"{shown(path)} cannot be examined ({exc.strerror or exc.__class__.__name__})"
    if kind in ("output_file", "output_dir"):
        if st is not None and stat.S_ISDIR(st.st_mode):
            if kind == "output_file":
                return f"{shown(path)} is a directory, expected a file"
            return None if os.access(path, os.W_OK | os.X_OK) else f"{shown(path)}: permission denied"
        if st is not None and not stat.S_ISREG(st.st_mode):
            return f"{shown(path)} is not a regular file (a FIFO, socket or device would block or never end)"
        if st is not None and kind == "output_dir":
            return f"{shown(path)} is a file, expected a directory"
        parent = os.path.dirname(os.path.abspath(path))
        existing = parent
        while not os.path.lexists(existing):
            existing = os.path.dirname(existing)
        if not os.path.lexists(existing):
            return f"{shown(path)}: the directory {shown(existing)} does not exist"
        if not os.path.isdir(existing):
            return f"{shown(path)} cannot be created: {shown(existing)} is a file"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"{shown(path)}: permission denied (cannot write in {shown(existing)})"
        return None
    if st is None:
        return f"{shown(path)} does not exist" if kind in ("file", "dir", "path") else None
    if stat.S_ISDIR(st.st_mode):
        if kind in ("file", "maybe_file"):
            return f"{shown(path)} is not a file: it is a directory"
        return None if os.access(path, os.R_OK | os.X_OK) else f"{shown(path)} is not readable (permission denied)"
    if not stat.S_ISREG(st.st_mode):
        return f"{shown(path)} is not a regular file (a FIFO, socket or device would block or never end)"
    if kind == "dir":
        return f"{shown(path)} is not a directory"
    return None if os.access(path, os.R_OK) else f"{shown(path)} is not readable (permission denied)"


# ---------------------------------------------------------------- command-line argument kinds

class ArgKind:
    """A command-line argument's kind, given to argparse as `type=`: it checks the text before the command does
    anything (a mistake is the parser's one `error:` line), and it is what tests/test_generated_inputs.py reads to
    generate wrong values for every argument. `kind` is "integer", "number", "boolean", "text" or one of
    PATH_KINDS."""

    def __init__(self, kind: str, ge=None, gt=None, le=None, nonempty=False, why="", words=()):
        self.kind, self.ge, self.gt, self.le, self.nonempty, self.why = kind, ge, gt, le, nonempty, why
        self.words = dict(words)  # boolean: the accepted spellings and their values
        self.__name__ = kind  # argparse names the type in its messages

    def __repr__(self):
        bounds = {k: v for k, v in (("ge", self.ge), ("gt", self.gt), ("le", self.le)) if v is not None}
        return f"ArgKind({self.kind!r}, {bounds})"

    def __call__(self, text: str):
        if self.kind == "boolean":
            if text not in self.words:
                raise argparse.ArgumentTypeError(f"invalid choice: {shown(text)} (choose from {', '.join(self.words)})")
            return self.words[text]
        if self.kind == "integer":
            value = self._integer(text)
        elif self.kind == "number":
            value = self._number(text)
        else:
            problem = text_problem(text) or (
                "must not be empty" if self.nonempty and not text.strip() else None) or (
                path_problem(text, self.kind) if self.kind != "text" else None)
            if problem:
                raise argparse.ArgumentTypeError(problem)
            return text
        self._bounds(value)
        return value

    def _integer(self, text: str) -> int:
        import re

        if not re.fullmatch(r"[+-]?[0-9]{1,30}", text):  # int() also takes other scripts' digits, spaces, a newline
            raise argparse.ArgumentTypeError(f"invalid int value: {shown(text)} (expected ASCII digits)")
        return int(text)

    def _number(self, text: str) -> float:
        import math
        import re

        if not re.fullmatch(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", text):
            raise argparse.ArgumentTypeError(f"invalid float value: {shown(text)} (expected a decimal number)")
        value = float(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"invalid float value: {shown(text)} (expected a finite number)")
        return value

    def _bounds(self, value) -> None:
        high = self.le if self.le is not None else (INT32_MAX if self.kind == "integer" else None)
        if self.ge is not None and value < self.ge:
            what = "must not be negative" if self.ge == 0 else f"must be at least {self.ge}"
        elif self.gt is not None and value <= self.gt:
            what = "must be positive" if self.gt == 0 else f"must be greater than {self.gt}"
        elif high is not None and value > high:
            what = f"must be at most {high}"
        else:
            return
        raise argparse.ArgumentTypeError(f"{value} {what}" + (f" ({self.why})" if self.why else ""))


def integer(ge=None, le=None, why="") -> ArgKind:
    return ArgKind("integer", ge=ge, le=le, why=why)


def number(ge=None, gt=None, le=None, why="") -> ArgKind:
    return ArgKind("number", ge=ge, gt=gt, le=le, why=why)


def boolean(true: str = "true", false: str = "false") -> ArgKind:
    return ArgKind("boolean", words={true: True, false: False})


def text(nonempty=False) -> ArgKind:
    return ArgKind("text", nonempty=nonempty)


def path(kind: str) -> ArgKind:
    if kind not in PATH_KINDS:
        raise ValueError(f"path kind {kind!r} is not one of {PATH_KINDS}")
    return ArgKind(kind)


PORT = integer(ge=0, le=65535, why="a TCP port")
SECONDS = number(gt=0, le=10**9, why="beyond that, waits overflow")
