"""Errors as RFC 9457 problem details (`application/problem+json`).

Every error the API returns has a stable `type` (a URI under /problems/ that
clients can switch on), a human `title`, and a `detail` that says what to
change. ClickHouse errors are translated before they get here: no stack
trace, internal SQL, guard predicate or other tenant's name ever leaves.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"

#: slug → (status, title). The slug is the stable part of `type`.
PROBLEMS: dict[str, tuple[int, str]] = {
    "unauthorized": (401, "Missing or invalid API key"),
    "forbidden": (403, "Not allowed for this principal"),
    "recording-refused": (403, "Recording URL refused"),
    "not-found": (404, "Not found"),
    "invalid-request": (400, "Invalid request"),
    "bad-sql": (400, "SQL refused"),
    "query-failed": (400, "Query failed"),
    "limit-exceeded": (422, "Query limit exceeded"),
    "query-cancelled": (409, "Query cancelled"),
    "conflict": (409, "Conflicts with work in progress"),
    "rate-limited": (429, "Too many failed authentications"),
    "too-many-queries": (429, "Too many concurrent queries"),
    "unavailable": (503, "Service unavailable"),
    "internal": (500, "Internal error"),
}


class Problem(Exception):
    def __init__(self, slug: str, detail: str, *, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        if slug not in PROBLEMS:
            raise ValueError(f"unknown problem type {slug!r}")
        self.slug = slug
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    @property
    def status(self) -> int:
        return PROBLEMS[self.slug][0]


def problem_body(slug: str, detail: str, instance: str | None = None, **extra: Any) -> dict:
    status, title = PROBLEMS[slug]
    body = {"type": f"/problems/{slug}", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    body.update(extra)
    return body


def problem_response(slug: str, detail: str, request: Request | None = None,
                     headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = problem_body(slug, detail, request.url.path if request else None, **extra)
    return JSONResponse(body, status_code=body["status"], headers=headers,
                        media_type=PROBLEM_JSON)


async def handle_problem(request: Request, exc: Problem) -> JSONResponse:
    request.state.error_kind = exc.slug
    return problem_response(exc.slug, exc.detail, request, exc.headers, **exc.extra)


async def handle_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query"))
        parts.append(f"{where}: {err.get('msg')}")
    request.state.error_kind = "invalid-request"
    return problem_response("invalid-request", "; ".join(parts) or "invalid request", request)


async def handle_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    slug = {401: "unauthorized", 403: "forbidden", 404: "not-found"}.get(exc.status_code)
    if slug is None:
        slug = "invalid-request" if exc.status_code < 500 else "internal"
    request.state.error_kind = slug
    return problem_response(slug, str(exc.detail), request)


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    request.state.error_kind = "internal"
    return problem_response("internal", "the server failed to handle the request; it was logged",
                            request)
