"""The web viewer's routes: sign-in, the CDR page, its downloads, recordings, saved views.

Server-rendered (Jinja2) with a small script for what only a browser can do
(the columns panel's ordering, the filter dialog, row selection, the detail
drawer, the audio player). Every read goes through the API's own plumbing —
`deps.run_view`, `deps.apply_preferences`, `deps.store`, the download
streamer — with a `Caller` made from the session, so the page has no query
path of its own and the guard applies exactly as for an API key.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode, urlsplit

import anyio
from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.responses import StreamingResponse

from cdrhouse.api import charts, deps, downloads
from cdrhouse.api.errors import Problem
from cdrhouse.api.models import ViewParams
from cdrhouse.api.web import archive as web_archive
from cdrhouse.api.web import session as sess
from cdrhouse.api.web.page import ZONES, render_page, secure_headers, signed_in, to_login, tz_hint
from cdrhouse.api.web.assets import STATIC_DIR, serve_asset
from cdrhouse.api.recordings import recording_location
from cdrhouse.api.web.recording import RecordingUnavailable, open_recording
from cdrhouse.api.web.render import (Accounts, Grid, accounts_for, chip_label, detail_rows,
                                     page_columns)
from cdrhouse.api.web.state import HEADER_OPERATORS, PRESET_LABELS, Filter, StateError, ViewState
from cdrhouse.engine import export
from cdrhouse.engine import userdata as ud
from cdrhouse.engine.db import Database
from cdrhouse.sql import catalogue
from cdrhouse.sql.builder import MAX_DEPTH, MAX_LIST, MAX_RULES, BuilderError, compile_rules
from cdrhouse.sql.operators import BY_KEY
from cdrhouse.sql.viewer import RANGES, resolve_range
from cdrhouse.sql.viewer import ViewerError, compile_view

router = APIRouter(include_in_schema=False)

def _safe_next(value: str | None) -> str:
    """Only a path on this site (never `//host` or a scheme): no open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    return value if not parts.scheme and not parts.netloc else "/"


def _problem_text(exc: Exception) -> str:
    if isinstance(exc, Problem):
        return exc.detail
    return str(exc)


# -- sign in / out -------------------------------------------------------------------

def _login_page(request: Request, next_: str, error: str | None, name: str = "",
                status: int = 200) -> Response:
    token = sess.login_token(request)
    resp = render_page(request, "login.html", {"next": _safe_next(next_), "error": error,
                                               "csrf": token, "name": name}, status)
    sess.set_login_cookie(request, resp, token)
    return resp


@router.get("/login")
async def login_form(request: Request, next: str = "/") -> Response:
    return _login_page(request, next, None)


@router.post("/login")
async def login(request: Request, name: str = Form(""), password: str = Form(""),
                api_key: str = Form(""), csrf_token: str = Form(""),
                next: str = Form("/")) -> Response:
    def again(message: str, status: int) -> Response:
        return _login_page(request, next, message, name, status)

    try:
        sess.check_csrf(request, request.cookies.get(sess.LOGIN_COOKIE, ""), csrf_token)
    except sess.CSRFRefused as exc:
        return again(str(exc), 403)
    try:
        secret = await sess.sign_in(request, name, password, api_key)
    except sess.SignInRefused as exc:
        return again(str(exc), exc.status)
    resp = RedirectResponse(_safe_next(next), status_code=303)
    sess.set_session_cookie(request, resp, secret)
    resp.delete_cookie(sess.LOGIN_COOKIE, path="/login")
    return resp


@router.post("/logout")
async def logout(request: Request, csrf_token: str = Form("")) -> Response:
    try:
        web = await sess.current(request)
        sess.check_csrf(request, web.csrf, csrf_token)
    except sess.SignedOut:
        return to_login(request)
    except sess.CSRFRefused as exc:
        return secure_headers(HTMLResponse(str(exc), status_code=403))
    await sess.sign_out(request)
    resp = RedirectResponse("/login", status_code=303)
    sess.clear_session_cookie(request, resp)
    return resp


# -- the viewer ------------------------------------------------------------------------

