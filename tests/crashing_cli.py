"""The cdrhouse CLI with the tiering job set to die at one step — for crash tests only.

    python tests/crashing_cli.py [tiering:|backup:]STEP [cdrhouse arguments …]

Installs, in this process only, a `default_fault` hook (tiering.archive's, or
backup.ops' with `backup:`) that ends the process with os._exit(70) (as a crash
would: no cleanup, no finally, the lock left behind) right after STEP completes,
then runs the normal entry point. This
file is not part of the package, and the installed cdrhouse has no way to arm
the hook: that is what keeps the crash out of production.
"""

from __future__ import annotations

import os
import sys

from cdrhouse.backup import ops
from cdrhouse.tiering import archive

CRASH_EXIT = 70


def main() -> None:
    spec, args = sys.argv[1], sys.argv[2:]
    area, _, step = spec.rpartition(":")
    module = ops if area == "backup" else archive
    if area == "tiering" or not area:
        if step not in archive.STEPS:
            raise SystemExit(f"unknown step {step!r}; one of {', '.join(archive.STEPS)}")

    def die(at: str) -> None:
        if at == step:
            os._exit(CRASH_EXIT)

    module.default_fault = die
    sys.argv = ["cdrhouse", *args]
    from cdrhouse.api.cli import main as cli_main
    cli_main()


if __name__ == "__main__":
    main()
