/* kiln ui: charts (uPlot), live updates, compare overlays and the Try-it panel. Plain JavaScript, no build step.
   Every string from the store is put in the page with textContent, never as HTML. */
"use strict";

(function () {
  const POLL_MS = 1500;
  const MAX_KEYS = 64;  // metrics per series request: the server refuses more
  const LABEL_GAP = 22;  // px between two y-axis labels (12 px text)
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

  /* Labels on a log axis: a power of ten as 1e-8 (0.001 to 1000 written out), 2 and 5 as 2e-8, 5e-8. */
  function logFmt(v) {
    return v >= 1e-3 && v < 1e4 ? String(Number(v.toPrecision(2))) : v.toExponential(0).replace("e+", "e");
  }

  /* Which ticks of a log axis carry a label (and a grid line): the powers of ten when the decades have room,
     every 2nd, 3rd... power when they are close (1e-8 to 1 on a 230 px chart), and 2 and 5 within a decade when it
     is tall. uPlot would label every power of ten, however close. */
  function logTicks(u, splits) {
    const decade = Math.abs(u.valToPos(1, "y") - u.valToPos(10, "y"));
    const every = Math.max(1, Math.ceil(LABEL_GAP / Math.max(decade, 1e-6)));
    return splits.map((v) => {
      if (v == null || !(v > 0)) return null;
      const power = Math.round(Math.log10(v));
      if (Math.abs(v / Math.pow(10, power) - 1) < 1e-6) return power % every === 0 ? v : null;
      const mantissa = Math.round(v / Math.pow(10, Math.floor(Math.log10(v) + 1e-9)));
      return decade >= 3.5 * LABEL_GAP && (mantissa === 2 || mantissa === 5) ? v : null;
    });
  }

  function positive(data) {
    for (let i = 1; i < data.length; i++) for (const v of data[i]) if (v != null && v <= 0) return false;
    return true;
  }

  /* One chart: a title, a uPlot on the shared x, NaN markers, and a note (points shown / logged, NaN steps). */
  class Chart {
    constructor(parent, title, lines, hidden) {
      this.title = title;
      this.lines = lines || []; // [{key, label, color, series}]
      this.hidden = hidden || 0; // lines the chart leaves out (over 12)
      this.box = el("div", "chart");
      this.box.dataset.title = title;
      this.box.append(el("h3", null, title));
      this.plotArea = el("div", "plot pending");
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
      if (!this.lines.length) return;
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
            ...(log ? { filter: logTicks } : {}),  // uPlot's defaults stay on linear axes
            grid: { stroke: "#eef0f3", ...(log ? { filter: logTicks } : {}) },
            ticks: { stroke: "#e5e7eb", ...(log ? { filter: logTicks } : {}) },
            values: (u, vals) => {
              const labels = vals.map((v) => (v == null ? null : log ? logFmt(v) : fmt(v)));
              this.yTicks = vals.map((v, i) => [v, labels[i]]);
              return labels;
            } },
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
          draw: [(u) => { drawNaN(u, markers); this.recordLabels(u); }],
          setScale: [(u, key) => { if (key === "x") this.zoomed = u.scales.x.min > u.data[0][0] || u.scales.x.max < u.data[0][u.data[0].length - 1]; }],
        },
      };
      if (this.plot) this.plot.destroy();
      this.plotArea.textContent = "";
      this.plotArea.classList.remove("pending");
      this.plot = new uPlot(options, data, this.plotArea);
      this.zoomed = false;
      this.describe(log, opts.log);
    }

    /* The y labels as drawn, [[text, y px], ...], on the box (data-y-labels): what a test can check for overlap. */
    recordLabels(u) {
      if (!this.yTicks) return;
      const shown = this.yTicks.filter(([v, text]) => v != null && text);
      this.box.dataset.yLabels = JSON.stringify(shown.map(([v, text]) => [text, Math.round(u.valToPos(v, "y"))]));
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
      if (this.hidden) parts.push(this.lines.length + " of " + (this.lines.length + this.hidden) + " series (the first by name)");
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

    remove() {
      if (this.plot) this.plot.destroy();
      this.box.remove();
    }
  }

  /* Charts fetched and drawn as they come near the view: a run with hundreds of metrics asks the server only for the
     curves on screen (and a screen's height around it), chart by chart in requests of at most MAX_KEYS metrics, and
     keeps the rest as empty boxes until they are scrolled to. ``how`` gives a chart spec's metric keys (keys), fetches
     some keys into the page's cache (fetch), makes a spec's lines from that cache (lines) and its options. */
  class LazyCharts {
    constructor(root, how) {
      this.root = root;
      this.how = how;
      this.slots = [];
      this.byBox = new WeakMap();  // chart box -> its slot
      this.started = false;
      this.busy = false;
      this.again = false;
      this.observer = new IntersectionObserver((entries) => {
        for (const entry of entries) {
          const slot = this.byBox.get(entry.target);
          if (slot) slot.near = entry.isIntersecting;
        }
        this.fill();
      }, { rootMargin: "100% 0px" });
    }

    /* Lay out one box per spec, in order; boxes of titles seen before are kept (with their drawing). */
    setSpecs(specs) {
      const old = new Map(this.slots.map((slot) => [slot.spec.title, slot]));
      this.slots = specs.map((spec) => {
        let slot = old.get(spec.title);
        if (slot) {
          old.delete(spec.title);
          slot.spec = spec;
          slot.fresh = false;
        } else {
          slot = { spec, near: false, fresh: false, chart: new Chart(this.root, spec.title, [], 0) };
          this.byBox.set(slot.chart.box, slot);
          this.observer.observe(slot.chart.box);
        }
        slot.chart.hidden = Math.max(0, (spec.total || 0) - spec.series.length);
        this.root.append(slot.chart.box);
        return slot;
      });
      for (const slot of old.values()) {
        this.observer.unobserve(slot.chart.box);
        slot.chart.remove();
      }
    }

    /* The data changed: every chart fetches again when it is (or next comes) near the view. */
    stale() {
      this.started = true;
      for (const slot of this.slots) slot.fresh = false;
      this.fill();
    }

    charts() {
      return this.slots.map((slot) => slot.chart);
    }

    redraw() {
      for (const slot of this.slots) if (slot.chart.plot) slot.chart.render(this.how.options(slot.spec));
    }

    async fill() {
      if (!this.started) return;
      if (this.busy) { this.again = true; return; }
      this.busy = true;
      try {
        do {
          this.again = false;
          const todo = this.slots.filter((slot) => slot.near && !slot.fresh);
          for (const batch of batches(todo, (slot) => this.how.keys(slot.spec).length)) {
            await this.how.fetch(batch.flatMap((slot) => this.how.keys(slot.spec)));
            for (const slot of batch) {
              slot.fresh = true;
              slot.chart.update(this.how.lines(slot.spec), this.how.options(slot.spec));
            }
          }
          if (todo.length) this.root.dataset.ready = String(this.slots.filter((slot) => slot.chart.plot).length);
        } while (this.again);
        delete this.root.dataset.error;
      } catch (error) {
        this.root.dataset.error = String(error.message || error);
      } finally {
        this.busy = false;
      }
    }
  }

  /* Consecutive groups of items whose sizes add up to at most MAX_KEYS (an item is never split). */
  function batches(items, size) {
    const out = [];
    let current = [], count = 0;
    for (const item of items) {
      const n = size(item);
      if (current.length && count + n > MAX_KEYS) { out.push(current); current = []; count = 0; }
      current.push(item);
      count += n;
    }
    if (current.length) out.push(current);
    return out;
  }

  function seriesUrl(runId, keys, since) {
    const query = keys.map((key) => "key=" + encodeURIComponent(key));
    if (since) query.unshift("since=" + encodeURIComponent(since));
    return "/api/runs/" + encodeURIComponent(runId) + "/series" + (query.length ? "?" + query.join("&") : "");
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
  /* The run's charts, drawn lazily (LazyCharts). While the run is running the page asks every POLL_MS whether it has
     written since (one metric's series comes with the answer); when it has, the charts near the view fetch again. */
  function runPage(root) {
    const runId = root.dataset.run;
    let specs = JSON.parse(root.dataset.charts);
    let token = null;
    const cache = {};
    const badge = document.getElementById("run-status");

    /* The page's settings; charts the server marks log (update/weight ratios) start on a log scale. */
    function chartOptions(spec) {
      const opts = settings();
      const touched = document.getElementById("log-y") && document.getElementById("log-y").dataset.touched;
      return { ...opts, log: opts.log || (!touched && !!spec.log) };
    }

    const grid = new LazyCharts(root, {
      keys: (spec) => spec.series.map(([key]) => key),
      fetch: async (keys) => Object.assign(cache, (await getJSON(seriesUrl(runId, keys))).series),
      lines: (spec) => {
        const present = spec.series.filter(([key]) => cache[key]);
        const alone = present.length === 1 && present[0][1] === "train (batch)";  // drawn in the strong colour
        return present.map(([key, label], i) => ({
          key, label, series: cache[key],
          color: alone ? RUN_COLORS.train : RUN_COLORS[label] || EXTRA_COLORS[i % EXTRA_COLORS.length],
        }));
      },
      options: chartOptions,
    });
    grid.setSpecs(specs);

    function showStatus(status) {
      if (badge && badge.textContent !== status) {
        badge.textContent = status;
        badge.className = "badge status-" + status;
      }
      root.dataset.status = status;
    }

    /* A run opened before its first metric: the run's JSON says when charts exist (its metrics may be more than one
       series request takes), then the lazy grid draws them and the polls below keep them live. */
    async function firstCharts() {
      const info = await getJSON("/api/runs/" + encodeURIComponent(runId));
      showStatus(info.status);
      if (info.charts.length) {
        const empty = document.getElementById("charts-empty");
        if (empty) empty.remove();
        specs = info.charts;
        grid.setSpecs(specs);
      }
      return info.status;
    }

    async function check() {
      if (!specs.length) return firstCharts();
      const answer = await getJSON(seriesUrl(runId, [specs[0].series[0][0]], token));
      const status = answer.state.status;
      showStatus(status);
      if (!answer.changed) return status;
      token = answer.state.token;
      Object.assign(cache, answer.series);
      if (JSON.stringify(answer.charts) !== JSON.stringify(specs)) {
        specs = answer.charts;
        grid.setSpecs(specs);
      }
      grid.stale();
      return status;
    }

    async function poll() {
      let status = "running";
      try {
        status = await check();
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
      grid.redraw();
    });
    onResize(() => grid.charts());
    poll();
  }

  /* ------------------------------------------------------------------ compare */
  /* One chart per metric, one line per run that logged it; each run's series fetched lazily, at most MAX_KEYS
     metrics a request, and only the metrics that run has (spec.runs[i].keys). */
  function comparePage(root) {
    const spec = JSON.parse(root.dataset.spec);
    const byRun = {};
    const has = {};
    for (const run of spec.runs) {
      byRun[run.id] = {};
      has[run.id] = new Set(run.keys);
    }
    const grid = new LazyCharts(root, {
      keys: (chart) => [chart.title],
      fetch: (keys) => Promise.all(spec.runs.map(async (run) => {
        const mine = keys.filter((key) => has[run.id].has(key));
        if (mine.length) Object.assign(byRun[run.id], (await getJSON(seriesUrl(run.id, mine))).series);
      })),
      lines: (chart) => spec.runs.filter((r) => byRun[r.id][chart.title]).map((r) => ({
        key: chart.title, label: r.label, color: r.color, series: byRun[r.id][chart.title], origin: r.start,
      })),
      options: () => settings(),
    });
    grid.setSpecs(spec.metrics.map((key) => ({ title: key, series: [[key, key]] })));
    grid.stale();
    onSettings(() => grid.redraw());
    onResize(() => grid.charts());
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
    const labels = document.getElementById("tryit-labels");
    const file = document.getElementById("tryit-file");
    if (!input || !button) return;
    const fail = (message) => {
      output.className = "output error";
      output.textContent = message;
      if (labels) labels.textContent = "–";
    };
    if (file) {
      // A declared audio/image step: the chosen file goes, base64, into the JSON the server takes.
      file.addEventListener("change", () => {
        const chosen = file.files && file.files[0];
        if (!chosen) return;
        const limit = Number(root.dataset.maxFileBytes);
        if (chosen.size > limit) {
          fail("That file is " + chosen.size + " bytes; the server takes at most " + limit + ".");
          file.value = "";
          return;
        }
        const reader = new FileReader();
        reader.addEventListener("load", () => {
          const url = String(reader.result);
          input.value = JSON.stringify({ inputs: [{ b64: url.slice(url.indexOf(",") + 1) }] });
          output.className = "output";
          output.textContent = "Press Predict.";
        });
        reader.addEventListener("error", () => fail("Could not read that file."));
        reader.readAsDataURL(chosen);
      });
    }
    button.addEventListener("click", async () => {
      let body;
      try {
        body = JSON.parse(input.value);
      } catch (error) {
        fail("That is not valid JSON: " + error.message);
        return;
      }
      button.disabled = true;
      output.className = "output";
      output.textContent = "Running…";
      latency.textContent = "";
      if (labels) labels.textContent = "…";
      try {
        const response = await fetch(root.dataset.url, {
          method: "POST", credentials: "same-origin",
          headers: { "Content-Type": "application/json", Accept: "application/json" }, body: JSON.stringify(body),
        });
        const answer = await response.json();
        if (!response.ok) throw new Error(answer.error || response.statusText);
        if (labels) {
          const names = answer.labels;
          labels.textContent = Array.isArray(names) ? names.join(", ") : String(names ?? "–");
        }
        output.textContent = pretty(answer.outputs);
        output.dataset.outputs = JSON.stringify(answer.outputs);
        latency.textContent = answer.latency_ms.toFixed(2) + " ms with " + answer.runtime +
          (answer.load_ms > 5 ? " (first call loaded the model: " + answer.load_ms.toFixed(0) + " ms)" : "");
      } catch (error) {
        fail(String(error.message || error));
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
    if (compare) comparePage(compare);
    const panel = document.getElementById("tryit");
    if (panel) tryIt(panel);
  });
})();
