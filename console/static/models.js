/* Models: champion and candidates per model, their cards, and the uncertainty report from stored predictions. */
"use strict";

(() => {
  const { el, api, main, badge, fmtNum, timeCell, table } = V;
  const SKIP = new Set(["card", "input_schema", "metrics", "calibration"]);

  function card(v) {
    const meta = Object.entries(v).filter(([k, x]) => !SKIP.has(k) && (x === null || typeof x !== "object"));
    const blobs = Object.entries(v).filter(([k, x]) => SKIP.has(k) || (x !== null && typeof x === "object"));
    return el("div", { class: "card model-version" },
      el("dl", { class: "kv" }, meta.map(([k, x]) => [el("dt", {}, k), el("dd", {}, String(x ?? "–"))]).flat()),
      blobs.map(([k, x]) => el("details", {}, el("summary", {}, k), el("pre", {}, JSON.stringify(x, null, 1)))));
  }

  async function report(modelId, box) {
    try {
      const r = await api(`/api/models/${encodeURIComponent(modelId)}/uncertainty?last=P30D`, { quiet: true });
      const holder = el("div");
      box.append(el("h3", {}, "Uncertainty (30 days)"), holder,
        table(["Day", "Predictions", "Mean width", "Nominal", "Empirical", "With truth"], r.items.map((x) => el("tr", {},
          el("td", {}, timeCell(x.t)), el("td", {}, x.n), el("td", {}, fmtNum(x.mean_width)), el("td", {}, fmtNum(x.nominal)),
          el("td", { class: x.empirical !== null && x.nominal !== null && x.empirical < x.nominal - 0.05 ? "bad-text" : "" }, fmtNum(x.empirical)),
          el("td", {}, x.n_truth)))));
      const t = r.items.map((x) => x.t);
      VChart.draw(holder, { start: r.from, end: r.to, height: 180, label: "coverage",
        series: [{ t, y: r.items.map((x) => x.empirical), cls: "emp" }, { t, y: r.items.map((x) => x.nominal), cls: "pred" }],
        lines: [] });
    } catch (e) { box.append(el("p", { class: "muted" }, e.message)); }
  }

  async function init() {
    let reg;
    try { reg = await api("/api/models", { quiet: true }); }
    catch (e) { main(el("h1", {}, "Models"), el("p", { class: "bad-text", id: "models-missing" }, e.message)); return; }
    const sections = reg.items.map((g) => {
      const box = el("section", { class: "model", "data-model": g.model_id }, el("h2", {}, g.model_id),
        el("h3", {}, "Champion"), g.champion ? card(g.champion) : el("p", { class: "muted" }, "none"),
        el("h3", {}, `Candidates (${g.candidates.length})`), ...g.candidates.map(card),
        g.retired.length ? el("details", {}, el("summary", {}, `Retired (${g.retired.length})`), ...g.retired.map(card)) : "");
      report(g.model_id, box);
      return box;
    });
    main(el("h1", {}, "Models"), ...(sections.length ? sections : [el("p", { class: "muted" }, "No models registered.")]));
    document.body.dataset.ready = "1";
  }
  init();
})();
