"""Run the `diffquant` CLI many times from one interpreter: each call is a forked child process.

The parent imports the CLI and the pipeline once (about 4 s a process on this project's machine);
every child is a real process with its own argv, environment, stdout / stderr and exit code, as
`python -m diffquant.run` would have. The bad-input matrix runs 30+ CLI calls this way in seconds.
`python tests/helpers/cli_fork.py CALLS.json` writes `<name>.out`, `<name>.err` and `codes.json` next to it.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import select
import subprocess
import sys
import tempfile
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class CliCall:
    """One CLI invocation: its arguments, extra environment, and Python run first (to simulate a machine)."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    patch: str = ""


@dataclass(frozen=True)
class CliResult:
    """What the process left behind."""

    returncode: int
    stdout: str
    stderr: str


def run_forked(calls: list[CliCall], folder: Path, timeout: float = 300) -> dict[str, CliResult]:
    """Run `calls` one after the other, each in a forked child of one driver process (OMP_NUM_THREADS=1)."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "calls.json"
    spec.write_text(json.dumps([asdict(c) for c in calls]))
    tests = str(Path(__file__).resolve().parents[1])  # test-only user packages (helpers.custom_model) import in the CLI
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, (tests, os.environ.get("PYTHONPATH")))),
    }
    driver = subprocess.run(
        [sys.executable, __file__, str(spec)], capture_output=True, text=True, timeout=timeout, cwd=folder, env=env
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    codes = json.loads((folder / "codes.json").read_text())
    return {
        c.name: CliResult(codes[c.name], (folder / f"{c.name}.out").read_text(), (folder / f"{c.name}.err").read_text())
        for c in calls
    }


def _child(call: dict, folder: Path) -> None:
    """In the forked child: redirect stdout / stderr to files, apply env and patch, run the CLI, exit with its code."""
    from diffquant.run import main

    code = 1
    try:
        for fd, suffix in ((1, "out"), (2, "err")):
            os.dup2(os.open(folder / f"{call['name']}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        os.environ.update(call["env"])
        for entry in reversed(call["env"].get("PYTHONPATH", "").split(os.pathsep)):  # as a new interpreter would
            if entry and entry not in sys.path:
                sys.path.insert(0, entry)
        if call.get("cwd"):
            os.chdir(call["cwd"])
        exec(call["patch"], {})  # noqa: S102 - test-only: simulate a machine (a missing package or engine)
        sys.argv = ["diffquant", *call["argv"]]
        main()
        code = 0
    except SystemExit as exc:  # what the interpreter does with sys.exit(code)
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - an uncaught exception: traceback and exit code 1, as in a real run
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve(spec: Path) -> None:
    """Import once, then fork one child per call and record its exit code."""
    import diffquant.pipeline  # noqa: F401 - the heavy imports every child shares
    import diffquant.run  # noqa: F401

    codes: dict[str, int] = {}
    for call in json.loads(spec.read_text()):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(call, spec.parent)
        _, status = os.waitpid(pid, 0)
        codes[call["name"]] = os.waitstatus_to_exitcode(status)
    (spec.parent / "codes.json").write_text(json.dumps(codes))


def serve_forever() -> None:
    """Import once, then for each JSON call read from stdin fork a child and answer its exit code on stdout."""
    import diffquant.pipeline  # noqa: F401 - the heavy imports every child shares
    import diffquant.run  # noqa: F401

    for line in sys.stdin:
        call = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(call, Path(call["folder"]))
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)


class CliServer:
    """A warm driver process: `run(argv, cwd, env)` is `python -m diffquant.run *argv` as a forked child of it.

    Each call is a real process (own argv, environment, working folder, exit code and output), as
    in `run_forked`, but calls arrive one at a time from the tests, so every CLI test shares one import.
    """

    def __init__(self) -> None:
        tests = str(Path(__file__).resolve().parents[1])
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, (tests, os.environ.get("PYTHONPATH")))),
        }
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.calls = 0

    def run(
        self, argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """One CLI call; stdout, stderr and the exit code as subprocess.run(capture_output=True, text=True) gives them."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        folder = Path(tempfile.mkdtemp(prefix="cli-"))
        self.calls += 1
        name = f"call{self.calls}"
        call = {"name": name, "argv": argv, "env": dict(env or {}), "patch": "", "cwd": str(cwd), "folder": str(folder)}
        self.proc.stdin.write(json.dumps(call) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.proc.kill()
            raise subprocess.TimeoutExpired(argv, timeout)
        code = json.loads(self.proc.stdout.readline())["code"]
        out, err = ((folder / f"{name}.{s}").read_text() for s in ("out", "err"))
        return subprocess.CompletedProcess(["diffquant", *argv], code, out, err)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=30)


@functools.cache
def cli_server() -> CliServer:
    """The test session's one warm CLI driver (started on first use, closed at exit)."""
    server = CliServer()
    atexit.register(server.close)
    return server


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve_forever()
    else:
        serve(Path(sys.argv[1]))