def _chip_errors(state: ViewState, web: sess.WebCaller, tz: str) -> dict[int, str]:
    """Each header filter compiled on its own, so an error lands on its chip."""
    errors = {}
    for i, f in enumerate(state.filters):
        try:
            compile_rules({"condition": "AND", "rules": [f.rule()]}, web.caller.principal, tz=tz)
        except (BuilderError, ViewerError) as exc:
            errors[i] = str(exc).removeprefix("rules[0]: ").removeprefix("rules: ")
    return errors


def _rule_errors(state: ViewState, web: sess.WebCaller, tz: str,
                 chip_errors: dict[int, str]) -> list[dict[str, str]]:
    """The builder tree's errors by rule path, for the query builder to show at the rule:
    each bad header filter (the tree's leading rules) and the compiler's first error."""
    errors = {f"rules[{i}]": msg for i, msg in chip_errors.items()}
    try:
        tree = state.tree()
    except StateError:
        return []
    if tree is not None:
        try:
            compile_rules(tree, web.caller.principal, tz=tz)
        except BuilderError as exc:
            errors.setdefault(exc.path, exc.reason)
    return [{"path": path, "message": msg} for path, msg in errors.items()]


def _qbuilder_context(state: ViewState, errors: list[dict[str, str]]) -> dict[str, Any]:
    """What the query-builder panel starts from: the view's tree, its errors, the limits."""
    try:
        tree = state.tree()
    except StateError:
        tree = None
    return {"tree": tree, "errors": errors, "open": bool(state.rules_json or
                                                          (errors and tree is not None)),
            "limits": {"depth": MAX_DEPTH, "rules": MAX_RULES, "list": MAX_LIST}}


