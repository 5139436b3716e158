"""`cdrhouse serve` whose recalc jobs stop dead half-way — for the scale-out tests only.

    python tests/pausing_serve.py MARKER [cdrhouse arguments …]

Wraps, in this process only, the recalc job's phase change so that once a job
has written its new call versions (phase `summaries` recorded), the worker thread
writes MARKER (the job id) and blocks forever: the test then SIGKILLs the process
mid-job and watches another instance finish it. Like tests/crashing_cli.py, this
file is not part of the package and the installed cdrhouse cannot arm it.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from cdrhouse.engine import recalc


def main() -> None:
    marker, args = Path(sys.argv[1]), sys.argv[2:]
    original = recalc._set_phase

    def set_phase(db, job_id, phase, *a, **k):
        job = original(db, job_id, phase, *a, **k)
        if phase == "summaries":
            marker.write_text(job_id)
            threading.Event().wait()          # stuck until killed
        return job

    recalc._set_phase = set_phase
    sys.argv = ["cdrhouse", *args]
    from cdrhouse.api.cli import main as cli_main
    cli_main()


if __name__ == "__main__":
    main()
