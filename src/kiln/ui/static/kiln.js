/* kiln ui: charts (uPlot), live updates, compare overlays and the Try-it panel. Plain JavaScript, no build step.
   Every string from the store is put in the page with textContent, never as HTML. */
"use strict";

(function () {
  const POLL_MS = 1500;
  const RUN_COLORS = { "train (batch)": "#93c5fd", train: "#2563eb", validation: "#ea580c" };
  const EXTRA_COLORS = ["#16a34a", "#9333ea", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d", "#dc2626"];

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(v) {
    if (v == null || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }

  function settings() {
    const x = document.getElementById("x-mode");
    const log = document.getElementById("log-y");
    return { time: x ? x.value === "time" : false, log: log ? log.checked : false };
  }

  /* [x, y] for one series in the chosen x mode: pairs sorted by x (wall time may not follow step order). With
     ``origin`` (compare), time is seconds since that run started, so runs started at different times overlay. */
  function table(s, time, origin) {
    const xs = !time ? s.step : origin == null ? s.time : s.time.map((t) => t - origin);
    if (!time) return [xs, s.value];
    const order = xs.map((_, i) => i).sort((a, b) => xs[a] - xs[b]);
    return [order.map((i) => xs[i]), order.map((i) => s.value[i])];
  }

  /* The x (in the chart's units) of each non-finite step of a series, for the red markers. */
  function nanXs(s, time) {
    if (!s.nonfinite || !s.nonfinite.length) return [];
    if (!time) return s.nonfinite.slice();
    return s.nonfinite.map((step) => {
      let best = 0;
      for (let i = 0; i < s.step.length; i++) if (Math.abs(s.step[i] - step) < Math.abs(s.step[best] - step)) best = i;
      return s.time[best];
    });
  }

  function positive(data) {
    for (let i = 1; i < data.length; i++) for (const v of data[i]) if (v != null && v <= 0) return false;
    return true;
  }

  /* One chart: a title, a uPlot on the shared x, NaN markers, and a note (points shown / logged, NaN steps). */
  class Chart {
    constructor(parent, title, lines) {
      this.title = title;
      this.lines = lines; // [{key, label, color, series}]
      this.box = el("div", "chart");
      this.box.dataset.title = title;
      this.box.append(el("h3", null, title));
      this.plotArea = el("div", "plot");
      this.note = el("div", "note");
      this.box.append(this.plotArea, this.note);
      parent.append(this.box);
      this.plot = null;
      this.zoomed = false;
    }

    data(opts) {
      const tables = this.lines.map((l) => table(l.series, opts.time, l.origin));
      return tables.length === 1 ? tables[0] : uPlot.join(tables);
    }

    render(opts) {
      const data = this.data(opts);
      const log = opts.log && positive(data);
      const elapsed = opts.time && this.lines.some((l) => l.origin != null);  // seconds since each run's start
      const width = Math.max(240, this.plotArea.clientWidth || this.box.clientWidth - 20);
      const markers = this.lines.map((l) => ({ color: l.color, xs: nanXs(l.series, opts.time) }));
      const options = {
        width: width, height: 230,
        scales: { x: { time: opts.time && !elapsed }, y: { distr: log ? 3 : 1 } },
        axes: [
          { label: elapsed ? "seconds since the run started" : opts.time ? "wall time" : "step", labelSize: 18,
            size: 36, stroke: "#4b5563",
            grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e5e7eb" } },
          { label: this.title + (log ? " (log)" : ""), labelSize: 18, size: 58, stroke: "#4b5563",
            grid: { stroke: "#eef0f3" }, ticks: { stroke: "#e5e7eb" }, values: (u, vals) => vals.map(fmt) },
        ],
        series: [
          { label: opts.time ? "time" : "step", value: opts.time ? undefined : (u, v) => (v == null ? "–" : String(v)) },
          ...this.lines.map((l) => ({
            label: l.label, stroke: l.color, width: l.label === "train (batch)" ? 1 : 1.75, spanGaps: true,
            points: { show: (u, si) => u.data[si].length < 60 }, value: (u, v) => fmt(v),
          })),
        ],
        cursor: { drag: { x: true, y: false, setScale: true } },
        legend: { live: true },
        hooks: {
          draw: [(u) => drawNaN(u, markers)],
          setScale: [(u, key) => { if (key === "x") this.zoomed = u.scales.x.min > u.data[0][0] || u.scales.x.max < u.data[0][u.data[0].length - 1]; }],
        },
      };
      if (this.plot) this.plot.destroy();
      this.plotArea.textContent = "";
      this.plot = new uPlot(options, data, this.plotArea);
      this.zoomed = false;
      this.describe(log, opts.log);
    }

    update(lines, opts) {
      this.lines = lines;
      if (!this.plot) return this.render(opts);
      const data = this.data(opts);
      if (opts.log && !positive(data)) return this.render(opts);
      this.plot.setData(data, !this.zoomed);
      this.describe(opts.log && positive(data), opts.log);
    }

    describe(log, wantedLog) {
      let shown = 0, total = 0, lastStep = null;
      const nan = [];
      for (const l of this.lines) {
        shown += l.series.step.length;
        total += l.series.total;
        const last = l.series.step[l.series.step.length - 1];
        if (last !== undefined && (lastStep === null || last > lastStep)) lastStep = last;
        if (l.series.nonfinite.length) nan.push(l.label + " at step " + l.series.nonfinite.slice(0, 3).join(", "));
      }
      this.box.dataset.series = String(this.lines.length);
      this.box.dataset.log = log ? "1" : "0";
      this.box.dataset.lastStep = lastStep === null ? "" : String(lastStep);
      this.note.textContent = "";
      const parts = [];
      if (total > shown) parts.push(shown.toLocaleString() + " of " + total.toLocaleString() + " points (min/max per bucket)");
      if (wantedLog && !log) parts.push("log scale off: values ≤ 0");
      if (parts.length) this.note.append(document.createTextNode(parts.join(" · ")));
      if (nan.length) {
        if (parts.length) this.note.append(document.createTextNode(" · "));
        this.note.append(el("span", "nan", "NaN/inf: " + nan.join("; ")));
      }
    }

    resize() {
      if (this.plot) this.plot.setSize({ width: Math.max(240, this.plotArea.clientWidth), height: 230 });
    }
  }

  /* Red ticks at the bottom of the plot where a series logged NaN or inf: a single bad step stays visible. */
  function drawNaN(u, markers) {
    const ctx = u.ctx;
    const bottom = u.bbox.top + u.bbox.height;
    ctx.save();
    for (const m of markers) {
      for (const x of m.xs) {
        if (x < u.scales.x.min || x > u.scales.x.max) continue;
        const px = u.valToPos(x, "x", true);
        ctx.strokeStyle = "rgba(220, 38, 38, 0.35)";
        ctx.lineWidth = 1;
        ctx.beginPath(); ctx.moveTo(px, u.bbox.top); ctx.lineTo(px, bottom); ctx.stroke();
        ctx.fillStyle = "#dc2626";
        ctx.beginPath(); ctx.moveTo(px, bottom - 9); ctx.lineTo(px - 5, bottom); ctx.lineTo(px + 5, bottom); ctx.fill();
      }
    }
    ctx.restore();
  }

  function onResize(charts) {
    let pending = false;
    window.addEventListener("resize", () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; charts().forEach((c) => c.resize()); });
    });
  }

  function onSettings(redraw) {
    for (const id of ["x-mode", "log-y"]) {
      const control = document.getElementById(id);
      if (control) control.addEventListener("change", redraw);
    }
  }

  async function getJSON(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    const body = await response.json().catch(() => ({ error: response.statusText }));
    if (!response.ok) throw new Error(body.error || response.statusText);
    return body;
  }

  /* ------------------------------------------------------------------ run page */
  function runPage(root) {
    const runId = root.dataset.run;
    let specs = JSON.parse(root.dataset.charts);
    let token = null;
    let series = {};
    let charts = [];
    const badge = document.getElementById("run-status");

    function build() {
      root.textContent = "";
      charts = specs.map((spec) => {
        const present = spec.series.filter(([key]) => series[key]);
        const alone = present.length === 1 && present[0][1] === "train (batch)";  // drawn in the strong colour
        const lines = present.map(([key, label], i) => ({
          key, label, series: series[key],
          color: alone ? RUN_COLORS.train : RUN_COLORS[label] || EXTRA_COLORS[i % EXTRA_COLORS.length],
        }));
        return new Chart(root, spec.title, lines);
      }).filter((c) => c.lines.length);
      charts.forEach((c) => c.render(chartOptions(c.title)));
      root.dataset.ready = String(charts.length);
    }

    /* The page's settings; charts the server marks log (update/weight ratios) start on a log scale. */
    function chartOptions(title) {
      const opts = settings();
      const spec = specs.find((s) => s.title === title);
      const touched = document.getElementById("log-y") && document.getElementById("log-y").dataset.touched;
      return { ...opts, log: opts.log || (!touched && !!(spec && spec.log)) };
    }

    function refresh() {
      for (const c of charts) {
        c.update(c.lines.map((l) => ({ ...l, series: series[l.key] || l.series })), chartOptions(c.title));
      }
    }

    async function load() {
      const url = "/api/runs/" + encodeURIComponent(runId) + "/series" + (token ? "?since=" + encodeURIComponent(token) : "");
      const answer = await getJSON(url);
      const status = answer.state.status;
      if (badge && badge.textContent !== status) {
        badge.textContent = status;
        badge.className = "badge status-" + status;
      }
      root.dataset.status = status;
      token = answer.state.token;
      if (!answer.changed) return status;
      series = answer.series;
      const newSpecs = answer.charts;
      if (JSON.stringify(newSpecs) !== JSON.stringify(specs) || !charts.length) {
        specs = newSpecs;
        build();
      } else {
        refresh();
      }
      return status;
    }

    async function poll() {
      let status = "running";
      try {
        status = await load();
      } catch (error) {
        root.dataset.error = String(error.message || error);
      }
      const live = document.getElementById("live");
      if (status === "running") {
        setTimeout(poll, POLL_MS);
      } else if (live) {
        live.textContent = "finished: no more updates";
      }
    }

    onSettings(() => {
      const log = document.getElementById("log-y");
      if (log) log.dataset.touched = "1";
      charts.forEach((c) => c.render(chartOptions(c.title)));
    });
    onResize(() => charts);
    poll();
  }

  /* ------------------------------------------------------------------ compare */
  async function comparePage(root) {
    const spec = JSON.parse(root.dataset.spec);
    const byRun = {};
    await Promise.all(spec.runs.map(async (run) => {
      const answer = await getJSON("/api/runs/" + encodeURIComponent(run.id) + "/series");
      byRun[run.id] = answer.series || {};
    }));
    let charts = [];
    function build() {
      root.textContent = "";
      const opts = settings();
      charts = spec.metrics.map((key) => {
        const lines = spec.runs.filter((r) => byRun[r.id][key]).map((r) => ({
          key, label: r.label, color: r.color, series: byRun[r.id][key], origin: r.start,
        }));
        return new Chart(root, key, lines);
      }).filter((c) => c.lines.length);
      charts.forEach((c) => c.render(opts));
      root.dataset.ready = String(charts.length);
    }
    build();
    onSettings(build);
    onResize(() => charts);
  }

  /* ------------------------------------------------------------------ try it */
  /* Outputs to read: numbers to 6 significant digits, one sample (innermost list) per line. */
  function pretty(value) {
    const short = (k, v) => (typeof v === "number" ? Number(v.toPrecision(6)) : v);
    if (Array.isArray(value) && value.length && value.every(Array.isArray)) {
      const rows = value.map((row) => "  " + JSON.stringify(row, short).replace(/,/g, ", "));
      return "[\n" + rows.join(",\n") + "\n]";
    }
    return JSON.stringify(value, short, 2);
  }

  function tryIt(root) {
    const input = document.getElementById("tryit-input");
    const output = document.getElementById("tryit-output");
    const latency = document.getElementById("tryit-latency");
    const button = document.getElementById("tryit-run");
    if (!input || !button) return;
    button.addEventListener("click", async () => {
      let body;
      try {
        body = JSON.parse(input.value);
      } catch (error) {
        output.className = "output error";
        output.textContent = "That is not valid JSON: " + error.message;
        return;
      }
      button.disabled = true;
      output.className = "output";
      output.textContent = "Running…";
      latency.textContent = "";
      try {
        const response = await fetch(root.dataset.url, {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", Accept: "application/json" }, body: JSON.stringify(body),
        });
        const answer = await response.json();
        if (!response.ok) throw new Error(answer.error || response.statusText);
        output.textContent = pretty(answer.outputs);
        output.dataset.outputs = JSON.stringify(answer.outputs);
        latency.textContent = answer.latency_ms.toFixed(2) + " ms with " + answer.runtime +
          (answer.load_ms > 5 ? " (first call loaded the model: " + answer.load_ms.toFixed(0) + " ms)" : "");
      } catch (error) {
        output.className = "output error";
        output.textContent = String(error.message || error);
      } finally {
        button.disabled = false;
      }
    });
  }

  /* ------------------------------------------------------------------ small things */
  function swatches() {
    document.querySelectorAll(".swatch[data-color]").forEach((s) => { s.style.background = s.dataset.color; });
  }

  function diffOnly() {
    const box = document.getElementById("diff-only");
    const table = document.getElementById("params-table");
    if (box && table) box.addEventListener("change", () => table.classList.toggle("diff-only", box.checked));
  }

  function comparePicker() {
    const form = document.getElementById("compare-form");
    const button = document.getElementById("compare-button");
    if (!form || !button) return;
    const update = () => {
      const n = form.querySelectorAll("input[name=run]:checked").length;
      button.disabled = n < 2 || n > 10;
      button.textContent = n ? "Compare " + n + " runs" : "Compare selected";
    };
    form.addEventListener("change", update);
    update();
  }

  document.addEventListener("DOMContentLoaded", () => {
    swatches();
    diffOnly();
    comparePicker();
    const run = document.getElementById("charts");
    if (run) runPage(run);
    const compare = document.getElementById("compare-charts");
    if (compare) comparePage(compare).catch((error) => { compare.dataset.error = String(error.message || error); });
    const panel = document.getElementById("tryit");
    if (panel) tryIt(panel);
  });
})();