async def _resolved(request: Request, web: sess.WebCaller, state: ViewState) -> ViewParams:
    """The state as an API request, with the user's saved zone and columns where the URL
    gives none (zone: the browser's, sent by the page in a cookie, before UTC)."""
    given = {k for k, v in (("tz", state.tz), ("columns", state.columns)) if v}
    fallback_tz = state.tz or tz_hint(request) or "UTC"
    try:
        zoneinfo.ZoneInfo(fallback_tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        fallback_tz = state.tz or "UTC"
    p = state.params(fallback_tz, list(state.columns) if state.columns else None)
    return await deps.apply_preferences(request, web.caller, p, given)


def _new_filter(request: Request) -> Filter | None:
    q = request.query_params
    fld, op = q.get("nf_field"), q.get("nf_op")
    if not fld or not op:
        return None
    values = q.getlist("nf_value")
    if op in ("between", "not_between"):
        value = ",".join(v.strip() for v in values[:2])
    elif op in ("in", "not_in"):
        value = ",".join(v.strip() for v in values if v.strip())
    else:
        value = (values[0] if values else "").strip()
    return Filter(fld, op, value)


@router.get("/")
async def viewer(request: Request) -> Response:
    web = await signed_in(request)
    if isinstance(web, Response):
        return web
    problem: str | None = None
    try:
        state = ViewState.parse(request.query_params)
    except StateError as exc:
        state, problem = ViewState(), str(exc)
    if "view" in request.query_params:
        return await _open_view(request, web, request.query_params["view"])
    nf = _new_filter(request)
    if nf is not None:
        return RedirectResponse(state.url(filters=state.filters + (nf,)), status_code=303)

    try:
        p = await _resolved(request, web, state)
    except StateError as exc:
        state, problem = ViewState(tz=state.tz), str(exc)
        p = await _resolved(request, web, state)
    if state.tz:
        tz_source = "url"
    elif p.tz != (tz_hint(request) or "UTC"):
        tz_source = "saved"
    else:
        tz_source = "browser" if tz_hint(request) else "default"
    # from here on the state names its zone and columns: links, forms and the URL hold them
    shown = tuple(p.columns or catalogue.DEFAULT_COLUMNS[web.caller.principal.role])
    state = replace(state, tz=p.tz, columns=shown)
    chip_errors = _chip_errors(state, web, p.tz) if problem is None else {}
    rule_errors = _rule_errors(state, web, p.tz, chip_errors) if problem is None else []
    page: dict[str, Any] | None = None
    rules = None
    if problem is None and not chip_errors:
        try:
            rules = state.rules()
            page = await deps.run_view(request, web.caller,
                                       page_columns(p, web.caller.principal), rules)
        except Problem as exc:
            problem = exc.detail
        except StateError as exc:
            problem = str(exc)
    accounts = await deps.store(request, lambda db: accounts_for(db, web.caller.principal,
                                                                 state.tenant or None))
    views = await deps.store(request, lambda db: [
        q for q in ud.visible_queries(db, web.caller.principal_text)
        if q.kind in ("viewer", "search")])
    grid = Grid.build(state, web.caller.principal, p, page, accounts)
    applied = None
    archived: list[str] = []
    if page is not None:
        applied = (page["range"]["from"], page["range"]["to"])
        archived = await web_archive.in_range(request, web.caller, *applied, state.tenant)
    canonical = "/?" + urlencode(state.pairs())
    context = {
        "web": web, "state": state, "p": p, "grid": grid, "problem": problem,
        "chip_errors": chip_errors, "presets": [(r, PRESET_LABELS.get(r, r)) for r in RANGES],
        "zones": ZONES, "accounts": accounts, "views": views, "applied": applied,
        "canonical": canonical, "role": web.caller.principal.role,
        "fields": [f for f in catalogue.visible_fields(web.caller.principal.role)],
        "filter_spec": _filter_spec(web.caller.principal.role, accounts),
        "chip_labels": [chip_label(f, accounts, web.caller.principal.tenant or state.tenant)
                        for f in state.filters],
        "tz_source": tz_source,
        "qbuilder": _qbuilder_context(state, rule_errors),
        "archived": archived,
        "chart_request": charts.request_body(p, rules) if page is not None else None,
    }
    return render_page(request, "viewer.html", context,
                       200 if problem is None and not chip_errors else 400)


def _filter_spec(role: str, accounts: Accounts) -> dict[str, Any]:
    """Per visible filterable field: its label, kind, header operators, choices.

    Account columns offer the accounts by code and name (never a bare id to type).
    """
    out = {}
    for f in catalogue.visible_fields(role):
        if not f.filterable:
            continue
        ops = [(k, BY_KEY[k].label, BY_KEY[k].arity) for k in HEADER_OPERATORS.get(f.kind, ())
               if k in BY_KEY and BY_KEY[k].applies_to(f)]
        choices = [[v, v] for v in f.enum_values]
        if f.name in ("customer_id", "carrier_id"):
            listed = accounts.customers if f.name == "customer_id" else accounts.carriers
            if not listed:
                continue          # a customer or carrier user: nothing to choose from
            choices = [[str(a.account_id), f"{a.code} — {a.name}"] for a in listed]
            ops = [(k, BY_KEY[k].label, "list") for k in ("in", "not_in")]
        out[f.name] = {"label": f.label, "kind": "enum" if choices else f.kind, "ops": ops,
                       "values": choices}
    return out


@router.get("/web/cdrs/{call_id}")
async def detail(request: Request, call_id: str, tz: str = "UTC") -> Response:
    """The detail drawer's content: every field this session may see, for one call."""
    try:
        web = await sess.current(request)
    except sess.SignedOut:
        return secure_headers(HTMLResponse("Your session has ended; reload the page to sign in.",
                                           status_code=401))
    cols = [f.name for f in catalogue.visible_fields(web.caller.principal.role)]
    p = ViewParams(columns=cols, range="all", limit=2, tz=tz)
    rules = {"condition": "AND", "rules": [{"field": "call_id", "operator": "equal",
                                            "value": call_id}]}
    try:
        page = await deps.run_view(request, web.caller, p, rules)
    except Problem as exc:
        return secure_headers(HTMLResponse(f'<p class="error" role="alert">{_esc(exc.detail)}</p>',
                                           status_code=exc.status))
    if not page["rows"]:
        return secure_headers(HTMLResponse('<p class="error" role="alert">No such call is visible '
                                           'to you.</p>', status_code=404))
    accounts = await deps.store(request, lambda db: accounts_for(db, web.caller.principal, None))
    return render_page(request, "detail.html", {"rows": detail_rows(page["rows"][0], accounts,
                                                                    web.caller.principal.tenant),
                                          "tz": tz, "call_id": call_id,
                                          "record": page["rows"][0]})


def _esc(text: str) -> str:
    from markupsafe import escape
    return str(escape(text))


# -- recordings ----------------------------------------------------------------------

@router.get("/web/recording/{call_id}")
async def recording(request: Request, call_id: str, download: bool = False) -> Response:
    try:
        web = await sess.current(request)
    except sess.SignedOut:
        return secure_headers(Response("sign in to play recordings", status_code=401,
                                       media_type="text/plain"))
    try:
        record = await deps.one_record(request, web.caller, call_id)
    except Problem as exc:
        return secure_headers(Response(exc.detail, status_code=exc.status, media_type="text/plain"))
    url = record.get("recording_url") or ""
    if not url:
        return secure_headers(Response(f"call {call_id} has no recording", status_code=404,
                                       media_type="text/plain"))
    try:
        # the API's rule decides what may be served (allow-list, s3:// presigned)
        location = recording_location(request, call_id, url)
    except Problem as exc:
        return secure_headers(Response(exc.detail, status_code=exc.status, media_type="text/plain"))
    policy = deps.service(request).config.recordings
    listed = location != url or bool(policy.hosts)   # presigned, or an allow-listed host
    try:
        up = await anyio.to_thread.run_sync(open_recording, location,
                                            request.headers.get("range"), listed)
    except RecordingUnavailable as exc:
        return secure_headers(Response(str(exc), status_code=exc.status, media_type="text/plain"))

    async def body():
        try:
            while True:
                block = await anyio.to_thread.run_sync(next, up.chunks, None)
                if block is None:
                    return
                yield block
        finally:
            await anyio.to_thread.run_sync(up.close)
    headers = dict(up.headers)
    headers.setdefault("content-type", "audio/wav")
    ext = {"audio/wav": ".wav", "audio/x-wav": ".wav", "audio/mpeg": ".mp3",
           "audio/ogg": ".ogg"}.get(headers["content-type"].split(";")[0].strip(), "")
    if not ext:
        ext = "." + urlsplit(url).path.rsplit(".", 1)[-1][:5] if "." in urlsplit(url).path else ""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in call_id)[:100]
    disposition = "attachment" if download else "inline"
    headers["Content-Disposition"] = f'{disposition}; filename="recording-{safe}{ext}"'
    headers["Cache-Control"] = "private, no-store"
    headers["X-Content-Type-Options"] = "nosniff"
    return StreamingResponse(body(), status_code=up.status, headers=headers)


