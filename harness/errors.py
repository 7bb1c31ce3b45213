"""User-facing errors: one line, exit code 2 (the CLI turns them into that)."""


class UserError(Exception):
    """A mistake in what the user asked for: bad flag, missing file, conflicting run dir.

    The message is the whole story: what was wrong and what would be accepted.
    """

    exit_code = 2
