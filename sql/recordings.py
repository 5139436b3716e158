"""Which recording URLs the service may send a browser to (pure: no I/O, no DNS).

A CDR's `recording_url` comes from the switch's files, so it is data, not
trusted configuration: `GET /v1/cdrs/{id}/recording` answers with a redirect
to it, and a redirect to `javascript:…`, to `http://10.0.0.5/admin` or to
`http://localhost:8123/?query=…` would turn a user's browser against them or
their intranet. The rule, checked when the redirect is made (so that it also
covers rows stored before it, restored from the archive, and a configuration
changed since the ingest):

- `http://` and `https://` only, with a host; no user name or password in the
  URL (`https://good.example@evil.example/`), no whitespace, control
  characters or backslashes (browsers "repair" those into a different URL than
  the one checked here), at most 2,048 characters.
- With an allow-list (`--recording-hosts` / `CDRHOUSE_RECORDING_HOSTS`), the
  host must be on it: `rec.example.com` (exactly) or `*.example.com` (any
  subdomain). The list may name internal hosts on purpose.
- Without one, any host except an internal one: IP literals that are not
  global (loopback, private, link-local, …), numeric forms browsers read as
  IPv4 (`http://2130706433/`, `http://127.1/`), `localhost`, and single-label
  intranet names.
- `s3://bucket/key` only when the allow-list names the bucket (`s3://bucket`
  or `s3://bucket/prefix`): such a URL is presigned with the *service's*
  credentials, which can read more than recordings (the archive, for one), so
  an ingested row must not choose the object. The API also refuses keys inside
  the archive whatever the list says.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_CHARS = 2048

_HOST_ENTRY = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
_UNSAFE_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


class RecordingRefused(ValueError):
    """A recording URL the service will not redirect to; the message says why."""


@dataclass(frozen=True)
class RecordingTarget:
    """Where a recording is: an http(s) URL to redirect to, or an S3 object to presign."""

    url: str
    bucket: str | None = None
    key: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.bucket is not None


@dataclass(frozen=True)
class RecordingPolicy:
    #: allowed http(s) hosts: exact names, or "*.domain" for its subdomains; empty: any
    #: public host
    hosts: tuple[str, ...] = ()
    #: (bucket, key prefix) pairs whose objects may be presigned
    s3: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> RecordingPolicy:
        """The policy of a comma-separated list (`--recording-hosts`); ValueError names
        the bad entry."""
        hosts: list[str] = []
        s3: list[tuple[str, str]] = []
        for raw in (text or "").split(","):
            entry = raw.strip()
            if not entry:
                continue
            if entry.lower().startswith("s3://"):
                bucket, _, prefix = entry[5:].partition("/")
                if not _BUCKET.match(bucket):
                    raise ValueError(f"{entry!r}: not an S3 bucket name (s3://bucket[/prefix])")
                s3.append((bucket, prefix))
                continue
            host = entry.lower().rstrip(".")
            if not _HOST_ENTRY.match(host):
                raise ValueError(f"{entry!r}: give a host name (rec.example.com), *.domain, "
                                 "or s3://bucket[/prefix] — no scheme, port or path")
            hosts.append(host)
        return cls(tuple(hosts), tuple(s3))

    def _host_listed(self, host: str) -> bool:
        for entry in self.hosts:
            if entry.startswith("*."):
                if host.endswith(entry[1:]) and host != entry[2:]:
                    return True
            elif host == entry:
                return True
        return False

    def check(self, url: str) -> RecordingTarget:
        """The target of `url`, or RecordingRefused saying why it is not allowed."""
        if len(url) > MAX_URL_CHARS:
            raise RecordingRefused(f"the URL is longer than {MAX_URL_CHARS} characters")
        if _UNSAFE_CHARS.search(url):
            raise RecordingRefused("the URL holds whitespace, a control character or a "
                                   "backslash")
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").rstrip(".")
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as exc:
            raise RecordingRefused(f"the URL does not parse ({exc})") from None
        scheme = parts.scheme.lower()
        if scheme == "s3":
            return self._s3(parts.netloc, parts.path.lstrip("/"), url)
        if scheme not in ("http", "https"):
            shown = f"{scheme}:" if scheme else "no scheme"
            raise RecordingRefused(f"only http and https recordings are served, not {shown}")
        if not host:
            raise RecordingRefused("the URL has no host")
        if "%" in host:
            raise RecordingRefused("the host is percent-encoded")
        if not host.isascii():
            # what a browser looks up: IDNA, where 。 and ． are dots too
            try:
                host = host.encode("idna").decode("ascii")
            except UnicodeError:
                raise RecordingRefused("the host is not a valid international name") from None
        if "@" in parts.netloc:
            raise RecordingRefused("the URL carries a user name or password")
        if self.hosts:
            if not self._host_listed(host):
                raise RecordingRefused(f"host {host} is not among the configured recording "
                                       "hosts")
            return RecordingTarget(url)
        why = internal_host(host)
        if why:
            raise RecordingRefused(f"host {host} is {why}; list it in --recording-hosts to "
                                   "allow it")
        return RecordingTarget(url)

    def _s3(self, bucket: str, key: str, url: str) -> RecordingTarget:
        if not bucket or not key:
            raise RecordingRefused("an s3:// recording names a bucket and a key")
        if any(seg in ("", ".", "..") for seg in key.split("/")) or "?" in url or "#" in url:
            # a proxy or server normalising ../ would serve another key than the one
            # checked (and signed)
            raise RecordingRefused("the s3:// key has empty, . or .. segments, or a query")
        for allowed, prefix in self.s3:
            if bucket == allowed and key.startswith(prefix):
                return RecordingTarget(url, bucket, key)
        raise RecordingRefused(f"s3://{bucket}/… is not under a configured recording bucket "
                               "(the s3:// entries of --recording-hosts)")


def internal_host(host: str) -> str | None:
    """Why `host` (lower case, no brackets) names an internal machine, or None."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is not None:
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return None if ip.is_global and not ip.is_multicast else "an internal address"
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        # browsers read 2130706433, 0x7f.1 or 127.1 as IPv4 addresses
        return "a numeric address in a form browsers reinterpret"
    if host == "localhost" or host.endswith(".localhost"):
        return "the local machine"
    if len(labels) == 1:
        return "a single-label intranet name"
    return None