# -- downloads -----------------------------------------------------------------------

async def _download(request: Request, web: sess.WebCaller, p: ViewParams,
                    rules: dict | None) -> Response:
    now = dt.datetime.now(dt.timezone.utc)

    def make(db: Database, qid: str) -> export.Export:
        req = deps.to_request(db, web.caller, p, rules, for_download=True)
        sources = deps.warm_sources(request, db, web.caller, p.include_archive,
                                    *resolve_range(req, now))
        return export.view_export(web.caller.principal, req, now, sources.selects)
    plan = await downloads.plan_export(request, web.caller, make)
    return await downloads.start_download(request, web.caller, "cdrs", plan, None, p)


def _download_error(exc: Exception, status: int = 400) -> Response:
    return secure_headers(Response(f"Download refused: {_problem_text(exc)}",
                                   status_code=getattr(exc, "status", status),
                                   media_type="text/plain"))


@router.get("/web/cdrs.csv")
async def download_all(request: Request) -> Response:
    """Every row of the filtered view (not only the page), streamed, times in UTC."""
    try:
        web = await sess.current(request)
    except sess.SignedOut:
        return to_login(request)
    try:
        state = ViewState.parse(request.query_params)
        p = await _resolved(request, web, state)
        return await _download(request, web, p, state.rules())
    except (Problem, StateError) as exc:
        return _download_error(exc)


