/* An alert's traceability (DESIGN.md §2) as a page section: GET /api/alerts/{id}/trace (maintenance/trace.py).
 * Used by the alert board's "history & evidence" and the asset page's alert evidence. */
"use strict";

(() => {
  const { el, api, timeCell, fmtTime } = V;
  // A time within a reason ("the first is valid from …", "the oldest raw reading … is at …"): in plant time too.
  const ISO = /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z)/g;
  // The traceability chain (GET /api/alerts/{id}/trace, maintenance/trace.py): per moment of the evidence (raise,
  // latest return), the prediction with its model version and registry entry, the input window, and each tag with
  // the calibration in force then. A piece the database no longer has, or never had, says why ("unknown: …").
  const unknown = (o, key) => (o && o[key + "_unknown"] ? el("span", { class: "warn-text unknown" }, "unknown: " + o[key + "_unknown"].replace(ISO, (t) => fmtTime(t))) : "");
  const MOMENTS = { raised: "At the raise", updated: "At the latest rise of severity", reopened: "At the latest return", latest: "Latest evidence" };
  function predictionView(p) {
    const r = p.registry;
    const u = p.p_value !== null && p.p_value !== undefined ? `p = ${p.p_value}` + (p.alpha !== null && p.alpha !== undefined ? ` (alpha ${p.alpha})` : "")
      : `interval ${p.lower} ${p.upper === null || p.upper === undefined ? "or more" : "to " + p.upper}` + (p.coverage ? ` (${Math.round(p.coverage * 100)} %)` : "");
    return [
      el("dt", {}, "Prediction"), el("dd", { class: "prediction" }, `${p.model_id} `, el("code", { title: p.model_version }, "sha256 " + String(p.model_version).slice(0, 12)),
        ` at `, timeCell(p.time), `: ${p.value}, ${u}`, p.stored ? ` — stored #${p.stored.id}` : el("div", {}, unknown(p, "stored"))),
      el("dt", {}, "Model registry"), el("dd", { class: "registry" }, r ? [`v${r.version} (${r.status})`, r.parent_version ? `, parent v${r.parent_version}` : "",
        el("br"), "training data ", el("code", { title: r.training_fingerprint || "" }, String(r.training_fingerprint || "?").slice(0, 12)), " ",
        timeCell(r.training_start), " – ", timeCell(r.training_end),
        r.gate_metric ? [el("br"), `gate ${r.gate_metric} (${r.gate_direction}) = ${r.gate_value}`] : "",
        r.onnx_file ? [el("br"), `ONNX file: ${r.onnx_file}`] : "", unknown(r, "onnx_file") ? [el("br"), unknown(r, "onnx_file")] : ""] : unknown(p, "registry")),
      // A live anomaly detector's record (m0204): how it came into service and what it was trained on.
      ...(p.detector || p.detector_unknown ? [el("dt", {}, "Detector"), el("dd", { class: "detector" }, p.detector
        ? [`${p.detector.origin}` + (p.detector.training_origin ? ` (trained: ${p.detector.training_origin})` : ""), el("br"),
          `trained on ${p.detector.training_samples ?? "?"} samples `, timeCell(p.detector.training_start), " – ", timeCell(p.detector.training_end),
          ` (${p.detector.left_out_flagged ?? "?"} left out as flagged), alpha ${p.detector.alpha}, ${p.detector.calibration_size} calibration scores`,
          unknown(p.detector, "training") ? [el("br"), unknown(p.detector, "training")] : ""]
        : unknown(p, "detector"))] : []),
    ];
  }
  // An uncalibrated indicator's source (derived_from), level by level down to the measured tag: the zone of a
  // series' mean is two levels from the sensor whose certificate counts.
  function sourceView(t) {
    const src = t.derived_from;
    if (!src) return unknown(t, "derived_from") ? el("div", { class: "source" }, unknown(t, "derived_from")) : "";
    return el("div", { class: "source", "data-source": src.tag }, el("small", {}, `derived from ${src.tag}: `),
      src.calibration ? [el("b", {}, src.calibration.certificate), " (valid from ", timeCell(src.calibration.valid_from), ")"]
        : unknown(src, "calibration") || unknown(src, "registry"),
      sourceView(src));
  }
  function calibrationView(t) {
    const c = t.calibration;
    const own = c ? [el("b", {}, c.certificate), ` (calibrated ${c.calibrated_on}, ±${c.uncertainty} ${c.uncertainty_unit}; valid from `, timeCell(c.valid_from), ")"]
      : unknown(t, "calibration") || unknown(t, "registry");
    return [own, sourceView(t)];
  }
  function readingsView(t) {
    const r = t.readings;
    if (!r) return "";
    return [(r.evidence || []).map((x) => el("div", {}, timeCell(x.time), ` = ${x.value} `, x.stored ? el("span", { class: "ok-text" }, "stored")
      : el("span", { class: "warn-text" }, "no longer stored"))),
    r.window_raw !== undefined ? el("div", {}, `${r.window_raw_at_least ? "at least " : ""}${r.window_raw} raw reading(s) in the window`) : "", unknown(r, "window")];
  }
  function traceView(tr) {
    const out = [el("h3", {}, "Traceability"), ...tr.notes.map((n) => el("p", { class: "warn-text" }, n))];
    for (const m of tr.moments) {
      const w = m.window;
      out.push(el("div", { class: "moment", "data-moment": m.moment },
        el("h4", {}, MOMENTS[m.moment] || m.moment, " · ", timeCell(m.time)),
        el("dl", { class: "kv" },
          el("dt", {}, "Evidence time"), el("dd", {}, timeCell(m.evidence_time)),
          el("dt", {}, "Input window"), el("dd", { class: "window" }, w ? [timeCell(w.start), " – ", timeCell(w.end), el("small", {}, ` (${w.of})`)] : unknown(m, "window")),
          m.prediction ? predictionView(m.prediction) : [el("dt", {}, "Prediction"), el("dd", {}, unknown(m, "prediction"))]),
        m.tags.length ? el("table", { class: "trace-tags" },
          el("thead", {}, el("tr", {}, ["Tag", "Registry", "Calibration in force", "Readings"].map((h) => el("th", {}, h)))),
          el("tbody", {}, m.tags.map((t) => el("tr", { "data-tag": t.tag },
            el("td", {}, t.tag),
            el("td", {}, t.registry ? `${t.registry.asset || "–"} · ${t.registry.unit || "–"} · ${t.registry.range_min ?? "?"}–${t.registry.range_max ?? "?"}` +
              (t.registry.configured ? "" : " · not configured") : unknown(t, "registry")),
            el("td", { class: "calibration" }, calibrationView(t)),
            el("td", {}, readingsView(t))))))
          : el("p", {}, unknown(m, "tags"))));
    }
    return out;
  }

  /** A "Traceability" section that loads the alert's chain itself; a failure is said in it, not thrown. */
  V.traceSection = (alertId) => {
    const box = el("section", { class: "trace" }, el("h3", {}, "Traceability"), el("p", { class: "muted" }, "loading…"));
    api(`/api/alerts/${encodeURIComponent(alertId)}/trace`, { quiet: true })
      .then((tr) => box.replaceChildren(...traceView(tr)))
      .catch((e) => box.replaceChildren(el("h3", {}, "Traceability"), el("p", { class: "bad-text" }, `not available: ${e.message}`)));
    return box;
  };
})();
