/* cdrhouse web viewer: the few things only the browser can do.
   The page works from the URL: every control ends in a navigation to a new
   URL (Back/Forward and bookmarks just work); this script adds the dialogs,
   row selection, the detail drawer and the audio player. No dependencies. */
(function () {
  "use strict";
  var app = document.getElementById("app");
  if (!app) return;  // the sign-in page needs nothing
  var csrf = app.dataset.csrf;
  var $ = function (sel, root) { return (root || document).querySelector(sel); };
  var $$ = function (sel, root) { return Array.prototype.slice.call((root || document).querySelectorAll(sel)); };

  // -- the URL holds the whole state (zone and columns included) --------------------
  // (a one-time `note` after saving a view is shown by the server and dropped here)
  if (app.dataset.canonical && location.pathname + location.search !== app.dataset.canonical) {
    history.replaceState(null, "", app.dataset.canonical);
  }

  // -- time zone: the browser's by default -------------------------------------------
  var browserZone = "UTC";
  try { browserZone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC"; } catch (e) { /* old browser */ }
  var hadHint = document.cookie.split("; ").some(function (c) { return c.indexOf("cdrhouse_tz=") === 0; });
  document.cookie = "cdrhouse_tz=" + encodeURIComponent(browserZone) + "; path=/; max-age=31536000; samesite=strict";
  if (app.dataset.tzSource === "default" && !hadHint && browserZone !== app.dataset.tz) {
    var u = new URL(location.href); u.searchParams.delete("tz");
    location.replace(u.pathname + u.search);
    return;
  }

  function post(url, body) {
    return fetch(url, {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf}, body: JSON.stringify(body)})
      .then(function (r) {
        if (r.ok) return r.json();
        return r.json().catch(function () { return {}; }).then(function (j) {
          throw new Error(j.detail || ("the server answered " + r.status));
        });
      });
  }

  // -- toolbar ------------------------------------------------------------------------
  var toolbar = $("#toolbar");
  function submitToolbar() {
    if (toolbar.requestSubmit) toolbar.requestSubmit(); else toolbar.submit();
  }
  $$("[data-autosubmit]", toolbar).forEach(function (el) {
    el.addEventListener("change", function () {
      if (el.id === "range") {
        var custom = el.value === "custom";
        $$(".custom-range").forEach(function (f) { f.hidden = !custom; });
        if (custom) { $("#from").focus(); return; }
      }
      if (el.dataset.savePref === "tz") {
        post("/web/preferences", {tz: el.value}).catch(function () { /* the URL still carries it */ })
          .then(submitToolbar);
        return;
      }
      submitToolbar();
    });
  });
  toolbar.addEventListener("submit", function () {
    // empty inputs need not be in the URL
    $$("input, select", toolbar).forEach(function (el) {
      if (!el.value && (el.name === "number" || el.name === "from" || el.name === "to" ||
                        el.name === "customer" || el.name === "carrier" || el.name === "tenant")) el.disabled = true;
      if (el.closest(".custom-range") && el.closest(".custom-range").hidden) el.disabled = true;
    });
  });
  var help = $(".help");
  if (help) help.addEventListener("click", function () { help.parentElement.parentElement.classList.toggle("show-help"); });

  // -- dialogs ------------------------------------------------------------------------
  function openDialog(d, focus) {
    if (typeof d.showModal === "function") d.showModal(); else d.setAttribute("open", "");
    if (focus) focus.focus();
  }
  var viewsDialog = $("#views-dialog");
  $("#views-btn").addEventListener("click", function () { openDialog(viewsDialog, $("#view-name")); });
  $("#views-close").addEventListener("click", function () { viewsDialog.close(); });

  // columns panel
  var colsDialog = $("#columns-dialog"), colsList = $("#columns-list");
  $("#columns-btn").addEventListener("click", function () { openDialog(colsDialog, $("input", colsList)); });
  colsList.addEventListener("click", function (ev) {
    var b = ev.target.closest("button"); if (!b) return;
    var li = b.closest("li");
    if (b.classList.contains("up") && li.previousElementSibling) li.parentNode.insertBefore(li, li.previousElementSibling);
    else if (b.classList.contains("down") && li.nextElementSibling) li.parentNode.insertBefore(li.nextElementSibling, li);
    b.focus();
  });
  $("#columns-apply").addEventListener("click", function () {
    var chosen = $$("li input:checked", colsList).map(function (i) { return i.value; });
    var err = $("#columns-error");
    if (!chosen.length) { err.textContent = "Choose at least one column."; err.hidden = false; return; }
    post("/web/preferences", {columns: chosen}).then(function () {
      var u = new URL(location.href);
      u.searchParams.set("columns", chosen.join(",")); u.searchParams.delete("c");
      location.assign(u.pathname + u.search);
    }).catch(function (e) { err.textContent = e.message; err.hidden = false; });
  });

  // header filter
  var spec = JSON.parse($("#filter-spec").textContent || "{}");
  var filterDialog = $("#filter-dialog"), opSel = $("#nf-op"), values = $("#nf-values");
  var current = null;
  function input(type, label, id) {
    var wrap = document.createElement("div"); wrap.className = "field";
    var l = document.createElement("label"); l.htmlFor = id; l.textContent = label;
    var i = document.createElement("input"); i.type = type; i.name = "nf_value"; i.id = id; i.required = true;
    if (type === "datetime-local") i.step = "1";
    wrap.appendChild(l); wrap.appendChild(i); values.appendChild(wrap); return i;
  }
  function renderValues() {
    values.textContent = "";
    var f = spec[current], op = f.ops.filter(function (o) { return o[0] === opSel.value; })[0];
    var arity = op ? op[2] : 1;
    var type = f.kind === "datetime" ? "datetime-local" : (f.kind === "int" ? "number" : "text");
    if (arity === 0) return;
    if (f.kind === "enum") {
      var fs = document.createElement("fieldset"); var lg = document.createElement("legend");
      lg.textContent = "Values"; fs.appendChild(lg);
      f.values.forEach(function (v, n) {  // [value, label]
        var l = document.createElement("label"); l.className = "check";
        var c = document.createElement("input"); c.type = "checkbox"; c.name = "nf_value"; c.value = v[0]; c.id = "nf-v" + n;
        l.appendChild(c); l.appendChild(document.createTextNode(" " + v[1])); fs.appendChild(l);
      });
      values.appendChild(fs); return;
    }
    if (arity === 2) { input(type, "From (inclusive)", "nf-v1"); input(type, "To (inclusive)", "nf-v2"); return; }
    var i = input(arity === "list" ? "text" : type, arity === "list" ? "Values (comma-separated)" : "Value", "nf-v1");
    if (f.kind === "decimal") i.inputMode = "decimal";
  }
  $$(".filter-btn").forEach(function (b) {
    b.addEventListener("click", function () {
      current = b.dataset.field; var f = spec[current]; if (!f) return;
      $("#filter-title").textContent = "Filter: " + f.label;
      $("#nf-field").value = current;
      opSel.textContent = "";
      f.ops.forEach(function (o) { var op = document.createElement("option"); op.value = o[0]; op.textContent = o[1]; opSel.appendChild(op); });
      renderValues();
      openDialog(filterDialog, opSel);
    });
  });
  opSel.addEventListener("change", renderValues);
  $("#filter-cancel").addEventListener("click", function () { filterDialog.close(); });
  $("#filter-form").addEventListener("submit", function (ev) {
    var f = spec[current];
    if (f && f.kind === "enum" && !$$("input:checked", values).length) { ev.preventDefault(); alertIn(values, "Tick at least one value."); }
  });
  function alertIn(el, text) {
    var p = el.querySelector(".error") || document.createElement("p");
    p.className = "error"; p.setAttribute("role", "alert"); p.textContent = text; el.appendChild(p);
  }

  // -- selection ----------------------------------------------------------------------
  var selBtn = $("#selected-btn"), selCount = $("#selected-count"), selPage = $("#select-page");
  function updateSelection() {
    var n = $$(".row-sel:checked").length, all = $$(".row-sel").length;
    selCount.textContent = n; selBtn.disabled = n === 0;
    selPage.checked = n > 0 && n === all; selPage.indeterminate = n > 0 && n < all;
    $$(".row-sel").forEach(function (c) { c.closest("tr").classList.toggle("selected", c.checked); });
  }
  $("#grid").addEventListener("change", function (ev) { if (ev.target.classList.contains("row-sel")) updateSelection(); });
  selPage.addEventListener("change", function () {
    $$(".row-sel").forEach(function (c) { c.checked = selPage.checked; }); updateSelection();
  });
  selBtn.addEventListener("click", function () {
    var form = $("#selected-form");
    $$("input[name=call_id]", form).forEach(function (i) { i.remove(); });
    $$(".row-sel:checked").forEach(function (c) {
      var i = document.createElement("input"); i.type = "hidden"; i.name = "call_id"; i.value = c.value; form.appendChild(i);
    });
    form.submit();
  });

  // -- detail drawer ------------------------------------------------------------------
  var drawer = $("#drawer"), drawerBody = $("#drawer-body"), opener = null;
  function openDetail(callId, from) {
    opener = from || null;
    drawerBody.textContent = "Loading…";
    drawer.hidden = false;
    $$("tr.active").forEach(function (tr) { tr.classList.remove("active"); });
    var row = $$("tr[data-call]").filter(function (tr) { return tr.dataset.call === callId; })[0];
    if (row) row.classList.add("active");
    fetch("/web/cdrs/" + encodeURIComponent(callId) + "?tz=" + encodeURIComponent(app.dataset.tz), {credentials: "same-origin"})
      .then(function (r) { return r.text().then(function (t) { return {ok: r.ok, status: r.status, text: t}; }); })
      .then(function (r) {
        if (r.status === 401) { drawerBody.innerHTML = '<p class="error" role="alert">Your session has ended. <a href="/login">Sign in again</a>.</p>'; return; }
        drawerBody.innerHTML = r.text;  // server-rendered and escaped
        $("#drawer-close").focus();
      })
      .catch(function () { drawerBody.innerHTML = '<p class="error" role="alert">Could not load the call; check your connection.</p>'; });
  }
  function closeDrawer() {
    drawer.hidden = true; drawerBody.textContent = "";
    $$("tr.active").forEach(function (tr) { tr.classList.remove("active"); });
    if (opener) opener.focus();
  }
  $("#drawer-close").addEventListener("click", closeDrawer);
  document.addEventListener("keydown", function (ev) { if (ev.key === "Escape" && !drawer.hidden) closeDrawer(); });
  $("#grid").addEventListener("click", function (ev) {
    var t = ev.target;
    var play = t.closest("button.play");
    if (play) { startPlayer(play); return; }
    var det = t.closest("button.details");
    if (det) { openDetail(det.closest("tr").dataset.call, det); return; }
    if (t.closest("input, a, button, audio, th")) return;
    var tr = t.closest("tr[data-call]");
    if (tr) openDetail(tr.dataset.call, $("button.details", tr));
  });

  // -- recordings ---------------------------------------------------------------------
  function startPlayer(btn) {
    var id = btn.dataset.call;
    var audio = document.createElement("audio");
    audio.controls = true; audio.preload = "auto"; audio.className = "inline-player";
    audio.setAttribute("aria-label", "Recording of call " + id);
    audio.src = "/web/recording/" + encodeURIComponent(id);
    audio.addEventListener("error", function () {
      var p = document.createElement("span"); p.className = "error small"; p.setAttribute("role", "alert");
      p.textContent = "Recording not available";
      audio.replaceWith(p);
    });
    btn.replaceWith(audio);
    var played = audio.play();
    if (played && played.catch) played.catch(function () { /* autoplay refused: the controls are there */ });
    audio.focus();
  }
})();
