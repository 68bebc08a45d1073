// batchd's dashboard: plain JavaScript over the /v1 API (no build step, no CDN).
// The token lives in sessionStorage: entered once per browser session.
"use strict";

const STATES = ["queued", "waiting", "starting", "running", "completed", "failed",
                "cancelled", "timed_out", "lost"];
const RANK = { read: 0, submit: 1, admin: 2 };
const $ = (sel) => document.querySelector(sel);
let me = null;            // {name, scope}
let timer = null;         // the current view's refresh
let stream = null;        // the job page's output stream (an AbortController)
let jobsCursor = null;

function token() { return sessionStorage.getItem("batchd-token") || ""; }

async function api(path, opts = {}) {
  const headers = Object.assign({ Authorization: "Bearer " + token() }, opts.headers || {});
  const res = await fetch(path, Object.assign({}, opts, { headers }));
  if (res.status === 401) { showLogin("the token was refused (401): enter another"); throw new Error("401"); }
  return res;
}

async function json(path, opts) {
  const res = await api(path, opts);
  const body = await res.json();
  if (!res.ok) { throw new Error(body.error ? body.error.message : res.statusText); }
  return body;
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function stateCell(state) { return el("span", state, "state " + state); }

function row(cells) {
  const tr = el("tr");
  for (const c of cells) {
    const td = el("td");
    if (c instanceof Node) td.appendChild(c); else td.textContent = c === null || c === undefined ? "-" : String(c);
    tr.appendChild(td);
  }
  return tr;
}

function can(scope) { return me && RANK[me.scope] >= RANK[scope]; }

function showLogin(message) {
  stopAll();
  $("#main").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
}

async function login(t) {
  sessionStorage.setItem("batchd-token", t);
  try {
    me = await json("/v1/token");
  } catch (e) {
    if (e.message !== "401") showLogin(e.message);
    return;
  }
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#who").textContent = `token ${me.name} (${me.scope})`;
  document.querySelectorAll(".submit-only").forEach((n) => { n.hidden = !can("submit"); });
  document.querySelectorAll(".admin-only").forEach((n) => { n.hidden = !can("admin"); });
  route();
}

function stopAll() {
  if (timer) { clearInterval(timer); timer = null; }
  if (stream) { stream.abort(); stream = null; }
}

function show(view) {
  document.querySelectorAll(".view").forEach((v) => { v.hidden = v.id !== "view-" + view; });
  document.querySelectorAll("header nav a").forEach((a) => {
    a.classList.toggle("active", a.id === "nav-" + (view === "job" ? "jobs" : view));
  });
}

function every(ms, fn) { fn(); timer = setInterval(fn, ms); }

// -- jobs ---------------------------------------------------------------------------------

function jobQuery(cursor) {
  const q = new URLSearchParams({ order: "desc", limit: "100" });
  const s = $("#f-state").value, b = $("#f-batch").value.trim(), a = $("#f-agent").value.trim();
  if (s) q.set("state", s);
  if (b) q.set("batch", b);
  if (a) q.set("agent", a);
  if (cursor) q.set("cursor", cursor);
  return "/v1/jobs?" + q.toString();
}

function jobRow(j) {
  const link = el("a", j.id); link.href = "#/job/" + encodeURIComponent(j.id);
  const info = j.reason || (j.exit_code !== null ? "exit " + j.exit_code : "");
  const tr = row([link, stateCell(j.state), j.agent, j.batch, j.created_at, info]);
  tr.dataset.id = j.id;
  return tr;
}

async function refreshJobs() {
  try {
    const [page, status] = await Promise.all([json(jobQuery(null)), json("/v1/status")]);
    const tbody = $("#jobs tbody");
    tbody.replaceChildren(...page.jobs.map(jobRow));
    jobsCursor = page.next_cursor;
    $("#more").hidden = !jobsCursor;
    const counts = $("#counts");
    counts.replaceChildren(...STATES.filter((s) => status.jobs[s]).map((s) => {
      const span = el("span"); span.appendChild(stateCell(s)); span.append(" " + status.jobs[s]);
      return span;
    }));
    if (!counts.children.length) counts.textContent = "no jobs";
    const banner = $("#banner");
    const notes = [];
    if (!status.batchd.running) notes.push("batchd is not running");
    if (status.paused) notes.push("paused: no new job starts");
    notes.push(...status.degraded);
    banner.hidden = notes.length === 0;
    banner.textContent = notes.join(" · ");
  } catch (e) { if (e.message !== "401") $("#banner").textContent = e.message; }
}

async function moreJobs() {
  if (!jobsCursor) return;
  const page = await json(jobQuery(jobsCursor));
  $("#jobs tbody").append(...page.jobs.map(jobRow));
  jobsCursor = page.next_cursor;
  $("#more").hidden = !jobsCursor;
}

async function submitJob(ev) {
  ev.preventDefault();
  const out = $("#s-result");
  try {
    const res = await api("/v1/jobs", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ agent: $("#s-agent").value.trim(), prompt: $("#s-prompt").value }) });
    const body = await res.json();
    out.textContent = res.ok ? "submitted " + body.ids.join(", ") : body.error.message;
    out.className = res.ok ? "muted" : "error";
    refreshJobs();
  } catch (e) { out.textContent = e.message; }
}

async function pause(on) {
  try { await json(on ? "/v1/pause" : "/v1/resume", { method: "POST" }); refreshJobs(); }
  catch (e) { $("#banner").hidden = false; $("#banner").textContent = e.message; }
}

// -- one job ------------------------------------------------------------------------------

