/* Live alert board: filters, counts, acknowledge with a comment, history; live by server-sent events. */
"use strict";

(() => {
  const { el, api, qs, toast, timeCell, badge, main, can } = V;
  const params = new URLSearchParams(location.search);
  const filters = {
    site: params.get("site") || "", asset: params.getAll("asset"), severity: params.get("severity") || "",
    state: params.has("state") ? params.get("state") : "open",
  };
  const rows = new Map(); // id -> alert
  let source = null, nextCursor = null, countsTimer = null;
  const more = el("button", { class: "secondary", id: "load-more", onclick: () => loadMore() }, "Load older");
  // Every alert under the board's filters (not only the pages loaded), as CSV.
  const csv = V.csvLink("/api/alerts.csv", {}, { id: "alerts-csv", title: "the alerts under these filters as CSV" });
  const tbody = el("tbody", { id: "alert-rows" });
  const counts = el("div", { class: "counts", id: "counts" });
  const liveDot = el("span", { class: "live-dot", id: "live-dot", title: "live feed" });
  const liveText = el("span", { id: "live-text" }, "connecting…");
  // Conditions a current maintenance window hides (no alert is raised for them): read-only, refreshed each minute.
  const suppressedBox = el("section", { id: "suppressed", hidden: true });

  function stateParam() {
    return filters.state === "open" ? ["raised", "acknowledged"] : filters.state || undefined;
  }
  function query() {
    return { site: filters.site, asset: filters.asset, severity: filters.severity, state: stateParam() };
  }
  function visible(a) {
    const st = stateParam();
    return (!filters.site || a.site === filters.site) && (!filters.asset.length || filters.asset.includes(a.asset))
      && (!filters.severity || a.severity === filters.severity) && (!st || [].concat(st).includes(a.state));
  }

  function select(name, label, options) {
    // A value from the address that is not among the choices (a site renamed since the wall screen's link was made)
    // is shown as what it is: the select fell back to its first option, "all", over a board that filtered on the
    // unknown site and said "No alerts match." — read as no alert anywhere.
    if (filters[name] && !options.some(([v]) => v === filters[name])) options = [...options, [filters[name], `${filters[name]} (unknown)`]];
    const s = el("select", { id: "f-" + name, name, onchange: () => { filters[name] = s.value; syncUrl(); reload(); } },
      options.map(([v, t]) => el("option", { value: v, selected: filters[name] === v }, t)));
    return el("label", {}, label, s);
  }
  function syncUrl() {
    history.replaceState(null, "", location.pathname + qs({ site: filters.site, asset: filters.asset,
      severity: filters.severity, state: filters.state === "open" ? "" : filters.state }));
  }

  /** The asset page around the alert: its default view is the last 24 h, where an alert of the history (raised days
   * ago) was neither in the charts nor among the alerts listed. From 12 h before the raise to 12 h after it was
   * cleared (or now). */
  function assetHref(a) {
    const page = "/assets/" + encodeURIComponent(a.asset), raised = Date.parse(a.raised_at), now = Date.now();
    if (!(raised < now - 864e5)) return page;
    const end = Math.min(now, Math.max(raised, Date.parse(a.cleared_at) || now) + 432e5);
    return page + qs({ from: new Date(raised - 432e5).toISOString(), to: new Date(end).toISOString() });
  }

  function row(a, fresh) {
    const actions = el("td", { class: "actions" });
    if (can("alerts.write") && a.state === "raised") {
      const input = el("input", { placeholder: "comment (why / what was done)", class: "ack-comment typed", "aria-label": "comment" });
      const forget = V.draft(input, "alert:" + a.id);  // kept through a log-in after the session ended
      const btn = el("button", { class: "ack", onclick: async () => {
        btn.disabled = true;
        try {
          await api(`/api/alerts/${encodeURIComponent(a.id)}/ack`, { method: "POST", body: { comment: input.value } });
          forget();
          toast(`Alert ${a.id} acknowledged`);
        } catch (e) { btn.disabled = false; }
      } }, "Acknowledge");
      actions.append(el("div", { class: "ackbox" }, input, btn));
    } else if (can("alerts.write") && a.state === "acknowledged") {
      // A note to an acknowledged alert (the part ordered, the work done): the API took comments, the board had no
      // box for one. An acknowledgement refused because another engineer's came first (409) leaves its text here.
      const input = el("input", { placeholder: "add a comment", class: "alert-comment typed", "aria-label": "comment" });
      const forget = V.draft(input, "alert:" + a.id);
      const btn = el("button", { class: "secondary comment", onclick: async () => {
        if (!input.value.trim()) { input.focus(); return; }
        btn.disabled = true;
        try {
          await api(`/api/alerts/${encodeURIComponent(a.id)}/comment`, { method: "POST", body: { comment: input.value } });
          forget();
          input.value = "";
          toast(`Comment added to alert ${a.id}`);
          if (hist.dataset.loaded) { hist.dataset.loaded = ""; hist.replaceChildren(hist.firstChild); loadHistory(hist); }
        } catch (e) { /* api() said why (its toast) */ } finally { btn.disabled = false; }
      } }, "Comment");
      actions.append(el("div", { class: "ackbox" }, input, btn));
    }
    if (can("alerts.write") && a.state !== "cleared") {
      actions.append(el("button", { class: "secondary clear", onclick: async () => {
        const why = prompt("Clear this alert by hand: why?");
        if (why === null) return;
        await api(`/api/alerts/${encodeURIComponent(a.id)}/clear`, { method: "POST", body: { comment: why } });
      } }, "Clear"));
    }
    async function loadHistory(box) {
      if (!box.open || box.dataset.loaded) return;
      box.dataset.loaded = "1";  // one load however often it is toggled meanwhile
      let full;
      try { full = await api(`/api/alerts/${encodeURIComponent(a.id)}`); } catch (e) { box.dataset.loaded = ""; return; }
      box.append(el("ul", { class: "history" }, full.history.map((h) =>
        el("li", {}, timeCell(h.time), ` ${h.action} by ${h.actor}`, h.comment ? ` — “${h.comment}”` : ""))),
      el("pre", {}, V.jsonInPlantTime(full.evidence)));
      box.append(V.traceSection(a.id));
    }
    const hist = el("details", { class: "hist", ontoggle: (ev) => loadHistory(ev.target) }, el("summary", {}, "history & evidence"));
    return el("tr", { "data-id": a.id, "data-state": a.state, "data-raised": a.raised_at, class: fresh ? "new" : "" },
      el("td", {}, timeCell(a.raised_at)),
      el("td", {}, badge(a.severity, "sev-" + a.severity)),
      el("td", {}, badge(a.state, "st-" + a.state)),
      el("td", {}, a.site || ""),
      el("td", {}, el("a", { class: "asset-link", href: assetHref(a) }, a.asset), a.tag ? el("br") : "", a.tag ? el("small", {}, a.tag) : ""),
      el("td", {}, a.kind),
      el("td", { class: "msg" }, a.message || "", hist),
      el("td", { class: "lifecycle" }, a.acknowledged_by ? [a.acknowledged_by, el("br"), el("small", {}, V.fmtTime(a.acknowledged_at))] : "",
        // when and by whom it was cleared: the history view listed cleared alerts with no clue when they ended
        a.cleared_at ? el("div", { class: "cleared" }, el("small", {}, "cleared ", timeCell(a.cleared_at),
          a.cleared_by ? ` by ${a.cleared_by}` : "")) : ""),
      actions);
  }

  const empty = () => el("tr", { id: "no-alerts" }, el("td", { colspan: 9, class: "muted" }, "No alerts match."));
  function render() {
    // By instant, not by text: the times come in the database session's zone (a server set to Europe/Helsinki
    // answers +03:00, then +02:00 after the autumn change), and as text 03:10+02:00 sorted before 03:30+03:00.
    const list = [...rows.values()].filter(visible).sort((a, b) => Date.parse(b.raised_at) - Date.parse(a.raised_at));
    tbody.replaceChildren(...list.map((a) => row(a, false)));
    if (!list.length) tbody.append(empty());
  }
  /** One alert changed (live event): only its row is replaced or inserted in place. Rebuilding the whole table
   * per event wiped a comment being typed into another row's acknowledgement box and closed open histories,
   * and cost a full re-render of every loaded row per event in an alert storm. */
  function upsert(a, fresh) {
    const id = String(a.id);
    const old = [...tbody.children].find((tr) => tr.dataset.id === id);
    if (!visible(a)) { if (old) old.remove(); }
    else {
      const tr = row(a, fresh);
      // the same alert changed (escalated; acknowledged by another engineer first): the comment stays, in the
      // acknowledgement box or in the comment box that replaces it
      const typed = old?.querySelector("input.typed")?.value, input = tr.querySelector("input.typed");
      if (typed && input) input.value = typed;
      if (old) old.replaceWith(tr);
      else {
        const after = [...tbody.children].find((x) => x.dataset.raised && Date.parse(x.dataset.raised) < Date.parse(a.raised_at));
        tbody.insertBefore(tr, after || null);
      }
    }
    document.getElementById("no-alerts")?.remove();
    if (!tbody.querySelector("tr[data-id]")) tbody.append(empty());
  }
  function renderCounts(c) {
    const by = {};
    for (const x of c) by[x.state] = (by[x.state] || 0) + x.n;
    counts.replaceChildren(...["raised", "acknowledged", "cleared"].map((s) =>
      el("div", { class: "card", id: "count-" + s }, el("b", {}, by[s] || 0), s)));
  }

  /** The rows afresh, by id (no duplicates; an alert cleared meanwhile leaves the open view). Live events that
   * arrive while the list is on its way are newer than it or the same: they are applied again over it. The list
   * replaced them, so an alert raised (or acknowledged) while the board reloaded stayed off it (or raised). */
  let fetches = 0, arrived = null;
  async function refetch() {
    const mine = ++fetches;
    arrived = [];
    let page;
    try { page = await api("/api/alerts" + qs({ ...query(), limit: 200 }), { quiet: true }); }
    catch (e) { if (mine === fetches) arrived = null; throw e; }
    // filters changed meanwhile (assets picked in quick succession): the newer fetch's rows are the ones to show
    if (mine !== fetches) return;
    const live = arrived;
    arrived = null;
    rows.clear();
    for (const a of page.items) rows.set(String(a.id), a);
    for (const a of live) {  // each event's row as it was sent, unless the list has a newer one of the alert
      const listed = rows.get(String(a.id));
      if (!listed || Date.parse(a.changed_at) >= Date.parse(listed.changed_at)) rows.set(String(a.id), a);
    }
    nextCursor = page.next_cursor;
    more.hidden = !nextCursor;
    renderCounts(page.counts);
    render();
  }
  async function reload() {
    csv.set(query());
    // The stream first: an alert raised between the list's query and a stream opened after it came on neither
    // (a board told to reload in an alert storm lost those raised meanwhile).
    connect();
    await refetch();
  }
  async function loadMore() {
    const page = await api("/api/alerts" + qs({ ...query(), limit: 200, cursor: nextCursor }));
    for (const a of page.items) rows.set(String(a.id), a);
    nextCursor = page.next_cursor;
    more.hidden = !nextCursor;
    render();
  }
  function refreshCounts() {  // at most once a second, however many alerts arrive
    if (countsTimer) return;
    countsTimer = setTimeout(() => {
      countsTimer = null;
      api("/api/alerts" + qs({ ...query(), limit: 1 }), { quiet: true }).then((p) => renderCounts(p.counts)).catch(() => {});
    }, 1000);
  }

  // A 24/7 wall screen: the stream must come back by itself after the console or the database restarts, and
  // what changed meanwhile must be fetched (the new process's feed starts from its own start). An EventSource
  // retries by itself after a dropped connection, but gives up for good on an HTTP error (a proxy's 502, the
  // console's 503 while the database is down): then we retry, with a growing pause. While not live the board
  // says so in a banner with the time it stopped being live, instead of a stale table looking current.
  let downSince = null, retryTimer = null, retryDelay = 2000, staleTimer = null;
  const stale = el("div", { id: "stale", class: "stale-banner", role: "alert", hidden: true });
  function markDown() {
    liveDot.classList.remove("on"); liveText.textContent = "reconnecting…";
    if (downSince) return;
    downSince = new Date();
    staleTimer = setTimeout(() => {  // a blip of a second or two is not worth a banner
      stale.textContent = `NOT LIVE since ${V.fmtZoned(downSince)}: reconnecting; the alerts below may be out of date.`;
      stale.hidden = false; document.body.classList.add("stale");
    }, 5000);
  }
  async function markUp() {
    liveDot.classList.add("on"); liveText.textContent = "live";
    retryDelay = 2000;
    if (!downSince) return;
    downSince = null; clearTimeout(staleTimer);
    try { await refetch(); } catch (e) { markDown(); return; }  // what changed while the stream was away
    stale.hidden = true; document.body.classList.remove("stale");
  }
  async function retry() {
    retryTimer = null;
    // 401: the session ended meanwhile (expiry on a wall screen): say so, then the log-in page
    const r = await fetch("/api/auth/me", { credentials: "same-origin" }).catch(() => null);
    if (r && r.status === 401) return sessionEnded();
    connect();
  }
  function sessionEnded() {
    if (source) source.close();
    stale.textContent = "Session ended: this board is no longer live. Log in again.";
    stale.hidden = false; document.body.classList.add("stale");
    setTimeout(() => location.reload(), 1500);
  }
  function connect() {
    if (source) source.close();
    source = new EventSource("/api/alerts/stream" + qs({ site: filters.site, asset: filters.asset }));
    source.addEventListener("open", () => markUp());
    source.addEventListener("error", () => {
      markDown();
      if (source.readyState === EventSource.CLOSED && !retryTimer) {  // the browser will not retry: we do
        retryTimer = setTimeout(retry, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 30000);
      }
    });
    source.addEventListener("reload", () => reload());
    // the session ended (log-out, expiry, user disabled): reconnecting would only get 401 for ever, so reload the
    // page, which sends the browser to the log-in page and back here afterwards
    source.addEventListener("session-ended", () => sessionEnded());
    source.addEventListener("alert", (ev) => {
      const a = JSON.parse(ev.data);
      if (arrived) arrived.push(a);
      const known = rows.has(String(a.id));
      rows.set(String(a.id), a);
      upsert(a, !known);
      if (!known && visible(a)) toast(`New ${a.severity} alert on ${a.asset}: ${a.message || a.kind}`);
      refreshCounts();
    });
  }

  async function loadSuppressed() {
    let items = [];
    try { items = (await api("/api/alerts/suppressed" + qs({ asset: filters.asset }), { quiet: true })).items; }
    catch (e) { return; }
    suppressedBox.hidden = !items.length;
    suppressedBox.replaceChildren(el("h2", {}, `Suppressed by maintenance windows (${items.length})`),
      el("table", { class: "suppressed" }, el("tbody", {}, items.map((s) => V.suppressedRow(s)))));
  }

  async function init() {
    let sites = [];
    try { sites = (await api("/api/sites", { quiet: true })).items.map((s) => s.site); } catch (e) { /* board works without */ }
    // one or several assets, searched on the server as one types (a select of every asset was 20 requests at 20,000)
    const assetPicker = V.assetPicker({ id: "f-asset", chosen: filters.asset, onchange: (names) => {
      filters.asset = names; syncUrl(); loadSuppressed(); reload();
    } });
    main(
      el("h1", {}, "Alert board ", el("small", {}, liveDot, liveText)),
      stale,
      counts,
      el("div", { class: "row filters" },
        select("site", "Site", [["", "all"], ...sites.map((s) => [s, s])]),
        el("div", { class: "field" }, "Asset", assetPicker),  // not a <label>: a click on it would press a chip's ×
        select("severity", "Severity", [["", "all"], ["critical", "critical"], ["warning", "warning"], ["info", "info"]]),
        select("state", "State", [["open", "open (raised + acknowledged)"], ["raised", "raised"],
          ["acknowledged", "acknowledged"], ["cleared", "cleared (history)"], ["", "all"]]), csv),
      el("table", { id: "alerts" }, el("thead", {}, el("tr", {},
        ["Raised", "Severity", "State", "Site", "Asset / tag", "Kind", "Message", "Acknowledged / cleared", ""].map((h) => el("th", {}, h)))), tbody),
      el("p", {}, more), suppressedBox);
    loadSuppressed();
    setInterval(loadSuppressed, 60000);
    try { await reload(); } catch (e) {
      tbody.replaceChildren(el("tr", {}, el("td", { colspan: 9, class: "bad-text" }, e.message)));
    }
  }
  init();
})();
