"""What the recalc browser tests add to the web store (tests/webstore.py): rate cards
for acme's C1 and K1, and the reference product's worked example — one 3600 s call at
0.0001/s (0.36; the carrier's cost 0.18 at 0.00005/s). Adjusted to 60 s it costs 0.006
(and 0.003).

Run as a script (`python recalcstore.py DATA_DIR NOW_ISO`) on a store webstore.py built,
before the service opens it; only tests/test_web_recalc_browser.py's server has it, so
what the other browser modules see is unchanged.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import webstore  # noqa: E402

#: the worked example's call (dst matches the cards' prefix 49)
EXAMPLE_ID = "acme-example-3600"
EXAMPLE_DST = "4930555777"
#: 0.0001/s and 0.00005/s, per second billing
CUSTOMER_CARD = ("prefix,rate_per_min,connect_fee,increment,min_duration,effective_from,currency\n"
                 "49,0.006,0,1/1,0,2020-01-01,USD\n")
CARRIER_CARD = ("prefix,rate_per_min,connect_fee,increment,min_duration,effective_from,currency\n"
                "49,0.003,0,1/1,0,2020-01-01,USD\n")


def example_call(now: dt.datetime) -> dict[str, Any]:
    """The call as webstore's rows (duration = billsec + 5), three hours ago."""
    start = now.replace(second=0, microsecond=0) - dt.timedelta(hours=3, minutes=3)
    return dict(tenant="acme", call_id=EXAMPLE_ID, start=start, customer="C1", carrier="K1",
                billsec=3600, src="4420700999", dst=EXAMPLE_DST, charge="0.360000",
                cost="0.180000", recording="")


#: a re-rate of C1's calls around the DST switch (webstore.DST_CALLS), left stopped
STOPPED_DAYS = (dt.date(2026, 3, 28), dt.date(2026, 3, 29))


def load(db: Any, now: dt.datetime) -> str:
    """Cards, the example call, and a stopped re-rate job; returns that job's id."""
    from cdrhouse.engine import ratecards as rc
    from cdrhouse.engine import recalc as rec
    from cdrhouse.sql.principal import Principal

    rc.import_text(db, "acme", "customer:C1", CUSTOMER_CARD, source="recalcstore")
    rc.import_text(db, "acme", "carrier:K1", CARRIER_CARD, source="recalcstore")
    webstore._insert(db, [example_call(now)])
    # what a service leaves when it shuts down under a job (api/billing.py's abandon):
    # started and claimed, then marked stopped, so that it can be resumed
    req = rec.RecalcRequest(tenant="acme", op="rerate", date_from=STOPPED_DAYS[0],
                            date_to=STOPPED_DAYS[1], account="customer:C1")
    job = rec.start(db, req, Principal.operator("acme"))
    rec.claim(db, job)
    rec.abandon(db, job.job_id)
    return job.job_id


if __name__ == "__main__":
    from cdrhouse.engine.db import Database, StoreConfig

    db = Database(StoreConfig(data_dir=Path(sys.argv[1])))
    load(db, dt.datetime.fromisoformat(sys.argv[2]))
    db.close()