function showRecord(rec) {
  $("#job-state").textContent = rec.state;
  $("#job-state").className = "state " + rec.state;
  const tbody = $("#record tbody");
  tbody.replaceChildren(...Object.entries(rec).map(([k, v]) =>
    row([k, v !== null && typeof v === "object" ? JSON.stringify(v) : v])));
  $("#cancel").disabled = ["completed", "failed", "cancelled", "timed_out", "lost"].includes(rec.state);
  $("#retry").disabled = !$("#cancel").disabled;
}

// The output stream: fetch() (it can send the token, EventSource cannot), events parsed as
// they come; on a drop, reconnect with Last-Event-ID = the byte offset reached.
async function follow(id) {
  const ctl = new AbortController();
  stream = ctl;
  const pre = $("#output");
  pre.textContent = "";
  let offset = 0, ended = false;
  while (!ended && !ctl.signal.aborted) {
    try {
      const res = await api(`/v1/jobs/${encodeURIComponent(id)}/output`, {
        headers: { Accept: "text/event-stream", "Last-Event-ID": String(offset) }, signal: ctl.signal });
      if (!res.ok) { $("#out-status").textContent = "output unavailable"; return; }
      $("#out-status").textContent = "live";
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          let ev = "message", data = "", evid = null;
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) ev = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
            else if (line.startsWith("id: ")) evid = line.slice(4);
          }
          if (evid !== null) offset = parseInt(evid, 10);
          if (ev === "output") { pre.textContent += JSON.parse(data); pre.scrollTop = pre.scrollHeight; }
          else if (ev === "end") {
            ended = true;
            $("#out-status").textContent = "ended (" + JSON.parse(data).state + ")";
          }
        }
      }
    } catch (e) {
      if (ctl.signal.aborted || e.message === "401") return;
      $("#out-status").textContent = "reconnecting...";
    }
    if (!ended) await new Promise((r) => setTimeout(r, 1000));
  }
}

async function refreshJob(id) {
  try {
    const rec = await json("/v1/jobs/" + encodeURIComponent(id));
    showRecord(rec);
    const diff = await api("/v1/jobs/" + encodeURIComponent(id) + "/diff");
    const patch = diff.ok ? await diff.text() : "";
    $("#changes-box").hidden = !patch;
    $("#changes").textContent = patch;
  } catch (e) { if (e.message !== "401") $("#job-action").textContent = e.message; }
}

async function jobAction(id, what) {
  const out = $("#job-action");
  try {
    const res = await api(`/v1/jobs/${encodeURIComponent(id)}/${what}`, { method: "POST" });
    const body = await res.json();
    if (!res.ok) { out.textContent = body.error.message; out.className = "error"; return; }
    out.className = "muted";
    if (what === "retry") { out.textContent = "retried as " + body.id; location.hash = "#/job/" + body.id; }
    else { out.textContent = body.requested ? "cancel requested" : "already " + body.state; refreshJob(id); }
  } catch (e) { out.textContent = e.message; }
}

// -- workers, locks, webhooks -------------------------------------------------------------

async function refreshWorkers() {
  try {
    const workers = await json("/v1/workers");
    $("#workers tbody").replaceChildren(...workers.map((w) => {
      const cells = [w.name, stateCell(w.state), w.pid, w.since, w.restarts, w.message];
      if (can("admin")) {
        const b = el("button", "Restart"); b.type = "button";
        b.onclick = async () => { b.disabled = true;
          try { await json(`/v1/workers/${w.name}/restart`, { method: "POST" }); } catch (e) { alert(e.message); }
          refreshWorkers(); };
        cells.push(b);
      }
      return row(cells);
    }));
  } catch (e) { if (e.message !== "401") $("#workers tbody").replaceChildren(row([e.message])); }
}

async function refreshLocks() {
  const doc = await json("/v1/locks");
  $("#held tbody").replaceChildren(...doc.held.map((h) => row([h.repo, h.job, h.since])));
  $("#waiting tbody").replaceChildren(...Object.entries(doc.waiting).map(([r, jobs]) => row([r, jobs.join(" → ")])));
  $("#unavailable").textContent = doc.unavailable.length ? "unavailable: " + doc.unavailable.join(", ") : "";
}

async function refreshCallbacks() {
  const rows = await json("/v1/callbacks");
  $("#callbacks tbody").replaceChildren(...rows.reverse().map((c) =>
    row([c.id, c.job, stateCell(c.state), c.attempts, c.next_attempt_at, c.last_error, c.url])));
}

// -- routing ------------------------------------------------------------------------------

function route() {
  if (!me) return;
  stopAll();
  const hash = location.hash || "#/jobs";
  const parts = hash.slice(2).split("/");
  if (parts[0] === "job" && parts[1]) {
    const id = decodeURIComponent(parts[1]);
    show("job");
    $("#job-id").textContent = id;
    $("#job-action").textContent = "";
    $("#cancel").onclick = () => jobAction(id, "cancel");
    $("#retry").onclick = () => jobAction(id, "retry");
    every(2000, () => refreshJob(id));
    follow(id);
  } else if (parts[0] === "workers") { show("workers"); every(2000, refreshWorkers); }
  else if (parts[0] === "locks") { show("locks"); every(2000, refreshLocks); }
  else if (parts[0] === "callbacks") { show("callbacks"); every(3000, refreshCallbacks); }
  else { show("jobs"); every(1500, refreshJobs); }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  for (const s of STATES) { const o = el("option", s); o.value = s; $("#f-state").appendChild(o); }
  $("#login-form").onsubmit = (ev) => { ev.preventDefault(); login($("#token").value.trim()); };
  $("#filters").onsubmit = (ev) => { ev.preventDefault(); refreshJobs(); };
  $("#submit-form").onsubmit = submitJob;
  $("#more").onclick = moreJobs;
  $("#pause").onclick = () => pause(true);
  $("#resume").onclick = () => pause(false);
  if (token()) login(token()); else showLogin("");
});
