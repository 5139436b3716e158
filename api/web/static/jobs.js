/* cdrhouse Jobs panel: follows jobs (recalc, tiering runs, restores, backups) through
   GET /v1/jobs on the session cookie, and offers Undo and Resume where the API allows.
   Used by the /jobs page and by the CDR page's jobs drawer (window.cdrJobs).
   State-changing calls send the page's CSRF token in X-CSRF-Token. No dependencies. */
(function () {
  "use strict";
  // the /jobs page's #tools, or the CDR page's jobs drawer: both carry data-csrf and data-role
  var root = document.getElementById("tools") || document.getElementById("jobs-drawer");
  if (!root) return;
  var csrf = root.dataset.csrf || "";
  var role = root.dataset.role || "";
  var $ = function (sel, r) { return (r || document).querySelector(sel); };
  var OPERATOR = role === "admin" || role === "tenant";
  var FINISHED = {succeeded: 1, failed: 1, cancelled: 1};
  var OPS = {"refresh-credit": "Refresh Credit", "refresh-summaries": "Refresh Summaries & Credit",
             "rerate": "Re-rate", "adjust-duration": "Adjust Call Duration", "undo": "Undo"};
  var KINDS = {"recalc": "Recalc", "tier-run": "Tiering run", "tier-restore": "Restore",
               "backup": "Backup", "backup-verify": "Backup check"};

  // -- the API ------------------------------------------------------------------------
  function api(method, url, body, type) {
    var init = {method: method, credentials: "same-origin", headers: {"Accept": "application/json"}};
    if (method !== "GET") {
      init.headers["X-CSRF-Token"] = csrf;
      if (body !== undefined) {
        init.headers["Content-Type"] = type || "application/json";
        init.body = type ? body : JSON.stringify(body);
      }
    }
    return fetch(url, init).then(function (r) {
      return r.text().then(function (t) {
        var j = null;
        try { j = t ? JSON.parse(t) : {}; } catch (e) { j = {detail: t}; }
        if (r.ok) return j;
        var msg = (j && j.detail) || ("the server answered " + r.status);
        if (r.status === 401) msg = "Your session has ended: reload the page to sign in again.";
        var err = new Error(msg); err.status = r.status; err.problem = j; throw err;
      });
    });
  }

  // -- formatting -----------------------------------------------------------------------
  function money(text) {
    // exact decimal text, trailing zeros past the second decimal dropped: 0.360000 -> 0.36
    if (text === null || text === undefined || text === "") return "";
    text = String(text);
    if (text.indexOf(".") < 0) return text;
    var parts = text.split("."), frac = parts[1].replace(/0+$/, "");
    while (frac.length < 2) frac += "0";
    return parts[0] + "." + frac;
  }
  function signed(text) { var m = money(text); return m.charAt(0) === "-" ? "−" + m.slice(1) : "+" + m; }
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") e.textContent = attrs[k];
      else if (k === "cls") e.className = attrs[k];
      else if (attrs[k] !== null && attrs[k] !== undefined && attrs[k] !== false) e.setAttribute(k, attrs[k]);
    });
    (kids || []).forEach(function (c) { if (c) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  function when(iso) { return iso ? String(iso).replace("T", " ").slice(0, 19) + " UTC" : ""; }
  function stopped(job) { return !FINISHED[job.state] && job.result && job.result.stopped === true; }
  function stateText(job) {
    if (stopped(job)) return "stopped — can be resumed";
    return job.state;
  }
  function title(job) {
    var p = job.params || {};
    if (job.kind === "recalc") {
      var t = "Recalc · " + (OPS[p.op] || p.op);
      if (p.op === "undo") t += " of job " + p.target_job;
      if (p.dry_run) t += " (preview)";
      return t;
    }
    return KINDS[job.kind] || job.kind;
  }

  // -- what the API allows ------------------------------------------------------------
  function undoable(job, list) {
    var p = job.params || {};
    if (!OPERATOR || job.kind !== "recalc" || p.dry_run || job.state !== "succeeded") return false;
    if (["rerate", "adjust-duration", "undo"].indexOf(p.op) < 0) return false;
    return !undoneBy(job, list);
  }
  function undoneBy(job, list) {
    return (list || []).filter(function (j) {
      return j.kind === "recalc" && j.params && j.params.op === "undo" && j.params.target_job === job.id &&
        (j.state === "succeeded" || j.state === "running" || j.state === "queued");
    })[0] || null;
  }
  function resumable(job) { return OPERATOR && job.kind === "recalc" && stopped(job); }
  function tenantQuery(job) { return role === "admin" && job.tenant ? "?tenant=" + encodeURIComponent(job.tenant) : ""; }

  // -- one job --------------------------------------------------------------------------
  function impactTable(result) {
    var rows = (result.accounts || []).map(function (a) {
      return el("tr", {}, [
        el("th", {scope: "row", text: (a.kind === "customer" ? "Customer " : "Carrier ") + (a.code || ("#" + a.account_id))}),
        el("td", {cls: "num", text: String(a.calls)}),
        el("td", {cls: "num", text: money(a.before)}),
        el("td", {cls: "num", text: money(a.after)}),
        el("td", {cls: "num", text: signed(a.difference)})]);
    });
    return el("table", {cls: "impact"}, [
      el("caption", {text: "Per account (customers: charge; carriers: cost)"}),
      el("thead", {}, [el("tr", {}, ["Account", "Calls", "Before", "After", "Difference"].map(function (h, i) {
        return el("th", {scope: "col", cls: i ? "num" : null, text: h}); }))]),
      el("tbody", {}, rows.length ? rows : [el("tr", {}, [el("td", {colspan: "5", cls: "muted", text: "No call changes."})])])]);
  }
  function totals(result) {
    var out = el("p", {cls: "totals"});
    var n = result.calls_changed || 0;
    out.appendChild(el("strong", {text: n === 1 ? "1 call changes" : n + " calls change"}));
    if (result.charge) out.appendChild(document.createTextNode(" · charge " + money(result.charge.before) + " → " + money(result.charge.after)));
    if (result.cost) out.appendChild(document.createTextNode(" · cost " + money(result.cost.before) + " → " + money(result.cost.after)));
    return out;
  }
  function impact(result) {
    var box = el("div", {cls: "impact-box"});
    if (result.note && !result.accounts) { box.appendChild(el("p", {cls: "muted", text: result.note})); return box; }
    box.appendChild(totals(result));
    box.appendChild(impactTable(result));
    var unrated = (result.accounts || []).reduce(function (n, a) { return n + (a.unrated_after || 0); }, 0);
    if (unrated) box.appendChild(el("p", {cls: "warn", text: unrated + " call side(s) would have no price afterwards (no rate card or no rate for the destination)."}));
    return box;
  }
  function paramsList(job) {
    var p = job.params || {}, r = job.result || {}, dl = el("dl", {cls: "detail"});
    function row(k, v) { if (v === null || v === undefined || v === "") return; dl.appendChild(el("dt", {text: k})); dl.appendChild(el("dd", {text: String(v)})); }
    row("Job", job.id);
    if (job.tenant) row("Tenant", job.tenant);
    row("Started by", job.principal);
    row("Created", when(job.created_at));
    row("Updated", when(job.updated_at));
    if (job.kind === "recalc") {
      var first = r.first || p.date_from, last = r.last || p.date_to;
      if (first) row("UTC days", first + (last && last !== first ? " to " + last : ""));
      if (p.op === "undo") row("Calls", "those job " + p.target_job + " changed");
      else if (p.call_ids && p.call_ids.length) row("Calls", p.call_ids.length + " selected");
      if (p.op !== "undo") row("Account", p.account || (p.call_ids && p.call_ids.length ? "those of the selected calls" : "every account"));
      if (p.release_reasons && p.release_reasons.length) row("Release reasons", p.release_reasons.join(", "));
      if (p.op === "adjust-duration") row("Duration", "calls of at least " + p.min_duration + " s get " + p.new_duration + " s");
      if (r.phase && !FINISHED[job.state]) row("Phase", r.phase);
      if (r.summary_rows_written !== undefined) row("Summary rows written", r.summary_rows_written);
      if (r.balances_refreshed !== undefined) row("Balances refreshed", r.balances_refreshed);
      if (r.note) row("Note", r.note);
    } else {
      Object.keys(p).forEach(function (k) { if (p[k] !== null && p[k] !== undefined) row(k, typeof p[k] === "object" ? JSON.stringify(p[k]) : p[k]); });
      if (r && typeof r === "object") Object.keys(r).forEach(function (k) {
        var v = r[k]; if (v === null || v === undefined) return;
        row(k, typeof v === "object" ? JSON.stringify(v).slice(0, 300) : v);
      });
    }
    return dl;
  }

  /* render(job, opts): the job as a panel. opts.list: jobs known (to tell whether a job
     was undone); opts.onNewJob(job): Undo/Resume started a job; opts.extra(job): nodes to add. */
  function render(job, opts) {
    opts = opts || {};
    var box = el("div", {cls: "job", "data-job": job.id, "data-state": job.state});
    box.appendChild(el("h3", {text: title(job)}));
    var pct = Math.round((job.progress || 0) * 100);
    box.appendChild(el("div", {cls: "job-state"}, [
      el("span", {cls: "badge state-" + (stopped(job) ? "stopped" : job.state), text: stateText(job)}),
      el("progress", {max: "100", value: String(pct), "aria-label": "Progress of job " + job.id}),
      el("span", {cls: "pct", text: pct + "%"})]));
    if (job.error) box.appendChild(el("p", {cls: "error job-error", role: "alert", text: job.error}));
    var r = job.result || {};
    if (job.kind === "recalc" && (r.accounts || r.calls_changed !== undefined)) box.appendChild(impact(r));
    else if (job.kind === "recalc" && !FINISHED[job.state] && (job.params || {}).op !== "refresh-credit")
      box.appendChild(el("p", {cls: "muted", text: "The per-account summary appears once the changes are staged."}));
    box.appendChild(paramsList(job));
    var actions = el("div", {cls: "job-actions"});
    var undone = job.kind === "recalc" ? undoneBy(job, opts.list) : null;
    if (undone) actions.appendChild(el("p", {cls: "muted", text: "Undone by job " + undone.id + "."}));
    var msg = el("p", {cls: "error", role: "alert", hidden: "hidden"});
    function start(url, button) {
      button.disabled = true; msg.hidden = true;
      api("POST", url).then(function (newJob) {
        if (opts.onNewJob) opts.onNewJob(newJob);
      }).catch(function (e) { msg.textContent = e.message; msg.hidden = false; button.disabled = false; });
    }
    if (undoable(job, opts.list)) {
      var u = el("button", {type: "button", cls: "undo", text: "Undo this job"});
      u.addEventListener("click", function () { start("/v1/recalc/" + encodeURIComponent(job.id) + "/undo" + tenantQuery(job), u); });
      actions.appendChild(u);
      actions.appendChild(el("span", {cls: "muted small", text: "Restores every call, summary and balance it changed."}));
    }
    if (resumable(job)) {
      var rs = el("button", {type: "button", cls: "resume", text: "Resume"});
      rs.addEventListener("click", function () { start("/v1/recalc/" + encodeURIComponent(job.id) + "/resume" + tenantQuery(job), rs); });
      actions.appendChild(rs);
    }
    if (opts.extra) (opts.extra(job) || []).forEach(function (n) { actions.appendChild(n); });
    if (actions.childNodes.length) box.appendChild(actions);
    box.appendChild(msg);
    return box;
  }

  /* follow(id, container, opts): show the job in `container`, polling until it ends.
     Returns {stop()}. opts as for render, plus opts.onChange(job). */
  function follow(id, container, opts) {
    opts = opts || {};
    var timer = null, live = true, delay = 500;
    function recalcList() {
      return OPERATOR ? api("GET", "/v1/jobs?kind=recalc&limit=1000").then(function (j) { return j.jobs; })
        .catch(function () { return []; }) : Promise.resolve([]);
    }
    function tick() {
      api("GET", "/v1/jobs/" + encodeURIComponent(id)).then(function (job) {
        if (!live) return;
        var done = FINISHED[job.state] || stopped(job);
        return (done ? recalcList() : Promise.resolve(opts.list || [])).then(function (list) {
          if (!live) return;
          container.textContent = "";
          container.appendChild(render(job, {list: list, onNewJob: opts.onNewJob, extra: opts.extra}));
          if (opts.onChange) opts.onChange(job);
          if (!done) { timer = setTimeout(tick, delay); delay = Math.min(delay * 1.3, 2000); }
        });
      }).catch(function (e) {
        if (!live) return;
        container.textContent = "";
        container.appendChild(el("p", {cls: "error", role: "alert", text: e.message}));
      });
    }
    container.textContent = "Loading…";
    tick();
    return {stop: function () { live = false; if (timer) clearTimeout(timer); }};
  }

  window.cdrJobs = {api: api, money: money, signed: signed, el: el, render: render, follow: follow,
                    impact: impact, title: title, FINISHED: FINISHED, OPS: OPS};

  // -- the /jobs page ---------------------------------------------------------------------
  var table = $("#jobs-table");
  if (!table) return;
  var detail = $("#job-detail"), kindSel = $("#jobs-kind"), stateSel = $("#jobs-state");
  var selected = root.dataset.job || "", following = null, listTimer = null, jobs = [];
  function select(id) {
    selected = id;
    if (following) following.stop();
    Array.prototype.forEach.call(table.querySelectorAll("tbody tr"), function (tr) {
      tr.classList.toggle("active", tr.dataset.job === id);
      tr.setAttribute("aria-selected", tr.dataset.job === id ? "true" : "false");
    });
    var u = new URL(location.href);
    if (id) u.searchParams.set("job", id); else u.searchParams.delete("job");
    history.replaceState(null, "", u.pathname + u.search);
    if (!id) { detail.textContent = ""; detail.appendChild(el("p", {cls: "muted", text: "Choose a job to follow it."})); return; }
    following = follow(id, detail, {list: jobs, onNewJob: function (j) { refresh().then(function () { select(j.id); }); },
                                    onChange: function (j) { updateRow(j); }});
  }
  function scopeText(j) {
    var p = j.params || {};
    if (j.kind !== "recalc") return j.tenant || "platform";
    var t = role === "admin" && j.tenant ? j.tenant + " · " : "";
    if (p.op === "undo") return t + "job " + p.target_job;
    if (p.call_ids && p.call_ids.length) return t + (p.call_ids.length === 1 ? "1 call" : p.call_ids.length + " calls");
    return t + (p.account || "all accounts");
  }
  function row(j) {
    var p = j.params || {}, r = j.result || {}, pct = Math.round((j.progress || 0) * 100);
    var first = r.first || p.date_from || "", last = r.last || "";
    // the same year once: 2026-03-28 – 03-29
    if (last && first && last.slice(0, 4) === first.slice(0, 4)) last = last.slice(5);
    var range = j.kind === "recalc" ? first + (last && r.last !== r.first ? " – " + last : "") : (p.month ? String(p.month) : "");
    var tr = el("tr", {"data-job": j.id, tabindex: "0", "aria-selected": "false", title: "Started by " + j.principal}, [
      el("td", {text: when(j.created_at).slice(0, 16)}),
      el("td", {cls: "title", text: title(j), title: title(j)}),
      el("td", {text: range}),
      el("td", {cls: "jscope", text: scopeText(j), title: scopeText(j)}),
      el("td", {}, [el("span", {cls: "jstate"}, [el("span", {cls: "badge state-" + (stopped(j) ? "stopped" : j.state), text: stopped(j) ? "stopped" : j.state}),
        FINISHED[j.state] ? null : el("progress", {max: "100", value: String(pct), "aria-label": "Progress " + pct + "%"})])])]);
    return tr;
  }
  function updateRow(j) {
    var old = table.querySelector('tbody tr[data-job="' + CSS.escape(j.id) + '"]');
    if (!old) return;
    var fresh = row(j); fresh.className = old.className; fresh.setAttribute("aria-selected", old.getAttribute("aria-selected"));
    old.replaceWith(fresh);
  }
  function refresh() {
    var q = "?limit=200" + (kindSel.value ? "&kind=" + encodeURIComponent(kindSel.value) : "") +
            (stateSel.value ? "&state=" + encodeURIComponent(stateSel.value) : "");
    return api("GET", "/v1/jobs" + q).then(function (data) {
      var previews = $("#jobs-previews") && $("#jobs-previews").checked;
      jobs = data.jobs.filter(function (j) { return previews || j.id === selected || !(j.params && j.params.dry_run); });
      var body = table.querySelector("tbody"), focused = document.activeElement;
      var keep = focused && focused.closest && focused.closest("#jobs-table tr[data-job]") ? focused.dataset.job : null;
      body.textContent = "";
      jobs.forEach(function (j) {
        var tr = row(j); if (j.id === selected) { tr.classList.add("active"); tr.setAttribute("aria-selected", "true"); }
        body.appendChild(tr);
        if (j.id === keep) tr.focus();   // a refresh keeps the keyboard where it was
      });
      if (!jobs.length) body.appendChild(el("tr", {cls: "empty"}, [el("td", {colspan: "5", text: "No jobs to show."})]));
      $("#jobs-error").hidden = true;
    }).catch(function (e) { var p = $("#jobs-error"); p.textContent = e.message; p.hidden = false; });
  }
  function loop() {
    if (listTimer) clearTimeout(listTimer);
    var busy = jobs.some(function (j) { return !FINISHED[j.state] && !stopped(j); });
    listTimer = setTimeout(function () { (document.hidden ? Promise.resolve() : refresh()).then(loop); }, busy ? 1500 : 5000);
  }
  table.addEventListener("click", function (ev) { var tr = ev.target.closest("tr[data-job]"); if (tr) select(tr.dataset.job); });
  table.addEventListener("keydown", function (ev) {
    var tr = ev.target.closest("tr[data-job]"); if (tr && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); select(tr.dataset.job); }
  });
  [kindSel, stateSel, $("#jobs-previews")].forEach(function (s) { s.addEventListener("change", function () { refresh(); }); });
  refresh().then(function () { select(selected); loop(); });
})();
