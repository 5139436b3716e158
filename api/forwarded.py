"""Who is really asking: the peer address, and forwarded headers only from trusted proxies.

The failed-authentication limit (api/auth.py) counts per client address. A
client address taken from `X-Forwarded-For` as sent by anyone lets a client
rotate the header to dodge the limit, or name someone else's address to lock
them out. So, like uvicorn's `--forwarded-allow-ips` but with an empty default
(uvicorn trusts 127.0.0.1 by default, and `cdrhouse serve` turns uvicorn's own
handling off): `X-Forwarded-For` / `X-Forwarded-Proto` are believed only when
the TCP peer is one of `ServiceConfig.forwarded_allow_ips`. Then the client is
the rightmost address in the chain that is not itself a trusted proxy (a client
can prepend anything, but not what its proxy appends). The real peer is kept
in the request state as `peer`, and the access log records both.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """A set of addresses and networks (`10.0.0.0/8`, `::1`), or `*` for every peer."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.any = False
        self.networks: list[_Network] = []
        for raw in entries:
            for entry in (e.strip() for e in str(raw).split(",")):
                if not entry:
                    continue
                if entry == "*":
                    self.any = True
                    continue
                try:
                    self.networks.append(ipaddress.ip_network(entry, strict=False))
                except ValueError:
                    raise ValueError(f"forwarded-allow-ips: {entry!r} is not an IP address or "
                                     "network (e.g. 10.0.0.5, 10.0.0.0/8, or * for any)") from None

    def __bool__(self) -> bool:
        return self.any or bool(self.networks)

    def __contains__(self, host: str) -> bool:
        if self.any:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self.networks)


def forwarded_client(peer: str, header: str | None, trusted: TrustedProxies) -> str:
    """The client behind `peer`: `peer` itself unless it is a trusted proxy that sent
    `X-Forwarded-For`; then the rightmost address of the chain that is not trusted."""
    if not header or peer not in trusted:
        return peer
    chain = [h.strip() for h in header.split(",") if h.strip()]
    for host in reversed(chain):
        if host not in trusted:
            return host
    return chain[0] if chain else peer


class ForwardedClient:
    """ASGI middleware: `scope["client"]` becomes the forwarded client when (and only
    when) the peer is a trusted proxy; `scope["state"]["peer"]` keeps the real peer."""

    def __init__(self, app: Any, trusted: TrustedProxies) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            peer = client[0] if client else "unknown"
            scope.setdefault("state", {})["peer"] = peer
            if self.trusted and peer in self.trusted:
                headers = {k.lower(): v for k, v in scope.get("headers", [])}
                xff = headers.get(b"x-forwarded-for")
                if xff is not None:
                    host = forwarded_client(peer, xff.decode("latin-1"), self.trusted)
                    scope["client"] = (host, 0)
                proto = headers.get(b"x-forwarded-proto")
                if proto is not None:
                    value = proto.decode("latin-1").split(",")[-1].strip().lower()
                    if value in ("http", "https"):
                        scope["scheme"] = value if scope["type"] == "http" else (
                            "wss" if value == "https" else "ws")
        await self.app(scope, receive, send)
