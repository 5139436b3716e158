/* cdrhouse Recalc CDR dialog (operators and admins) on the CDR page.
   Preview first: a dry run (POST /v1/recalc {dry_run: true}) whose per-account impact is
   shown before the user confirms; the real run is then followed in the jobs drawer
   (jobs.js). Release reasons come from a guarded query (POST /v1/sql). */
(function () {
  "use strict";
  var box = document.getElementById("recalc"), J = window.cdrJobs;
  var btn = document.getElementById("recalc-btn");
  var drawer = document.getElementById("jobs-drawer"), drawerBody = document.getElementById("jobs-drawer-body");
  var $ = function (sel, r) { return (r || document).querySelector(sel); };
  var $$ = function (sel, r) { return Array.prototype.slice.call((r || document).querySelectorAll(sel)); };
  var FOLLOW_KEY = "cdrhouse_follow_job";
  if (!J || !drawer) return;

  // -- the jobs drawer (the job started here, followed live) ---------------------------
  var following = null;
  function showJob(id) {
    if (following) following.stop();
    drawer.hidden = false;
    try { sessionStorage.setItem(FOLLOW_KEY, id); } catch (e) { /* private mode */ }
    following = J.follow(id, drawerBody, {
      onNewJob: function (j) { showJob(j.id); },
      extra: function (job) {
        if (job.kind !== "recalc" || job.state !== "succeeded" || (job.params || {}).dry_run) return [];
        var reload = J.el("button", {type: "button", cls: "primary", id: "rc-show-new", text: "Show the new values in the grid"});
        reload.addEventListener("click", function () { location.reload(); });
        return [reload];
      }
    });
  }
  function closeDrawer() {
    drawer.hidden = true; if (following) following.stop(); following = null;
    try { sessionStorage.removeItem(FOLLOW_KEY); } catch (e) { /* private mode */ }
  }
  $("#jobs-drawer-close").addEventListener("click", closeDrawer);
  document.addEventListener("keydown", function (ev) { if (ev.key === "Escape" && !drawer.hidden) closeDrawer(); });
  var again = null;
  try { again = sessionStorage.getItem(FOLLOW_KEY); } catch (e) { /* private mode */ }
  if (again) showJob(again);   // after "Show the new values": the job stays in view (Undo)

  if (!box || !btn) return;
  var dialog = $("#recalc-dialog"), form = $("#recalc-form"), inputs = $("#rc-inputs");
  var errBox = $("#rc-error"), preview = $("#rc-preview");
  var previewBtn = $("#rc-preview-btn"), runBtn = $("#rc-run"), backBtn = $("#rc-back");
  var reasonsBox = $("#rc-reasons"), reasonsKey = null, previewed = null;

  // -- UTC days from the view's applied range (from inclusive, to exclusive) ------------
  function day(iso, minusOne) {
    if (!iso) return "";
    var d = new Date(iso);
    if (isNaN(d)) return "";
    if (minusOne) d = new Date(d.getTime() - 1);
    return d.toISOString().slice(0, 10);
  }
  function nextDay(ymd) { var d = new Date(ymd + "T00:00:00Z"); d.setUTCDate(d.getUTCDate() + 1); return d.toISOString().slice(0, 10); }

  function selectedIds() { return $$(".row-sel:checked").map(function (c) { return c.value; }); }
  function scope() { var r = $('input[name="rc-scope"]:checked'); return r ? r.value : "range"; }
  function op() { var r = $('input[name="rc-op"]:checked'); return r ? r.value : "refresh-credit"; }

  function showFields() {
    var s = scope(), o = op();
    var refresh = o === "refresh-credit" || o === "refresh-summaries";
    // call ids apply to re-rate and adjust-duration only (the API refuses them otherwise)
    $$('input[name="rc-op"]').forEach(function (r) {
      r.disabled = s === "selected" && (r.value === "refresh-credit" || r.value === "refresh-summaries");
    });
    $("#rc-ops-note").hidden = s !== "selected";
    if (s === "selected" && refresh) { $('input[name="rc-op"][value="rerate"]').checked = true; o = "rerate"; }
    $$("[data-show]", form).forEach(function (e) {
      var want = e.dataset.show;
      e.hidden = !(want === s || want === o);
    });
    if (o === "rerate") loadReasons();
    invalidate();
  }
  function invalidate() {
    previewed = null; preview.hidden = true; preview.textContent = "";
    runBtn.hidden = true; backBtn.hidden = true; previewBtn.hidden = false; inputs.disabled = false;
  }
  function fail(msg) { errBox.textContent = msg; errBox.hidden = false; }

  // -- release reasons that occur in the range (a guarded query) -------------------------
  function loadReasons() {
    var s = scope(), where = [], params = {};
    if (s === "selected") {
      where.push("call_id IN {ids:Array(String)}"); params.ids = selectedIds();
    } else {
      var f = $("#rc-from").value, t = $("#rc-to").value;
      if (!f || !t) { reasonsBox.textContent = "Choose the days first."; reasonsKey = null; return; }
      where.push("start_time >= {lo:DateTime64(3, 'UTC')}", "start_time < {hi:DateTime64(3, 'UTC')}");
      params.lo = f + " 00:00:00"; params.hi = nextDay(t) + " 00:00:00";
      if (box.dataset.accountKind && box.dataset.accountId) {
        where.push(box.dataset.accountKind + "_id = {acct:UInt32}"); params.acct = box.dataset.accountId;
      }
    }
    if (box.dataset.tenant) { where.push("tenant_id = {tenant:String}"); params.tenant = box.dataset.tenant; }
    var key = JSON.stringify(params);
    if (key === reasonsKey) return;
    reasonsKey = key;
    var ticked = $$("input:checked", reasonsBox).map(function (c) { return c.value; });
    reasonsBox.textContent = "Loading the release reasons…";
    J.api("POST", "/v1/sql", {sql: "SELECT release_reason AS reason, count() AS calls FROM cdrs WHERE " +
      where.join(" AND ") + " GROUP BY reason ORDER BY reason", params: params}).then(function (res) {
      if (reasonsKey !== key) return;
      reasonsBox.textContent = "";
      if (!res.rows.length) { reasonsBox.appendChild(J.el("p", {cls: "muted", text: "No calls in this range."})); return; }
      res.rows.forEach(function (r, n) {
        var c = J.el("input", {type: "checkbox", value: r[0], id: "rc-reason-" + n});
        if (ticked.indexOf(r[0]) >= 0) c.checked = true;
        reasonsBox.appendChild(J.el("label", {cls: "check", "for": "rc-reason-" + n}, [c, " " + (r[0] || "(none)") + " ",
          J.el("span", {cls: "muted", text: "(" + r[1] + " calls)"})]));
      });
    }).catch(function (e) { if (reasonsKey === key) { reasonsKey = null; reasonsBox.textContent = ""; reasonsBox.appendChild(J.el("p", {cls: "error", role: "alert", text: "Could not list the release reasons: " + e.message})); } });
  }

  // -- the request -------------------------------------------------------------------------
  function request() {
    var s = scope(), o = op(), body = {op: o};
    if (box.dataset.tenant) body.tenant = box.dataset.tenant;
    if (s === "selected") {
      body.call_ids = selectedIds();
      if (!body.call_ids.length) throw new Error("Tick at least one row, or choose the filtered range.");
    } else {
      body.from = $("#rc-from").value; body.to = $("#rc-to").value;
      if (!body.from || !body.to) throw new Error("Choose the first and last UTC day.");
      if (body.to < body.from) throw new Error("The last day is before the first.");
      if (box.dataset.account) body.account = box.dataset.account;
    }
    if (o === "rerate") body.release_reasons = $$("input:checked", reasonsBox).map(function (c) { return c.value; });
    if (o === "adjust-duration") {
      var mn = $("#rc-min").value, nw = $("#rc-new").value;
      if (!/^\d+$/.test(mn) || +mn < 1) throw new Error("Min duration: whole seconds, at least 1.");
      if (!/^\d+$/.test(nw) || +nw > 86400) throw new Error("New duration: whole seconds, 0 to 86400.");
      body.min_duration = +mn; body.new_duration = +nw;
    }
    return body;
  }

  function waitFor(job) {
    // a dry run is a job too: its result is the preview
    return new Promise(function (resolve, reject) {
      var delay = 300;
      (function poll() {
        J.api("GET", "/v1/jobs/" + encodeURIComponent(job.id)).then(function (j) {
          if (j.state === "succeeded") return resolve(j);
          if (J.FINISHED[j.state]) return reject(new Error(j.error || ("the preview " + j.state)));
          setTimeout(poll, delay); delay = Math.min(delay * 1.5, 1500);
        }).catch(reject);
      })();
    });
  }

  form.addEventListener("submit", function (ev) {
    ev.preventDefault();
    errBox.hidden = true;
    var body;
    try { body = request(); } catch (e) { fail(e.message); return; }
    inputs.disabled = true; previewBtn.disabled = true;
    preview.hidden = false; preview.textContent = "Computing the preview (nothing changes)…";
    J.api("POST", "/v1/recalc", Object.assign({}, body, {dry_run: true})).then(waitFor).then(function (job) {
      previewed = body;
      preview.textContent = "";
      preview.appendChild(J.el("h3", {text: "Preview: " + J.OPS[body.op]}));
      var r = job.result || {};
      preview.appendChild(J.impact(r));
      var changing = body.op === "rerate" || body.op === "adjust-duration";
      var confirm = J.el("p", {cls: "confirm", id: "rc-confirm"});
      if (changing && !r.calls_changed) {
        confirm.textContent = "No call would change: there is nothing to run.";
        runBtn.hidden = true;
      } else {
        confirm.textContent = changing
          ? "Run it? The job keeps every prior value, so it can be undone from the Jobs panel (Undo restores calls, summaries and balances)."
          : "Run it? It recomputes from stored data and changes no call (nothing to undo; running it again recomputes).";
        runBtn.hidden = false;
      }
      preview.appendChild(confirm);
      previewBtn.hidden = true; backBtn.hidden = false;
      (runBtn.hidden ? backBtn : runBtn).focus();
    }).catch(function (e) {
      preview.hidden = true; inputs.disabled = false; fail(e.message);
    }).then(function () { previewBtn.disabled = false; });
  });

  runBtn.addEventListener("click", function () {
    if (!previewed) return;
    runBtn.disabled = true; errBox.hidden = true;
    J.api("POST", "/v1/recalc", Object.assign({}, previewed, {dry_run: false})).then(function (job) {
      dialog.close();
      showJob(job.id);
    }).catch(function (e) { fail(e.message); }).then(function () { runBtn.disabled = false; });
  });
  backBtn.addEventListener("click", invalidate);
  $("#rc-cancel").addEventListener("click", function () { dialog.close(); });
  form.addEventListener("change", function (ev) {
    if (ev.target.name === "rc-scope" || ev.target.name === "rc-op") { showFields(); return; }
    if (ev.target.id === "rc-from" || ev.target.id === "rc-to") { if (op() === "rerate") loadReasons(); }
    invalidate();
  });

  btn.addEventListener("click", function () {
    var n = selectedIds().length;
    $("#rc-selected-count").textContent = n;
    var sel = $("#rc-scope-selected");
    sel.disabled = n === 0;
    (n ? sel : $("#rc-scope-range")).checked = true;
    if (!$("#rc-from").value) $("#rc-from").value = day(box.dataset.from, false);
    if (!$("#rc-to").value) $("#rc-to").value = day(box.dataset.to, true);
    errBox.hidden = true; reasonsKey = null;
    showFields();
    if (typeof dialog.showModal === "function") dialog.showModal(); else dialog.setAttribute("open", "");
    $('input[name="rc-op"]:checked').focus();
  });
})();
