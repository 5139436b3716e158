"""Serving a call's recording to the browser, same-origin, behind the session.

The API answers `GET /v1/cdrs/{id}/recording` with a 307 to the stored URL,
which suits programs; a browser's `<audio>` sends no `Authorization` header
and drops it on cross-origin redirects, and a download link should save a
file named after the call. So the page's route checks the session (the call
must be visible to it, exactly as the API decides) and then **streams the
recording through** with the client's `Range` header passed on, so the audio
player can seek.

The server fetches a URL that came from CDR data, so the fetch is fenced in
(server-side request forgery): only `http`/`https`, no redirects followed, a
connect/read timeout. What may be fetched at all is the API's rule
(`sql/recordings.py` through `api/recordings.recording_location`: the same
allow-list, `--recording-hosts`, and `s3://` recordings presigned); on top of
it, a host the operator did not list must *resolve* to public addresses only —
loopback, private, link-local and reserved ranges are refused — because here the
server itself connects, and a public name can point inside.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")
TIMEOUT = 10.0
CHUNK = 64 * 1024
PASSED_HEADERS = ("content-type", "content-length", "content-range", "accept-ranges",
                  "last-modified", "etag")


class RecordingUnavailable(Exception):
    """The recording cannot be served; the message is safe to show the user."""

    def __init__(self, message: str, status: int = 404) -> None:
        super().__init__(message)
        self.status = status


def check_url(url: str, listed: bool = False) -> str:
    """The URL if the server may fetch it; RecordingUnavailable naming why not.

    `listed`: the operator configured this destination (the host is on the
    recording allow-list, or the URL is a presigned one for the configured S3
    endpoint), so it may be internal."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not parts.hostname:
        raise RecordingUnavailable(
            f"the recording is stored at a {parts.scheme or 'relative'!s} address, which the "
            "web page cannot play (http and https only)")
    host = parts.hostname.lower()
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    if listed:
        return url
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        raise RecordingUnavailable(f"the recording's host {host!r} cannot be found", 502) \
            from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global:
            raise RecordingUnavailable(
                f"the recording's host {host!r} is on an internal network; an operator can "
                "allow it with --recording-hosts", 403)
    return url


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None


_opener = urllib.request.build_opener(_NoRedirects)


@dataclass
class Upstream:
    status: int
    headers: dict[str, str]
    chunks: Iterator[bytes]
    close: Callable[[], None]


def open_recording(url: str, range_header: str | None, listed: bool = False) -> Upstream:
    """Start fetching the recording (blocking: run it in a worker thread)."""
    check_url(url, listed)
    req = urllib.request.Request(url, headers={"User-Agent": "cdrhouse-web"})
    if range_header:
        req.add_header("Range", range_header)
    try:
        resp = _opener.open(req, timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            raise RecordingUnavailable("the recording file is missing on its server") from None
        if exc.code == 416:
            raise RecordingUnavailable("requested range not satisfiable", 416) from None
        raise RecordingUnavailable(f"the recording server answered {exc.code}", 502) from None
    except (urllib.error.URLError, OSError) as exc:
        raise RecordingUnavailable(f"the recording server cannot be reached ({exc})", 502) \
            from None
    headers = {k: v for k, v in ((h, resp.headers.get(h)) for h in PASSED_HEADERS) if v}

    def chunks() -> Iterator[bytes]:
        while True:
            block = resp.read(CHUNK)
            if not block:
                return
            yield block
    return Upstream(resp.status, headers, chunks(), resp.close)
