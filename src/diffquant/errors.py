"""User-facing errors: one actionable line, no traceback wall."""


class DiffquantError(Exception):
    """A problem the user can fix (a bad setting, a missing file); printed as one line."""


def check_choice(key: str, value: object, allowed: tuple[object, ...]) -> None:
    """Raise a one-line error naming the key, the bad value and the allowed values."""
    if value not in allowed:
        raise DiffquantError(f"{key}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")


def check_range(key: str, value: float, low: float, high: float | None = None) -> None:
    """Raise a one-line error if value is outside [low, high]."""
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise DiffquantError(f"{key}={value} is out of range; allowed: {allowed}")
