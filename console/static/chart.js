/* Hand-written SVG time-series chart: min-max envelope, mean line, prediction bands with their
   interval, thresholds / limits, alert markers, and drag-to-zoom. No library: ~200 lines we own. */
"use strict";

const VChart = (() => {
  const { el } = V;
  const NICE_MS = [1e3, 2e3, 5e3, 1e4, 15e3, 3e4, 6e4, 12e4, 3e5, 6e5, 9e5, 18e5, 36e5, 72e5, 108e5, 216e5,
    432e5, 864e5, 1728e5, 6048e5, 12096e5, 2592e6];

  function niceTicks(lo, hi, n) {
    const span = hi - lo || Math.abs(hi) || 1;
    const raw = span / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => span / s <= n) || 10 * mag;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }
  // Axis labels in the plant's zone (console.time_zone, else the browser's), as every other time on the pages.
  function timeLabel(ms, step) {
    const p = V.plantClock(ms);
    if (step >= 864e5) return `${p.month}-${p.day}`;
    if (step >= 6e4) return `${p.hour}:${p.minute}`;
    return `${p.hour}:${p.minute}:${p.second}`;
  }
  const ms = (t) => (typeof t === "number" ? t : Date.parse(t));

  /** Ticks on whole steps of the plant's wall clock (its midnight, not UTC's, for day steps), each at the offset in
   * force then: taken at the range start's offset, a week over the end of summer time put its ticks after the
   * change at 23:00 ("10-26" under the 27th's midnight). A wall time the clocks skip has no tick. */
  function timeTicks(x0, x1, step) {
    const out = [];
    let off = V.plantClock(x0).offMs;
    for (let wall = Math.ceil((x0 + off) / step) * step; ; wall += step) {
      let t = wall - off;
      const now = V.plantClock(t).offMs;
      if (now !== off) { off = now; t = wall - off; }
      if (t > x1) return out;
      if (t >= x0 && (!out.length || t > out[out.length - 1])) out.push(t);
    }
  }

  /** Split indices into runs of non-null values without gaps wider than maxGap ms. */
  function runs(t, y, maxGap) {
    const out = []; let cur = [];
    for (let i = 0; i < t.length; i++) {
      if (y[i] === null || y[i] === undefined || Number.isNaN(y[i])) { if (cur.length) out.push(cur); cur = []; continue; }
      if (cur.length && maxGap && t[i] - t[cur[cur.length - 1]] > maxGap) { out.push(cur); cur = []; }
      cur.push(i);
    }
    if (cur.length) out.push(cur);
    return out;
  }

  /**
   * draw(container, opts): opts = {start, end, series: [{t, y, min, max, label, cls}], bands: [{t, lower, upper,
   * y, label}], lines: [{value, label, cls}], markers: [{t, label}], yLabel, height, onZoom(startMs, endMs)}
   */
  function draw(container, opts) {
    const W = Math.max(container.clientWidth || 900, 320), H = opts.height || 260;
    const m = { l: 56, r: 12, t: 18, b: 26 };
    const x0 = ms(opts.start), x1 = ms(opts.end);
    let ylo = Infinity, yhi = -Infinity;
    const see = (v) => { if (v !== null && v !== undefined && !Number.isNaN(v)) { ylo = Math.min(ylo, v); yhi = Math.max(yhi, v); } };
    for (const s of opts.series || []) { (s.min || s.y).forEach(see); (s.max || s.y).forEach(see); }
    for (const b of opts.bands || []) { b.lower.forEach(see); b.upper.forEach(see); (b.y || []).forEach(see); }
    for (const l of opts.lines || []) see(l.value);
    if (!Number.isFinite(ylo)) { ylo = 0; yhi = 1; }
    if (ylo === yhi) { ylo -= 1; yhi += 1; }
    const padY = (yhi - ylo) * 0.06; ylo -= padY; yhi += padY;
    const X = (t) => m.l + ((t - x0) / (x1 - x0)) * (W - m.l - m.r);
    const Y = (v) => m.t + (1 - (v - ylo) / (yhi - ylo)) * (H - m.t - m.b);
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.label || "trend" });

    const grid = el("g", { class: "grid" }), axis = el("g", { class: "axis" });
    for (const v of niceTicks(ylo, yhi, 5)) {
      grid.append(el("line", { x1: m.l, x2: W - m.r, y1: Y(v), y2: Y(v) }));
      axis.append(el("text", { x: m.l - 6, y: Y(v) + 4, "text-anchor": "end" }, String(+v.toPrecision(6))));
    }
    const step = NICE_MS.find((s) => (x1 - x0) / s <= 8) || 2592e6;
    for (const t of timeTicks(x0, x1, step)) {
      grid.append(el("line", { x1: X(t), x2: X(t), y1: m.t, y2: H - m.b }));
      axis.append(el("text", { x: X(t), y: H - 8, "text-anchor": "middle" }, timeLabel(t, step)));
    }
    if (opts.yLabel) axis.append(el("text", { x: 4, y: 12 }, opts.yLabel));
    svg.append(grid, axis);

    for (const b of opts.bands || []) {
      const t = b.t.map(ms);
      // A null bound next to a set one is an open end ("lower or more", a RUL at the model's cap): the band runs
      // to the plot's edge there instead of breaking; no bound at all is a gap.
      const open = (v, edge) => (v === null || v === undefined ? edge : v);
      const some = b.lower.map((v, i) => (v === null && b.upper[i] === null ? null : 0));
      for (const r of runs(t, some, b.maxGap)) {
        const up = r.map((i) => `${X(t[i])},${Y(open(b.upper[i], yhi))}`);
        const lo = r.slice().reverse().map((i) => `${X(t[i])},${Y(open(b.lower[i], ylo))}`);
        svg.append(el("polygon", { class: "band " + (b.cls || ""), points: up.concat(lo).join(" "), "data-band": b.label || "interval" },
          el("title", {}, b.label || "prediction interval")));
      }
      if (b.y) for (const r of runs(t, b.y, b.maxGap))
        svg.append(el("polyline", { class: "pred", points: r.map((i) => `${X(t[i])},${Y(b.y[i])}`).join(" ") }));
    }
    for (const s of opts.series || []) {
      const t = s.t.map(ms);
      if (s.min && s.max) for (const r of runs(t, s.min, s.maxGap)) {
        const up = r.map((i) => `${X(t[i])},${Y(s.max[i])}`), lo = r.slice().reverse().map((i) => `${X(t[i])},${Y(s.min[i])}`);
        svg.append(el("polygon", { class: "envelope", points: up.concat(lo).join(" ") }));
      }
      for (const r of runs(t, s.y, s.maxGap))
        svg.append(el("polyline", { class: "line " + (s.cls || ""), points: r.map((i) => `${X(t[i])},${Y(s.y[i])}`).join(" ") }));
    }
    for (const l of opts.lines || []) {
      svg.append(el("line", { class: l.cls || "threshold", x1: m.l, x2: W - m.r, y1: Y(l.value), y2: Y(l.value) },
        el("title", {}, `${l.label}: ${l.value}`)));
      svg.append(el("text", { class: "axis", x: W - m.r - 4, y: Y(l.value) - 4, "text-anchor": "end", "font-size": 11 }, l.label));
    }
    for (const mk of opts.markers || []) {
      const t = ms(mk.t);
      if (t >= x0 && t <= x1) svg.append(el("line", { class: "marker", x1: X(t), x2: X(t), y1: m.t, y2: H - m.b },
        el("title", {}, mk.label || "")));
    }
    if (opts.onZoom) {
      // Drag across the plot to zoom into that time span.
      const sel = el("rect", { class: "sel", x: 0, y: m.t, width: 0, height: H - m.t - m.b, visibility: "hidden" });
      svg.append(sel);
      let from = null;
      const px = (ev) => { const r = svg.getBoundingClientRect(); return (ev.clientX - r.left) * (W / r.width); };
      svg.addEventListener("mousedown", (ev) => { from = px(ev); sel.setAttribute("visibility", "visible"); });
      svg.addEventListener("mousemove", (ev) => {
        if (from === null) return;
        const p = px(ev);
        sel.setAttribute("x", Math.min(from, p)); sel.setAttribute("width", Math.abs(p - from));
      });
      svg.addEventListener("mouseup", (ev) => {
        if (from === null) return;
        const a = Math.min(from, px(ev)), b = Math.max(from, px(ev));
        from = null; sel.setAttribute("visibility", "hidden");
        if (b - a < 5) return;
        const T = (p) => x0 + ((p - m.l) / (W - m.l - m.r)) * (x1 - x0);
        opts.onZoom(Math.max(T(a), x0), Math.min(T(b), x1));
      });
    }
    const box = el("div", { class: "chart" }, svg);
    container.replaceChildren(box);
    return svg;
  }

  return { draw, niceTicks };
})();
