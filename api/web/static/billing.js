/* cdrhouse Balances & rate cards page (operators): GET /v1/balances, GET /v1/rates,
   and a rate card import (POST /v1/rates, the CSV as the body) whose line-by-line
   errors are shown as the API gives them. Helpers from jobs.js (window.cdrJobs). */
(function () {
  "use strict";
  var root = document.getElementById("tools"), J = window.cdrJobs;
  if (!root || !J || !document.getElementById("balances")) return;
  var $ = function (sel) { return document.querySelector(sel); };
  var el = J.el, money = J.money, tenant = root.dataset.tenant || "", admin = root.dataset.role === "admin";
  function withTenant(q) { return tenant ? q + (q.indexOf("?") < 0 ? "?" : "&") + "tenant=" + encodeURIComponent(tenant) : q; }
  function cell(text, num) { return el("td", {cls: num ? "num" : null, text: text === null || text === undefined ? "" : String(text)}); }
  function empty(tbody, n, text) { tbody.textContent = ""; tbody.appendChild(el("tr", {cls: "empty"}, [el("td", {colspan: String(n), text: text})])); }
  function problem(box, e) { box.textContent = e.message; box.hidden = false; }

  // -- balances -------------------------------------------------------------------------
  J.api("GET", withTenant("/v1/balances")).then(function (data) {
    var tbody = $("#balances tbody"); tbody.textContent = "";
    if (!data.balances.length) { empty(tbody, 9, "No balances yet: run Refresh Credit (Recalc CDR on the CDR page) to compute them."); return; }
    data.balances.forEach(function (b) {
      var kids = [];
      if (admin) kids.push(cell(b.tenant));
      kids.push(el("th", {scope: "row", text: b.account}), cell(b.kind), cell(b.currency), cell(money(b.ledger), true),
                cell(money(b.usage), true), cell(money(b.balance), true), cell(b.calls, true),
                cell(b.computed_at ? String(b.computed_at).replace("T", " ").slice(0, 19) : ""));
      tbody.appendChild(el("tr", {"data-account": b.kind + ":" + b.account}, kids));
    });
  }).catch(function (e) { empty($("#balances tbody"), 9, ""); problem($("#balances-error"), e); });

  // -- rate cards -------------------------------------------------------------------------
  var acct = $("#rates-account");
  if (!acct) return;
  function loadRates() {
    var tbody = $("#rates tbody"), err = $("#rates-error");
    err.hidden = true;
    if (!acct.value) { empty(tbody, 9, "No accounts."); return Promise.resolve(); }
    empty(tbody, 9, "Loading…");
    return J.api("GET", withTenant("/v1/rates?account=" + encodeURIComponent(acct.value))).then(function (data) {
      tbody.textContent = "";
      if (!data.rates.length) { empty(tbody, 9, "No rate card: this account's calls stay unrated. Import one below."); return; }
      data.rates.forEach(function (r) {
        tbody.appendChild(el("tr", {}, [el("th", {scope: "row", text: r.prefix}), cell(money(r.rate_per_min), true), cell(money(r.connect_fee), true),
          cell(r.increment), cell(r.min_duration, true), cell(String(r.effective_from).replace("T", " ").slice(0, 19)),
          cell(r.effective_to ? String(r.effective_to).replace("T", " ").slice(0, 19) : "open"), cell(r.currency), cell(r.rounding, true)]));
      });
    }).catch(function (e) { empty(tbody, 9, ""); problem(err, e); });
  }
  acct.addEventListener("change", function () { $("#rates-result").textContent = ""; loadRates(); });
  loadRates();

  // -- import -----------------------------------------------------------------------------
  var file = $("#rates-file"), text = $("#rates-text"), result = $("#rates-result");
  file.addEventListener("change", function () {
    var f = file.files && file.files[0];
    if (!f) return;
    f.text().then(function (t) { text.value = t; });
  });
  function showErrors(message) {
    // the API's detail: a first line, then one indented line per bad line of the file
    var lines = String(message).split("\n");
    result.textContent = "";
    var box = el("div", {cls: "error banner import-errors", role: "alert"}, [el("strong", {text: lines[0]})]);
    var rest = lines.slice(1).map(function (l) { return l.trim(); }).filter(Boolean);
    if (rest.length) box.appendChild(el("ul", {}, rest.map(function (l) { return el("li", {text: l}); })));
    result.appendChild(box);
  }
  $("#rates-import").addEventListener("submit", function (ev) {
    ev.preventDefault();
    var body = text.value;
    if (!body.trim()) { showErrors("Choose a CSV file or paste the rate card first."); return; }
    var btn = $("#rates-import-btn"); btn.disabled = true;
    var q = "/v1/rates?account=" + encodeURIComponent(acct.value) + ($("#rates-replace").checked ? "&replace=true" : "");
    J.api("POST", withTenant(q), body, "text/csv").then(function (res) {
      result.textContent = "";
      result.appendChild(el("p", {cls: "note", role: "status", text: "Imported " + res.imported + " rate" + (res.imported === 1 ? "" : "s") +
        " into " + res.kind + " " + res.account + ". Calls already rated keep their charges until you re-rate them (Recalc CDR)."}));
      return loadRates();
    }).catch(function (e) { showErrors(e.message); }).then(function () { btn.disabled = false; });
  });
})();
