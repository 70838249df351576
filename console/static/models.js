/* Models: champion and candidates per model with their cards (metrics, input schema, calibration, parity), the
   promotion gate and rollback for admins (the gate's comparison is shown either way), a link to each version's
   uncertainty report, and the uncertainty summary from stored predictions. */
"use strict";

(() => {
  const { el, api, main, badge, fmtNum, timeCell, table, can, toast } = V;
  const SKIP = new Set(["card", "input_schema", "metrics", "calibration", "parity", "training_span"]);
  const STATUS_CLS = { champion: "st-cleared", candidate: "sev-info", retired: "" };
  const enc = encodeURIComponent;

  /** Rows of a table that is not models/' model_registry: shown as they are. */
  function genericCard(v) {
    const meta = Object.entries(v).filter(([k, x]) => !SKIP.has(k) && (x === null || typeof x !== "object"));
    const blobs = Object.entries(v).filter(([k, x]) => SKIP.has(k) || (x !== null && typeof x === "object"));
    return el("div", { class: "card model-version" },
      el("dl", { class: "kv" }, meta.map(([k, x]) => [el("dt", {}, k), el("dd", {}, String(x ?? "–"))]).flat()),
      blobs.map(([k, x]) => el("details", {}, el("summary", {}, k), el("pre", {}, JSON.stringify(x, null, 1)))));
  }

  const kv = (pairs) => el("dl", { class: "kv" },
    pairs.filter(([, x]) => x !== undefined).map(([k, x]) => [el("dt", {}, k), el("dd", {}, x instanceof Node ? x : String(x ?? "–"))]).flat());
  const num = (x) => (typeof x === "number" ? fmtNum(x) : String(x ?? "–"));

  function metricsTable(v) {
    const h = (v.metrics && v.metrics.holdout) || {};
    const gate = (v.metrics && v.metrics.gate) || {};
    const keys = Object.keys(h).filter((k) => typeof h[k] === "number");
    return el("div", { class: "metrics" },
      el("h4", {}, "Held-out metrics ", el("small", {}, `gate: ${gate.metric || "?"} (${gate.direction || "?"} is better)`)),
      table(["metric", "value"], keys.map((k) => el("tr", { "data-metric": k, class: k === gate.metric ? "gate-metric" : "" },
        el("td", {}, k === gate.metric ? el("b", {}, k) : k), el("td", {}, num(h[k]))))));
  }

  function schemaTable(v) {
    const feats = (v.input_schema && v.input_schema.features) || [];
    return el("details", { class: "schema" }, el("summary", {}, `Input schema (${feats.length} features, in this order)`),
      table(["#", "name", "unit", "dtype"], feats.map((f, i) => el("tr", {},
        el("td", {}, i + 1), el("td", {}, f.name), el("td", {}, f.unit || "–"), el("td", {}, f.dtype || "")))));
  }

  function calibration(v) {
    const c = v.calibration || {};
    return el("div", { class: "calibration" }, el("h4", {}, "Calibration"),
      kv([["method", c.method], ["alpha", c.alpha], ["nominal", c.alpha !== undefined ? fmtNum(1 - c.alpha) : undefined],
        ["q", c.q !== undefined ? num(c.q) : undefined], ["rows", c.n], ["score", c.score]]));
  }

  function parity(v) {
    const p = v.parity || {};
    return el("div", { class: "parity" }, el("h4", {}, "ONNX parity"),
      kv([["passed", badge(v.parity_passed ? "passed" : "FAILED", v.parity_passed ? "st-cleared" : "sev-critical")],
        ["rows", p.rows], ["max |diff|", num(p.max_abs)], ["atol / rtol", `${num(p.atol)} / ${num(p.rtol)}`]]));
  }

  function reportLink(modelId, v) {
    if ((v.kind || "regression") !== "regression") return el("span", { class: "muted" }, "p-value calibration (anomaly scorer)");
    return el("a", { class: "report-link", href: `/api/models/${enc(modelId)}/versions/${v.version}/report`, target: "_blank",
      rel: "noopener" }, "Uncertainty report");
  }

  function actions(modelId, v, result, reload) {
    if (!can("models.admin")) return "";
    const comment = el("input", { class: "action-comment", placeholder: "comment (audit log)", "aria-label": "comment" });
    const run = async (button, path, body) => {
      button.disabled = true;
      try {
        const r = await api(path, { method: "POST", body: { ...body, comment: comment.value }, quiet: true });
        if (r.comparison) showComparison(result, r.comparison, true);
        else result.replaceChildren(el("p", { class: "ok-text rollback-result" }, `Rolled back: v${r.from} → v${r.to} is champion again.`));
        toast(r.comparison ? `v${r.champion} is the champion of ${modelId}` : `rolled back to v${r.to}`);
        await reload();
      } catch (e) {
        if (e.problem && e.problem.comparison) showComparison(result, e.problem.comparison, false);
        else result.replaceChildren(el("p", { class: "bad-text" }, e.message));
        button.disabled = false;
      }
    };
    if (v.status === "champion") {
      const b = el("button", { class: "secondary rollback", onclick: () => run(b, `/api/models/${enc(modelId)}/rollback`, {}) },
        "Roll back to the previous champion");
      return el("div", { class: "ackbox" }, comment, b);
    }
    if (v.status === "candidate") {
      const b = el("button", { class: "promote", "data-version": v.version,
        onclick: () => run(b, `/api/models/${enc(modelId)}/versions/${v.version}/promote`, {}) }, `Promote v${v.version}`);
      return el("div", { class: "ackbox" }, comment, b);
    }
    return "";
  }

  function showComparison(box, c, accepted) {
    const keys = Object.keys(c.candidate_metrics || {}).filter((k) => typeof c.candidate_metrics[k] === "number");
    box.replaceChildren(el("div", { class: "card gate-result", "data-accepted": accepted ? "1" : "0" },
      el("h4", {}, accepted ? badge("ACCEPTED", "st-cleared") : badge("REFUSED", "sev-critical"),
        ` v${c.candidate} vs ${c.champion !== null ? "champion v" + c.champion : "no champion"} on ${c.rows} rows (${c.holdout})`),
      el("p", { class: accepted ? "ok-text" : "bad-text" }, c.reason),
      table(["metric", `candidate v${c.candidate}`, c.champion !== null ? `champion v${c.champion}` : "champion"],
        keys.map((k) => el("tr", { class: k === c.metric ? "gate-metric" : "" },
          el("td", {}, k === c.metric ? el("b", {}, `${k} (gate, ${c.direction} is better)`) : k),
          el("td", {}, num(c.candidate_metrics[k])), el("td", {}, num((c.champion_metrics || {})[k])))))));
  }

  // The training data's span in plant time with its offset, as every other time on the pages (it was the UTC date
  // cut from the card's text: a span ending 23:30 local read as the day before). The registry's training_start/_end
  // are aware; the card's span is numpy's naive UTC text, read as UTC.
  const utc = (s) => (s && !/(Z|[+-]\d\d:?\d\d)$/i.test(s) ? s + "Z" : s);
  function dataSpan(v, span) {
    const start = v.training_start || utc(span.start), end = v.training_end || utc(span.end);
    return start ? el("span", { class: "data-span" }, timeCell(start), " … ", timeCell(end)) : "–";
  }

  function card(modelId, v, result, reload) {
    if (v.version === undefined || !v.metrics) return genericCard(v);
    const span = v.training_span || {};
    return el("div", { class: "card model-version", "data-version": v.version, "data-status": v.status },
      el("h4", {}, `v${v.version} `, badge(v.status, STATUS_CLS[v.status] || ""), " ",
        el("small", {}, [v.kind, v.estimator, v.target && `→ ${v.target}`].filter(Boolean).join(" · "))),
      el("div", { class: "grid" },
        el("div", {}, kv([["created", timeCell(v.created_at)], ["promoted", v.promoted_at ? timeCell(v.promoted_at) : "–"],
          ["parent", v.parent_version ?? "–"], ["sha256", el("code", { title: v.sha256 }, (v.sha256 || "").slice(0, 12))],
          ["data rows", span.rows], ["data span", dataSpan(v, span)]]),
          el("p", {}, reportLink(modelId, v))),
        metricsTable(v), calibration(v), parity(v)),
      schemaTable(v),
      v.card ? el("details", {}, el("summary", {}, "Full card"), el("pre", {}, JSON.stringify(v.card, null, 1))) : "",
      actions(modelId, v, result, reload));
  }

  async function summary(modelId, box) {
    try {
      const r = await api(`/api/models/${enc(modelId)}/uncertainty?last=P30D`, { quiet: true });
      const holder = el("div");
      const scorer = r.items.some((x) => x.alpha !== null && x.alpha !== undefined);
      if (scorer) {
        // An anomaly scorer: its alpha against the share of stored predictions flagged (p <= alpha), not an interval.
        box.append(el("h3", {}, "Flags in service (30 days, stored predictions)"),
          table(["Day", "Predictions", "α", "Share flagged (p ≤ α)"], r.items.map((x) => el("tr", {},
            el("td", {}, timeCell(x.t)), el("td", {}, x.n),
            el("td", {}, x.alpha_max !== null && x.alpha_max !== x.alpha ? `${fmtNum(x.alpha)} … ${fmtNum(x.alpha_max)}` : fmtNum(x.alpha)),
            el("td", {}, fmtNum(x.flagged_share))))),
          el("p", { class: "muted note-flagged" }, r.notes.flagged_share));
        return;
      }
      box.append(el("h3", {}, "Uncertainty in service (30 days, stored predictions)"), holder,
        table(["Day", "Predictions", "Mean width", "Open-ended", "Nominal", "Empirical [95 % interval]", "With truth"], r.items.map((x) => el("tr", {},
          el("td", {}, timeCell(x.t)), el("td", {}, x.n), el("td", {}, fmtNum(x.mean_width)), el("td", {}, x.n_open), el("td", {}, fmtNum(x.nominal)),
          // Below nominal only where the nominal is above the empirical's 95 % interval: a bucket of three intervals
          // with two covered is no evidence of a miss, one of 10,000 at 86 % is.
          el("td", { class: x.empirical_upper !== null && x.empirical_upper !== undefined && x.nominal !== null && x.empirical_upper < x.nominal ? "bad-text" : "" },
            fmtNum(x.empirical), x.empirical_lower !== null && x.empirical_lower !== undefined
              ? el("small", { class: "muted" }, ` [${fmtNum(x.empirical_lower)}, ${fmtNum(x.empirical_upper)}]`) : ""),
          el("td", {}, x.n_truth)))));
      if (r.items.some((x) => x.n_open)) box.append(el("p", { class: "muted" }, `Mean width ${r.notes.mean_width}.`));
      const t = r.items.map((x) => x.t);
      VChart.draw(holder, { start: r.from, end: r.to, height: 180, label: "coverage",
        series: [{ t, y: r.items.map((x) => x.empirical), cls: "emp" }, { t, y: r.items.map((x) => x.nominal), cls: "pred" }],
        lines: [] });
    } catch (e) { box.append(el("p", { class: "muted" }, e.message)); }
  }

  async function render(results) {
    let reg;
    try { reg = await api("/api/models", { quiet: true }); }
    catch (e) { main(el("h1", {}, "Models"), el("p", { class: "bad-text", id: "models-missing" }, e.message)); return; }
    const reload = () => render(results);
    const sections = reg.items.map((g) => {
      const result = results[g.model_id] || (results[g.model_id] = el("div", { class: "gate-box" }));
      const box = el("section", { class: "model", "data-model": g.model_id }, el("h2", {}, g.model_id), result,
        el("h3", {}, "Champion"), g.champion ? card(g.model_id, g.champion, result, reload) : el("p", { class: "muted" }, "none"),
        el("h3", {}, `Candidates (${g.candidates.length})`), ...g.candidates.map((v) => card(g.model_id, v, result, reload)),
        g.retired.length ? el("details", { class: "retired" }, el("summary", {}, `Retired (${g.retired.length})`),
          ...g.retired.map((v) => card(g.model_id, v, result, reload))) : "");
      summary(g.model_id, box);
      return box;
    });
    main(el("h1", {}, "Models"), ...(sections.length ? sections : [el("p", { class: "muted" }, "No models registered.")]));
    document.body.dataset.ready = "1";
  }
  render({});
})();
