// Argus alert review page. Plain script, no build step, no inline code (the page's CSP forbids it).
// Every datum from the API is written with textContent, never as HTML. The API key lives in this
// tab's sessionStorage and travels only in the X-API-Key header (never in a URL).
"use strict";

(function () {
  const KEY_STORE = "argus.review.key";
  const PAGE_SIZE = 50;
  const HISTORY_SIZE = 10;
  const MESSAGES = {
    401: "This API key is not known. Check the key and enter it again.",
    403: "This API key lacks the scope alerts:review: it cannot see or dispose alerts.",
    404: "This alert is no longer in the queue (or is not yours to review).",
    413: "The request is too large.",
    429: "Too many requests: wait a moment and try again.",
    503: "The results store is unavailable: try again shortly.",
  };

  const $ = (id) => document.getElementById(id);
  const state = { nextAfter: null, busy: false };

  function key() {
    return sessionStorage.getItem(KEY_STORE) || "";
  }

  function setStatus(text, kind) {
    const el = $("status");
    el.textContent = text;
    el.className = kind || "";
  }

  function text(tag, value, cls) {
    const el = document.createElement(tag);
    el.textContent = value === null || value === undefined ? "—" : String(value);
    if (cls) el.className = cls;
    return el;
  }

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(path, options) {
    const headers = { "X-API-Key": key() };
    const init = { method: "GET", headers: headers, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer" };
    if (options && options.body !== undefined) {
      init.method = "POST";
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "The server cannot be reached.");
    }
    if (response.ok) return response.json();
    let detail = MESSAGES[response.status];
    if (!detail && response.status === 422) detail = "The server refused the request (a note must be one line of at most 1,000 characters).";
    throw new ApiError(response.status, detail || "The request failed (HTTP " + response.status + ").");
  }

  function fmtTime(value) {
    if (!value) return null;
    const d = new Date(value);
    return isNaN(d.getTime()) ? String(value) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function fmtAmount(value) {
    return typeof value === "number" ? value.toFixed(2) : null;
  }

  function renderReasons(list, reasons) {
    for (const r of reasons || []) {
      const li = document.createElement("li");
      li.appendChild(text("span", r.source, "reason-source"));
      li.appendChild(text("span", r.feature, "reason-feature"));
      li.appendChild(text("span", typeof r.weight === "number" ? r.weight.toFixed(3) : r.weight, "reason-weight"));
      if (r.detail) li.appendChild(text("span", r.detail, "reason-detail"));
      list.appendChild(li);
    }
    if (!list.children.length) list.appendChild(text("li", "no reasons given"));
  }

  function historyTable(title, rows) {
    const wrap = document.createElement("div");
    wrap.appendChild(text("h4", title));
    if (!rows.length) {
      wrap.appendChild(text("p", "no earlier scores", "empty"));
      return wrap;
    }
    const table = document.createElement("table");
    const head = document.createElement("tr");
    for (const h of ["time", "transaction", "amount", "score", "decision", "disposition", "note"]) head.appendChild(text("th", h));
    table.appendChild(head);
    for (const r of rows) {
      const tr = document.createElement("tr");
      tr.className = "history-row";
      tr.appendChild(text("td", fmtTime(r.timestamp)));
      tr.appendChild(text("td", r.transaction_id, "history-tx"));
      tr.appendChild(text("td", fmtAmount(r.amount)));
      tr.appendChild(text("td", r.score.toFixed(3)));
      tr.appendChild(text("td", r.decision));
      tr.appendChild(text("td", r.disposition, "history-disposition"));
      tr.appendChild(text("td", r.note, "history-note"));
      table.appendChild(tr);
    }
    wrap.appendChild(table);
    return wrap;
  }

  async function loadHistory(item, alert) {
    const body = item.querySelector(".history-body");
    if (item.dataset.historyLoaded) return;
    item.dataset.historyLoaded = "1";
    body.replaceChildren(text("p", "loading…"));
    try {
      // the id travels as a query parameter: any id works, one with "/" or equal to "." or ".." too
      const query = new URLSearchParams({ transaction_id: alert.transaction_id, limit: String(HISTORY_SIZE) });
      const h = await api("v1/alerts/history?" + query.toString());
      body.replaceChildren(historyTable("Customer " + (alert.customer_id || "—"), h.customer),
                           historyTable("Terminal " + (alert.terminal_id || "—"), h.terminal));
    } catch (err) {
      delete item.dataset.historyLoaded;
      body.replaceChildren(text("p", err.message, "error"));
    }
  }

  function renderAlert(alert) {
    const item = $("alert-template").content.firstElementChild.cloneNode(true);
    item.dataset.transactionId = alert.transaction_id;
    item.querySelector(".score").textContent = alert.score.toFixed(3);
    item.querySelector(".tx").textContent = alert.transaction_id;
    item.querySelector(".model").textContent = "model " + alert.model_version;
    item.querySelector(".customer").textContent = alert.customer_id || "—";
    item.querySelector(".terminal").textContent = alert.terminal_id || "—";
    item.querySelector(".amount").textContent = fmtAmount(alert.amount) || "—";
    item.querySelector(".time").textContent = fmtTime(alert.timestamp) || "—";
    item.querySelector(".created").textContent = fmtTime(alert.created_at) || "—";
    renderReasons(item.querySelector(".reasons"), alert.reasons);
    const details = item.querySelector(".history");
    details.addEventListener("toggle", () => { if (details.open) loadHistory(item, alert); });
    for (const btn of item.querySelectorAll(".dispose-btn")) {
      btn.addEventListener("click", () => dispose(item, alert, btn.dataset.disposition));
    }
    return item;
  }

  async function dispose(item, alert, disposition) {
    const note = item.querySelector(".note").value.trim();
    const buttons = item.querySelectorAll("button");
    buttons.forEach((b) => { b.disabled = true; });
    try {
      // the id travels in the body: any id works, one with "/" or equal to "." or ".." too
      const body = { transaction_id: alert.transaction_id, disposition: disposition };
      if (note) body.note = note;
      const done = await api("v1/alerts/disposition", { body: body });
      item.remove();
      setStatus("Alert " + done.transaction_id + " disposed as " + done.disposition + ".", "ok");
      await loadQueue(false);
    } catch (err) {
      buttons.forEach((b) => { b.disabled = false; });
      setStatus(err.message, "error");
      if (err.status === 404) await loadQueue(false);
    }
  }

  // reset: start from the top of the queue; otherwise reload the pages shown so far (after a
  // disposition the next alert moves up)
  async function loadQueue(reset) {
    if (!key()) {
      setStatus("Enter an API key to load the open queue.");
      return;
    }
    if (state.busy) return;
    state.busy = true;
    const queue = $("queue");
    const shown = reset ? PAGE_SIZE : Math.max(PAGE_SIZE, queue.children.length);
    try {
      const page = await api("v1/alerts?limit=" + Math.min(shown, 200));
      queue.replaceChildren(...page.alerts.map(renderAlert));
      state.nextAfter = page.next_after;
      $("more").hidden = !state.nextAfter;
      $("queue-info").textContent = page.alerts.length
        ? page.alerts.length + (state.nextAfter ? "+" : "") + " open alerts, highest score first"
        : "The queue is empty.";
      if (reset) setStatus("Queue loaded.", "ok");
    } catch (err) {
      queue.replaceChildren();
      $("more").hidden = true;
      $("queue-info").textContent = "";
      setStatus(err.message, "error");
    } finally {
      state.busy = false;
    }
  }

  async function loadMore() {
    if (!state.nextAfter || state.busy) return;
    state.busy = true;
    try {
      const page = await api("v1/alerts?limit=" + PAGE_SIZE + "&after=" + encodeURIComponent(state.nextAfter));
      $("queue").append(...page.alerts.map(renderAlert));
      state.nextAfter = page.next_after;
      $("more").hidden = !state.nextAfter;
    } catch (err) {
      setStatus(err.message, "error");
    } finally {
      state.busy = false;
    }
  }

  function useKey() {
    const value = $("api-key").value.trim();
    $("api-key").value = "";
    if (!value) {
      setStatus("Enter an API key.", "error");
      return;
    }
    sessionStorage.setItem(KEY_STORE, value);
    loadQueue(true);
  }

  function forgetKey() {
    sessionStorage.removeItem(KEY_STORE);
    $("queue").replaceChildren();
    $("queue-info").textContent = "";
    $("more").hidden = true;
    setStatus("Key forgotten. Enter an API key to load the open queue.");
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("use-key").addEventListener("click", useKey);
    $("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") useKey(); });
    $("forget-key").addEventListener("click", forgetKey);
    $("more").addEventListener("click", loadMore);
    if (key()) loadQueue(true);
  });
})();