@router.post("/web/selected.csv")
async def download_selected(request: Request) -> Response:
    """The rows the user ticked (by call id, within the current view's range), as CSV."""
    try:
        web = await sess.current(request)
    except sess.SignedOut:
        return to_login(request)
    form = await request.form()
    try:
        sess.check_csrf(request, web.csrf, str(form.get("csrf_token") or ""))
    except sess.CSRFRefused as exc:
        return _download_error(exc, 403)
    ids = [str(v) for v in form.getlist("call_id") if str(v)][:1000]
    if not ids:
        return _download_error(ValueError("tick at least one row first"))
    try:
        state = ViewState.parse(_FormParams(form))
        p = await _resolved(request, web, state)
        p = p.model_copy(update={"cursor": None, "range": "all", "date_from": None,
                                 "date_to": None})
        rules = {"condition": "AND", "rules": [{"field": "call_id", "operator": "in",
                                                "value": ids}]}
        return await _download(request, web, p, rules)
    except (Problem, StateError) as exc:
        return _download_error(exc)


class _FormParams:
    """A form's fields as query parameters (get / getlist) for ViewState.parse."""

    def __init__(self, form) -> None:  # noqa: ANN001
        self.form = form

    def get(self, name: str) -> str | None:
        v = self.form.get(name)
        return str(v) if v is not None else None

    def getlist(self, name: str) -> list[str]:
        return [str(v) for v in self.form.getlist(name)]


# -- preferences and saved views ----------------------------------------------------

class PrefsIn(BaseModel):
    tz: str | None = None
    columns: list[str] | None = None

    model_config = {"extra": "forbid"}


@router.post("/web/preferences")
async def save_preferences(request: Request) -> Response:
    """Remember the zone and/or the columns (the fields sent; others stay as they were)."""
    try:
        web = await sess.current(request)
        sess.check_csrf(request, web.csrf, None)
    except sess.SignedOut as exc:
        return JSONResponse({"detail": str(exc)}, status_code=401)
    except sess.CSRFRefused as exc:
        return JSONResponse({"detail": str(exc)}, status_code=403)
    try:
        data = PrefsIn.model_validate(await request.json())
    except (ValidationError, ValueError) as exc:
        return JSONResponse({"detail": f"invalid preferences: {exc}"}, status_code=400)
    key = web.caller.key_id
    try:
        if data.tz is not None:
            zoneinfo.ZoneInfo(data.tz)
        if data.columns is not None:
            from cdrhouse.sql.viewer import resolve_columns
            resolve_columns(data.columns, web.caller.principal)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, ViewerError) as exc:
        return JSONResponse({"detail": str(exc) or "unknown time zone"}, status_code=400)

    def work(db: Database) -> None:
        cur = ud.get_preferences(db, key)
        tz = data.tz if "tz" in data.model_fields_set else cur.tz
        cols = data.columns if "columns" in data.model_fields_set else cur.columns
        ud.put_preferences(db, key, tz, list(cols) if cols is not None else None)
    await deps.store(request, work)
    deps.forget_preferences(request, key)
    return JSONResponse({"saved": sorted(data.model_fields_set)})


async def _form_checked(request: Request) -> tuple[sess.WebCaller, Any] | Response:
    """The session and form of a state-changing POST, or the answer when there is no
    session (to the sign-in page) or the CSRF check fails (403)."""
    try:
        web = await sess.current(request)
        form = await request.form()
        sess.check_csrf(request, web.csrf, str(form.get("csrf_token") or ""))
    except sess.SignedOut:
        return to_login(request)
    except sess.CSRFRefused as exc:
        return secure_headers(HTMLResponse(str(exc), status_code=403))
    return web, form


def _back(form, note: str | None = None) -> Response:  # noqa: ANN001
    target = _safe_next(str(form.get("back") or "/"))
    if note:
        sep = "&" if "?" in target else "?"
        target += sep + urlencode({"note": note})
    return RedirectResponse(target, status_code=303)


