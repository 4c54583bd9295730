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


def check_device(value: str) -> None:
    """`device` must be cpu or a CUDA device this machine has."""
    import torch

    if value == "cpu":
        return
    if not value.startswith("cuda"):
        raise DiffquantError(f"device={value!r} is not allowed; allowed: cpu, cuda, cuda:N")
    if not torch.cuda.is_available():
        raise DiffquantError(f"device={value!r} but this machine has no usable CUDA GPU; use device=cpu")
    index = value.partition(":")[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise DiffquantError(f"device={value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
