/* trifle-otel UI: folding trace lines, loading more of them, and drawing stats charts.
   Everything shown comes from the server already escaped, or is set as text (never as HTML). */
(function () {
  "use strict";

  // -- trace lines: fold a step (its content and end line), load the next lines -----------

  function applyFolds(container) {
    let hideLevel = null;
    let hideSpan = null;
    for (const row of container.children) {
      if (!row.classList.contains("ln")) continue;
      const level = Number(row.dataset.level);
      if (hideLevel !== null) {
        const ownEnd = level === hideLevel && row.classList.contains("k-end") && row.dataset.span === hideSpan;
        if (level > hideLevel || ownEnd) {
          row.hidden = true;
          continue;
        }
        hideLevel = hideSpan = null;
      }
      row.hidden = false;
      if (row.classList.contains("folded")) {
        hideLevel = level;
        hideSpan = row.dataset.span;
      }
    }
  }

  function setFolded(row, folded) {
    row.classList.toggle("folded", folded);
    const button = row.querySelector("button.fold");
    if (button) {
      button.setAttribute("aria-expanded", folded ? "false" : "true");
      button.textContent = folded ? "▸" : "▾";
      button.title = folded ? "Unfold this step" : "Fold this step";
    }
  }

  function setupLines() {
    const container = document.getElementById("lines");
    if (!container) return;
    container.addEventListener("click", (event) => {
      const button = event.target.closest("button.fold");
      if (!button) return;
      const row = button.closest(".ln");
      setFolded(row, !row.classList.contains("folded"));
      applyFolds(container);
    });
    for (const button of document.querySelectorAll("button[data-fold]")) {
      button.addEventListener("click", () => {
        const fold = button.dataset.fold === "all";
        for (const row of container.querySelectorAll(".ln.k-begin")) setFolded(row, fold);
        applyFolds(container);
      });
    }
    const more = document.querySelector("button[data-more]");
    if (!more) return;
    let loading = false;
    async function loadMore() {
      if (loading || !more.dataset.more) return;
      loading = true;
      more.disabled = true;
      try {
        const response = await fetch(more.dataset.more, { headers: { Accept: "text/html" }, credentials: "same-origin" });
        if (!response.ok) throw new Error(response.status + " " + response.statusText);
        const html = await response.text();
        const fragment = document.createRange().createContextualFragment(html);
        const next = fragment.querySelector("template[data-next]");
        if (next) next.remove();
        container.append(fragment);
        applyFolds(container);
        const shown = container.querySelectorAll(".ln").length;
        const counter = document.querySelector("[data-shown]");
        if (counter) counter.textContent = String(container.lastElementChild ? Number(container.lastElementChild.dataset.i) + 1 : shown);
        if (next) {
          more.dataset.more = next.dataset.next;
          more.disabled = false;
        } else {
          document.getElementById("more-lines").remove();
          observer && observer.disconnect();
        }
      } catch (error) {
        more.disabled = false;
        more.textContent = "Could not load more lines (" + error.message + "): try again";
      } finally {
        loading = false;
      }
    }
    more.addEventListener("click", loadMore);
    const observer = "IntersectionObserver" in window
      ? new IntersectionObserver((entries) => { if (entries.some((e) => e.isIntersecting)) loadMore(); }, { rootMargin: "400px" })
      : null;
    if (observer) observer.observe(more);
  }

  // -- charts ---------------------------------------------------------------------------

  const PALETTE = ["#2563eb", "#16a34a", "#dc2626", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
    "#475569", "#ea580c", "#0d9488", "#9333ea"];
  const STATE_COLORS = { success: "#16a34a", warning: "#d97706", error: "#dc2626", running: "#2563eb", debug: "#64748b",
    ignored: "#94a3b8" };
  const Z95 = 1.6448536269514722;

  function dig(value, path) {
    let node = value;
    for (const part of path.split(".")) {
      if (node === null || typeof node !== "object") return null;
      node = node[part];
    }
    return typeof node === "number" && Number.isFinite(node) ? node : null;
  }

  function colorFor(path, i) {
    const last = path.split(".").pop();
    return STATE_COLORS[last] || PALETTE[i % PALETTE.length];
  }

  function tripleStats(value, path) {
    const count = dig(value, path + ".count"), sum = dig(value, path + ".sum"), square = dig(value, path + ".square");
    if (!count) return [null, null];
    const mean = sum / count;
    if (count < 2) return [mean, mean];
    const variance = (count * square - sum * sum) / (count * (count - 1));
    return [mean, mean + Z95 * Math.sqrt(Math.max(variance, 0))];
  }

  function seriesFor(spec, data) {
    const values = data.values;
    if (spec.kind === "expression") {
      const found = (data.expressions || [])[spec.index];
      return [{ label: spec.title, points: found ? found.points : values.map(() => null) }];
    }
    if (spec.kind === "triple") {
      const path = spec.paths[0];
      const pairs = values.map((v) => tripleStats(v, path));
      return [
        { label: path + " mean", points: pairs.map((p) => p[0]) },
        { label: path + " p95", points: pairs.map((p) => p[1]), dash: [6, 4] },
      ];
    }
    if (spec.kind === "means") {
      return spec.paths.map((path) => ({ label: path.split(".").pop() + " mean", path, points: values.map((v) => tripleStats(v, path)[0]) }));
    }
    const name = spec.kind === "distribution" ? bucketLabel : (text) => text;
    return spec.paths.map((path) => ({ label: spec.paths.length > 1 ? name(path.split(".").pop()) : path, path, points: values.map((v) => dig(v, path) ?? 0) }));
  }

  // Distribution buckets are named by their lower bound: lt_0, 0, 0_05, ..., ge_1600.
  function bucketLabel(name) {
    if (name.startsWith("lt_")) return "< " + name.slice(3).replace("_", ".");
    if (name.startsWith("ge_")) return "≥ " + name.slice(3).replace("_", ".");
    return "≥ " + name.replace("_", ".");
  }

  function draw(plot, spec, data, tz) {
    const xs = data.at.map((t) => Date.parse(t) / 1000);
    const series = seriesFor(spec, data);
    const stacked = spec.kind === "stacked" || spec.kind === "distribution";
    const bars = stacked || xs.length <= 2;
    let raw = series.map((s) => s.points);
    let drawn = raw;
    let order = series.map((_, i) => i);
    if (stacked) {
      const running = xs.map(() => 0);
      // An empty band is no bar at all (a zero would draw a line along the axis).
      const cumulative = raw.map((points) => points.map((p, j) => (p ? (running[j] += p) : null)));
      order = order.reverse(); // the tallest first: each lower band paints over it
      drawn = order.map((i) => cumulative[i]);
      raw = order.map((i) => raw[i]);
    }
    // A value with no neighbours draws no line: mark it with a point.
    const isolated = raw.map((points) => {
      const found = points.flatMap((p, j) => (p !== null && points[j - 1] == null && points[j + 1] == null ? [j] : []));
      return found.length ? found : null;
    });
    const nonEmpty = raw.reduce((n, points) => n + points.filter((p) => p !== null && p !== 0).length, 0);
    plot.dataset.points = String(nonEmpty);
    const width = Math.max(260, plot.clientWidth || 600);
    const step = xs.length > 1 ? xs[1] - xs[0] : 60; // half a bucket each side: the first and last bars show whole
    const opts = {
      width,
      height: 200,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), tz || "Etc/UTC"),
      scales: {
        x: { time: true, range: () => [xs[0] - step / 2, xs[xs.length - 1] + step / 2] },
        y: { range: (u, min, max) => [Math.min(0, min ?? 0), max > 0 ? max * 1.08 : 1] }, // from zero: bars stand on it
      },
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      axes: [{}, { size: 60 }],
      series: [{}].concat(order.map((i, k) => {
        const s = series[i];
        const color = colorFor(s.path || s.label, i);
        const out = {
          label: s.label,
          stroke: color,
          width: 2,
          dash: s.dash,
          spanGaps: false,
          value: (u, v, si, idx) => {
            const shown = idx === null || idx === undefined ? v : raw[si - 1][idx];
            return shown === null || shown === undefined ? "–" : Number(shown.toFixed(2)).toLocaleString();
          },
        };
        if (!bars) out.points = { show: false, filter: () => isolated[k] };
        if (bars) {
          out.paths = uPlot.paths.bars({ size: [0.8, 48], align: 0 });
          out.fill = color + (stacked ? "" : "99");
          out.points = { show: false };
        }
        return out;
      })),
    };
    plot.textContent = "";
    const chart = new uPlot(opts, [xs].concat(drawn), plot);
    window.addEventListener("resize", () => chart.setSize({ width: Math.max(260, plot.clientWidth || 600), height: 200 }));
  }

  const loaded = new Map();
  function load(src) {
    if (!loaded.has(src)) {
      loaded.set(src, fetch(src, { headers: { Accept: "application/json" }, credentials: "same-origin" }).then((r) => {
        if (!r.ok) return r.json().then((body) => { throw new Error(body.error || r.statusText); }, () => { throw new Error(r.statusText); });
        return r.json();
      }));
    }
    return loaded.get(src);
  }

  function setupCharts() {
    for (const group of document.querySelectorAll(".charts[data-src]")) {
      const tz = group.dataset.tz;
      const plots = group.querySelectorAll(".plot[data-chart]");
      if (!plots.length) continue;
      load(group.dataset.src).then((data) => {
        for (const plot of plots) {
          try {
            draw(plot, JSON.parse(plot.dataset.chart), data, tz);
          } catch (error) {
            plot.textContent = "Cannot draw this chart: " + error.message;
          }
        }
      }, (error) => {
        for (const plot of plots) plot.textContent = "Cannot load the values: " + error.message;
      });
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    setupLines();
    if (window.uPlot) setupCharts();
  });
})();