@router.post("/web/views")
async def save_view(request: Request) -> Response:
    """Save the current view (filters, columns, sort, range) as a saved query."""
    checked = await _form_checked(request)
    if isinstance(checked, Response):
        return checked
    web, form = checked
    name = str(form.get("name") or "").strip()
    shared = str(form.get("shared") or "") in ("1", "on", "true")
    try:
        state = ViewState.parse(_FormParams(form))
        kind, body = state.saved_body()
        if not name:
            raise StateError("name: give the view a name")

        def work(db: Database) -> ud.SavedQuery:
            p = ViewParams.model_validate({k: v for k, v in body.items() if k != "rules"})
            req = deps.to_request(db, web.caller, p, body.get("rules"))
            compile_view(req, web.caller.principal, dt.datetime.now(dt.timezone.utc))
            return ud.create_query(db, owner_key=web.caller.key_id,
                                   principal=web.caller.principal_text, name=name[:200],
                                   kind=kind, body=body, shared=shared)
        await deps.store(request, _translated(work))
    except (Problem, StateError, ValidationError) as exc:
        return _back(form, f"Could not save the view: {_problem_text(exc)}")
    return _back(form, f"Saved view “{name}”.")


def _translated(fn):
    def run(db: Database):
        try:
            return fn(db)
        except Problem:
            raise
        except Exception as exc:  # noqa: BLE001 - our errors become problems; others raise
            raise deps.translate(exc) from None
    return run


async def _owned_view(request: Request, web: sess.WebCaller, query_id: str) -> ud.SavedQuery:
    q = await deps.store(request, lambda db: ud.visible_query(db, web.caller.principal_text,
                                                              query_id))
    if q is None:
        raise Problem("not-found", f"no saved view {query_id!r} visible to you")
    if q.principal != web.caller.principal_text:
        raise Problem("forbidden", "only its owner can change this view")
    return q


@router.post("/web/views/{query_id}/delete")
async def delete_view(request: Request, query_id: str) -> Response:
    checked = await _form_checked(request)
    if isinstance(checked, Response):
        return checked
    web, form = checked
    try:
        q = await _owned_view(request, web, query_id)
        await deps.store(request, lambda db: ud.delete_query(db, q))
    except Problem as exc:
        return _back(form, exc.detail)
    return _back(form, f"Deleted view “{q.name}”.")


@router.post("/web/views/{query_id}/share")
async def share_view(request: Request, query_id: str) -> Response:
    checked = await _form_checked(request)
    if isinstance(checked, Response):
        return checked
    web, form = checked
    try:
        q = await _owned_view(request, web, query_id)
        shared = not q.shared
        await deps.store(request, lambda db: ud.update_query(
            db, q, name=q.name, kind=q.kind, body=q.body, shared=shared))
    except Problem as exc:
        return _back(form, exc.detail)
    return _back(form, f"View “{q.name}” is now {'shared' if shared else 'private'}.")


async def _open_view(request: Request, web: sess.WebCaller, query_id: str) -> Response:
    q = await deps.store(request, lambda db: ud.visible_query(db, web.caller.principal_text,
                                                              query_id))
    if q is None or q.kind not in ("viewer", "search"):
        return RedirectResponse("/?" + urlencode({"note": f"No saved view {query_id!r} is "
                                                          "visible to you."}), status_code=303)
    return RedirectResponse(ViewState.from_saved(q.body).url(), status_code=303)


# -- the archive page ------------------------------------------------------------------

@router.get("/archive")
async def archive_page(request: Request, tenant: str = "") -> Response:
    """The archived months, which are hot, and their downloads (api/web/archive.py)."""
    web = await signed_in(request)
    if isinstance(web, Response):
        return web
    context = await web_archive.page_context(request, web, tenant)
    return render_page(request, "archive.html", context)


# -- static files --------------------------------------------------------------------

@router.get("/static/{name}")
async def static(name: str) -> Response:
    return serve_asset(name)


__all__ = ["router", "STATIC_DIR"]
