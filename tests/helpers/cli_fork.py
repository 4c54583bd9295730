"""Run the `diffquant` CLI many times from one interpreter: each call is a forked child process.

The parent imports the CLI and the pipeline once (about 4 s a process on this project's machine);
every child is a real process with its own argv, environment, stdout / stderr and exit code, as
`python -m diffquant.run` would have. The bad-input matrix runs 30+ CLI calls this way in seconds.
`CliServer` is the driver (`python tests/helpers/cli_fork.py --serve`, one JSON call per line on stdin);
`cli_server()` is the test session's one instance; `run_forked` runs a list of calls through it.
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


def run_forked(calls: list[CliCall], folder: Path, timeout: float = 300, parallel: int = 2) -> dict[str, CliResult]:
    """Run `calls`, `parallel` at a time, each a forked child of the session's warm driver (`cli_server`)."""
    folder.mkdir(parents=True, exist_ok=True)
    return cli_server().run_batch(calls, folder, parallel, timeout)


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


def serve_forever() -> None:
    """Import once, then for each JSON call read from stdin fork a child and answer its exit code on stdout."""
    import diffquant.pipeline  # noqa: F401 - the heavy imports every child shares
    import diffquant.run  # noqa: F401

    for line in sys.stdin:
        request = json.loads(line)
        calls, parallel = request["calls"], request["parallel"]
        codes: dict[str, int] = {}
        running: dict[int, str] = {}
        while calls or running:
            while calls and len(running) < parallel:
                call = calls.pop(0)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(call, Path(call["folder"]))
                running[pid] = call["name"]
            pid, status = os.wait()
            codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
        print(json.dumps(codes), flush=True)


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
        self, argv: list[str], cwd: Path, env: dict[str, str] | None = None, patch: str = "", timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """One CLI call; stdout, stderr and the exit code as subprocess.run(capture_output=True, text=True) gives them.

        `env` is applied over the driver's environment; `patch` is Python run in the child first (to simulate a machine).
        """
        self.calls += 1
        name = f"call{self.calls}"
        done = self.run_batch([CliCall(name, argv, dict(env or {}), patch)], cwd, 1, timeout)[name]
        return subprocess.CompletedProcess(["diffquant", *argv], done.returncode, done.stdout, done.stderr)

    def run_batch(self, calls: list[CliCall], cwd: Path, parallel: int, timeout: float) -> dict[str, CliResult]:
        """Several CLI calls, `parallel` children at a time (independent processes; each its own output files)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        folder = Path(tempfile.mkdtemp(prefix="cli-"))
        request = [{**asdict(c), "cwd": str(cwd), "folder": str(folder)} for c in calls]
        self.proc.stdin.write(json.dumps({"calls": request, "parallel": parallel}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout * max(1, len(calls) // parallel))
        if not ready:
            self.proc.kill()
            raise subprocess.TimeoutExpired([c.name for c in calls], timeout)
        codes = json.loads(self.proc.stdout.readline())
        return {
            c.name: CliResult(codes[c.name], (folder / f"{c.name}.out").read_text(), (folder / f"{c.name}.err").read_text())
            for c in calls
        }

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
    serve_forever()
