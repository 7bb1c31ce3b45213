"""User-facing errors: one line, exit code 2 (the CLI turns them into that)."""


class UserError(Exception):
    """A mistake in what the user asked for: bad flag, missing file, conflicting run dir.

    The message is the whole story: what was wrong and what would be accepted.
    """

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """A library's message cut to its first line (with the next one when the first only introduces it)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
