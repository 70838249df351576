/* Gateways: live /healthz of each configured gateway (collectors, spool, database link, errors) and dead letters. */
"use strict";

(() => {
  const { el, api, qs, main, badge, fmtNum, timeCell, table } = V;

  function collectors(h) {
    const c = (h && h.collectors) || {};
    return table(["Collector", "Connected", "Detail"], Object.entries(c).map(([name, s]) => el("tr", {},
      el("td", {}, name),
      el("td", {}, s.connected === undefined ? "–" : badge(s.connected ? "connected" : "disconnected", s.connected ? "st-cleared" : "st-raised")),
      el("td", {}, el("small", {}, Object.entries(s).filter(([k]) => k !== "connected").map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(" · "))))));
  }

  function card(g) {
    const h = g.health || {};
    const spool = h.spool || {}, db = h.database || {};
    return el("section", { class: "card gateway", "data-gateway": g.name },
      el("h2", {}, g.name, " ", badge(!g.reachable ? "unreachable" : g.healthy ? "healthy" : "unhealthy",
        !g.reachable || !g.healthy ? "st-raised" : "st-cleared")),
      el("p", { class: "muted" }, g.health_url, g.elapsed_ms !== undefined ? ` · answered in ${g.elapsed_ms} ms` : ""),
      g.error ? el("p", { class: "bad-text" }, g.error) : "",
      g.reachable ? el("dl", { class: "kv" },
        el("dt", {}, "Uptime"), el("dd", {}, h.uptime_s !== undefined ? `${fmtNum(h.uptime_s / 3600)} h` : "–"),
        el("dt", {}, "Spool depth"), el("dd", { class: "spool-depth" }, `${spool.readings ?? "–"} readings, ${spool.batches ?? "–"} batches, ${fmtNum((spool.bytes || 0) / 1e6)} MB of ${fmtNum((spool.max_bytes || 0) / 1e6)} MB${spool.full ? " — FULL" : ""}`),
        el("dt", {}, "Stored / spooled"), el("dd", {}, `${h.readings_stored ?? "–"} / ${h.readings_spooled ?? "–"}`),
        el("dt", {}, "Database"), el("dd", {}, db.connected ? `connected (${db.edition || "?"})` : "not connected"),
        el("dt", {}, "Last error"), el("dd", { class: db.last_error ? "bad-text" : "" }, db.last_error || "none"),
        el("dt", {}, "Dead tasks"), el("dd", {}, (h.dead_tasks || []).join(", ") || "none"),
        el("dt", {}, "Latency p50 / p99"), el("dd", {}, h.latency_s ? `${fmtNum(h.latency_s.p50)} s / ${fmtNum(h.latency_s.p99)} s` : "–")) : "",
      g.reachable ? collectors(h) : "");
  }

  // Dead letters: the newest 20, "Load older" for the rest of the 7 days (the newest 20 were all there was to see, next
  // to a count of thousands). Refreshed with the page until older ones are loaded: a refresh put back the first page
  // and dropped the rows paged to.
  const DL = { limit: 20 };
  const dlBox = el("section", { id: "dead-letters" });
  let dlPaged = false;
  function dlRow(d) {
    return el("tr", { "data-dead-letter": d.id }, el("td", {}, timeCell(d.time)), el("td", {}, d.source), el("td", {}, d.topic),
      el("td", {}, d.error), el("td", {}, el("code", {}, d.payload), d.bytes > 500 ? el("small", { class: "muted" }, ` (first 500 of ${d.bytes} bytes)`) : ""));
  }
  function deadLetters(dl) {
    const total = dl.by_source.reduce((n, s) => n + s.n, 0);
    const counts = el("p", { id: "dead-letter-counts" }, dl.by_source.map((s) => `${s.source}: ${s.n}`).join(" · ") || "none");
    if (dlPaged) { dlBox.querySelector("#dead-letter-counts").replaceWith(counts); return; }
    if (!dl.items.length) { dlBox.replaceChildren(el("h2", {}, "Dead letters (last 7 days)"), counts); return; }
    const t = table(["Time", "Source", "Topic", "Error", "Payload"], dl.items.map(dlRow));
    const more = V.moreButton("dead-letters-more", "/api/dead-letters", DL, dl.next_cursor, t.tBodies[0], dlRow);
    more.addEventListener("click", () => { dlPaged = true; }, { capture: true });
    dlBox.replaceChildren(el("h2", {}, "Dead letters (last 7 days)"), counts, t,
      el("p", {}, more, dl.next_cursor ? el("small", { class: "muted" }, ` newest ${dl.items.length} of ${total} shown`) : ""));
  }

  // Refreshed every 10 s. A refresh that fails (console restarting, its database down) leaves the last states on
  // the page, so they say when they were checked and a banner says they are no longer being: the page kept showing
  // "healthy" for a gateway nobody had asked about since, with nothing to tell it from a live answer.
  let lastOk = null;
  const stale = el("div", { id: "stale", class: "stale-banner", role: "alert", hidden: true });
  async function load() {
    let gws, dl;
    try {
      [gws, dl] = await Promise.all([api("/api/gateways", { quiet: true }), api("/api/dead-letters" + qs(DL), { quiet: true }).catch(() => null)]);
    } catch (e) {
      if (!lastOk) { V.failed("Gateways", e); return; }
      stale.textContent = `NOT UPDATED since ${V.fmtTime(lastOk)} (${e.status ? `${e.status}: ${e.message}` : "the console did not answer"}): `
        + "the states below may be out of date.";
      stale.hidden = false; document.body.classList.add("stale");
      return;
    }
    lastOk = new Date();
    stale.hidden = true; document.body.classList.remove("stale");
    if (dl) deadLetters(dl);
    main(el("h1", {}, "Gateways"), stale, el("p", { class: "muted", id: "checked" }, "Checked ", timeCell(lastOk.toISOString())),
      gws.items.length ? el("div", { class: "grid" }, gws.items.map(card)) : el("p", { class: "muted" }, "No gateways configured ([[gateways]] in the console configuration)."),
      dl || dlPaged ? dlBox : "");
    document.body.dataset.ready = "1";
  }
  load();
  setInterval(load, 10000);
})();
