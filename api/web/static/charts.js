/* cdrhouse web viewer: the charts panel above the grid.
   The server puts the view's /v1/charts request in #charts-request (the same state the
   grid shows: range, zone, filters, query-builder rules, narrowing, archive); this
   script posts it on the session cookie (with the CSRF token) and draws the answer
   with uPlot (vendored, see VENDOR.md). Nothing is fetched while the panel is closed;
   whether it is open is remembered in this browser. */
(function () {
  "use strict";
  var panel = document.getElementById("charts-panel");
  var reqEl = document.getElementById("charts-request");
  var app = document.getElementById("app");
  if (!panel || !reqEl || !app) return;
  var request = JSON.parse(reqEl.textContent || "null");
  var KEY = "cdrhouse.charts.open";
  var $ = function (id) { return document.getElementById(id); };
  var statusEl = $("charts-status");
  var plots = [];
  var loaded = false;

  try { if (window.localStorage.getItem(KEY) === "0") panel.open = false; } catch (e) { /* storage off */ }

  function status(text, isError) {
    statusEl.textContent = text;
    statusEl.hidden = !text;
    statusEl.classList.toggle("error", !!isError);
    statusEl.setAttribute("role", isError ? "alert" : "status");
  }

  var num = new Intl.NumberFormat(undefined, {maximumFractionDigits: 0});
  var num2 = new Intl.NumberFormat(undefined, {minimumFractionDigits: 2, maximumFractionDigits: 2});
  function pct(x) { return x === null || x === undefined ? "–" : (x * 100).toFixed(1) + " %"; }
  function secs(x) {
    if (x === null || x === undefined) return "–";
    var m = Math.floor(x / 60), s = Math.round(x - m * 60);
    if (s === 60) { m += 1; s = 0; }
    return m + ":" + (s < 10 ? "0" : "") + s;
  }
  function kpi(id, value, text) {
    var el = $(id);
    el.textContent = text;
    el.dataset.value = value === null || value === undefined ? "" : String(value);
  }

  function topTable(dim, rows) {
    var body = document.querySelector("#top-" + dim + " tbody");
    body.textContent = "";
    if (!rows.length) {
      var tr0 = document.createElement("tr"), td0 = document.createElement("td");
      td0.colSpan = 4; td0.className = "muted"; td0.textContent = "No calls";
      tr0.appendChild(td0); body.appendChild(tr0); return;
    }
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      tr.dataset.key = r.key;
      [[r.key || "(none)", "key-cell"], [num.format(r.calls), "num"], [pct(r.asr), "num"],
       [num2.format(r.minutes), "num"]].forEach(function (c) {
        var td = document.createElement("td"); td.textContent = c[0]; td.className = c[1];
        if (c[1] === "num" && tr.children.length === 1) td.dataset.value = String(r.calls);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
  }

  function width(el) { return Math.max(200, Math.floor(el.getBoundingClientRect().width)); }

  // axes follow the page's colours (light and dark)
  function cssVar(name, fallback) {
    var v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
    return v || fallback;
  }
  function themed(axis) {
    var ink = cssVar("--muted", "#5f6b7a"), line = cssVar("--line", "#dde1e6");
    return Object.assign({stroke: ink, grid: {stroke: line, width: 1}, ticks: {stroke: line, width: 1}}, axis);
  }

  function plot(el, data, series, axes, zone, scales) {
    axes = axes.map(themed);
    var opts = {
      width: width(el), height: 150, series: [{}].concat(series), axes: axes,
      scales: Object.assign({x: {time: true}}, scales || {}),
      tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1e3), zone); },
      legend: {show: true, live: true}, cursor: {drag: {x: false, y: false}}
    };
    el.textContent = "";
    var valueScale = series[0].scale || "y";
    opts.hooks = {setScale: [function (u, key) {   // the value axis' floor, as drawn
      if (key === valueScale) el.dataset.yMin = u.scales[key].min;
    }]};
    var u = new uPlot(opts, data, el);
    plots.push([u, el]);
    return u;
  }

  // bars are read by their height, so their axis starts at zero: uPlot fits the range
  // to the data, and two days of 40 and 60 calls would otherwise draw 1:3, not 2:3
  function fromZero(u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; }
  var ZERO_Y = {y: {range: fromZero}};

  function bars(color, fill) {
    return {paths: uPlot.paths.bars({size: [0.7, 60], align: 0}), stroke: color, fill: fill, points: {show: false}};
  }

  // day buckets get day-sized ticks (uPlot would otherwise label hours between them)
  var DAY = 86400, DAY_INCRS = [DAY, 2 * DAY, 7 * DAY, 14 * DAY, 30 * DAY, 91 * DAY, 365 * DAY];

  function draw(body) {
    var s = body.series, zone = body.plan.zone;
    var x = body.plan.bucket === "day" ? {incrs: DAY_INCRS} : {};
    plots.forEach(function (p) { p[0].destroy(); });
    plots = [];
    var t = s.t;
    plot($("chart-calls"), [t, s.calls, s.connected], [
      Object.assign({label: "Calls", value: function (u, v) { return v === null ? "–" : num.format(v); }}, bars("#9bb5ea", "#9bb5ea")),
      Object.assign({label: "Connected", value: function (u, v) { return v === null ? "–" : num.format(v); }}, bars("#2457c5", "#2457c5"))
    ], [x, {size: 44}], zone, ZERO_Y);
    plot($("chart-minutes"), [t, s.minutes], [
      Object.assign({label: "Minutes", value: function (u, v) { return v === null ? "–" : num2.format(v); }}, bars("#5a7fd0", "#5a7fd0"))
    ], [x, {size: 50}], zone, ZERO_Y);
    plot($("chart-quality"), [t, s.asr.map(function (v) { return v === null ? null : v * 100; }), s.acd], [
      {label: "ASR %", scale: "%", stroke: "#1b8a5a", width: 2, spanGaps: false, points: {show: true, size: 5},
       value: function (u, v) { return v === null ? "–" : v.toFixed(1) + " %"; }},
      {label: "ACD", scale: "s", stroke: "#c26a12", width: 2, spanGaps: false, points: {show: true, size: 5},
       value: function (u, v) { return secs(v); }}
    ], [x, {scale: "%", size: 52, values: function (u, vals) { return vals.map(function (v) { return v + "%"; }); }},
        {scale: "s", side: 1, size: 44, grid: {show: false, stroke: "transparent", width: 0}, values: function (u, vals) { return vals.map(secs); }}],
    zone, {"%": {range: [0, 100]}, s: {range: fromZero}});
  }

  function render(body) {
    var tot = body.totals;
    kpi("kpi-calls", tot.calls, num.format(tot.calls));
    kpi("kpi-connected", tot.connected, num.format(tot.connected));
    kpi("kpi-minutes", tot.minutes, num2.format(tot.minutes));
    kpi("kpi-asr", tot.asr, pct(tot.asr));
    kpi("kpi-acd", tot.acd, secs(tot.acd));
    var p = body.plan;
    $("charts-plan").textContent = (p.bucket === "hour" ? "by hour" : "by day") + " in " + p.zone +
      " · " + (p.source === "daily_summary" ? "from the daily summary" : "from the call records");
    $("charts-plan").title = p.why;
    status("", false);  // the page says above which archived months are (not) included
    ["country", "dst_prefix", "release_reason"].forEach(function (d) { topTable(d, body.top[d] || []); });
    if (typeof uPlot === "undefined") { status("The charting library did not load; reload the page.", true); return; }
    draw(body);
    panel.dataset.loaded = "1";
  }

  function load() {
    if (loaded || !panel.open) return;
    loaded = true;
    if (!request) { status("Fix the problem above to see charts.", true); return; }
    status("Loading charts…", false);
    fetch("/v1/charts", {method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": app.dataset.csrf},
      body: JSON.stringify(request)})
      .then(function (r) {
        return r.json().catch(function () { return {}; }).then(function (j) {
          if (!r.ok) throw new Error(j.detail || ("the server answered " + r.status));
          return j;
        });
      })
      .then(render)
      .catch(function (e) { loaded = false; status("Cannot draw the charts: " + e.message, true); });
  }

  panel.addEventListener("toggle", function () {
    try { window.localStorage.setItem(KEY, panel.open ? "1" : "0"); } catch (e) { /* storage off */ }
    load();
    if (panel.open) resize();
  });
  function resize() {
    plots.forEach(function (p) { p[0].setSize({width: width(p[1]), height: 150}); });
  }
  if (typeof ResizeObserver === "function") {
    new ResizeObserver(function () { resize(); }).observe(panel);
  } else {
    window.addEventListener("resize", resize);
  }
  load();
})();
