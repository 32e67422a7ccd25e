// landfall dashboard: live updates of a machine's page (server-sent events).
// The page works without this file; it only keeps the page current.
"use strict";
(function () {
  var root = document.querySelector("[data-live]");
  if (!root || !window.EventSource) return;
  var status = document.getElementById("live-status");
  var lines = document.getElementById("output-lines");
  var MAX_LINES = 1000;
  function say(text) { if (status) status.textContent = text; }
  function set(id, html) {
    var el = document.getElementById(id);
    if (el) el.innerHTML = html;
  }
  // Follow the output while the reader is at its end.
  function atEnd() { return !lines || lines.scrollHeight - lines.scrollTop - lines.clientHeight < 40; }
  function follow(wasAtEnd) { if (lines && wasAtEnd) lines.scrollTop = lines.scrollHeight; }
  if (lines) lines.scrollTop = lines.scrollHeight;
  var es = new EventSource(root.getAttribute("data-live"));
  es.onopen = function () { say("live"); };
  es.onerror = function () { say("reconnecting…"); };
  es.addEventListener("summary", function (e) { set("summary", e.data); });
  es.addEventListener("panel", function (e) { set("panel", e.data); });
  es.addEventListener("output", function (e) {
    var end = atEnd();
    set("output-lines", e.data);
    follow(end);
  });
  es.addEventListener("append", function (e) {
    if (!lines) return;
    var end = atEnd();
    lines.insertAdjacentHTML("beforeend", e.data);
    while (lines.childElementCount > MAX_LINES) lines.removeChild(lines.firstElementChild);
    follow(end);
  });
  es.addEventListener("reload", function () { es.close(); window.location.reload(); });
})();
