"""What every answer says while the store is not exact: a cluster being rebalanced.

While `cdrhouse cluster rebalance` moves a month, a moved call sits on two shards until
the copy's source is deleted, and a read through the Distributed tables shows it (and
counts it) twice (engine/rebalance.py). Readers are meant to be stopped for it (README,
"Adding a shard"); one that is not is told so: every HTTP answer carries a `Warning`
header (code 199, RFC 9111 §5.5) and every web page a banner, for as long as the
rebalance holds its lease.

The service's heartbeat (api/scaleout.py) asks every few seconds, on a cluster only (one
node cannot be rebalanced, so there it reads nothing), and leaves the text on the
service; a request reads that attribute and never queries for it.
"""

from __future__ import annotations

from cdrhouse.engine import rebalance
from cdrhouse.engine.db import Database


def notice(db: Database) -> str | None:
    """The notice answers carry now, or None when the store is exact."""
    moving = rebalance.running(db)
    if moving is None:
        return None
    return (f"The store's calls are being moved between shards (a cluster rebalance since "
            f"{moving.claimed_at:%Y-%m-%d %H:%M} UTC): until it finishes, a call may be "
            "shown or counted twice.")


def header_value(text: str) -> bytes:
    """`text` as a Warning header's value: code 199, agent, quoted text (ASCII only)."""
    quoted = text.replace("\\", "\\\\").replace('"', "'")
    return f'199 cdrhouse "{quoted}"'.encode("ascii", "replace")


class WarnWhileRebalancing:
    """ASGI middleware: the service's current notice as a `Warning` header on every
    answer (plain ASGI, as api.app.Observe, so that streamed bodies pass untouched)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        service = getattr(scope["app"].state, "service", None) if scope["type"] == "http" \
            else None
        text = getattr(service, "notice", None)
        if not text:
            await self.app(scope, receive, send)
            return
        header = (b"warning", header_value(text))

        async def send_with_warning(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await self.app(scope, receive, send_with_warning)
