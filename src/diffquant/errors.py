"""User-facing errors: one actionable line, no traceback wall."""

import os
from pathlib import Path


class DiffquantError(Exception):
    """A problem the user can fix (a bad setting, a missing file); printed as one line.

    Messages that quote another exception (an unpickling error of a corrupt checkpoint, say) may carry
    its line breaks: the lines are joined, so the CLI's error stays one line whatever it quotes.
    """

    def __str__(self) -> str:
        return " ".join(line.strip() for line in super().__str__().splitlines() if line.strip())


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


def check_writable_dir(key: str, value: str) -> None:
    """`value` must be a folder, or creatable as one, that this process may write into."""
    path = probe = Path(value).absolute()
    while not probe.exists():  # the nearest existing ancestor decides whether the folder can be made
        probe = probe.parent
    if not probe.is_dir():
        where = "is a file" if probe == path else f"lies inside the file {str(probe)!r}"
        raise DiffquantError(f"{key}={value!r} {where}, not a folder; give a folder path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise DiffquantError(f"{key}={value!r} is not writable ({str(probe)!r}); give a folder you may write into")
