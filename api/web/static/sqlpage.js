/* cdrhouse SQL page: the editor (CodeMirror, static/sqleditor.bundle.js), typed inputs
   for {name:Type} parameters, the result grid (sorted in the page), CSV download,
   cancel, history in this browser and the API's saved queries.
   Everything runs on the API's own routes (/v1/sql, /v1/sql.csv, /v1/queries,
   /v1/fields) with the session cookie; POSTs carry the page's CSRF token. */
(function () {
  "use strict";
  var app = document.getElementById("sqlapp");
  if (!app) return;
  var csrf = app.dataset.csrf;
  var meta = JSON.parse(document.getElementById("sql-meta").textContent || "{}");
  var $ = function (sel, root) { return (root || document).querySelector(sel); };
  var HISTORY_KEY = "cdrhouse.sql.history:" + (meta.principal || "");
  var HISTORY_MAX = 50;
  var SHOWN_MAX = 2000;  // rows drawn in the grid; the CSV has them all

  // -- small helpers --------------------------------------------------------------------
  function el(tag, attrs, text) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "className") e.className = attrs[k];
      else if (k === "dataset") Object.assign(e.dataset, attrs[k]);
      else e.setAttribute(k, attrs[k]);
    });
    if (text != null) e.textContent = text;
    return e;
  }
  /** An API problem (RFC 9457) as {title, detail, status}; never throws. */
  function problemOf(resp) {
    return resp.text().then(function (t) {
      var j = null;
      try { j = JSON.parse(t); } catch (e) { /* not JSON */ }
      if (j && (j.detail || j.title)) {
        var detail = j.detail;
        if (Array.isArray(detail)) {  // FastAPI's validation list
          detail = detail.map(function (d) { return (d.loc || []).join(".") + ": " + d.msg; }).join("; ");
        }
        return {status: resp.status, title: j.title || ("Error " + resp.status), detail: String(detail || ""), type: j.type || ""};
      }
      return {status: resp.status, title: "Error " + resp.status, detail: t.slice(0, 2000)};
    });
  }
  function api(method, url, body, signal) {
    var opts = {method: method, credentials: "same-origin", headers: {}, signal: signal};
    if (method !== "GET") opts.headers["X-CSRF-Token"] = csrf;
    if (body !== undefined) { opts.headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(body); }
    return fetch(url, opts);
  }

  // -- time zones -------------------------------------------------------------------------
  var tzSel = $("#tz");
  if (app.dataset.tzSource === "default") {  // nothing saved: the browser's own zone
    try {
      var own = Intl.DateTimeFormat().resolvedOptions().timeZone;
      if (own && Array.prototype.some.call(tzSel.options, function (o) { return o.value === own; })) tzSel.value = own;
    } catch (e) { /* old browser: UTC */ }
  }
  function zone() { return tzSel.value || "UTC"; }
  var partsCache = {};
  function zoneParts(ms, tz) {
    var f = partsCache[tz] || (partsCache[tz] = new Intl.DateTimeFormat("en-GB", {timeZone: tz, hourCycle: "h23",
      year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit"}));
    var out = {};
    f.formatToParts(new Date(ms)).forEach(function (p) { out[p.type] = p.value; });
    return out;
  }
  function offsetAt(ms, tz) {  // the zone's offset from UTC at instant ms, in ms
    var p = zoneParts(ms, tz);
    var asUTC = Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second);
    return asUTC - Math.floor(ms / 1000) * 1000;
  }
  /** "YYYY-MM-DDTHH:MM[:SS]" on the wall clock of tz → the UTC instant (ms). */
  function wallToUTC(local, tz) {
    var m = /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d)(?::(\d\d))?/.exec(local);
    if (!m) return null;
    var guess = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0));
    var first = guess - offsetAt(guess, tz);
    var second = guess - offsetAt(first, tz);  // across a DST change the second guess holds
    return second;
  }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function utcText(ms) {
    var d = new Date(ms);
    return d.getUTCFullYear() + "-" + pad(d.getUTCMonth() + 1) + "-" + pad(d.getUTCDate()) + " " +
      pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes()) + ":" + pad(d.getUTCSeconds());
  }
  function zoneText(iso, tz) {
    var ms = Date.parse(iso);
    if (isNaN(ms)) return iso;
    var p = zoneParts(ms, tz);
    return p.year + "-" + p.month + "-" + p.day + " " + p.hour + ":" + p.minute + ":" + p.second;
  }

  // -- parameters ---------------------------------------------------------------------------
  var paramsBox = $("#params"), paramFields = $("#param-fields");
  var paramValues = {};  // name -> what the user typed (kept while the SQL changes)
  /** {name:Type} placeholders outside strings and comments, in order of appearance. */
  function placeholders(sql) {
    var clean = sql.replace(/'(?:\\.|''|[^'\\])*'|--[^\n]*|\/\*[\s\S]*?\*\//g, function (m) { return " ".repeat(m.length); });
    var re = /\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*([^{}]+?)\s*\}/g, m, out = [], seen = {};
    while ((m = re.exec(clean))) {
      if (seen[m[1]]) continue;
      // the type as written (a zone in quotes was blanked in `clean`; same positions)
      var written = sql.slice(m.index, m.index + m[0].length);
      var type = written.slice(written.indexOf(":") + 1, written.lastIndexOf("}")).trim();
      seen[m[1]] = true; out.push({name: m[1], type: type});
    }
    return out;
  }
  /** The zone a DateTime parameter's text is read in by ClickHouse: the one its type
      names (DateTime('Asia/Tokyo'), DateTime64(3, 'UTC')), else the service's, UTC. */
  function sentZone(type) {
    var m = /DateTime(?:64)?\(\s*(?:\d+\s*,\s*)?'([^']+)'\s*\)/i.exec(type || "");
    if (!m) return "UTC";
    try { new Intl.DateTimeFormat("en", {timeZone: m[1]}); } catch (e) { return "UTC"; }  // the API names a bad zone
    return m[1];
  }
  function kindOf(type) {
    var t = type.replace(/^(Nullable|LowCardinality)\((.*)\)$/, "$2").trim();
    if (/^DateTime(64)?\b/i.test(t)) return "datetime";
    if (/^Date(32)?$/i.test(t)) return "date";
    if (/^U?Int\d+$/i.test(t)) return "int";
    if (/^(Float\d+|Decimal)/i.test(t)) return "decimal";
    if (/^Bool(ean)?$/i.test(t)) return "bool";
    if (/^Array\(/i.test(t)) return "array";
    return "text";
  }
  function renderParams() {
    var list = placeholders(editor ? editor.getValue() : "");
    var wanted = list.map(function (p) { return p.name + ":" + p.type; }).join("|");
    if (paramsBox.dataset.shape === wanted) return;
    paramsBox.dataset.shape = wanted;
    paramFields.textContent = "";
    paramsBox.hidden = !list.length;
    list.forEach(function (p) {
      var kind = kindOf(p.type), id = "param-" + p.name;
      var wrap = el("div", {className: "field param", dataset: {name: p.name, kind: kind, type: p.type}});
      var label = el("label", {"for": id}, p.name + " ");
      label.appendChild(el("span", {className: "ptype"}, p.type + (kind === "datetime" ? " · " + zone() : "")));
      var input;
      if (kind === "bool") {
        input = el("select", {id: id});
        ["true", "false"].forEach(function (v) { input.appendChild(el("option", {value: v}, v)); });
      } else {
        input = el("input", {id: id, type: kind === "datetime" ? "datetime-local" : kind === "date" ? "date" :
          kind === "int" ? "number" : "text", autocomplete: "off", spellcheck: "false"});
        if (kind === "datetime") input.step = "1";
        if (kind === "int") input.step = "1";
        if (kind === "decimal") input.inputMode = "decimal";
        if (kind === "array") input.placeholder = "['a', 'b'] or [1, 2]";
      }
      if (paramValues[p.name] != null) input.value = paramValues[p.name];
      input.addEventListener("input", function () { paramValues[p.name] = input.value; });
      input.addEventListener("change", function () { paramValues[p.name] = input.value; });
      wrap.appendChild(label); wrap.appendChild(input);
      paramFields.appendChild(wrap);
    });
  }
  /** The values to send ({name: text}), or throws naming an empty or bad input. */
  function collectParams() {
    var out = {};
    Array.prototype.forEach.call(paramFields.querySelectorAll(".param"), function (w) {
      var name = w.dataset.name, kind = w.dataset.kind, input = w.querySelector("input, select");
      var v = input.value;
      if (v === "" && kind !== "text") { input.focus(); throw new Error("give a value for the parameter " + name); }
      if (kind === "datetime") {
        var ms = wallToUTC(v, zone());
        if (ms == null) { input.focus(); throw new Error("parameter " + name + ": not a date and time"); }
        out[name] = sentZone(w.dataset.type) === "UTC" ? utcText(ms) : zoneText(new Date(ms).toISOString(), sentZone(w.dataset.type));
      } else if (kind === "int") {
        var n = Number(v);   // beyond 2^53 a JSON number would lose digits: send the text
        out[name] = Number.isSafeInteger(n) ? n : v;
      } else {
        out[name] = v;
      }
    });
    return out;
  }
  /** Put saved or remembered UTC values back into the inputs (shown in the display zone). */
  function restoreParams(params) {
    paramValues = {};
    Object.keys(params || {}).forEach(function (name) {
      var v = params[name];
      paramValues[name] = v == null ? "" : String(v);
    });
    paramsBox.dataset.shape = "";
    renderParams();
    Array.prototype.forEach.call(paramFields.querySelectorAll(".param"), function (w) {
      var name = w.dataset.name, input = w.querySelector("input, select");
      if (!(name in (params || {}))) return;
      var v = String(params[name]);
      if (w.dataset.kind === "datetime" && /^\d{4}-\d\d-\d\d[ T]\d\d:\d\d/.test(v)) {
        var ms = wallToUTC(v.replace(" ", "T"), sentZone(w.dataset.type));
        if (ms != null) v = zoneText(new Date(ms).toISOString(), zone()).replace(" ", "T");
      }
      input.value = v; paramValues[name] = v;
    });
  }

  // -- the result grid -------------------------------------------------------------------------
  var table = $("#result"), statusEl = $("#sql-status"), problemEl = $("#sql-problem");
  var result = null;   // {columns: [{name, type}], rows: [[...]], order: [row indexes]}
  var sortState = {col: -1, dir: 0};  // dir: 1 ascending, -1 descending, 0 as returned
  function isNumeric(type) { return /^(Nullable\()?(U?Int\d+|Float\d+|Decimal)/i.test(type); }
  function isTime(type) { return /^(Nullable\()?DateTime/i.test(type); }
  function cellText(v, type) {
    if (v === null || v === undefined) return "";
    if (isTime(type) && typeof v === "string") return zoneText(v, zone());
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  function compare(a, b, type) {
    if (a === b) return 0;
    if (a === null || a === undefined) return 1;   // empty values last, both ways
    if (b === null || b === undefined) return -1;
    if (isNumeric(type)) {
      var x = Number(a), y = Number(b);
      if (!isNaN(x) && !isNaN(y) && x !== y) return x < y ? -1 : 1;
      if (x === y) return 0;
    }
    if (isTime(type)) {
      var s = Date.parse(a), t = Date.parse(b);
      if (!isNaN(s) && !isNaN(t) && s !== t) return s < t ? -1 : 1;
    }
    var p = typeof a === "object" ? JSON.stringify(a) : String(a);
    var q = typeof b === "object" ? JSON.stringify(b) : String(b);
    return p < q ? -1 : p > q ? 1 : 0;
  }
  function drawGrid() {
    var thead = table.tHead, tbody = table.tBodies[0];
    thead.textContent = ""; tbody.textContent = "";
    if (!result) return;
    var tr = el("tr");
    result.columns.forEach(function (c, i) {
      var dir = sortState.col === i ? sortState.dir : 0;
      var th = el("th", {scope: "col", className: isNumeric(c.type) ? "num" : "", "aria-sort": dir === 1 ? "ascending" : dir === -1 ? "descending" : "none", dataset: {col: c.name, index: String(i)}});
      var b = el("button", {type: "button", className: "sort link", title: "Sort by " + c.name + " (in the page)"}, c.name);
      b.appendChild(el("span", {className: "arrow", "aria-hidden": "true"}, dir === 1 ? "▲" : dir === -1 ? "▼" : ""));
      th.appendChild(b);
      th.appendChild(el("span", {className: "tzhint"}, isTime(c.type) ? c.type + " · " + zone() : c.type));
      tr.appendChild(th);
    });
    thead.appendChild(tr);
    if (!result.rows.length) {
      var empty = el("tr", {className: "empty"});
      empty.appendChild(el("td", {colspan: String(result.columns.length || 1)}, "The query returned no rows."));
      tbody.appendChild(empty);
      return;
    }
    var frag = document.createDocumentFragment();
    result.order.slice(0, SHOWN_MAX).forEach(function (ri) {
      var row = result.rows[ri], r = el("tr", {dataset: {row: String(ri)}});
      result.columns.forEach(function (c, i) {
        var v = row[i], td = el("td", {className: (isNumeric(c.type) ? "num" : "") + (v === null ? " null" : "")}, v === null ? "NULL" : cellText(v, c.type));
        if (isTime(c.type) && v !== null) td.title = String(v);
        r.appendChild(td);
      });
      frag.appendChild(r);
    });
    tbody.appendChild(frag);
  }
  function sortBy(i) {
    if (!result) return;
    if (sortState.col !== i) sortState = {col: i, dir: 1};
    else sortState.dir = sortState.dir === 1 ? -1 : sortState.dir === -1 ? 0 : 1;
    var type = result.columns[i].type, dir = sortState.dir;
    result.order = result.rows.map(function (_, n) { return n; });
    if (dir !== 0) {
      result.order.sort(function (a, b) {
        var c = compare(result.rows[a][i], result.rows[b][i], type);
        if (c !== 0 && (result.rows[a][i] == null || result.rows[b][i] == null)) return c;  // nulls last
        return c * dir || a - b;   // stable
      });
    }
    drawGrid();
    var th = table.tHead.querySelector('th[data-index="' + i + '"] button');
    if (th) th.focus();
  }
  table.tHead.addEventListener("click", function (ev) {
    var th = ev.target.closest("th");
    if (th) sortBy(+th.dataset.index);
  });

  // -- running, cancelling -----------------------------------------------------------------------
  var runBtn = $("#run"), cancelBtn = $("#cancel"), dlBtn = $("#download"), archiveBox = $("#include-archive");
  var running = null;  // {controller, kind, timer}
  function setStatus(text) { statusEl.textContent = text; }
  function showProblem(p) {
    problemEl.textContent = "";
    if (!p) { problemEl.hidden = true; return; }
    problemEl.appendChild(el("strong", null, p.title + (p.status ? " (" + p.status + ")" : "") + ". "));
    problemEl.appendChild(el("span", {className: "detail"}, p.detail));
    problemEl.hidden = false;
  }
  function body() {
    return {sql: editor.getValue(), params: collectParams(), include_archive: archiveBox.checked};
  }
  function busy(kind) {
    var controller = new AbortController(), started = performance.now();
    running = {controller: controller, kind: kind};
    runBtn.disabled = true; dlBtn.disabled = true; cancelBtn.disabled = false;
    app.classList.add("running"); app.dataset.state = "running";
    var tick = function () { setStatus((kind === "csv" ? "Preparing the CSV… " : "Running… ") + ((performance.now() - started) / 1000).toFixed(1) + " s"); };
    tick();
    running.timer = setInterval(tick, 100);
    running.started = started;
    return controller;
  }
  function idle(state) {
    if (running) clearInterval(running.timer);
    running = null;
    runBtn.disabled = false; dlBtn.disabled = false; cancelBtn.disabled = true;
    app.classList.remove("running"); app.dataset.state = state;
  }
  function elapsed() { return running ? ((performance.now() - running.started) / 1000).toFixed(2) + " s" : ""; }

  function run() {
    if (running) return;
    var b;
    try { b = body(); } catch (e) { showProblem({title: "Cannot run", detail: e.message}); return; }
    if (!b.sql.trim()) { showProblem({title: "Cannot run", detail: "write a query first"}); return; }
    showProblem(null);
    var controller = busy("run");
    api("POST", "/v1/sql", b, controller.signal).then(function (resp) {
      if (!resp.ok) return problemOf(resp).then(function (p) { throw p; });
      return resp.json();
    }).then(function (data) {
      var took = elapsed();
      result = {columns: data.columns, rows: data.rows, order: data.rows.map(function (_, n) { return n; })};
      sortState = {col: -1, dir: 0};
      drawGrid();
      var n = data.row_count, months = (data.archive && data.archive.months) || [];
      setStatus(n + " row" + (n === 1 ? "" : "s") + " · " + took +
        (n > SHOWN_MAX ? " · showing the first " + SHOWN_MAX + "; Download CSV has them all" : "") +
        (months.length ? " · read archived months " + months.join(", ") : "") +
        " · times in " + zone());
      remember(b, {rows: n});
      idle("done");
    }).catch(function (err) {
      if (err && err.name === "AbortError") {
        setStatus("Cancelled after " + elapsed() + "; the server stopped the query.");
        idle("cancelled");
        return;
      }
      var p = err && err.title ? err : {title: "Could not reach the service", detail: String(err && err.message || err)};
      if (p.status === 401) p.detail += " — sign in again (reload the page).";
      showProblem(p);
      result = null; drawGrid();
      var none = el("tr", {className: "empty"});
      none.appendChild(el("td", null, "No result: see the message above."));
      table.tBodies[0].appendChild(none);
      setStatus("Failed after " + elapsed());
      remember(b, {error: p.detail});
      idle("failed");
    });
  }
  cancelBtn.addEventListener("click", function () { if (running) running.controller.abort(); });
  runBtn.addEventListener("click", run);

  function download() {
    if (running) return;
    var b;
    try { b = body(); } catch (e) { showProblem({title: "Cannot download", detail: e.message}); return; }
    showProblem(null);
    var controller = busy("csv");
    api("POST", "/v1/sql.csv", b, controller.signal).then(function (resp) {
      if (!resp.ok) return problemOf(resp).then(function (p) { throw p; });
      var cd = resp.headers.get("Content-Disposition") || "";
      var m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(cd);
      var name = m ? decodeURIComponent(m[1]) : "sql.csv";
      return resp.blob().then(function (blob) {
        var url = URL.createObjectURL(blob), a = el("a", {href: url, download: name});
        document.body.appendChild(a); a.click(); a.remove();
        setTimeout(function () { URL.revokeObjectURL(url); }, 60000);
        setStatus("Downloaded " + name + " (" + blob.size.toLocaleString() + " bytes, times in UTC) · " + elapsed());
        idle("downloaded");
      });
    }).catch(function (err) {
      if (err && err.name === "AbortError") { setStatus("Download cancelled."); idle("cancelled"); return; }
      showProblem(err && err.title ? err : {title: "Download failed", detail: String(err && err.message || err)});
      setStatus("");
      idle("failed");
    });
  }
  dlBtn.addEventListener("click", download);

  // -- history (this browser) --------------------------------------------------------------------------
  var historyEl = $("#history");
  function loadHistory() {
    try { return JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]"); } catch (e) { return []; }
  }
  function remember(b, outcome) {
    var list = loadHistory().filter(function (h) { return h.sql !== b.sql || JSON.stringify(h.params) !== JSON.stringify(b.params); });
    list.unshift({sql: b.sql, params: b.params, include_archive: b.include_archive, at: new Date().toISOString(),
                  rows: outcome.rows, error: outcome.error});
    try { localStorage.setItem(HISTORY_KEY, JSON.stringify(list.slice(0, HISTORY_MAX))); } catch (e) { /* full or disabled */ }
    drawHistory();
  }
  function firstLine(sql) { return sql.trim().split("\n")[0].slice(0, 90) || "(empty)"; }
  function drawHistory() {
    var list = loadHistory();
    historyEl.textContent = "";
    if (!list.length) { historyEl.appendChild(el("li", {className: "muted small"}, "Queries you run appear here.")); return; }
    list.forEach(function (h, i) {
      var li = el("li");
      var b = el("button", {type: "button", className: "link restore", title: h.sql, dataset: {index: String(i)}}, firstLine(h.sql));
      li.appendChild(b);
      li.appendChild(el("span", {className: "muted small"}, zoneText(h.at, zone()).slice(5, 16) +
        (h.error ? " · failed" : h.rows != null ? " · " + h.rows + (h.rows === 1 ? " row" : " rows") : "")));
      historyEl.appendChild(li);
    });
  }
  historyEl.addEventListener("click", function (ev) {
    var b = ev.target.closest("button.restore"); if (!b) return;
    var h = loadHistory()[+b.dataset.index]; if (!h) return;
    loadQuery(h.sql, h.params, h.include_archive, null);
  });
  $("#history-clear").addEventListener("click", function () { localStorage.removeItem(HISTORY_KEY); drawHistory(); });

  // -- saved queries (the API's /v1/queries, kind "sql") -----------------------------------------
  var savedEl = $("#saved"), loaded = null;  // the saved query in the editor, if any
  function loadQuery(sql, params, includeArchive, saved) {
    editor.setValue(sql);
    archiveBox.checked = !!includeArchive;
    restoreParams(params || {});
    loaded = saved;
    editor.focus();
  }
  function drawSaved() {
    return api("GET", "/v1/queries").then(function (resp) {
      if (!resp.ok) return problemOf(resp).then(function (p) { throw p; });
      return resp.json();
    }).then(function (data) {
      var mine = data.queries.filter(function (q) { return q.kind === "sql"; });
      savedEl.textContent = "";
      if (!mine.length) { savedEl.appendChild(el("li", {className: "muted small"}, "No saved SQL yet: Save… keeps the query here.")); return; }
      mine.sort(function (a, b) { return a.name.localeCompare(b.name); });
      mine.forEach(function (q) {
        var li = el("li", {dataset: {id: q.id}});
        li.appendChild(el("button", {type: "button", className: "link open", title: q.body.sql || ""}, q.name));
        li.appendChild(el("span", {className: "muted small"}, q.mine ? (q.shared ? "shared" : "private") : "shared by " + q.owner));
        if (q.mine) li.appendChild(el("button", {type: "button", className: "link danger small delete", "aria-label": "Delete saved query " + q.name}, "Delete"));
        li._query = q;
        savedEl.appendChild(li);
      });
    }).catch(function (p) {
      savedEl.textContent = "";
      savedEl.appendChild(el("li", {className: "error small", role: "alert"}, "Could not list saved queries: " + (p.detail || p.message || p)));
    });
  }
  savedEl.addEventListener("click", function (ev) {
    var li = ev.target.closest("li"); if (!li || !li._query) return;
    var q = li._query;
    if (ev.target.closest("button.open")) {
      loadQuery(q.body.sql || "", q.body.params || {}, q.body.include_archive, q);
    } else if (ev.target.closest("button.delete")) {
      if (!window.confirm("Delete the saved query “" + q.name + "”?")) return;
      api("DELETE", "/v1/queries/" + encodeURIComponent(q.id)).then(function (resp) {
        if (!resp.ok) return problemOf(resp).then(function (p) { throw p; });
        if (loaded && loaded.id === q.id) loaded = null;
        setStatus("Deleted “" + q.name + "”.");
        return drawSaved();
      }).catch(function (p) { showProblem(p.title ? p : {title: "Could not delete", detail: String(p)}); });
    }
  });

  var saveDialog = $("#save-dialog"), saveName = $("#save-name"), saveShared = $("#save-shared");
  var saveErr = $("#save-error"), replaceNote = $("#save-replace-note");
  $("#save").addEventListener("click", function () {
    saveErr.hidden = true;
    saveName.value = loaded && loaded.mine ? loaded.name : "";
    saveShared.checked = !!(loaded && loaded.mine && loaded.shared);
    var note = function () {
      var replacing = loaded && loaded.mine && saveName.value.trim() === loaded.name;
      replaceNote.hidden = !replacing;
      replaceNote.textContent = replacing ? "Replaces your saved query “" + loaded.name + "”; change the name to save a new one." : "";
    };
    saveName.oninput = function () { saveErr.hidden = true; note(); }; note();
    if (typeof saveDialog.showModal === "function") saveDialog.showModal(); else saveDialog.setAttribute("open", "");
    saveName.focus();
  });
  $("#save-cancel").addEventListener("click", function () { saveDialog.close(); });
  $("#save-form").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var name = saveName.value.trim();
    var fail = function (text) { saveErr.textContent = text; saveErr.hidden = false; };
    if (!name) { fail("Give the query a name."); return; }
    var b;
    try { b = body(); } catch (e) { fail(e.message); return; }
    var payload = {name: name, kind: "sql", body: b, shared: saveShared.checked};
    var replacing = loaded && loaded.mine && name === loaded.name;
    api(replacing ? "PUT" : "POST", replacing ? "/v1/queries/" + encodeURIComponent(loaded.id) : "/v1/queries", payload)
      .then(function (resp) {
        if (!resp.ok) return problemOf(resp).then(function (p) { throw p; });
        return resp.json();
      }).then(function (q) {
        loaded = q;
        saveDialog.close();
        setStatus("Saved “" + q.name + "”" + (q.shared ? " (shared)" : "") + ".");
        return drawSaved();
      }).catch(function (p) { fail(p.detail || p.message || String(p)); });
  });

  // -- the schema panel (click a name to insert it) ---------------------------------------------
  var tables = {cdrs: [], daily_summary: []};
  function drawSchema() {
    var box = $("#schema");
    box.textContent = "";
    Object.keys(tables).forEach(function (t) {
      var d = el("details", {className: "table", dataset: {table: t}});
      var s = el("summary");
      s.appendChild(el("button", {type: "button", className: "link insert", dataset: {text: t}, title: "Insert " + t}, t));
      s.appendChild(el("span", {className: "muted small"}, " " + tables[t].length + " columns"));
      d.appendChild(s);
      var ul = el("ul", {className: "cols"});
      tables[t].forEach(function (c) {
        var li = el("li");
        li.appendChild(el("button", {type: "button", className: "link insert", dataset: {text: c.label}, title: c.info || c.label}, c.label));
        li.appendChild(el("span", {className: "muted small"}, " " + c.detail));
        ul.appendChild(li);
      });
      d.appendChild(ul);
      box.appendChild(d);
    });
  }
  $("#schema").addEventListener("click", function (ev) {
    var b = ev.target.closest("button.insert"); if (!b) return;
    ev.preventDefault();
    editor.insert(b.dataset.text);
  });

  // -- start ---------------------------------------------------------------------------------
  var editor = null;
  function start(fields) {
    tables.cdrs = fields.map(function (f) { return {label: f.name, type: "property", detail: f.type, info: f.label + (f.description ? ": " + f.description : "")}; });
    tables.daily_summary = ((meta.tables || {}).daily_summary || []).map(function (c) {
      return {label: c.name, type: "property", detail: c.type, info: c.info};
    });
    drawSchema();
    var last = loadHistory()[0];
    editor = window.CdrhouseSQLEditor.create({
      parent: $("#editor"), nonce: app.dataset.styleNonce, tables: tables, functions: meta.functions || [],
      doc: "", onRun: run, onChange: function () { renderParams(); }, label: "SQL query",
    });
    app.dataset.ready = "1";
    if (last && !last.error) setStatus("Your last query is in History (this browser).");
    editor.focus();
  }
  tzSel.addEventListener("change", function () {
    paramsBox.dataset.shape = ""; renderParams(); drawGrid(); drawHistory();
    if (result) setStatus(statusEl.textContent.replace(/times in [^ ]+$/, "times in " + zone()));
  });
  document.addEventListener("keydown", function (ev) {
    // Ctrl/Cmd+Enter also runs from the parameter inputs
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && ev.target.closest && ev.target.closest("#params")) { ev.preventDefault(); run(); }
    if (ev.key === "Escape" && running) running.controller.abort();
  });
  drawHistory();
  drawSaved();
  api("GET", "/v1/fields").then(function (resp) {
    if (!resp.ok) return problemOf(resp).then(function (p) { throw p; });
    return resp.json();
  }).then(function (data) { start(data.fields); })
    .catch(function (p) {
      showProblem(p && p.title ? p : {title: "Could not load the fields", detail: String(p && p.message || p)});
      start([]);
    });
})();
