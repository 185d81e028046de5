// cloudloop dashboard: plain JS, no framework, no network except this server's /api.
// Live mode polls the server; report mode (window.CLOUDLOOP_SNAPSHOT set by
// `cloudloop report`) renders one embedded job snapshot and never fetches anything.
(() => {
  "use strict";
  const SNAP = window.CLOUDLOOP_SNAPSHOT || null;
  const TOKEN = new URLSearchParams(location.search).get("token") || "";
  const POLL_MS = 2000;
  const app = document.getElementById("app");
  const live = document.getElementById("live");
  const ui = { open: new Set(), logTask: null, logText: "", timer: null, route: "" };

  // ------------------------------------------------------------------ helpers
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  function dur(sec) {
    if (sec == null || !isFinite(sec)) return "–";
    sec = Math.max(0, Math.round(sec));
    const h = Math.floor(sec / 3600), m = Math.floor((sec % 3600) / 60), s = sec % 60;
    return h ? `${h}:${String(m).padStart(2, "0")}:${String(s).padStart(2, "0")}` : `${m}:${String(s).padStart(2, "0")}`;
  }
  function short(sec) {
    if (sec == null || !isFinite(sec)) return "–";
    if (sec < 1) return `${Math.round(sec * 1000)} ms`;
    if (sec < 60) return `${sec.toFixed(sec < 10 ? 1 : 0)} s`;
    return dur(sec);
  }
  function when(t) {
    if (!t) return "–";
    const d = new Date(t * 1000), now = new Date();
    const hm = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
    return d.toDateString() === now.toDateString() ? hm : `${d.toLocaleDateString()} ${hm}`;
  }
  const ago = (t, now) => (t ? `${short(Math.max(0, now - t))} ago` : "–");
  function bytes(n) {
    if (!n) return "–";
    for (const u of ["B", "KB", "MB", "GB"]) { if (n < 1000) return `${n.toFixed(n < 10 ? 1 : 0)} ${u}`; n /= 1000; }
    return `${n.toFixed(1)} TB`;
  }
  const rate = (r) => (r >= 10 ? r.toFixed(0) : r >= 1 ? r.toFixed(1) : r.toFixed(2));
  const money = (c) => (c == null ? "–" : c < 0.0001 ? "< $0.0001" : c < 1 ? `$${c.toFixed(4)}` : `$${c.toFixed(2)}`);
  const pct = (a, b) => (b ? (100 * a) / b : 0);

  async function api(path) {
    const r = await fetch("api/" + path, { headers: { "X-Cloudloop-Token": TOKEN }, cache: "no-store" });
    if (!r.ok) {
      let msg = `${r.status}`;
      try { msg = (await r.json()).error || msg; } catch (e) { /* not json */ }
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
    const okPart = pct(done - failed, total), failPart = pct(failed, total), runPart = pct(running, total);
    return `<div class="bar ${cls || ""}"><span class="ok" style="width:${okPart}%"></span>` +
      `<span class="fail" style="width:${failPart}%"></span><span class="run" style="width:${runPart}%"></span></div>`;
  }

  // ------------------------------------------------------------------ charts (SVG strings)
  function niceStep(v) {  // 1, 2 or 5 times a power of ten, at least v
    if (v <= 0) return 1;
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
    const H = 240, L = 44, R = 14, T = 16, B = 26;
    const rates = tp.rates || [];
    if (!rates.some((r) => r > 0)) return `<p class="empty">No task has finished yet.</p>`;
    // a light moving average: bucket edges make single buckets spiky
    const sm = rates.map((_, i) => {
      const w = rates.slice(Math.max(0, i - 1), i + 2);
      return w.reduce((a, b) => a + b, 0) / w.length;
    });
    const n = sm.length, span = Math.max(tp.span || 0, 1e-3), step = niceStep(Math.max(...sm) / 4 || 0.25);
    const max = step * Math.max(1, Math.ceil((Math.max(...sm) * 1.05) / step));
    const x = (i) => L + ((W - L - R) * Math.min(span, (i + 0.5) * tp.step)) / span;
    const y = (v) => T + (H - T - B) * (1 - v / max);
    let grid = "";
    for (let v = 0; v <= max + step / 2; v += step) {
      const yy = y(v);
      grid += `<line x1="${L}" x2="${W - R}" y1="${yy}" y2="${yy}" stroke="#eaecf0"/>` +
        `<text x="${L - 6}" y="${yy + 4}" text-anchor="end">${fmtTick(v)}</text>`;
    }
    grid += xTicks(L, W - R, H - 7, span);
    // from the job's start to now (or its end): the first and last rates held to the edges
    const pts = [`${L},${y(sm[0]).toFixed(1)}`, ...sm.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`),
      `${W - R},${y(sm[n - 1]).toFixed(1)}`];
    const area = `M${L},${y(0)} L${pts.join(" L")} L${W - R},${y(0)} Z`;
    return `<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="throughput over time">` +
      `<defs><linearGradient id="tpg" x1="0" x2="0" y1="0" y2="1"><stop offset="0" stop-color="#2563eb" stop-opacity=".35"/>` +
      `<stop offset="1" stop-color="#2563eb" stop-opacity=".03"/></linearGradient></defs>${grid}` +
      `<path d="${area}" fill="url(#tpg)"/><path d="M${pts.join(" L")}" fill="none" stroke="#2563eb" stroke-width="2" stroke-linejoin="round"/>` +
      `<text x="${L}" y="${T - 5}">tasks finished per second</text></svg>`;
  }
  function xTicks(x0, x1, y, span) {
    let out = "";
    for (let k = 0; k <= 5; k++) {
      const xx = x0 + ((x1 - x0) * k) / 5;
      out += `<text x="${xx}" y="${y}" text-anchor="${k === 0 ? "start" : k === 5 ? "end" : "middle"}">${axisTime((span * k) / 5, span)}</text>`;
    }
    return out;
  }
  function timelineChart(tl, W) {
    const rows = tl.rows || [];
    if (!rows.length) return `<p class="empty">No task has finished yet.</p>`;
    const L = 190, R = 14, RH = 24, T = 4, B = 24, H = T + rows.length * RH + B;
    const span = Math.max(1e-3, tl.t1 - tl.t0);
    const x = (t) => L + ((W - L - R) * (t - tl.t0)) / span;
    let out = "";
    rows.forEach((r, k) => {
      const y = T + k * RH;
      const label = `${r.host || "?"} · ${r.worker.split("-").slice(-2).join("-")}`;
      out += `<text x="${L - 8}" y="${y + 15}" text-anchor="end">${esc(label.length > 28 ? label.slice(0, 27) + "…" : label)}</text>` +
        `<rect x="${L}" y="${y + 4}" width="${W - L - R}" height="${RH - 8}" fill="#f2f4f7" rx="3"/>`;
      for (const [s, e, failed] of r.segs) {
        const w = Math.max(1.5, x(e) - x(s));
        out += `<rect x="${x(s).toFixed(1)}" y="${y + 4}" width="${w.toFixed(1)}" height="${RH - 8}" rx="2" fill="${failed ? "#dc2626" : "#16a34a"}"/>`;
      }
    });
    out += xTicks(L, W - R, H - 6, span);
    return `<svg class="chart" viewBox="0 0 ${W} ${H}" role="img" aria-label="per-worker timeline">${out}</svg>`;
  }

  // ------------------------------------------------------------------ jobs list
  function renderJobs(data) {
    document.getElementById("backend").textContent = data.backend;
    const rows = data.jobs.map((j) => {
      if (j.state === "unreadable") {
        return `<tr><td class="mono">${esc(j.id)}</td><td colspan="7"><span class="pill unreadable">unreadable</span> ${esc(j.error)}</td></tr>`;
      }
      const total = j.total == null ? "?" : j.total;
      return `<tr class="click job-row" data-job="${esc(j.id)}">` +
        `<td><div><a href="#/job/${encodeURIComponent(j.id)}">${esc(j.name || j.id)}</a></div><div class="mono muted">${esc(j.id)}</div></td>` +
        `<td><span class="pill ${esc(j.state)}">${esc(j.state)}</span></td>` +
        `<td style="min-width:180px">${progressBar(j.done, j.failed, j.running, j.total || 0)}<div class="muted" style="font-size:12px;margin-top:3px">${j.done} / ${total}</div></td>` +
        `<td class="num">${j.failed ? `<span class="st-failed">${j.failed}</span>` : "0"}</td>` +
        `<td>${when(j.created)}</td><td class="num">${dur(j.elapsed)}</td>` +
        `<td class="num">${j.eta == null ? "–" : dur(j.eta)}</td><td class="num">${money(j.cost)}</td></tr>`;
    }).join("");
    app.innerHTML = `<div class="card"><div class="row-head"><h2>Jobs</h2><span class="muted">${data.count > data.jobs.length ? `the latest ${data.jobs.length} of ${data.count}` : data.jobs.length} on this backend</span></div>` +
      (data.jobs.length
        ? `<table id="jobs"><thead><tr><th>Job</th><th>State</th><th>Progress</th><th class="num">Failed</th><th>Started</th>` +
          `<th class="num">Duration</th><th class="num">ETA</th><th class="num">Cost</th></tr></thead><tbody>${rows}</tbody></table>`
        : `<p class="empty">No jobs yet. Run one with <span class="mono">cl.map(fn, items)</span> or <span class="mono">cloudloop run</span>.</p>`) +
      `</div>`;
    app.querySelectorAll("tr.job-row").forEach((tr) =>
      tr.addEventListener("click", () => { location.hash = "#/job/" + encodeURIComponent(tr.dataset.job); }));
  }

  // ------------------------------------------------------------------ one job
  function workerRows(s) {
    if (!s.workers.length) return `<p class="empty">No worker has taken a task of this job yet.</p>`;
    const rows = s.workers.map((w) => {
      const cur = w.live && w.task != null && w.state === "busy"
        ? `<a href="#" class="tasklink" data-task="${w.task}">task ${w.task}</a>` +
          (w.progress != null ? ` <span class="bar mini"><span class="ok" style="width:${(w.progress * 100).toFixed(0)}%"></span></span>${(w.progress * 100).toFixed(0)}%` : "") +
          (w.message ? ` <span class="muted">${esc(w.message)}</span>` : "")
        : `<span class="muted">${!w.live ? "left" : w.state === "elsewhere" ? "on another job" : esc(w.state || "idle")}</span>`;
      const market = w.market ? `<span class="tag ${w.market === "spot" ? "spot" : ""}">${esc(w.market === "spot" ? "spot" : "on-demand")}</span>` : `<span class="muted">–</span>`;
      return `<tr class="worker-row" data-worker="${esc(w.id)}">` +
        `<td><span class="dot ${w.live ? esc(w.state) : ""}"></span><b>${esc(w.host || "?")}</b><div class="mono muted">${esc(w.id)}</div></td>` +
        `<td>${esc(w.provider || "–")}</td><td>${esc(w.instance_type || "–")}</td><td>${market}</td>` +
        `<td class="current">${cur}</td>` +
        `<td class="num done-here">${w.done_job}${w.failed_job ? ` <span class="st-failed">(${w.failed_job} failed)</span>` : ""}</td>` +
        `<td class="num">${w.live ? ago(w.last_seen, s.now) : `<span class="muted">${w.last ? ago(w.last, s.now) : "–"}</span>`}</td>` +
        `<td class="num">${w.live && w.load != null ? w.load.toFixed(2) : "–"}</td><td class="num">${w.live ? bytes(w.rss) : "–"}</td></tr>`;
    }).join("");
    return `<table id="workers"><thead><tr><th>Worker</th><th>Provider</th><th>Instance</th><th>Market</th><th>Current task</th>` +
      `<th class="num">Done here</th><th class="num">Heartbeat</th><th class="num">Load</th><th class="num">Task memory</th></tr></thead><tbody>${rows}</tbody></table>`;
  }
  function failureList(s) {
    if (!s.failures.length) return `<p class="empty">No task has failed.</p>`;
    return s.failures.map((f) =>
      `<details class="failure" data-task="${f.i}"${ui.open.has(f.i) ? " open" : ""}><summary>` +
      `<b>Task ${f.i}</b> · <span class="err">${esc(f.type.split(".").pop())}: ${esc(f.message)}</span>` +
      ` <span class="muted">attempt ${f.attempt} on ${esc(f.host)}</span> ` +
      `<button class="btn tasklink" data-task="${f.i}">log</button></summary><pre class="traceback">${esc(f.traceback)}</pre></details>`
    ).join("") + (s.failed > s.failures.length ? `<p class="muted">…and ${s.failed - s.failures.length} more.</p>` : "");
  }
  function taskTable(s) {
    if (!s.tasks.length) return `<p class="empty">No task has started yet.</p>`;
    const rows = s.tasks.slice(0, 5000).map((t) => {
      const took = t.started && t.ended ? short(t.ended - t.started) : "";
      const extra = t.state === "running"
        ? (t.progress != null ? `${(t.progress * 100).toFixed(0)}% ${esc(t.message)}` : esc(t.message))
        : esc(t.error || "");
      return `<tr class="click task-row" data-task="${t.i}"><td class="num">${t.i}</td>` +
        `<td class="st-${esc(t.state)}">${esc(t.state)}</td><td>${esc(t.host || "")}</td>` +
        `<td class="num">${t.attempt == null ? "" : t.attempt}</td><td class="num">${took}</td>` +
        `<td>${t.ended ? when(t.ended) : ""}</td><td class="muted">${extra}</td></tr>`;
    }).join("");
    return `<div class="scroll"><table id="tasks"><thead><tr><th class="num">Task</th><th>State</th><th>Host</th>` +
      `<th class="num">Attempt</th><th class="num">Took</th><th>Finished</th><th></th></tr></thead><tbody>${rows}</tbody></table></div>`;
  }
  function legend() {
    const item = (c, l) => `<span><i style="background:${c}"></i>${l}</span>`;
    return `<div class="legend">${item("var(--ok)", "done")}${item("var(--fail)", "failed")}${item("var(--run)", "running")}` +
      `${item("var(--ok-soft)", "partly done")}${item("var(--pending)", "pending")}</div>`;
  }

  function durations(s) {  // how long tasks took: a few numbers under the task map
    const took = s.tasks.filter((t) => t.started && t.ended).map((t) => t.ended - t.started).sort((a, b) => a - b);
    if (!took.length) return "";
    const q = (f) => took[Math.min(took.length - 1, Math.floor(f * took.length))];
    const mean = took.reduce((a, b) => a + b, 0) / took.length;
    const item = (l, v) => `<div><div class="l">${l}</div><div class="v">${short(v)}</div></div>`;
    return `<div class="durations">${item("median task", q(0.5))}${item("mean", mean)}${item("90th pct", q(0.9))}` +
      `${item("slowest", took[took.length - 1])}</div><p class="muted note">over the ${took.length} ${SNAP ? "" : "latest "}finished tasks</p>`;
  }

  function renderJob(s) {
    document.getElementById("backend").textContent = s.backend;
    document.title = `${s.name} · cloudloop`;
    const total = s.total == null ? "?" : s.total;
    const frac = pct(s.done, s.total || 0);
    const facts = [
      `<span>elapsed <b>${dur(s.elapsed)}</b></span>`,
      s.eta != null && !s.ended_at ? `<span>ETA <b>${dur(s.eta)}</b></span>` : "",
      s.rate > 0 ? `<span><b>${rate(s.rate)}</b> tasks/s</span>` : "",
      `<span>started <b>${when(s.created)}</b></span>`,
      s.cost != null ? `<span>cost <b>${money(s.cost)}</b></span>` : "",
    ].join("");
    const stat = (cls, n, l) => `<div class="stat ${cls}"><div class="n">${n == null ? "?" : n}</div><div class="l">${l}</div></div>`;
    const per = s.grid.per > 1 ? ` <span class="muted">(one square = ${s.grid.per} tasks)</span>` : "";
    const cells = [...s.grid.cells].map((c) => `<i class="${c === "." ? "" : c}"></i>`).join("");
    const size = s.grid.cells.length <= 120 ? "lg" : s.grid.cells.length <= 600 ? "md" : "";
    const back = SNAP ? "" : `<a class="crumb" href="#/">← All jobs</a>`;
    app.innerHTML = `${back}<div class="title"><h1>${esc(s.name)}</h1><span class="pill ${esc(s.state)}" id="job-state">${esc(s.state)}</span>` +
      `<span class="mono">${esc(s.id)}</span>${s.command ? `<span class="mono muted">${esc(s.command)}</span>` : ""}</div>` +
      `<div class="card"><div class="progress-head"><div><span class="big" id="progress-text">${s.done} / ${total}</span>` +
      ` <span class="muted">tasks · ${frac.toFixed(1)}%</span></div><div class="facts">${facts}</div></div>` +
      `${progressBar(s.done, s.failed, s.running, s.total || 0, "big")}` +
      `<div class="stats">${stat("ok", s.done - s.failed, "succeeded")}${stat("fail", s.failed, "failed")}` +
      `${stat("run", s.running, "running")}${stat("", s.pending, "pending")}${stat("", s.workers_live, "workers on it")}</div></div>` +
      `<div class="grid2"><div class="card"><h2>Throughput</h2>${throughputChart(s.throughput, chartWidth(app, 0.6))}</div>` +
      `<div class="card"><h2>Tasks${per}</h2><div class="taskmap ${size}" id="taskmap">${cells}</div>${legend()}` +
      `${durations(s)}</div></div>` +
      `<div class="card"><h2>Workers</h2>${workerRows(s)}</div>` +
      `<div class="card"><h2>Timeline per worker</h2>${timelineChart(s.timeline, chartWidth(app, 1))}</div>` +
      `<div class="card" id="failures"><h2>Failures</h2>${failureList(s)}</div>` +
      `<div class="card" id="logpanel"${ui.logTask == null ? " hidden" : ""}><div class="row-head"><h2 id="log-title">Log of task ${ui.logTask}</h2>` +
      `<button class="btn" id="log-close">close</button></div><pre id="log-text">${esc(ui.logText)}</pre></div>` +
      `<div class="card"><h2>${SNAP ? "Tasks" : "Latest tasks"}</h2>${taskTable(s)}</div>`;
    app.querySelectorAll("details.failure").forEach((d) => d.addEventListener("toggle", () => {
      const i = Number(d.dataset.task);
      if (d.open) ui.open.add(i); else ui.open.delete(i);
    }));
    app.querySelectorAll(".tasklink, tr.task-row").forEach((el) => el.addEventListener("click", (ev) => {
      ev.preventDefault(); ev.stopPropagation();
      openLog(s, Number(el.dataset.task));
    }));
    document.getElementById("log-close").addEventListener("click", () => {
      ui.logTask = null; ui.logText = "";
      document.getElementById("logpanel").hidden = true;
    });
  }

  function showLog(text) {
    const pre = document.getElementById("log-text");
    if (!pre) return;
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
      showLog((SNAP.logs || {})[i] || "(no log kept in this report for this task)");
    } else {
      showLog("loading…");
      await refreshLog(s.id);
    }
    panel.scrollIntoView({ behavior: "smooth", block: "nearest" });
  }
  async function refreshLog(jobId) {
    if (ui.logTask == null) return;
    const i = ui.logTask;
    const r = await api(`jobs/${encodeURIComponent(jobId)}/logs/${i}`);
    if (ui.logTask === i) showLog(r.text);
  }

  // ------------------------------------------------------------------ routing and polling
  async function tick() {
    clearTimeout(ui.timer);
    const route = location.hash.replace(/^#\/?/, "");
    if (route !== ui.route) { ui.route = route; ui.logTask = null; ui.logText = ""; ui.last = ""; ui.open.clear(); }
    let again = true;
    try {
      if (route.startsWith("job/")) {
        const id = decodeURIComponent(route.slice(4));
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
        again = !s.ended_at || ui.logTask != null;
        setLive(true, s.ended_at ? `${s.state} · snapshot ${when(s.now)}` : `live · updated ${when(s.now)}`);
      } else {
        renderJobs(await api("jobs"));
        setLive(true, `live · updated ${new Date().toLocaleTimeString()}`);
      }
    } catch (e) {
      if (e.status === 404) {
        app.innerHTML = `<a class="crumb" href="#/">← All jobs</a><div class="card"><h2>Not found</h2><p>${esc(e.message)}</p></div>`;
        setLive(true, "live");
      } else {
        setLive(false, `cannot reach the dashboard server: ${e.message}`);
      }
    }
    // a finished job does not change: stop polling it (the jobs list keeps polling)
    ui.timer = setTimeout(tick, again ? POLL_MS : POLL_MS * 5);
  }

  if (SNAP) {
    document.body.classList.add("report");  // a static page: tables at full length
    document.getElementById("backend").textContent = SNAP.backend;
    renderJob(SNAP);
    setLive(true, `report · ${when(SNAP.now)}`);
    if (live) live.className = "live";
  } else {
    window.addEventListener("hashchange", tick);
    tick();
  }
})();
