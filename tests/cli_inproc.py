"""`cdrhouse …` run in the test process, through the installed script's own entry point.

`run_cli` calls api/cli.py's `main(args)` — the function the `cdrhouse` script calls —
with the given environment, stdin, and stdout/stderr captured, and turns its
`SystemExit` into the exit code, so a test sees what a user at a terminal sees. It saves
a new interpreter and about a second of imports per command. An error that `main` does
not turn into a message propagates, failing the test with its traceback (a user would
have seen the traceback). Tests about the process itself (the installed script, a
killed run, a store held by another process) still start a real one.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from unittest import mock

import typer.main
import typer.testing

from cdrhouse.api.cli import main


@dataclass
class Ran:
    """What a finished command left: like subprocess.CompletedProcess."""
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


@contextlib.contextmanager
def _environment(env: Mapping[str, str | None]) -> Iterator[None]:
    saved = dict(os.environ)
    try:
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_cli(*args: str, env: Mapping[str, str | None] | None = None, stdin: str = "",
            clean: bool = True) -> Ran:
    """Run `cdrhouse ARGS`; `env` adds (None: removes) variables; `clean` first removes
    every CDRHOUSE_* variable of the test process, as the subprocess helpers did."""
    base: dict[str, str | None] = {"COLUMNS": "200"}
    if clean:
        base.update({k: None for k in os.environ if k.startswith("CDRHOUSE_")})
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with _environment({**base, **(env or {})}), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        saved_stdin = sys.stdin
        sys.stdin = io.StringIO(stdin)
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            sys.stdin = saved_stdin
    return Ran(list(args), code, out.getvalue(), err.getvalue())


class CliRunner(typer.testing.CliRunner):
    """typer's test runner, with the click command built from the app once per process:
    typer rebuilds it on every invoke (~0.15 s of signature introspection each). The
    command is the same object `cdrhouse` runs; each invoke still gets its own context.
    (Patches typer's private `_get_command`: a typer release that renames it fails loudly.)"""

    _command = staticmethod(functools.cache(typer.main.get_command))

    def invoke(self, app, *args, **kwargs):
        with mock.patch.object(typer.testing, "_get_command", self._command):
            return super().invoke(app, *args, **kwargs)
