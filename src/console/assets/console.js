// The operator console's only script: served from /console/static/console.js, compiled
// into the binary, loaded by every signed-in page (the CSP allows no other script).
// Without it every page still works; with it:
//  - the inbox follows the event stream (/console/events, the session cookie) and
//    reloads its list when something changes, keeping the filters of its address;
//  - a request's page says when someone else answered, claimed or approved it;
//  - keys: j/k move, Enter opens, a approves, r rejects, c claims, / searches, ? lists
//    them; none acts while the focus is in a field.
// Data from the server is only ever set as text (textContent); the inbox's list comes
// from the server's own page, whose template escaped every value.
"use strict";

(function () {
  const me = document.body.dataset.me || "";
  const inboxList = document.getElementById("inbox-list");
  const notice = document.getElementById("live-notice");

  // ---- the live stream -------------------------------------------------------------
  function stream(path, onEvent) {
    // EventSource reconnects by itself and sends Last-Event-ID, so the server replays
    // what was missed while the connection was down.
    const source = new EventSource(path);
    const status = document.getElementById("live-status");
    source.onopen = function () {
      document.body.dataset.live = "open";
      if (status) {
        status.hidden = false;
        status.textContent = "Live: new requests appear here without a reload.";
      }
    };
    source.onerror = function () {
      document.body.dataset.live = source.readyState === EventSource.CLOSED ? "closed" : "retrying";
      if (status) {
        status.hidden = false;
        status.textContent = source.readyState === EventSource.CLOSED
          ? "Live updates stopped (signed out?). Reload the page."
          : "Live updates interrupted; reconnecting…";
      }
    };
    source.onmessage = onEvent;
    const names = ["request_raised", "resumed", "removed", "expired", "request_claimed",
      "request_released", "claim_broken", "approval_recorded", "run_failed",
      "run_completed", "run_cancelled", "run_retried", "hitl_disabled"];
    for (const name of names) {
      source.addEventListener(name, onEvent);
    }
    return source;
  }

  function parse(message) {
    try {
      return JSON.parse(message.data);
    } catch (_) {
      return null;
    }
  }

  // The inbox: a change arrives, the list is read again (a burst is one read).
  let refreshing = null;
  function refreshInbox() {
    if (refreshing) {
      return;
    }
    refreshing = setTimeout(function () {
      fetch(window.location.href, { credentials: "same-origin", headers: { "accept": "text/html" } })
        .then(function (response) {
          if (!response.ok || response.redirected) {
            throw new Error("the inbox could not be read: " + response.status);
          }
          return response.text();
        })
        .then(function (html) {
          const fresh = new DOMParser().parseFromString(html, "text/html").getElementById("inbox-list");
          if (!fresh) {
            return;
          }
          const selected = selectedRow();
          const keep = selected ? selected.dataset.request : null;
          inboxList.replaceChildren(...Array.from(fresh.childNodes, function (n) {
            return document.importNode(n, true);
          }));
          const again = keep && inboxList.querySelector("tr.request[data-request='" + CSS.escape(keep) + "']");
          if (again) {
            select(again);
          }
          document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || "0") + 1);
        })
        .catch(function () { /* the next event or a reload reads it again */ })
        .finally(function () { refreshing = null; });
    }, 250);
  }

  const words = {
    resumed: "answered", removed: "removed its run", expired: "saw it expire",
    request_claimed: "claimed", request_released: "released the claim on",
    claim_broken: "broke the claim on", approval_recorded: "approved",
  };

  function onRequestEvent(message) {
    const event = parse(message);
    if (!event || event.requestId !== notice.dataset.request) {
      return;
    }
    const what = words[event.event];
    if (!what || (event.operatorId && event.operatorId === me)) {
      return;
    }
    const who = event.operatorId || "the service";
    notice.replaceChildren();
    const line = document.createElement("span");
    line.textContent = who + " " + what + " this request at " + event.at + ". ";
    const again = document.createElement("a");
    again.href = window.location.pathname;
    again.textContent = "Reload to see it";
    notice.append(line, again);
    notice.hidden = false;
    notice.dataset.event = event.event;
  }

  if (inboxList) {
    stream("/console/events", refreshInbox);
  } else if (notice) {
    stream("/console/events?run=" + encodeURIComponent(notice.dataset.run), onRequestEvent);
  }

  // ---- keys ---------------------------------------------------------------------------
  function rows() {
    return inboxList ? Array.from(inboxList.querySelectorAll("tr.request")) : [];
  }
  function selectedRow() {
    return inboxList ? inboxList.querySelector("tr.request.selected") : null;
  }
  function select(row) {
    for (const r of rows()) {
      r.classList.remove("selected");
      r.removeAttribute("aria-current");
    }
    row.classList.add("selected");
    row.setAttribute("aria-current", "true");
    const link = row.querySelector("a.prompt");
    if (link) {
      link.focus();
    }
  }
  function move(by) {
    const all = rows();
    if (all.length === 0) {
      return;
    }
    const at = all.indexOf(selectedRow());
    const next = at < 0 ? (by > 0 ? 0 : all.length - 1) : Math.min(Math.max(at + by, 0), all.length - 1);
    select(all[next]);
  }

  // Checks `value` on every item offering it; false when an item does not.
  function choose(value) {
    const groups = document.querySelectorAll("form.answer .choices");
    if (groups.length === 0) {
      return false;
    }
    let all = true;
    for (const group of groups) {
      const radio = group.querySelector("input[type=radio][value='" + value + "']");
      if (radio) {
        radio.checked = true;
      } else {
        all = false;
      }
    }
    return all;
  }

  function send(form) {
    if (form) {
      form.requestSubmit();
    }
  }

  function typing(target) {
    return target instanceof HTMLElement &&
      (target.isContentEditable || target.closest("input, textarea, select") !== null);
  }

  document.addEventListener("keydown", function (e) {
    if (e.key === "Escape" && typing(e.target)) {
      e.target.blur();
      return;
    }
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || typing(e.target)) {
      return;
    }
    const dialog = document.getElementById("keys");
    switch (e.key) {
      case "j": move(1); break;
      case "k": move(-1); break;
      case "Enter": {
        const row = selectedRow();
        if (!row || document.activeElement instanceof HTMLAnchorElement) {
          return; // a focused link opens by itself
        }
        row.querySelector("a.prompt").click();
        break;
      }
      case "a":
        if (!choose("approve")) {
          return;
        }
        send(document.querySelector("form.answer"));
        break;
      case "r": {
        if (!choose("reject")) {
          return;
        }
        const reason = document.getElementById("text-0");
        if (reason) {
          reason.focus();
        }
        break;
      }
      case "c":
        send(document.querySelector("form.claim"));
        break;
      case "/": {
        const search = document.getElementById("f-q");
        if (!search) {
          return;
        }
        search.focus();
        search.select();
        break;
      }
      case "?":
        if (dialog && !dialog.open) {
          dialog.showModal();
        }
        break;
      default:
        return;
    }
    e.preventDefault();
  });
})();
