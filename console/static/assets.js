/* Assets: searched on the server (name, area/site, kind, description) and shown 200 at a time with "Load more";
   a site of tens of thousands of assets was read whole before the page showed anything. */
"use strict";

(() => {
  const { el, api, qs, main, table, moreButton } = V;
  const PAGE = 200;
  const box = el("input", { type: "search", id: "asset-search", autocomplete: "off", size: 40,
    placeholder: "name, area, kind or description", value: new URLSearchParams(location.search).get("q") || "" });
  const results = el("section", { id: "asset-results" });
  let latest = 0;
  let timer = null;

  function row(a) {
    return el("tr", { "data-asset": a.name },
      el("td", {}, el("a", { href: "/assets/" + encodeURIComponent(a.name), class: "asset-link" }, a.name)),
      el("td", {}, a.site), el("td", {}, a.kind), el("td", {}, a.description), el("td", {}, a.tags));
  }

  async function load() {
    const q = box.value.trim();
    const mine = ++latest;
    const query = { q, limit: PAGE };
    const page = await api("/api/assets" + qs(query), { quiet: true });
    if (mine !== latest) return;  // typed on meanwhile: the newer search's answer is what the list shows
    history.replaceState(null, "", location.pathname + qs({ q }));  // a reload or a link keeps the search
    if (!page.items.length) {
      results.replaceChildren(el("p", { class: "muted", id: "asset-none" }, q ? `No asset matches "${q}".`
        : "No assets registered yet (the gateway writes them from its configuration)."));
    } else {
      const t = table(["Asset", "Site", "Kind", "Description", "Tags"], page.items.map(row));
      results.replaceChildren(t, el("p", {}, moreButton("assets-more", "/api/assets", query, page.next_cursor,
        t.tBodies[0], row, "Load more")));
    }
    results.dataset.q = q;  // what the list shows now (tests wait for it)
    document.body.dataset.ready = "1";
  }

  async function search() {
    try { await load(); } catch (e) {
      results.replaceChildren(el("p", { class: "bad-text", role: "alert" }, `Search failed: ${e.status ? e.status + ": " : ""}${e.message}`));
    }
  }

  box.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 250); });
  main(el("h1", {}, "Assets"), el("div", { class: "row" }, el("label", {}, "Search", box)), results);
  load().catch((e) => V.failed("Assets", e));
})();
