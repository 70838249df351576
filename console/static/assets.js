/* Assets: searched on the server (name, area/site, kind, description) and shown 200 at a time with "Load more";
   a site of tens of thousands of assets was read whole before the page showed anything. */
"use strict";

(() => {
  const { el, qs, main, table, moreButton } = V;
  const PAGE = 200;
  const box = el("input", { type: "search", id: "asset-search", autocomplete: "off", size: 40,
    placeholder: "name, area, kind or description", value: new URLSearchParams(location.search).get("q") || "" });
  const results = el("section", { id: "asset-results" });

  function row(a) {
    return el("tr", { "data-asset": a.name },
      el("td", {}, el("a", { href: "/assets/" + encodeURIComponent(a.name), class: "asset-link" }, a.name)),
      el("td", {}, a.site), el("td", {}, a.kind), el("td", {}, a.description), el("td", {}, a.tags));
  }

  function show(page, q, query) {
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

  // the newest search's answer only, 250 ms after the last key (V.assetSearch)
  const search = V.assetSearch(box, show, { limit: PAGE, failed: (e) => results.replaceChildren(
    el("p", { class: "bad-text", role: "alert" }, `Search failed: ${e.status ? e.status + ": " : ""}${e.message}`)) });
  main(el("h1", {}, "Assets"), el("div", { class: "row" }, el("label", {}, "Search", box)), results);
  search().catch((e) => V.failed("Assets", e));
})();
