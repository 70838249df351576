/* Assets by site, each with its tags and their newest value. */
"use strict";

(async () => {
  const { el, apiAll, main, table } = V;
  let assets;
  try { assets = await apiAll("/api/assets", { limit: 1000 }, { quiet: true }); }
  catch (e) { V.failed("Assets", e); return; }
  const bySite = {};
  for (const a of assets) (bySite[a.site || "(no site)"] = bySite[a.site || "(no site)"] || []).push(a);
  main(el("h1", {}, "Assets"),
    ...(assets.length ? [] : [el("p", { class: "muted" }, "No assets registered yet (the gateway writes them from its configuration).")]),
    ...Object.entries(bySite).sort().map(([site, list]) => el("section", {},
      el("h2", {}, site),
      table(["Asset", "Kind", "Description", "Tags"], list.map((a) => el("tr", {},
        el("td", {}, el("a", { href: "/assets/" + encodeURIComponent(a.name), class: "asset-link" }, a.name)),
        el("td", {}, a.kind), el("td", {}, a.description), el("td", {}, a.tags)))))));
})();
