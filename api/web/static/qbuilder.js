/* cdrhouse web viewer: the query builder and the keyboard shortcuts.
   The tree is the API's JSON (react-querybuilder form: combinator, not, rules;
   rules: field, operator, value, valueSource). The page gives the view's tree
   (#qb-tree: the header filters are its leading rules) and the compiler's errors
   by rule path (#qb-errors); fields and operators come from GET /v1/fields for
   the signed-in session, so a role never sees a field it may not filter on.
   Apply puts the tree in the URL (`q`); the server moves its leading simple rules
   into header filters (`f`), and the grid, the CSV download and the charts all
   read that state. No dependencies; no inline code (CSP). */
(function () {
  "use strict";
  var app = document.getElementById("app");
  var panel = document.getElementById("qb-panel");
  if (!app || !panel) return;
  var $ = function (sel, root) { return (root || document).querySelector(sel); };
  var zone = app.dataset.tz || "UTC";
  var limits = JSON.parse(panel.dataset.limits || "{}");
  var MAX_DEPTH = limits.depth || 8, MAX_NODES = limits.rules || 200;
  var rootEl = $("#qb-body"), panelError = $("#qb-panel-error"), dirtyEl = $("#qb-dirty");
  var toggle = $("#qb-toggle");

  // -- time zones: wall time in the display zone <-> instants (DST-aware) --------------
  var fmt = null;
  function partsAt(ms) {
    fmt = fmt || new Intl.DateTimeFormat("en-US", {timeZone: zone, hourCycle: "h23", year: "numeric",
      month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit"});
    var o = {};
    fmt.formatToParts(new Date(ms)).forEach(function (p) { o[p.type] = p.value; });
    return {y: +o.year, mo: +o.month, d: +o.day, h: (+o.hour) % 24, mi: +o.minute, s: +o.second};
  }
  function offsetMin(ms) {  // the zone's UTC offset at instant ms, in minutes
    var p = partsAt(ms), whole = Math.floor(ms / 1000) * 1000;
    return Math.round((Date.UTC(p.y, p.mo - 1, p.d, p.h, p.mi, p.s) - whole) / 60000);
  }
  function pad(n, w) { n = String(Math.abs(n)); while (n.length < (w || 2)) n = "0" + n; return n; }
  // "YYYY-MM-DDTHH:MM[:SS]" read as wall time in the zone -> the instant (ms), the first
  // of two when the clocks go back (as the API reads it); null when the clocks skip it
  function wallToInstant(text) {
    var m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?$/.exec(text);
    if (!m) return NaN;
    var wall = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +(m[6] || 0));
    var found = [];
    [offsetMin(wall - 86400000), offsetMin(wall), offsetMin(wall + 86400000)].forEach(function (o) {
      var t = wall - o * 60000;
      if (offsetMin(t) === o && found.indexOf(t) < 0) found.push(t);
    });
    return found.length ? Math.min.apply(null, found) : null;
  }
  function wallText(ms) {
    var p = partsAt(ms);
    return pad(p.y, 4) + "-" + pad(p.mo) + "-" + pad(p.d) + "T" + pad(p.h) + ":" + pad(p.mi) + ":" + pad(p.s);
  }
  function isoWithOffset(ms) {  // 2026-03-29T03:30:00+02:00: the instant, unambiguous
    var o = offsetMin(ms);
    return wallText(ms) + (o < 0 ? "-" : "+") + pad(Math.floor(Math.abs(o) / 60)) + ":" + pad(Math.abs(o) % 60);
  }
  // a stored value as the datetime-local input's text; null when it is not a time
  function toInput(v) {
    if (typeof v !== "string" || !v) return v === "" || v == null ? "" : null;
    if (/^\d{4}-\d{2}-\d{2}$/.test(v)) return v + "T00:00:00";
    var naive = /^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2})(:\d{2})?$/.exec(v);
    if (naive) return naive[1] + "T" + naive[2] + (naive[3] || ":00");  // already wall time here
    if (/^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:?\d{2})$/i.test(v)) {
      var ms = Date.parse(v.replace(" ", "T"));
      if (!isNaN(ms) && ms % 1000 === 0) return wallText(ms);
    }
    return null;
  }

  // -- fields and operators -------------------------------------------------------------
  var fields = [], byName = {}, opInfo = {};
  var spec = {};
  try { spec = JSON.parse(($("#filter-spec") || {}).textContent || "{}"); } catch (e) { spec = {}; }
  var ACCOUNT_OPS = {equal: 1, not_equal: 1, "in": 1, not_in: 1};

  function canonOp(s) {
    if (typeof s !== "string") return "";
    if (opInfo[s]) return s;
    for (var k in opInfo) if (opInfo[k].rqb === s) return k;
    return s;
  }
  function opsFor(name) { var f = byName[name]; return f ? f.operators : []; }
  function arity(op) { return opInfo[op] ? opInfo[op].arity : 1; }
  function choicesFor(name, op) {  // [[value, label]] or null
    var f = byName[name];
    if (!f) return null;
    if (f.values && f.values.length) return f.values.map(function (v) { return [v, v]; });
    var s = spec[name];
    if (s && s.values && s.values.length && ACCOUNT_OPS[op]) return s.values;
    return null;
  }
  function comparable(name) {  // fields a rule on `name` may compare with (valueSource field)
    var f = byName[name];
    return fields.filter(function (o) { return f && o.kind === f.kind && (f.kind !== "enum" || o.type === f.type); });
  }

  // -- the model ------------------------------------------------------------------------
  function loadNode(n) {
    if (n && typeof n === "object" && Array.isArray(n.rules)) return loadGroup(n);
    n = n && typeof n === "object" ? n : {};
    var r = {type: "rule", field: typeof n.field === "string" ? n.field : (typeof n.id === "string" ? n.id : ""),
             operator: canonOp(n.operator), valueSource: n.valueSource === "field" ? "field" : "value",
             value: n.value === undefined ? "" : n.value};
    if (Array.isArray(r.value)) r.value = r.value.map(function (v) { return v == null ? "" : String(v); });
    else if (typeof r.value === "number") r.value = String(r.value);
    return r;
  }
  function loadGroup(g) {
    var c = String(g.combinator || g.condition || "and").toLowerCase();
    return {type: "group", combinator: c === "or" ? "or" : "and", not: g.not === true,
            rules: (g.rules || []).map(loadNode)};
  }
  function number(v, kind) {
    if (kind === "int" && /^\s*-?\d{1,15}\s*$/.test(v)) return parseInt(v, 10);
    return v;
  }
  function dumpNode(n) {
    if (n.type === "group") {
      var g = {combinator: n.combinator, rules: n.rules.map(dumpNode)};
      if (n.not) g.not = true;
      return g;
    }
    var info = opInfo[n.operator], f = byName[n.field], kind = f ? f.kind : "";
    var out = {field: n.field, operator: info ? (info.rqb || info.key) : n.operator};
    var a = arity(n.operator);
    if (a === 0) return out;
    if (n.valueSource === "field") out.valueSource = "field";
    var v = n.value;
    if (a === 1) out.value = Array.isArray(v) ? (v[0] || "") : (n.valueSource === "field" ? v : number(v, kind));
    else {
      v = Array.isArray(v) ? v : (v === "" ? [] : [v]);
      out.value = n.valueSource === "field" ? v : v.map(function (x) { return number(x, kind); });
    }
    return out;
  }
  function count(g) { return g.rules.reduce(function (s, n) { return s + 1 + (n.type === "group" ? count(n) : 0); }, 0); }

  var initialTree = null, initialErrors = [];
  try { initialTree = JSON.parse($("#qb-tree").textContent || "null"); } catch (e) { initialTree = null; }
  try { initialErrors = JSON.parse($("#qb-errors").textContent || "[]"); } catch (e) { initialErrors = []; }
  var root = null, applied = "";

  function nodeAt(path) {  // "query" | "rules[2].rules[0]" -> the node, or null
    if (path === "query") return root;
    var n = root, parts = path.split(".");
    for (var i = 0; i < parts.length; i++) {
      var m = /^rules\[(\d+)\]$/.exec(parts[i]);
      if (!m || !n || n.type !== "group" || !n.rules[+m[1]]) return null;
      n = n.rules[+m[1]];
    }
    return n;
  }

  // -- drawing --------------------------------------------------------------------------
  function el(tag, attrs, kids) {
    var e = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      var v = attrs[k];
      if (v === null || v === undefined || v === false) return;
      if (k === "text") e.textContent = v;
      else if (k === "className") e.className = v;
      else if (k in e && typeof v !== "string") e[k] = v;
      else e.setAttribute(k, v === true ? "" : v);
    });
    (kids || []).forEach(function (c) { if (c) e.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return e;
  }
  function idOf(path) { return "qb-" + (path === "query" ? "root" : path.replace(/rules\[(\d+)\]/g, "$1").replace(/\./g, "-")); }
  function child(path, i) { return (path === "query" ? "" : path + ".") + "rules[" + i + "]"; }
  function human(path) {  // "rules[1].rules[0]" -> "2.1" (what a person counts)
    if (path === "query") return "the top group";
    return path.replace(/rules\[(\d+)\]/g, function (_, n) { return String(+n + 1); });
  }
  function select(id, label, options, value, onchange) {
    var s = el("select", {id: id, "aria-label": label});
    var seen = false;
    options.forEach(function (o) {
      var opt = el("option", {value: o[0], text: o[1]});
      if (String(o[0]) === String(value)) { opt.selected = true; seen = true; }
      s.appendChild(opt);
    });
    if (!seen && value !== "" && value != null) {  // keep what the tree says, even if unknown here
      var extra = el("option", {value: value, text: value + " (not available)"});
      extra.selected = true; s.insertBefore(extra, s.firstChild);
    }
    if (onchange) s.addEventListener("change", function () { onchange(s.value); });
    return s;
  }
  function moveButtons(parent, i, path, label) {
    var n = parent.rules.length;
    var up = el("button", {type: "button", className: "icon", id: idOf(path) + "-up", "aria-label": "Move " + label + " up", title: "Move up", text: "↑", disabled: i === 0});
    var down = el("button", {type: "button", className: "icon", id: idOf(path) + "-down", "aria-label": "Move " + label + " down", title: "Move down", text: "↓", disabled: i === n - 1});
    var del = el("button", {type: "button", className: "icon danger", id: idOf(path) + "-remove", "aria-label": "Remove " + label, title: "Remove", text: "✕"});
    up.addEventListener("click", function () { swap(parent, i, i - 1, child(parentPath(path), i - 1), "-up"); });
    down.addEventListener("click", function () { swap(parent, i, i + 1, child(parentPath(path), i + 1), "-down"); });
    del.addEventListener("click", function () { parent.rules.splice(i, 1); changed(idOf(parentPath(path)) + "-add-rule"); });
    return [up, down, del];
  }
  function parentPath(path) { var k = path.lastIndexOf("."); return k < 0 ? "query" : path.slice(0, k); }
  function swap(parent, i, j, newPath, suffix) {
    var t = parent.rules[i]; parent.rules[i] = parent.rules[j]; parent.rules[j] = t;
    changed(idOf(newPath) + suffix);
  }
  function errorLine(node) {
    return node.error ? el("p", {className: "qb-err", role: "alert", text: node.error}) : null;
  }

  function drawGroup(g, path, depth, parent, index) {
    var id = idOf(path), label = path === "query" ? "the top group" : "group " + human(path);
    var notBox = el("input", {type: "checkbox", id: id + "-not", checked: g.not});
    notBox.addEventListener("change", function () { g.not = notBox.checked; g.error = null; changed(id + "-not"); });
    var comb = select(id + "-match", "Match for " + label, [["and", "All"], ["or", "Any"]], g.combinator,
                      function (v) { g.combinator = v; g.error = null; changed(id + "-match"); });
    var full = count(root) >= MAX_NODES;
    var addRule = el("button", {type: "button", id: id + "-add-rule", text: "+ Rule", disabled: full,
                                "aria-label": "Add a rule to " + label});
    var addGroup = el("button", {type: "button", id: id + "-add-group", text: "+ Group", disabled: full || depth >= MAX_DEPTH,
                                 "aria-label": "Add a group to " + label,
                                 title: depth >= MAX_DEPTH ? "Groups nest at most " + MAX_DEPTH + " deep" : null});
    addRule.addEventListener("click", function () {
      g.rules.push(newRule()); changed(idOf(child(path, g.rules.length - 1)) + "-field");
    });
    addGroup.addEventListener("click", function () {
      g.rules.push({type: "group", combinator: "and", not: false, rules: [newRule()]});
      changed(idOf(child(path, g.rules.length - 1)) + "-match");
    });
    var head = el("div", {className: "qb-group-head"}, [
      el("label", {className: "qb-not", "for": id + "-not", title: "Negate the whole group"}, [notBox, " NOT"]),
      el("span", {text: "Match"}), comb, el("span", {text: "of the following"}), addRule, addGroup,
      el("span", {className: "spacer"})]);
    if (parent) moveButtons(parent, index, path, label).forEach(function (b) { head.appendChild(b); });
    var list = el("ol", {className: "qb-rules"});
    g.rules.forEach(function (n, i) {
      var p = child(path, i);
      list.appendChild(n.type === "group" ? el("li", {}, [drawGroup(n, p, depth + 1, g, i)]) : drawRule(n, p, g, i));
    });
    if (!g.rules.length) list.appendChild(el("li", {className: "muted qb-empty", text: "No rules: every call matches" + (g.not ? " — negated, none does" : "") + "."}));
    return el("div", {className: "qb-group" + (g.not ? " negated" : "") + (g.error ? " bad" : ""), role: "group",
                      "aria-label": label, "data-path": path, id: id}, [head, errorLine(g), list]);
  }

  function newRule() {
    var f = fields[0];
    return {type: "rule", field: f ? f.name : "", operator: f && f.operators[0] ? f.operators[0].key : "", value: "", valueSource: "value"};
  }

  function drawRule(r, path, parent, index) {
    var id = idOf(path), label = "rule " + human(path);
    var fieldOpts = fields.map(function (f) { return [f.name, f.label]; });
    var fsel = select(id + "-field", "Field of " + label, fieldOpts, r.field, function (v) {
      var before = byName[r.field];
      r.field = v; r.error = null;
      var ops = opsFor(v).map(function (o) { return o.key; });
      if (ops.indexOf(r.operator) < 0) r.operator = ops[0] || "";
      var now = byName[v];
      if (!before || !now || before.kind !== now.kind || now.kind === "enum") { r.value = ""; r.valueSource = "value"; }
      changed(id + "-field");
    });
    var ops = opsFor(r.field).map(function (o) { return [o.key, o.label]; });
    var osel = select(id + "-op", "Operator of " + label, ops, r.operator, function (v) {
      var a0 = arity(r.operator), a1 = arity(v);
      r.operator = v; r.error = null;
      if (a0 !== a1) {
        var first = Array.isArray(r.value) ? (r.value[0] || "") : r.value;
        r.value = a1 === 1 ? first : a1 === 0 ? "" : (first === "" ? [] : [first]);
        if (a1 === "list" || a1 === 0) r.valueSource = "value";
      }
      changed(id + "-op");
    });
    var kids = [fsel, osel];
    var a = arity(r.operator);
    if (a === 1 || a === 2) {
      var src = select(id + "-source", "Compare " + label + " with", [["value", "a value"], ["field", "a field"]],
                       r.valueSource, function (v) {
        r.valueSource = v; r.error = null;
        r.value = a === 2 ? ["", ""] : "";
        changed(id + "-source");
      });
      src.className = "qb-source";
      src.title = "Compare with a value you type, or with another field of the same call";
      kids.push(src);
    }
    valueInputs(r, id, label, a).forEach(function (k) { kids.push(k); });
    kids.push(el("span", {className: "spacer"}));
    moveButtons(parent, index, path, label).forEach(function (b) { kids.push(b); });
    return el("li", {className: "qb-rule" + (r.error ? " bad" : ""), "data-path": path, id: id, role: "group", "aria-label": label},
              [el("div", {className: "qb-rule-row"}, kids), errorLine(r)]);
  }

  function valueInputs(r, id, label, a) {
    if (a === 0) return [];
    var f = byName[r.field], kind = f ? f.kind : "string";
    var vals = Array.isArray(r.value) ? r.value.slice() : [r.value];
    if (r.valueSource === "field") {
      var opts = comparable(r.field).map(function (o) { return [o.name, o.label]; });
      var n = a === 2 ? 2 : 1, out = [];
      for (var i = 0; i < n; i++) {
        (function (i) {
          var s = select(id + "-vf" + (i + 1), (n === 2 ? (i ? "Upper" : "Lower") + " field of " : "Field to compare in ") + label,
                         [["", "— field —"]].concat(opts), vals[i] || "", function (v) {
            if (n === 2) { var cur = Array.isArray(r.value) ? r.value.slice() : ["", ""]; cur[i] = v; r.value = cur; } else r.value = v;
            r.error = null; markDirty();
          });
          if (i) out.push(el("span", {text: "and"}));
          out.push(s);
        })(i);
      }
      return out;
    }
    var choices = choicesFor(r.field, r.operator);
    if (choices && a === "list") {
      var chosen = vals.map(String);
      var box = el("span", {className: "qb-choices", role: "group", "aria-label": "Values of " + label});
      choices.forEach(function (c, i) {
        var cb = el("input", {type: "checkbox", id: id + "-c" + i, value: c[0], checked: chosen.indexOf(String(c[0])) >= 0});
        cb.addEventListener("change", function () {
          r.value = Array.prototype.slice.call(box.querySelectorAll("input:checked")).map(function (x) { return x.value; });
          r.error = null; markDirty();
        });
        box.appendChild(el("label", {className: "check", "for": id + "-c" + i}, [cb, " " + c[1]]));
      });
      chosen.forEach(function (v) {  // values the choices do not offer stay visible
        if (v && !choices.some(function (c) { return String(c[0]) === v; })) box.appendChild(el("span", {className: "muted", text: v + " (not available)"}));
      });
      return [box];
    }
    if (choices && a === 1) {
      return [select(id + "-v1", "Value of " + label, [["", "— choose —"]].concat(choices), vals[0] || "", function (v) { r.value = v; r.error = null; markDirty(); })];
    }
    if (a === "list") {
      var t = el("input", {type: "text", id: id + "-v1", className: "qb-list", "aria-label": "Values of " + label + " (comma-separated)",
                           placeholder: "a, b, c", value: vals.filter(function (v) { return v !== ""; }).join(", "), spellcheck: "false"});
      t.addEventListener("input", function () {
        r.value = t.value.split(/[,\n]/).map(function (v) { return v.trim(); }).filter(function (v) { return v !== ""; });
        r.error = null; markDirty();
      });
      return [t];
    }
    var n2 = a === 2 ? 2 : 1, outs = [];
    for (var k = 0; k < n2; k++) {
      (function (k) {
        var name = n2 === 2 ? (k ? "Upper value of " : "Lower value of ") + label : "Value of " + label;
        var input = valueInput(kind, id + "-v" + (k + 1), name, vals[k] === undefined ? "" : vals[k], function (v) {
          if (n2 === 2) { var cur = Array.isArray(r.value) ? r.value.slice() : [r.value, ""]; while (cur.length < 2) cur.push(""); cur[k] = v; r.value = cur; }
          else r.value = v;
        }, r);
        if (k) outs.push(el("span", {text: "and"}));
        outs.push(input);
      })(k);
    }
    return outs;
  }

  function valueInput(kind, id, name, value, set, r) {
    if (kind === "datetime") {
      var shown = toInput(value);
      if (shown !== null) {
        var d = el("input", {type: "datetime-local", step: "1", id: id, "aria-label": name + " (" + zone + ")", value: shown});
        d.dataset.zone = zone;
        d.addEventListener("input", function () {
          r.error = null; r.clientError = null;
          if (!d.value) { set(""); markDirty(); return; }
          var t = wallToInstant(d.value.length === 16 ? d.value + ":00" : d.value);
          if (t === null) {
            r.clientError = d.value.replace("T", " ") + " does not exist in " + zone + " (the clocks skip it)";
            showClientError(r, id);
            return;
          }
          if (isNaN(t)) return;
          set(isoWithOffset(t)); showClientError(r, id); markDirty();
        });
        return d;
      }
    }
    var numeric = kind === "int" && (value === "" || value == null || /^-?\d+$/.test(String(value)));
    var attrs = {type: numeric ? "number" : "text", id: id, "aria-label": name, value: value == null ? "" : String(value), spellcheck: "false"};
    if (numeric) attrs.step = "1";
    if (kind === "decimal") attrs.inputmode = "decimal";
    if (kind === "datetime") attrs.placeholder = "2026-03-29T10:00:00+02:00";
    var i = el("input", attrs);
    i.addEventListener("input", function () { set(i.value); r.error = null; markDirty(); });
    return i;
  }
  function showClientError(r, inputId) {
    var li = document.getElementById(inputId).closest(".qb-rule");
    var p = li.querySelector(".qb-err.client");
    if (!r.clientError) {
      if (p) p.remove();
      li.classList.toggle("bad", !!r.error);
      if (root && !firstClientError(root)) panelError.hidden = true;
      return;
    }
    if (!p) { p = el("p", {className: "qb-err client", role: "alert"}); li.appendChild(p); }
    p.textContent = r.clientError; li.classList.add("bad");
  }

  function render(focusId) {
    rootEl.textContent = "";
    rootEl.appendChild(drawGroup(root, "query", 1, null, 0));
    var f = focusId && document.getElementById(focusId);
    if (f && !f.disabled) f.focus();
    else if (focusId) { var r = document.getElementById(focusId.replace(/-(up|down|remove|add-rule|field|match|op|source|not)$/, "")); if (r) { var b = r.querySelector("select, input, button:not([disabled])"); if (b) b.focus(); } }
    markDirty();
  }
  function changed(focusId) { render(focusId); }
  function serial() { return JSON.stringify(dumpNode(root)); }
  function markDirty() { if (dirtyEl) dirtyEl.hidden = serial() === applied; }

  // -- apply ----------------------------------------------------------------------------
  function firstClientError(n) {
    if (n.type === "rule") return n.clientError ? n : null;
    for (var i = 0; i < n.rules.length; i++) { var e = firstClientError(n.rules[i]); if (e) return e; }
    return null;
  }
  function apply() {
    if (!root) return;
    var bad = firstClientError(root);
    if (bad) { panelError.textContent = "Fix the rule marked below first."; panelError.hidden = false; return; }
    var tree = dumpNode(root);
    var u = new URL(location.href);
    ["f", "q", "c", "note"].forEach(function (k) { u.searchParams.delete(k); });
    if (tree.rules.length || tree.not) u.searchParams.set("q", JSON.stringify(tree));
    try { localStorage.setItem("cdrhouse.qb.open", "1"); } catch (e) { /* private mode */ }
    location.assign(u.pathname + u.search);
  }
  $("#qb-apply").addEventListener("click", apply);
  rootEl.addEventListener("keydown", function (ev) {  // Enter in a value applies, as in a form
    var t = ev.target;
    if (ev.key === "Enter" && !ev.ctrlKey && !ev.metaKey && !ev.altKey && !ev.shiftKey &&
        t.tagName === "INPUT" && t.type !== "checkbox") { ev.preventDefault(); apply(); }
  });
  $("#qb-clear").addEventListener("click", function () {
    if (!root) return;
    root = {type: "group", combinator: "and", not: false, rules: []};
    panelError.hidden = true;
    render("qb-root-add-rule");
  });

  // -- open / close ---------------------------------------------------------------------
  function setOpen(open, focus) {
    panel.hidden = !open;
    if (toggle) toggle.setAttribute("aria-expanded", open ? "true" : "false");
    try { localStorage.setItem("cdrhouse.qb.open", open ? "1" : "0"); } catch (e) { /* private mode */ }
    if (open && focus) { var f = rootEl.querySelector("select, input, button"); if (f) f.focus(); }
  }
  var remembered = null;
  try { remembered = localStorage.getItem("cdrhouse.qb.open"); } catch (e) { remembered = null; }
  if (panel.hidden && remembered === "1") setOpen(true);
  if (toggle) toggle.addEventListener("click", function () { setOpen(panel.hidden, true); });
  var chip = $("#qb-chip");  // the chip of the rules that are not header filters opens the builder
  if (chip) chip.addEventListener("click", function () { setOpen(true, true); });

  // -- start: fields for this session, then the tree --------------------------------------
  fetch("/v1/fields", {credentials: "same-origin", headers: {"Accept": "application/json"}})
    .then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (!r.ok) throw new Error(j.detail || ("the server answered " + r.status));
        return j;
      });
    })
    .then(function (j) {
      fields = (j.fields || []).filter(function (f) { return f.filterable && f.operators.length; });
      fields.forEach(function (f) {
        byName[f.name] = f;
        f.operators.forEach(function (o) { opInfo[o.key] = o; });
      });
      root = initialTree && typeof initialTree === "object" && Array.isArray(initialTree.rules)
        ? loadGroup(initialTree) : {type: "group", combinator: "and", not: false, rules: []};
      applied = serial();
      var lost = [];
      initialErrors.forEach(function (e) {
        var n = nodeAt(e.path);
        if (n) n.error = e.message; else lost.push(e.path + ": " + e.message);
      });
      if (lost.length) { panelError.textContent = lost.join(" · "); panelError.hidden = false; }
      if (initialErrors.length && panel.hidden && initialTree) setOpen(true);
      render(null);
      panel.dataset.ready = "1";
    })
    .catch(function (e) {
      rootEl.textContent = "";
      panelError.textContent = "Could not load the fields for the query builder: " + e.message;
      panelError.hidden = false;
    });

  // -- keyboard shortcuts -----------------------------------------------------------------
  var keysDialog = $("#keys-dialog");
  $("#keys-close").addEventListener("click", function () { keysDialog.close(); });
  function typing(t) {
    if (!t || t === document.body) return false;
    var tag = t.tagName;
    if (tag === "INPUT") return !/^(checkbox|radio|button|submit|reset|range|color|file)$/.test(t.type);
    return tag === "TEXTAREA" || tag === "SELECT" || t.isContentEditable ||
      !!(t.closest && t.closest("[contenteditable], .cm-editor"));
  }
  function modalOpen() { return !!document.querySelector("dialog[open]"); }
  function go(id) { var a = document.getElementById(id); if (a && a.href) location.assign(a.href); }
  document.addEventListener("keydown", function (ev) {
    if (ev.defaultPrevented || ev.isComposing) return;
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && !ev.altKey && !ev.shiftKey) {
      var t = ev.target, tb = document.getElementById("toolbar");
      if (modalOpen() || (t && t.closest && t.closest(".cm-editor, [data-own-ctrl-enter]"))) return;  // an editor's own run
      ev.preventDefault();
      if (!panel.hidden && !(tb && tb.contains(t))) apply();
      else if (tb) { if (tb.requestSubmit) tb.requestSubmit(); else tb.submit(); }
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev.target) || modalOpen()) return;
    switch (ev.key) {
      case "/": { var s = document.getElementById("number"); if (s) { ev.preventDefault(); s.focus(); s.select(); } break; }
      case "j": case "]": ev.preventDefault(); go("next"); break;
      case "k": case "[": ev.preventDefault(); go("prev"); break;
      case "b": ev.preventDefault(); setOpen(panel.hidden, true); break;
      case "?": ev.preventDefault(); if (typeof keysDialog.showModal === "function") keysDialog.showModal(); else keysDialog.setAttribute("open", ""); $("#keys-close").focus(); break;
      default: break;
    }
  });
})();
