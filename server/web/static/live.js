// Live updates over Server-Sent Events: the feed table and the overview's gates and counters.
// No library; text is set with textContent only (names and reasons are never parsed as HTML).
(function () {
  "use strict";
  var feed = document.getElementById("feed");
  var live = document.getElementById("live");
  var host = feed || live;
  if (!host || !window.EventSource) return;
  var pill = document.getElementById("live-state");

  function setPill(state) {
    if (!pill) return;
    pill.className = "pill " + state;
    pill.textContent = pill.dataset[state === "live" ? "live" : state === "lost" ? "lost" : "connecting"];
  }

  function cell(row, text) {
    var td = document.createElement("td");
    td.textContent = text === null || text === undefined || text === "" ? "—" : text;
    row.appendChild(td);
    return td;
  }

  function addPassage(p) {
    var body = feed.tBodies[0];
    if (body.querySelector('tr[data-uuid="' + p.uuid + '"]')) return;
    var row = document.createElement("tr");
    row.className = "d-" + p.decision + " fresh";
    row.dataset.uuid = p.uuid;
    cell(row, p.time);
    cell(row, p.gate);
    var td = document.createElement("td");
    var tag = document.createElement("span");
    tag.className = "tag tag-" + p.decision;
    tag.textContent = p.decision_text;
    td.appendChild(tag);
    td.appendChild(document.createTextNode(" " + (p.direction_text || "")));
    row.appendChild(td);
    cell(row, p.holder);
    cell(row, p.household);
    cell(row, p.message);
    cell(row, typeof p.temperature === "number" ? p.temperature.toFixed(1) : null);
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 200) body.deleteRow(body.rows.length - 1);
    var empty = document.getElementById("feed-empty");
    if (empty) empty.remove();
  }

  function bump(id) {
    var el = document.getElementById(id);
    if (el) el.textContent = String(parseInt(el.textContent, 10) + 1);
  }

  // A gate's data age grows while it is silent: recomputed from its data_as_of every 30 s,
  // in the units and limit the page rendered (server/web/views/overview.py DataAge).
  function renderAge(td) {
    var asOf = Date.parse(td.dataset.asOf || "");
    if (isNaN(asOf)) return;
    var hours = Math.max(0, (Date.now() - asOf) / 3600000);
    var span = td.querySelector("span");
    if (!span) {
      td.textContent = "";
      span = td.appendChild(document.createElement("span"));
    }
    span.textContent = hours < 1 ? Math.floor(hours * 60) + " " + td.dataset.min
      : hours.toFixed(1) + " " + td.dataset.h;
    span.className = hours > parseFloat(td.dataset.limitH) ? "bad" : "ok";
  }

  function renderAges() {
    document.querySelectorAll('td[data-role="data-age"][data-as-of]').forEach(renderAge);
  }

  function setStatus(s) {
    var row = document.querySelector('tr[data-gate="' + CSS.escape(s.gate) + '"]');
    if (!row) return;
    var state = row.querySelector('[data-role="state"]');
    state.className = "state state-" + s.state;
    state.textContent = s.state_text;
    if (s.time) row.querySelector('[data-role="seen"]').textContent = s.time;
    if (typeof s.backlog === "number") row.querySelector('[data-role="backlog"]').textContent = s.backlog;
    var age = row.querySelector('[data-role="data-age"]');
    if (age && s.data_as_of) {
      age.dataset.asOf = s.data_as_of;
      if (typeof s.max_data_age_h === "number") age.dataset.limitH = s.max_data_age_h;
      renderAge(age);
    }
  }

  if (live) window.setInterval(renderAges, 30000);

  var source = new EventSource(host.dataset.stream);
  source.onopen = function () { setPill("live"); };
  source.onerror = function () { setPill("lost"); };
  source.addEventListener("passage", function (e) {
    var p = JSON.parse(e.data);
    if (feed) addPassage(p);
    if (live && p.decision === "allow" && p.direction) bump("count-" + p.direction);
  });
  source.addEventListener("status", function (e) { if (live) setStatus(JSON.parse(e.data)); });
  source.addEventListener("alert", function () { if (live) bump("count-alerts"); });
  source.addEventListener("dropped", function () {
    var d = document.getElementById("dropped");
    if (d) d.hidden = false;
  });
  source.addEventListener("logout", function () { source.close(); window.location.reload(); });
})();
