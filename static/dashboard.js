/* Staff dashboard: live countdowns and a self-refreshing orders list.
 * Progressive enhancement only: every page is complete without this script.
 * A static file (no inline script) so the Content-Security-Policy can forbid inline code. */
(function () {
  "use strict";

  var skewMs = 0;           // server clock minus browser clock, from <body data-server-now>
  var refreshTimer = null;
  var refreshing = false;
  var stopped = false;
  var REFRESH_SOON_MS = 2000; // after a countdown ends or while a capture is in progress

  function readServerNow(doc) {
    var stamp = doc.body && doc.body.getAttribute("data-server-now");
    var t = stamp ? Date.parse(stamp) : NaN;
    if (!isNaN(t)) { skewMs = t - Date.now(); }
  }

  function pad(n) { return n < 10 ? "0" + n : String(n); }

  // The same format as app/dashboard/display.py clock_text: "59:58", "1:00:00".
  function clock(seconds) {
    var h = Math.floor(seconds / 3600);
    var m = Math.floor((seconds % 3600) / 60);
    var s = seconds % 60;
    return h ? h + ":" + pad(m) + ":" + pad(s) : m + ":" + pad(s);
  }

  function setState(el, state) {
    el.classList.remove("state-" + el.getAttribute("data-state"));
    el.setAttribute("data-state", state);
    el.classList.add("state-" + state);
  }

  function tick() {
    var now = Date.now() + skewMs;
    var running = document.querySelectorAll('[data-grace-ends-at][data-state="running"]');
    for (var i = 0; i < running.length; i++) {
      var el = running[i];
      var ends = Date.parse(el.getAttribute("data-grace-ends-at"));
      if (isNaN(ends)) { continue; }
      var left = Math.ceil((ends - now) / 1000);
      if (left > 0) {
        el.textContent = clock(left) + " left";
      } else {
        el.textContent = "capturing\u2026";
        setState(el, "due");
        scheduleRefresh(REFRESH_SOON_MS);
      }
    }
  }

  function inProgress() {
    return document.querySelector('[data-grace-ends-at][data-state="due"], [data-grace-ends-at][data-state="capturing"]') !== null;
  }

  /* --- the orders list swaps in fresh rows; other pages reload while a capture is under way --- */

  var SWAPPED = ["orders-body", "ops-summary", "pager", "refresh-note"];

  function isListPage() { return document.getElementById("orders-body") !== null; }

  function listInterval() {
    var note = document.getElementById("refresh-note");
    var seconds = note ? parseInt(note.getAttribute("data-refresh-seconds"), 10) : NaN;
    return (isNaN(seconds) || seconds < 2 ? 10 : seconds) * 1000;
  }

  function scheduleRefresh(delay) {
    if (stopped) { return; }
    if (refreshTimer !== null) { clearTimeout(refreshTimer); }
    refreshTimer = setTimeout(refresh, delay);
  }

  function markStale(text) {
    var note = document.getElementById("refresh-note");
    if (note) { note.textContent = text; note.classList.add("stale"); }
  }

  /* --- the order page follows what is under way: it polls the order's state (a small JSON
   * answer) while the page says something is pending, swaps in the fresh page when the state
   * changed, and stops once nothing is pending. --- */

  var POLL_FIRST_MS = 1000;
  var POLL_MAX_MS = 10000;   // a refund Stripe holds as pending may take long: poll less often
  var pollDelay = POLL_FIRST_MS;

  function orderHead() { return document.getElementById("order-head"); }

  function isPending() {
    var head = orderHead();
    return head !== null && head.hasAttribute("data-pending");
  }

  function fetchOk(url, accept) {
    return fetch(url, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "X-Requested-With": "fetch", "Accept": accept }
    }).then(function (response) {
      if (response.redirected || !response.ok) {
        throw new Error(response.redirected ? "signed-out" : "status " + response.status);
      }
      return response;
    });
  }

  function swapOrderPage() {
    return fetchOk(window.location.href, "text/html").then(function (response) {
      return response.text();
    }).then(function (html) {
      var doc = new DOMParser().parseFromString(html, "text/html");
      var current = document.getElementById("order-page");
      var fresh = doc.getElementById("order-page");
      if (!current || !fresh) { return; }
      if (current.contains(document.activeElement) && document.activeElement !== document.body) {
        return "busy";  // staff is typing (a refund amount): try again later rather than wipe it
      }
      readServerNow(doc);
      current.replaceWith(document.importNode(fresh, true));
      tick();
    });
  }

  function pollOrder() {
    var head = orderHead();
    if (!head) { return; }
    if (document.hidden) { scheduleRefresh(pollDelay); return; }
    fetchOk(head.getAttribute("data-state-url"), "application/json").then(function (response) {
      return response.json();
    }).then(function (state) {
      if (state.token === head.getAttribute("data-state-token")) { return state.pending.length ? "wait" : "settled"; }
      return swapOrderPage().then(function (result) { return result === "busy" ? "wait" : "swapped"; });
    }).then(function (outcome) {
      if (outcome === "swapped") { pollDelay = POLL_FIRST_MS; }
      if (outcome === "wait") { pollDelay = Math.min(pollDelay * 1.5, POLL_MAX_MS); }
      // Keep following only while the (possibly fresh) page still names something under way.
      if (outcome === "wait" || (outcome === "swapped" && (isPending() || inProgress()))) {
        scheduleRefresh(pollDelay);
      }
    }).catch(function (error) {
      if (String(error && error.message) === "signed-out") { stopped = true; return; }
      scheduleRefresh(POLL_MAX_MS);
    });
  }

  function refresh() {
    refreshTimer = null;
    if (!isListPage()) {
      pollOrder();  // the order page (a countdown that reached zero, or something pending)
      return;
    }
    if (document.hidden || refreshing) { scheduleRefresh(listInterval()); return; }
    refreshing = true;
    fetch(window.location.href, {
      credentials: "same-origin",
      cache: "no-store",
      headers: { "X-Requested-With": "fetch" }
    }).then(function (response) {
      if (response.redirected || !response.ok) {
        throw new Error(response.redirected ? "signed-out" : "status " + response.status);
      }
      return response.text();
    }).then(function (html) {
      var doc = new DOMParser().parseFromString(html, "text/html");
      readServerNow(doc);
      for (var i = 0; i < SWAPPED.length; i++) {
        var id = SWAPPED[i];
        var current = document.getElementById(id);
        var fresh = doc.getElementById(id);
        // Never pull the rug from under the keyboard: skip a part that holds the focus.
        if (current && fresh && !current.contains(document.activeElement)) {
          current.replaceWith(document.importNode(fresh, true));
        }
      }
      tick();
      scheduleRefresh(inProgress() ? REFRESH_SOON_MS : listInterval());
    }).catch(function (error) {
      if (String(error && error.message) === "signed-out") {
        stopped = true;
        markStale("Signed out: reload the page to sign in again.");
      } else {
        markStale("Could not refresh; retrying\u2026");
        scheduleRefresh(listInterval());
      }
    }).then(function () { refreshing = false; });
  }

  function start() {
    readServerNow(document);
    tick();
    setInterval(tick, 1000);
    if (isListPage()) {
      scheduleRefresh(inProgress() ? REFRESH_SOON_MS : listInterval());
    } else if (isPending() || inProgress()) {
      scheduleRefresh(POLL_FIRST_MS);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
