"""User-facing errors: one actionable line, no traceback wall."""


class DiffquantError(Exception):
    """A problem the user can fix (a bad setting, a missing file); printed as one line."""
