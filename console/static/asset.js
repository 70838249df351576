/* Asset page: trends of its signals (hours to months, drag to zoom), predictions with their interval
   bands, ISO 20816 zone, anomaly score against its threshold, RUL with its interval, the evidence behind
   its alerts, and review buttons (predictions and alerts) for maintenance. */
"use strict";

(() => {
  const { el, api, qs, main, badge, fmtNum, fmtInterval, fmtTime, timeCell, toast, can, table } = V;
  // everything after /assets/: a name may hold "/" (P-101A/B), which the links send encoded (%2F)
  const name = decodeURIComponent(location.pathname.slice("/assets/".length));
  const PRESETS = [["1h", 36e5], ["6h", 216e5], ["24h", 864e5], ["7d", 6048e5], ["30d", 2592e6], ["90d", 7776e6]];
  const ZONES = ["A", "B", "C", "D"];
  let asset = null;

  const iso = (ms) => new Date(ms).toISOString();
  // The range is kept in the address, so that a reload, the back button from another page and a link show the same
  // charts: ?range=7d (up to now), or ?from=&to= (a zoom, a link to an alert's time). It was not: a zoom into an event
  // went back to the last 24 h at a reload or at "back" from the maintenance page.
  function rangeFromUrl() {
    const q = new URLSearchParams(location.search);
    const from = Date.parse(q.get("from")), to = Date.parse(q.get("to"));
    if (from < to) return { end: to, span: to - from };
    const preset = PRESETS.find(([label]) => label === q.get("range"));
    return { end: Date.now(), span: preset ? preset[1] : 864e5 };
  }
  function rangeToUrl(preset) {
    history.replaceState(null, "", location.pathname + qs(preset ? { range: preset }
      : { from: iso(range.end - range.span), to: iso(range.end) }));
  }
  let range = rangeFromUrl();
  const header = el("section", { id: "summary", class: "grid" });
  const presets = el("div", { class: "presets row" });
  const trends = el("section", { id: "trends" });
  const preds = el("section", { id: "predictions" });
  const reviews = el("section", { id: "reviews" });
  const alertsBox = el("section", { id: "asset-alerts" });
  const derivedBox = el("section", { id: "derived" });

  // The server gives an indicator's newest good value (a bad one is no value of the machine's: a fault value, a zone
  // of a broken sensor was shown as the current one) and the time of any newer bad reading, flagged here.
  const QUALITY = ["good", "UNCERTAIN", "BAD"];
  function qualityFlags(d) {
    const q = (n) => QUALITY[n] || `quality ${n}`;
    return [...(d.latest_quality >= 1 ? [" ", badge(q(d.latest_quality), "sev-warning")] : []),
      d.bad_time ? el("small", { class: "bad-text newer-bad" }, ` newer reading ${q(d.bad_quality)} at `, timeCell(d.bad_time), ", not shown") : ""];
  }

  // The server looks this far back for a good value (a bounded lookup: a long run of bad readings was read whole).
  function noGood(d) {
    return d.bad_time ? `no good reading among the newest ${asset.good_lookback.toLocaleString("en")} or in the hourly rollups` : "no reading";
  }

  function drawDerived() {
    const list = (asset.derived || []).filter((d) => !d.name.endsWith(".iso_zone"));
    if (!list.length) { derivedBox.replaceChildren(); return; }
    const holder = el("div");
    derivedBox.replaceChildren(el("h2", {}, "Condition indicators"), table(["Indicator", "Newest good", "At", ""], list.map((d) =>
      el("tr", { "data-indicator": d.name }, el("td", {}, d.name),
        el("td", {}, d.latest_time ? `${fmtNum(d.latest_value)} ${d.unit || ""}` : el("span", { class: "muted no-good" }, noGood(d)), qualityFlags(d)),
        el("td", {}, timeCell(d.latest_time)),
        el("td", {}, el("button", { class: "secondary", onclick: () => { holder.replaceChildren(); drawTag(d, [], holder); } }, "trend"))))), holder);
  }

  function setRange(span, end) {
    range = { span, end: end || Date.now() };
    rangeToUrl(PRESETS.find(([, s]) => s === span)?.[0]);
    drawAll();
  }
  function zoom(a, b) { range = { end: b, span: b - a }; rangeToUrl(); drawAll(); }

  function renderPresets() {
    presets.replaceChildren(el("span", { class: "muted" }, "Range: "), ...PRESETS.map(([label, span]) =>
      el("button", { class: "secondary" + (range.span === span ? " active" : ""), "data-range": label, onclick: () => setRange(span) }, label)),
    el("span", { class: "muted" }, " drag across a chart to zoom"));
  }

  async function drawTag(tag, markers, into) {
    const box = el("div", { class: "trend", "data-tag": tag.name });
    const holder = el("div");
    box.append(el("div", { class: "chart-title" }, el("b", {}, tag.name, " ", el("small", {}, tag.unit)),
      el("small", { class: "muted src" }, "")), holder);
    (into || trends).append(box);
    const from = range.end - range.span, to = range.end;  // the range asked for, whatever is picked meanwhile
    let r;
    try { r = await api(`/api/tags/${encodeURIComponent(tag.name)}/readings` + qs({ from: iso(from), to: iso(to), points: 800 }), { quiet: true }); }
    catch (e) { holder.append(el("p", { class: "bad-text" }, `readings not loaded: ${e.message}`)); return; }  // the other trends still draw
    if (!box.isConnected) return;  // a newer range's load replaced this chart while its readings were on the way
    // Buckets of a day or more are the plant's days (the server's console.time_zone, else UTC): the caption names the zone.
    const width = r.bucket_s % 86400 === 0 ? `${r.bucket_s / 86400}-day buckets from ${r.zone} midnight` +
      (r.edges_exact === false ? " (day edges within the hour: hourly rollups)" : "") : `${r.bucket_s} s buckets`;
    box.querySelector(".src").textContent = r.bucket_s ? `${r.source}, ${width} (min–max band, mean line)` : `${r.source}, raw`;
    // The chart's range at the resolution of what it is drawn from: raw readings, 1-minute or 1-hour buckets.
    const resolution = { readings_1m: "1m", readings_1h: "1h" }[r.source] || "raw";
    box.querySelector(".chart-title").append(V.csvLink(`/api/tags/${encodeURIComponent(tag.name)}/readings.csv`,
      { from: iso(from), to: iso(to), resolution },
      { title: `${tag.name}: the chart's range as CSV (${resolution === "raw" ? "raw readings" : resolution + " buckets"})` }));
    const lines = [];
    if (tag.calibration) box.querySelector(".src").textContent += ` · calibration ${tag.calibration.certificate} ±${tag.calibration.uncertainty} ${tag.calibration.uncertainty_unit}`;
    const gap = (r.bucket_s || (tag.sampling_ms || 1000) / 1000) * 2500;
    // Bad-quality readings (quality >= 2: a wire break's 9999, a device's fault value) are not values: the buckets
    // leave them out on the server, raw rows come with their quality and were drawn as if good. Left out of the
    // line (a gap) and counted in the caption.
    const bad = r.bucket_s ? (r.bad || []).reduce((s, n) => s + n, 0) : (r.q || []).filter((q) => q >= 2).length;
    if (bad) box.querySelector(".src").textContent += ` · ${bad} bad-quality reading${bad === 1 ? "" : "s"} not drawn`;
    const rawY = r.bucket_s ? null : r.v.map((v, i) => ((r.q || [])[i] >= 2 ? null : v));
    const series = r.bucket_s ? [{ t: r.t, y: r.avg, min: r.min, max: r.max, maxGap: gap }] : [{ t: r.t, y: rawY, maxGap: gap }];
    VChart.draw(holder, { start: from, end: to, series, lines, markers, yLabel: tag.unit, height: 200, onZoom: zoom, label: tag.name });
  }

  // Each zone comes with where and when it was found: the newest <tag>.iso_zone reading is whatever was last
  // derived, which may be weeks old (the analytics stopped, the sensor left); a bare "C" read as the zone now.
  function zoneOf(series) {
    const z = series.find((s) => ["iso_zone", "zone"].includes(s.kind));
    if (!z || !z.latest) return null;
    const d = z.latest.details || {};
    const zone = d.zone || ZONES[Math.round(z.latest.value)] || null;
    return zone && { zone, source: `prediction ${z.model_id}`, time: z.latest.time };
  }

  function worstZone() {
    const zs = (asset.iso_zones || []).slice().sort((a, b) => (a.zone < b.zone ? -1 : a.zone > b.zone ? 1 : 0));
    const z = zs[zs.length - 1];
    return z ? { zone: z.zone, source: z.tag, time: z.time, flags: qualityFlags({ latest_quality: z.quality, bad_time: z.bad_time, bad_quality: z.bad_quality }) } : null;
  }

  function alertZone(openAlerts) {
    const a = openAlerts.find((x) => (x.evidence || {}).zone);
    return a ? { zone: a.evidence.zone, source: `alert ${a.id}`, time: a.raised_at } : null;
  }

  // A prediction's unit: the one stored with it (maintenance's RUL: details.unit, "h" or "cycles"), else that of
  // the tag it predicts (``target``, a regression of P-101.bearing_temp is in degC); an anomaly score has none.
  function unitOf(p) {
    const stated = ((p && p.details) || {}).unit;
    if (stated) return stated;
    const tag = p && p.target && [...asset.tags, ...(asset.derived || [])].find((t) => t.name === p.target);
    return (tag && tag.unit) || "";
  }

  // A RUL at its model's cap (details.cap: maintenance.rul_live clips there) is "at least the cap", not a forecast
  // of the cap: the model is trained on RUL capped there and cannot date wear further out. "160" read as a date.
  function atCap(p) {
    const cap = ((p && p.details) || {}).cap;
    return typeof cap === "number" && p.value !== null && p.value >= cap;
  }
  function predValue(p) { return (atCap(p) ? "≥ " : "") + fmtNum(p.value); }

  // An interval's nominal coverage; a stored interval without one does not pass for a "0 %" interval.
  function level(coverage) {
    return coverage === null || coverage === undefined ? "interval, level not stated" : `${Math.round(coverage * 100)} % interval`;
  }

  function summary(series, openAlerts) {
    const cards = [];
    // Newest first: maintenance's <tag>.iso_zone readings, a zone prediction, the evidence of an open zone alert.
    const zone = worstZone() || zoneOf(series) || alertZone(openAlerts);
    cards.push(el("div", { class: "card", id: "iso-zone" }, el("small", {}, "ISO 20816-3 zone"), el("div", { class: "big" },
      zone ? badge(zone.zone, "zone-" + zone.zone) : el("span", { class: "muted" }, "no zone computed")),
      zone ? el("small", { class: "zone-when" }, `${zone.source} · `, timeCell(zone.time), zone.flags || "") : ""));
    const an = series.find((s) => s.kind === "anomaly");
    if (an && an.latest && an.alpha !== null && an.alpha !== undefined) {
      // Conformal p-value against the false-alarm rate alpha: an alarm when p <= alpha.
      const over = an.latest.p_value !== null && an.latest.p_value <= an.alpha;
      const top = ((an.latest.details || {}).top_signals || []).map((t) => `${t.signal} ${Math.round(t.share * 100)} %`).join(", ");
      cards.push(el("div", { class: "card", id: "anomaly" }, el("small", {}, "Anomaly: p-value (alarm at ≤ α)"),
        el("div", { class: "big " + (over ? "bad-text" : "ok-text") }, fmtNum(an.latest.p_value), el("small", {}, ` / α ${fmtNum(an.alpha)}`)),
        el("small", {}, `score ${fmtNum(an.latest.value)}`, top ? ` · top: ${top}` : "", " · ", timeCell(an.latest.time))));
    } else if (an && an.latest) {
      const over = an.threshold !== null && an.latest.value > an.threshold;
      cards.push(el("div", { class: "card", id: "anomaly" }, el("small", {}, "Anomaly score (threshold)"),
        el("div", { class: "big " + (over ? "bad-text" : "ok-text") }, fmtNum(an.latest.value), el("small", {}, ` / ${fmtNum(an.threshold)}`)),
        el("small", {}, an.latest.p_value !== null ? `p-value ${fmtNum(an.latest.p_value)} · ` : "", timeCell(an.latest.time))));
    }
    const rul = series.find((s) => s.kind === "rul");
    if (rul && rul.latest) {
      const l = rul.latest;
      const unit = unitOf(l);
      cards.push(el("div", { class: "card", id: "rul" }, el("small", {}, `Remaining useful life (${level(l.coverage)})`),
        el("div", { class: "big" }, predValue(l), unit ? el("small", {}, ` ${unit}`) : "",
          atCap(l) ? el("small", { class: "muted at-cap" }, " (the model's cap: no wear it can date yet)") : ""),
        el("small", {}, `${fmtInterval(l.lower, l.upper, null)}${unit ? " " + unit : ""} · ${rul.model_id} · `, timeCell(l.time))));
    }
    cards.push(el("div", { class: "card", id: "open-alerts" }, el("small", {}, "Open alerts (raised at any time)"),
      el("div", { class: "big " + (openAlerts.n ? "bad-text" : "ok-text") }, openAlerts.n === null ? "?" : openAlerts.n)));
    header.replaceChildren(...cards);
  }

  function drawPredictions(series) {
    preds.replaceChildren(el("h2", {}, "Predictions with their uncertainty"));
    const ORDER = ["regression", "pems", "anomaly", "rul"];
    const rank = (k) => (ORDER.includes(k) ? ORDER.indexOf(k) : ORDER.length);
    const shown = series.filter((s) => !["iso_zone", "zone"].includes(s.kind)).sort((a, b) => rank(a.kind) - rank(b.kind));
    if (!shown.length) preds.append(el("p", { class: "muted" }, "No predictions for this asset in the range."));
    for (const s of shown) {
      const holder = el("div");
      const hasBand = s.lower.some((v) => v !== null);
      const cov = hasBand ? level(s.coverage) : s.p_value.some((v) => v !== null) ? "score with conformal p-values" : "point values";
      preds.append(el("div", { class: "prediction", "data-kind": s.kind, "data-model": s.model_id },
        el("div", { class: "chart-title" }, el("b", {}, `${s.kind}: ${s.target || s.model_id}`),
          el("small", { class: "muted" }, `model ${s.model_id} @ ${String(s.model_version).slice(0, 12)} · ${cov}`)), holder));
      const byAlpha = s.alpha !== null && s.alpha !== undefined && s.threshold === null;
      const lines = byAlpha ? [{ value: s.alpha, label: `α = ${s.alpha}`, cls: "threshold" }]
        : s.threshold !== null && s.threshold !== undefined ? [{ value: s.threshold, label: "threshold", cls: "threshold" }] : [];
      const svg = VChart.draw(holder, {
        start: range.end - range.span, end: range.end, height: 200, onZoom: zoom, label: `${s.kind} ${s.model_id}`, lines,
        bands: hasBand ? [{ t: s.t, lower: s.lower, upper: s.upper, y: s.value, label: cov }] : [],
        series: hasBand ? [] : [{ t: s.t, y: byAlpha ? s.p_value : s.value }],
        yLabel: byAlpha ? "p-value" : unitOf(s.latest),
      });
      svg.querySelectorAll("polygon.band").forEach((p) => p.setAttribute("id", "pred-band-" + s.kind));
    }
  }

  // Newest first, 20 at a time; "Load older" pages on with the API's cursor through the whole range (only the
  // newest 20 could be reached: with three models predicting every 10 minutes, the last hour of a 7-day range).
  async function drawReviews(stale) {
    reviews.replaceChildren(el("h2", {}, "Review predictions"));
    const query = { asset: name, from: iso(range.end - range.span), to: iso(range.end), limit: 20 };
    let page;
    try { page = await api("/api/predictions" + qs(query), { quiet: true }); }
    catch (e) { if (!stale()) reviews.append(el("p", { class: "muted" }, e.message)); return; }
    if (stale()) return;
    if (!page.items.length) { reviews.append(el("p", { class: "muted" }, "Nothing to review in this range.")); return; }
    reviews.firstChild.append(V.csvLink(`/api/assets/${encodeURIComponent(name)}/predictions.csv`,
      { from: query.from, to: query.to }, { id: "reviews-csv", title: "every prediction of the range with its interval and review, as CSV" }));
    const t = table(["Time", "Kind", "Value [interval]", "Model", "Review"], page.items.map(reviewRow));
    let cursor = page.next_cursor;
    const more = el("button", { class: "secondary", id: "reviews-more", hidden: !cursor, onclick: async () => {
      more.disabled = true;
      try {
        const next = await api("/api/predictions" + qs({ ...query, cursor }));
        t.tBodies[0].append(...next.items.map(reviewRow));
        cursor = next.next_cursor;
        more.hidden = !cursor;
      } finally { more.disabled = false; }
    } }, "Load older");
    reviews.append(t, el("p", {}, more));
  }

  /** The review cell of a prediction or an alert (``item``: its newest verdict, reviewed_by, reviewed_at): the
   * verdict, else Right / Wrong with a comment for a user who may review, POSTed to ``url``. */
  function reviewCell(item, url, draftKey, what) {
    const comment = el("input", { placeholder: "comment", class: "review-comment" });
    const forget = V.draft(comment, draftKey);  // kept through a log-in after the session ended
    const cell = el("td", { class: "review" });
    const done = () => cell.replaceChildren(badge(item.verdict, item.verdict === "right" ? "st-cleared" : "st-raised"), ` by ${item.reviewed_by} `, timeCell(item.reviewed_at));
    const send = (verdict) => async (ev) => {
      const buttons = ev.target.parentNode.querySelectorAll("button");
      if (ev.target.disabled) return;
      buttons.forEach((b) => { b.disabled = true; });  // one review per click (a double-click stored two)
      let r;
      // a refusal is said by api() (its toast), a 401 leaves for the log-in form: nothing more to do here
      try { r = await api(url, { method: "POST", body: { verdict, comment: comment.value } }); }
      catch (e) { buttons.forEach((b) => { b.disabled = false; }); return; }
      Object.assign(item, { verdict: r.verdict, reviewed_by: r.reviewed_by, reviewed_at: r.reviewed_at });
      forget();
      done(); toast(`${what} marked ${verdict}`);
    };
    if (item.verdict) done();
    else if (can("predictions.review")) cell.append(el("div", { class: "ackbox" }, comment,
      el("button", { class: "ok review-right", onclick: send("right") }, "Right"),
      el("button", { class: "bad review-wrong", onclick: send("wrong") }, "Wrong")));
    else cell.append(el("span", { class: "muted" }, "not reviewed"));
    return cell;
  }

  function reviewRow(p) {
    const cell = reviewCell(p, `/api/predictions/${p.id}/review`, "review:" + p.id, `Prediction ${p.id}`);
    const alpha = (p.details || {}).alpha;
    const interval = p.lower !== null || p.upper !== null ? " " + fmtInterval(p.lower, p.upper, p.coverage)
      : p.p_value !== null ? ` (p ${fmtNum(p.p_value)}${alpha !== null && alpha !== undefined ? `, α ${fmtNum(alpha)}` : ""})` : "";
    return el("tr", { "data-prediction": p.id }, el("td", {}, timeCell(p.time)), el("td", {}, p.kind),
      el("td", {}, predValue(p) + (unitOf(p) ? " " + unitOf(p) : "") + interval), el("td", {}, el("small", {}, `${p.model_id} @ ${String(p.model_version).slice(0, 10)}`)), cell);
  }

  // The newest 200 of the range, then "Load older": the rest of a noisy range were silently left out.
  function drawAlerts(page, query) {
    alertsBox.replaceChildren(el("h2", {}, "Alerts and their evidence"));
    if (!page.items.length) { alertsBox.append(el("p", { class: "muted" }, "No alerts in this range.")); return; }
    const t = table(["Raised", "Severity", "State", "Kind", "Message", "Evidence", "Review"], page.items.map(alertRow));
    alertsBox.append(t, el("p", {}, V.moreButton("asset-alerts-more", "/api/alerts", query, page.next_cursor, t.tBodies[0], alertRow),
      page.next_cursor ? el("small", { class: "muted", id: "asset-alerts-note" }, ` the charts mark the newest ${page.items.length} alerts of the range`) : ""));
  }

  function alertRow(a) {
    return el("tr", { "data-alert": a.id },
      el("td", {}, timeCell(a.raised_at)), el("td", {}, badge(a.severity, "sev-" + a.severity)), el("td", {}, badge(a.state, "st-" + a.state)),
      el("td", {}, a.kind), el("td", {}, a.message || ""),
      el("td", {}, el("details", { ontoggle: (ev) => {  // the traceability chain, loaded when first opened
        if (!ev.target.open || ev.target.dataset.loaded) return;
        ev.target.dataset.loaded = "1";
        ev.target.append(V.traceSection(a.id));
      } }, el("summary", {}, "evidence"), el("pre", { class: "evidence" }, V.jsonInPlantTime(a.evidence)))),
      // right = a real fault, wrong = a false alarm; the precision of past alerts counts it (an ISO zone or rule
      // alert has no prediction to review, and could be reviewed only through the API)
      reviewCell(a, `/api/alerts/${encodeURIComponent(a.id)}/review`, "alert-review:" + a.id, `Alert ${a.id}`));
  }

  /** The asset's open alerts, whenever they were raised: counted within the chosen range, an alert raised two days
   * ago and still open made the card say "0" on the 24 h view. ``n`` from the server's counts (null: unknown). */
  async function openAlerts() {
    try {
      const page = await api("/api/alerts" + qs({ asset: name, state: ["raised", "acknowledged"], limit: 200 }), { quiet: true });
      const items = page.items;
      items.n = page.counts.filter((c) => c.state !== "cleared").reduce((s, c) => s + c.n, 0);
      return items;
    } catch (e) { const items = []; items.n = null; return items; }
  }

  // Each pick of a range (a preset, a drag to zoom) loads the page's sections again; a load still on its way when the
  // next starts stops at its next step. Both appended their charts: two ranges picked in quick succession drew every
  // signal twice, the older range's chart among them.
  let generation = 0;

  async function drawAll() {
    const gen = ++generation;
    const stale = () => gen !== generation;
    document.body.dataset.ready = "0";
    renderPresets();
    trends.replaceChildren(el("h2", {}, "Signals"));
    const from = iso(range.end - range.span), to = iso(range.end);
    const alertQuery = { asset: name, from, to, limit: 200 };
    let alertPage = { items: [], next_cursor: null };
    try { alertPage = await api("/api/alerts" + qs(alertQuery), { quiet: true }); } catch (e) { /* no alerts table yet */ }
    if (stale()) return;
    const alertList = alertPage.items;
    const markers = alertList.map((a) => ({ t: a.raised_at, label: `${a.severity}: ${a.message || a.kind}` }));
    let series = [];
    try { series = (await api(`/api/assets/${encodeURIComponent(name)}/predictions` + qs({ from, to }), { quiet: true })).series; }
    catch (e) { if (!stale()) preds.replaceChildren(el("h2", {}, "Predictions"), el("p", { class: "muted" }, e.message)); }
    const open = await openAlerts();
    if (stale()) return;
    summary(series, open);
    await Promise.all(asset.tags.map((t) => drawTag(t, markers)));
    if (stale()) return;
    drawDerived();
    if (series.length || !preds.childElementCount) drawPredictions(series);
    drawAlerts(alertPage, alertQuery);
    await drawReviews(stale);
    if (stale()) return;
    document.body.dataset.ready = "1";
  }

  /** Current and upcoming maintenance windows of the asset (its alerts are suppressed in them), with a link. */
  async function windowsNote() {
    let page;
    try { page = await api("/api/maintenance-windows" + qs({ asset: name, state: ["current", "upcoming"], limit: 5 }), { quiet: true }); }
    catch (e) { return ""; }
    const items = page.items;
    if (!items.length) return "";
    // The first 5, soonest first; more are said and linked: the sixth of a weekly plan was left out without a word. The
    // link shows this asset's windows (it opened every asset's).
    return el("p", { class: "card", id: "asset-windows" }, el("strong", {}, "Maintenance: "), items.map((w, i) => [i ? " · " : "",
      `${w.state === "current" ? "in a window" : "planned"} ${fmtTime(w.starts_at)} – ${fmtTime(w.ends_at)}${w.asset === "*" ? " (every asset)" : ""}: ${w.reason}`]),
      page.next_cursor ? " · and more" : "", " ", el("a", { href: "/maintenance" + qs({ asset: name }), id: "asset-windows-link" },
        page.next_cursor ? "all its windows" : "windows"));
  }

  /** Conditions of the asset a current maintenance window hides (read-only). */
  async function suppressedNote() {
    let items = [];
    try { items = (await api("/api/alerts/suppressed" + qs({ asset: name }), { quiet: true })).items; }
    catch (e) { return ""; }
    if (!items.length) return "";
    return el("section", { class: "card", id: "asset-suppressed" }, el("strong", {}, "Suppressed by maintenance windows"),
      el("table", { class: "suppressed" }, el("tbody", {}, items.map((s) => V.suppressedRow(s)))));
  }

  async function init() {
    asset = await api(`/api/assets/${encodeURIComponent(name)}`);
    main(el("h1", {}, `${asset.name} `, el("small", {}, [asset.site, asset.kind].filter(Boolean).join(" · "))),
      asset.description ? el("p", {}, asset.description) : "", await windowsNote(), await suppressedNote(), header, presets, trends, derivedBox, preds, alertsBox, reviews);
    await drawAll();
  }
  init().catch((e) => V.failed(`Asset ${name}`, e));
})();
