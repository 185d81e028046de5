// cloudloop dashboard: plain JS, no framework, no network except this server's /api.
// Live mode polls the server; report mode (`cloudloop report` puts one job snapshot in a
// <script type="application/json" id="cloudloop-snapshot"> data block) renders that
// snapshot and never fetches anything.
//
// Every value shown comes from the user's code or from other machines (job names, logs,
// exception text, heartbeat records), so none is trusted to be text, or even of its type:
// markup is built only with the html`...` template below, which escapes every
// interpolated value unless it is itself html`...`; numbers pass through num()/idx()
// before they are formatted; class names come from fixed sets (token()); and nothing
// writes a style="..." attribute (the Content-Security-Policy forbids inline style):
// bar widths are data-w attributes that applyWidths() sets through the CSSOM.
(() => {
  "use strict";
  const SNAP = readSnapshot();
  const TOKEN = new URLSearchParams(location.search).get("token") || "";
  const POLL_MS = 2000;
  const app = document.getElementById("app");
  const live = document.getElementById("live");
  const ui = { open: new Set(), logTask: null, logText: "", timer: null, route: "", boots: "", bootsHtml: "" };

  function readSnapshot() {
    const block = document.getElementById("cloudloop-snapshot");
    if (!block) return null;
    try {
      const s = JSON.parse(block.textContent);
      return s && typeof s === "object" ? s : {};
    } catch (e) {
      return {};  // rendered as an empty job rather than a blank page
    }
  }

  // ------------------------------------------------------------------ safe markup
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  class Html { constructor(s) { this.s = s; } }
  const part = (v) => (v instanceof Html ? v.s : Array.isArray(v) ? v.map(part).join("") : esc(v));
  function html(strings, ...vals) {  // a tagged template: every ${value} is escaped
    let out = strings[0];
    for (let k = 0; k < vals.length; k++) out += part(vals[k]) + strings[k + 1];
    return new Html(out);
  }
  const cat = (...parts) => new Html(parts.map(part).join(""));  // html`a` + html`b` would be a string
  function setHtml(el, ...parts) {
    el.innerHTML = parts.map(part).join("");
    applyWidths(el);
  }
  function applyWidths(root) {  // the CSSOM, not style="": allowed by style-src 'self'
    root.querySelectorAll("[data-w]").forEach((el) => {
      const w = Number(el.dataset.w);
      el.style.width = `${Number.isFinite(w) ? Math.min(100, Math.max(0, w)) : 0}%`;
    });
  }
  // what the data says, coerced to what it must be (anything else: null / "" / [])
  const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);
  const idx = (v) => (Number.isInteger(v) && v >= 0 ? v : null);
  const str = (v) => (typeof v === "string" ? v : v == null ? "" : String(v));
  const arr = (v) => (Array.isArray(v) ? v : []);
  const token = (v) => (typeof v === "string" && /^[a-z][a-z-]{0,30}$/.test(v) ? v : "");
  const count = (v) => (num(v) == null ? "?" : num(v));

  // ------------------------------------------------------------------ formatting
  function dur(sec) {
    sec = num(sec);
    if (sec == null) return "–";
    sec = Math.max(0, Math.round(sec));
    const h = Math.floor(sec / 3600), m = Math.floor((sec % 3600) / 60), s = sec % 60;
    return h ? `${h}:${String(m).padStart(2, "0")}:${String(s).padStart(2, "0")}` : `${m}:${String(s).padStart(2, "0")}`;
  }
  function short(sec) {
    sec = num(sec);
    if (sec == null) return "–";
    if (sec < 1) return `${Math.round(sec * 1000)} ms`;
    if (sec < 60) return `${sec.toFixed(sec < 10 ? 1 : 0)} s`;
    return dur(sec);
  }
  function when(t) {
    t = num(t);
    if (!t) return "–";
    const d = new Date(t * 1000), now = new Date();
    if (isNaN(d.getTime())) return "–";
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    return d.toDateString() === now.toDateString() ? hm : `${d.toLocaleDateString()} ${hm}`;
  }
  const ago = (t, now) => (num(t) && num(now) != null ? `${short(Math.max(0, now - t))} ago` : "–");
  function bytes(n) {
    n = num(n);
    if (!n) return "–";
    for (const u of ["B", "KB", "MB", "GB"]) { if (n < 1000) return `${n.toFixed(n < 10 ? 1 : 0)} ${u}`; n /= 1000; }
    return `${n.toFixed(1)} TB`;
  }
  const fixed = (v, digits) => (num(v) == null ? "–" : v.toFixed(digits));
  const rate = (r) => (r >= 10 ? r.toFixed(0) : r >= 1 ? r.toFixed(1) : r.toFixed(2));
  function money(c) {
    c = num(c);
    return c == null ? "–" : c < 0.0001 ? "< $0.0001" : c < 1 ? `$${c.toFixed(4)}` : `$${c.toFixed(2)}`;
  }
  function pct(a, b) {
    a = num(a) || 0; b = num(b);
    return b ? Math.min(100, Math.max(0, (100 * a) / b)) : 0;
  }

  async function api(path) {
    const r = await fetch("api/" + path, { headers: { "X-Cloudloop-Token": TOKEN }, cache: "no-store" });
    if (!r.ok) {
      let msg = `${r.status}`;
      try { msg = str((await r.json()).error) || msg; } catch (e) { /* not json */ }
      throw Object.assign(new Error(msg), { status: r.status });
    }
    return r.json();
  }
  function setLive(ok, text) {
    if (!live) return;
    live.className = "live " + (ok ? "on" : "err");
    live.textContent = text;
  }

  function progressBar(done, failed, running, total, cls) {
    const okPart = pct((num(done) || 0) - (num(failed) || 0), total), failPart = pct(failed, total);
    const runPart = pct(running, total);
    return cat(html`<div class="bar ${cls || ""}"><span class="ok" data-w="${okPart}"></span>`,
      html`<span class="fail" data-w="${failPart}"></span><span class="run" data-w="${runPart}"></span></div>`);
  }

  // ------------------------------------------------------------------ charts (SVG)
  function niceStep(v) {  // 1, 2 or 5 times a power of ten, at least v
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v))), f = v / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
  }
  const fmtTick = (v) => (v >= 100 ? v.toFixed(0) : String(Number(v.toPrecision(3))));
  function axisTime(sec, span) {  // elapsed time on an axis, precise enough to tell ticks apart
    if (span < 60) return `${sec.toFixed(span < 10 ? 1 : 0)}s`;
    if (span < 3600) return dur(sec);
    return `${Math.floor(sec / 3600)}h${String(Math.floor((sec % 3600) / 60)).padStart(2, "0")}`;
  }
  const chartWidth = (el, share) => Math.max(480, Math.round(((el && el.clientWidth) || 1100) * share) - 40);
  function throughputChart(tp, W) {
    tp = tp || {};
    const H = 240, L = 44, R = 14, T = 16, B = 26;
    const rates = arr(tp.rates).map((r) => num(r) || 0).slice(0, 1000);
    if (!rates.some((r) => r > 0)) return html`<p class="empty">No task has finished yet.</p>`;
    // a light moving average: bucket edges make single buckets spiky
    const sm = rates.map((_, i) => {
      const w = rates.slice(Math.max(0, i - 1), i + 2);
      return w.reduce((a, b) => a + b, 0) / w.length;
    });
    const n = sm.length, span = Math.max(num(tp.span) || 0, 1e-3), tstep = num(tp.step) || span / n;
    const step = niceStep(Math.max(...sm) / 4 || 0.25);
    const max = step * Math.max(1, Math.ceil((Math.max(...sm) * 1.05) / step));
    const x = (i) => L + ((W - L - R) * Math.min(span, (i + 0.5) * tstep)) / span;
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const grid = [];
    for (let v = 0; v <= max + step / 2; v += step) {
      const yy = y(v);
      grid.push(html`<line x1="${L}" x2="${W - R}" y1="${yy}" y2="${yy}" stroke="#eaecf0"/>`,
        html`<text x="${L - 6}" y="${yy + 4}" text-anchor="end">${fmtTick(v)}</text>`);
    }
    // from the job's start to now (or its end): the first and last rates held to the edges
    const pts = [`${L},${y(sm[0]).toFixed(1)}`, ...sm.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`),
      `${W - R},${y(sm[n - 1]).toFixed(1)}`];
    const area = `M${L},${y(0)} L${pts.join(" L")} L${W - R},${y(0)} Z`;
    return cat(html`<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="throughput over time">`,
      html`<defs><linearGradient id="tpg" x1="0" x2="0" y1="0" y2="1"><stop offset="0" stop-color="#2563eb" stop-opacity=".35"/>`,
      html`<stop offset="1" stop-color="#2563eb" stop-opacity=".03"/></linearGradient></defs>${grid}${xTicks(L, W - R, H - 7, span)}`,
      html`<path d="${area}" fill="url(#tpg)"/><path d="M${pts.join(" L")}" fill="none" stroke="#2563eb" stroke-width="2" stroke-linejoin="round"/>`,
      html`<text x="${L}" y="${T - 5}">tasks finished per second</text></svg>`);
  }
  function xTicks(x0, x1, y, span) {
    const out = [];
    for (let k = 0; k <= 5; k++) {
      const xx = x0 + ((x1 - x0) * k) / 5;
      out.push(html`<text x="${xx}" y="${y}" text-anchor="${k === 0 ? "start" : k === 5 ? "end" : "middle"}">${axisTime((span * k) / 5, span)}</text>`);
    }
    return out;
  }
  function timelineChart(tl, W) {
    tl = tl || {};
    const rows = arr(tl.rows).slice(0, 500);
    if (!rows.length) return html`<p class="empty">No task has finished yet.</p>`;
    const L = 190, R = 14, RH = 24, T = 4, B = 24, H = T + rows.length * RH + B;
    const t0 = num(tl.t0) || 0, span = Math.max(1e-3, (num(tl.t1) || 0) - t0);
    const x = (t) => L + ((W - L - R) * (t - t0)) / span;
    const out = [];
    rows.forEach((r, k) => {
      const y = T + k * RH;
      const label = `${str(r.host) || "?"} · ${str(r.worker).split("-").slice(-2).join("-")}`;
      out.push(html`<text x="${L - 8}" y="${y + 15}" text-anchor="end">${label.length > 28 ? label.slice(0, 27) + "…" : label}</text>`,
        html`<rect x="${L}" y="${y + 4}" width="${W - L - R}" height="${RH - 8}" fill="#f2f4f7" rx="3"/>`);
      for (const seg of arr(r.segs)) {
        const s = num(arr(seg)[0]), e = num(arr(seg)[1]);
        if (s == null || e == null) continue;
        const w = Math.max(1.5, x(e) - x(s));
        out.push(html`<rect x="${x(s).toFixed(1)}" y="${y + 4}" width="${w.toFixed(1)}" height="${RH - 8}" rx="2" fill="${seg[2] ? "#dc2626" : "#16a34a"}"/>`);
      }
    });
    return html`<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="per-worker timeline">${out}${xTicks(L, W - R, H - 6, span)}</svg>`;
  }

  // ------------------------------------------------------------------ jobs list
  function renderJobs(data) {
    document.getElementById("backend").textContent = str(data.backend);
    const jobs = arr(data.jobs);
    const rows = jobs.map((j) => {
      if (j.state === "unreadable") {
        return html`<tr><td class="mono">${j.id}</td><td colspan="7"><span class="pill unreadable">unreadable</span> ${j.error}</td></tr>`;
      }
      const failed = num(j.failed);
      return cat(html`<tr class="click job-row" data-job="${j.id}">`,
        html`<td><div><a href="#/job/${encodeURIComponent(str(j.id))}">${str(j.name) || j.id}</a></div><div class="mono muted">${j.id}</div></td>`,
        html`<td><span class="pill ${token(j.state)}">${j.state}</span></td>`,
        html`<td class="prog">${progressBar(j.done, j.failed, j.running, j.total)}<div class="muted count">${count(j.done)} / ${count(j.total)}</div></td>`,
        html`<td class="num">${failed ? html`<span class="st-failed">${failed}</span>` : "0"}</td>`,
        html`<td>${when(j.created)}</td><td class="num">${dur(j.elapsed)}</td>`,
        html`<td class="num">${dur(j.eta)}</td><td class="num">${money(j.cost)}</td></tr>`);
    });
    const n = num(data.count) || 0;
    setHtml(app, html`<div class="card"><div class="row-head"><h2>Jobs</h2><span class="muted">${n > jobs.length ? `the latest ${jobs.length} of ${n}` : jobs.length} on this backend</span></div>`,
      (jobs.length
        ? cat(html`<table id="jobs"><thead><tr><th>Job</th><th>State</th><th>Progress</th><th class="num">Failed</th><th>Started</th>`,
          html`<th class="num">Duration</th><th class="num">ETA</th><th class="num">Cost</th></tr></thead><tbody>${rows}</tbody></table>`)
        : html`<p class="empty">No jobs yet. Run one with <span class="mono">cl.map(fn, items)</span> or <span class="mono">cloudloop run</span>.</p>`),
      html`</div><div id="boots">${ui.boots}</div>`);
    app.querySelectorAll("tr.job-row").forEach((tr) =>
      tr.addEventListener("click", () => { location.hash = "#/job/" + encodeURIComponent(tr.dataset.job); }));
  }

  // ------------------------------------------------------------------ one job
  const taskAttr = (i) => (idx(i) == null ? "" : html` data-task="${i}"`);
  function workerRows(s) {
    const workers = arr(s.workers);
    if (!workers.length) return html`<p class="empty">No worker has taken a task of this job yet.</p>`;
    const rows = workers.map((w) => {
      const task = idx(w.task), progress = num(w.progress);
      const cur = w.live && task != null && w.state === "busy"
        ? cat(html`<a href="#" class="tasklink"${taskAttr(task)}>task ${task}</a>`,
          (progress != null ? html` <span class="bar mini"><span class="ok" data-w="${progress * 100}"></span></span>${(progress * 100).toFixed(0)}%` : ""),
          (w.message ? html` <span class="muted">${w.message}</span>` : ""))
        : html`<span class="muted">${!w.live ? "left" : w.state === "elsewhere" ? "on another job" : str(w.state) || "idle"}</span>`;
      const trouble = w.live && w.error ? html`<div class="trouble">${w.error}</div>` : "";
      const market = w.market ? html`<span class="tag ${w.market === "spot" ? "spot" : ""}">${w.market === "spot" ? "spot" : "on-demand"}</span>` : html`<span class="muted">–</span>`;
      const failedHere = num(w.failed_job);
      return cat(html`<tr class="worker-row" data-worker="${w.id}">`,
        html`<td><span class="dot ${w.live ? token(w.state) : ""}"></span><b>${str(w.host) || "?"}</b><div class="mono muted">${w.id}</div></td>`,
        html`<td>${str(w.provider) || "–"}</td><td>${str(w.instance_type) || "–"}</td><td>${market}</td>`,
        html`<td class="python">${str(w.python) || "–"}</td>`,
        html`<td class="current">${cur}${trouble}</td>`,
        html`<td class="num done-here">${num(w.done_job) || 0}${failedHere ? html` <span class="st-failed">(${failedHere} failed)</span>` : ""}</td>`,
        html`<td class="num">${w.live ? ago(w.last_seen, s.now) : html`<span class="muted">${ago(w.last, s.now)}</span>`}</td>`,
        html`<td class="num">${w.live ? fixed(w.load, 2) : "–"}</td><td class="num">${w.live ? bytes(w.rss) : "–"}</td></tr>`);
    });
    return cat(html`<table id="workers"><thead><tr><th>Worker</th><th>Provider</th><th>Instance</th><th>Market</th><th>Python</th><th>Current task</th>`,
      html`<th class="num">Done here</th><th class="num">Heartbeat</th><th class="num">Load</th><th class="num">Task memory</th></tr></thead><tbody>${rows}</tbody></table>`);
  }
  // ------------------------------------------------------------------ boots (ec2 instances)
  // GET /api/boots: per cluster its newest boots, as the store tells them (dashboard/boots.py)
  const BOOT_STATES = { booting: "booting", ready: "ready", failed: "failed", ended: "ended", stopped: "stopped" };
  function bootSection(data) {
    const clusters = arr(data && data.clusters).slice(0, 20);
    if (!clusters.length) return "";
    const tables = clusters.map((c) => {
      const boots = arr(c && c.boots).slice(0, 50), total = num(c && c.total) || boots.length;
      const rows = boots.map((b) => {
        b = b && typeof b === "object" ? b : {};
        const state = BOOT_STATES[b.state] || "", log = arr(b.log).map(str);
        const market = b.market ? html`<span class="tag ${b.market === "spot" ? "spot" : ""}">${b.market}</span>` : "–";
        return cat(html`<tr class="boot-row" data-instance="${b.instance}">`,
          html`<td><span class="mono">${b.instance}</span>${b.image ? html`<div class="mono muted">${b.image}</div>` : ""}</td>`,
          html`<td>${str(b.type) || "–"}</td><td>${market}</td>`,
          html`<td><span class="pill ${state}">${state || "?"}</span></td>`,
          html`<td class="boot-words">${b.words}</td><td class="when">${when(b.launched)}</td></tr>`,
          state === "failed" && log.length
            ? html`<tr class="boot-log"><td colspan="6"><pre class="bootlog">${log.join("\n")}</pre></td></tr>` : "");
      });
      const shown = total > boots.length ? `the latest ${boots.length} of ${total}` : `${boots.length}`;
      return cat(html`<div class="boot-cluster"><h3>cluster <span class="mono">${c && c.cluster}</span> <span class="muted">· ${shown} boot${total === 1 ? "" : "s"}</span></h3>`,
        html`<table class="boots"><thead><tr><th>Instance</th><th>Type</th><th>Market</th><th>State</th><th></th><th>Launched</th></tr></thead>`,
        html`<tbody>${rows}</tbody></table></div>`);
    });
    return html`<div class="card" id="boots-card"><h2>Boots</h2>${tables}</div>`;
  }
  // the profile's Auto Scaling group (`cloudloop dashboard --profile` of an ec2 cluster), as AWS
  // describes it: its counts, alarms, max_cost action and latest activities, AWS's words escaped
  function groupSection(data) {
    const groups = arr(data && data.groups).slice(0, 5);
    if (!groups.length) return "";
    const cards = groups.map((g) => {
      g = g && typeof g === "object" ? g : {};
      if (g.error) return html`<div class="group"><p class="muted">the Auto Scaling group could not be read: ${g.error}</p></div>`;
      const alarms = arr(g.alarms).slice(0, 5).map((a) => {
        a = a && typeof a === "object" ? a : {};
        return html`<span class="tag">${a.name}: ${a.state}${a.actions === false ? " (actions off)" : ""}</span> `;
      });
      const sched = arr(g.scheduled).slice(0, 5).map((a) => {
        a = a && typeof a === "object" ? a : {};
        return html`<div class="muted">scheduled ${a.name}: max ${count(a.max)} at ${when(a.at)}</div>`;
      });
      const acts = arr(g.activities).slice(0, 10).map((a) => {
        a = a && typeof a === "object" ? a : {};
        return html`<tr class="group-activity"><td class="when">${when(a.at)}</td><td>${a.status}</td><td>${a.text}${a.why ? html`<div class="muted">${a.why}</div>` : ""}</td></tr>`;
      });
      return cat(html`<div class="group" data-group="${g.group}"><h3>group <span class="mono">${g.group}</span> <span class="muted">· desired ${count(g.desired)}, in service ${count(g.in_service)}, min ${count(g.min)}, max ${count(g.max)}</span></h3>`,
        g.suspended ? html`<p class="suspended">launching stopped: its scale-out alarm is off (cloudloop pause, or boots kept failing: the Boots card says); cloudloop resume</p>` : "",
        html`<div>${alarms}</div>`, sched,
        acts.length ? html`<table class="boots"><thead><tr><th>When</th><th>Status</th><th>Activity</th></tr></thead><tbody>${acts}</tbody></table>` : "",
        html`</div>`);
    });
    return html`<div class="card" id="group-card"><h2>Auto Scaling</h2>${cards}</div>`;
  }
  async function refreshBoots() {  // its own request: a store hiccup here leaves the rest of the page be
    if (SNAP) return;
    let data;
    try { data = await api("boots"); } catch (e) { return; }
    const shown = cat(groupSection(data), bootSection(data)), text = part(shown);
    if (text === ui.bootsHtml) return;
    ui.boots = shown; ui.bootsHtml = text;
    const box = document.getElementById("boots");
    if (box) setHtml(box, shown);
  }

  function problemList(s) {  // what keeps the job from finishing: job.status().problems
    const problems = arr(s.problems).slice(0, 20);
    if (!problems.length) return "";
    return html`<div class="card problems" id="problems"><h2>Problems</h2><ul>${problems.map((p) => html`<li>${p}</li>`)}</ul></div>`;
  }
  function failureList(s) {
    const failures = arr(s.failures);
    if (!failures.length) return html`<p class="empty">No task has failed.</p>`;
    const more = (num(s.failed) || 0) - failures.length;
    return html`${failures.map((f) =>
      cat(html`<details class="failure"${taskAttr(f.i)}${ui.open.has(f.i) ? html` open` : ""}><summary>`,
      html`<b>Task ${idx(f.i)}</b> · <span class="err">${str(f.type).split(".").pop()}: ${f.message}</span>`,
      html` <span class="muted">attempt ${idx(f.attempt)} on ${f.host}</span> `,
      html`<button class="btn tasklink"${taskAttr(f.i)}>log</button></summary><pre class="traceback">${f.traceback}</pre></details>`)
    )}${more > 0 ? html`<p class="muted">…and ${more} more.</p>` : ""}`;
  }
  function taskTable(s) {
    const tasks = arr(s.tasks);
    if (!tasks.length) return html`<p class="empty">No task has started yet.</p>`;
    const rows = tasks.slice(0, 5000).map((t) => {
      const started = num(t.started), ended = num(t.ended), progress = num(t.progress);
      const took = started && ended ? short(ended - started) : "";
      const extra = t.state === "running"
        ? (progress != null ? `${(progress * 100).toFixed(0)}% ${str(t.message)}` : t.message)
        : t.error;
      return cat(html`<tr class="click task-row"${taskAttr(t.i)}><td class="num">${idx(t.i)}</td>`,
        html`<td class="st-${token(t.state)}">${t.state}</td><td>${t.host}</td>`,
        html`<td class="num">${idx(t.attempt)}</td><td class="num">${took}</td>`,
        html`<td>${ended ? when(ended) : ""}</td><td class="muted">${extra}</td></tr>`);
    });
    return cat(html`<div class="scroll"><table id="tasks"><thead><tr><th class="num">Task</th><th>State</th><th>Host</th>`,
      html`<th class="num">Attempt</th><th class="num">Took</th><th>Finished</th><th></th></tr></thead><tbody>${rows}</tbody></table></div>`);
  }
  function legend() {
    const item = (c, l) => html`<span><i class="${c}"></i>${l}</span>`;
    return cat(html`<div class="legend">${item("o", "done")}${item("f", "failed")}${item("r", "running")}`,
      html`${item("p", "partly done")}${item("", "pending")}</div>`);
  }

  function durations(s) {  // how long tasks took: a few numbers under the task map
    const took = arr(s.tasks).filter((t) => num(t.started) && num(t.ended))
      .map((t) => t.ended - t.started).sort((a, b) => a - b);
    if (!took.length) return "";
    const q = (f) => took[Math.min(took.length - 1, Math.floor(f * took.length))];
    const mean = took.reduce((a, b) => a + b, 0) / took.length;
    const item = (l, v) => html`<div><div class="l">${l}</div><div class="v">${short(v)}</div></div>`;
    return cat(html`<div class="durations">${item("median task", q(0.5))}${item("mean", mean)}${item("90th pct", q(0.9))}`,
      html`${item("slowest", took[took.length - 1])}</div><p class="muted note">over the ${took.length} ${SNAP ? "" : "latest "}finished tasks</p>`);
  }

  const CELLS = { o: "o", f: "f", c: "c", r: "r", p: "p" };  // the grid's letters: view._grid
  function renderJob(s) {
    document.getElementById("backend").textContent = str(s.backend);
    document.title = `${str(s.name)} · cloudloop${SNAP ? " report" : ""}`;
    const frac = pct(s.done, s.total);
    const eta = num(s.eta), r = num(s.rate), done = num(s.done) || 0, failed = num(s.failed) || 0;
    const facts = [
      html`<span>elapsed <b>${dur(s.elapsed)}</b></span>`,
      eta != null && !s.ended_at ? html`<span>ETA <b>${dur(eta)}</b></span>` : "",
      r > 0 ? html`<span><b>${rate(r)}</b> tasks/s</span>` : "",
      html`<span>started <b>${when(s.created)}</b></span>`,
      num(s.cached) > 0 ? html`<span id="cached"><b>${count(s.cached)}</b> from the cache</span>` : "",
      num(s.cost) != null ? html`<span>cost <b>${money(s.cost)}</b></span>` : "",
    ];
    const stat = (cls, n, l) => html`<div class="stat ${cls}"><div class="n">${count(n)}</div><div class="l">${l}</div></div>`;
    const grid = s.grid || {}, per = num(grid.per) || 1, letters = [...str(grid.cells)].slice(0, 10000);
    const perNote = per > 1 ? html` <span class="muted">(one square = ${per} tasks)</span>` : "";
    const cells = letters.map((c) => html`<i class="${CELLS[c] || ""}"></i>`);
    const size = letters.length <= 120 ? "lg" : letters.length <= 600 ? "md" : "";
    const back = SNAP ? "" : html`<a class="crumb" href="#/">← All jobs</a>`;
    setHtml(app, html`${back}<div class="title"><h1>${s.name}</h1><span class="pill ${token(s.state)}" id="job-state">${s.state}</span>`,
      html`<span class="mono">${s.id}</span>${s.command ? html`<span class="mono muted">${s.command}</span>` : ""}</div>`,
      html`<div class="card"><div class="progress-head"><div><span class="big" id="progress-text">${done} / ${count(s.total)}</span>`,
      html` <span class="muted" id="progress-counts">finished (${count(Math.max(0, num(s.done) - num(s.failed)))} ok, ${count(s.failed)} failed) · ${frac.toFixed(1)}%</span></div><div class="facts">${facts}</div></div>`,
      html`${progressBar(s.done, s.failed, s.running, s.total, "big")}`,
      html`<div class="stats">${stat("ok", done - failed, "succeeded")}${stat("fail", s.failed, "failed")}`,
      html`${stat("run", s.running, "running")}${stat("", s.pending, "pending")}${stat("", s.workers_live, "workers on it")}</div></div>`,
      problemList(s),
      html`<div class="grid2"><div class="card"><h2>Throughput</h2>${throughputChart(s.throughput, chartWidth(app, 0.6))}</div>`,
      html`<div class="card"><h2>Tasks${perNote}</h2><div class="taskmap ${size}" id="taskmap">${cells}</div>${legend()}`,
      html`${durations(s)}</div></div>`,
      html`<div class="card"><h2>Workers</h2>${workerRows(s)}</div><div id="boots">${ui.boots}</div>`,
      html`<div class="card"><h2>Timeline per worker</h2>${timelineChart(s.timeline, chartWidth(app, 1))}</div>`,
      html`<div class="card" id="failures"><h2>Failures</h2>${failureList(s)}</div>`,
      html`<div class="card" id="logpanel"${ui.logTask == null ? html` hidden` : ""}><div class="row-head"><h2 id="log-title">Log of task ${ui.logTask}</h2>`,
      html`<button class="btn" id="log-close">close</button></div><pre id="log-text">${ui.logText}</pre></div>`,
      html`<div class="card"><h2>${SNAP ? "Tasks" : "Latest tasks"}</h2>${taskTable(s)}</div>`);
    app.querySelectorAll("details.failure").forEach((d) => d.addEventListener("toggle", () => {
      const i = Number(d.dataset.task);
      if (d.open) ui.open.add(i); else ui.open.delete(i);
    }));
    app.querySelectorAll(".tasklink, tr.task-row").forEach((el) => el.addEventListener("click", (ev) => {
      ev.preventDefault(); ev.stopPropagation();
      const i = Number(el.dataset.task);
      if (el.dataset.task && Number.isInteger(i)) openLog(s, i);
    }));
    document.getElementById("log-close").addEventListener("click", () => {
      ui.logTask = null; ui.logText = "";
      document.getElementById("logpanel").hidden = true;
    });
  }

  function showLog(text) {
    const pre = document.getElementById("log-text");
    if (!pre) return;
    text = str(text);
    const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    ui.logText = text;
    if (pre.textContent !== text) {
      pre.textContent = text || "(nothing printed yet)";
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
  }
  async function openLog(s, i) {
    ui.logTask = i;
    document.getElementById("log-title").textContent = `Log of task ${i}`;
    const panel = document.getElementById("logpanel");
    panel.hidden = false;
    if (SNAP) {
      const logs = SNAP.logs && typeof SNAP.logs === "object" ? SNAP.logs : {};
      const kept = Object.prototype.hasOwnProperty.call(logs, String(i)) ? logs[String(i)] : null;
      showLog(kept == null ? "(no log kept in this report for this task)" : kept);
    } else {
      showLog("loading…");
      await refreshLog(s.id);
    }
    panel.scrollIntoView({ behavior: "smooth", block: "nearest" });
  }
  async function refreshLog(jobId) {
    if (ui.logTask == null) return;
    const i = ui.logTask;
    const r = await api(`jobs/${encodeURIComponent(str(jobId))}/logs/${i}`);
    if (ui.logTask === i) showLog(r.text);
  }

  // ------------------------------------------------------------------ routing and polling
  function notFound(message) {
    setHtml(app, html`<a class="crumb" href="#/">← All jobs</a><div class="card"><h2>Not found</h2><p>${message}</p></div>`);
    setLive(true, "live");
  }
  async function tick() {
    clearTimeout(ui.timer);
    const route = location.hash.replace(/^#\/?/, "");
    if (route !== ui.route) { ui.route = route; ui.logTask = null; ui.logText = ""; ui.last = ""; ui.open.clear(); }
    let again = true;
    try {
      if (route.startsWith("job/")) {
        let id;
        try { id = decodeURIComponent(route.slice(4)); } catch (e) { throw Object.assign(new Error("no such job"), { status: 404 }); }
        const s = await api("jobs/" + encodeURIComponent(id));
        const key = JSON.stringify({ ...s, now: 0, elapsed: s.ended_at ? s.elapsed : 0 });
        if (key !== ui.last || !document.getElementById("progress-text")) {
          // re-render only what changed, keeping where the user scrolled the task table
          ui.last = key;
          const box = app.querySelector(".scroll"), top = box ? box.scrollTop : 0;
          renderJob(s);
          const again = app.querySelector(".scroll");
          if (again) again.scrollTop = top;
        }
        if (ui.logTask != null) await refreshLog(id);
        await refreshBoots();
        again = !s.ended_at || ui.logTask != null;
        const state = str(s.state);
        setLive(true, s.ended_at ? `${state} · snapshot ${when(s.now)}` : `live · updated ${when(s.now)}`);
      } else {
        renderJobs(await api("jobs"));
        await refreshBoots();
        setLive(true, `live · updated ${new Date().toLocaleTimeString()}`);
      }
    } catch (e) {
      if (e.status === 404) notFound(e.message);
      else setLive(false, `cannot reach the dashboard server: ${e.message}`);
    }
    // a finished job does not change: stop polling it (the jobs list keeps polling)
    ui.timer = setTimeout(tick, again ? POLL_MS : POLL_MS * 5);
  }

  if (SNAP) {
    document.body.classList.add("report");  // a static page: tables at full length
    renderJob(SNAP);
    setLive(true, `report · ${when(SNAP.now)}`);
    if (live) live.className = "live";
  } else {
    window.addEventListener("hashchange", tick);
    tick();
  }
})();
