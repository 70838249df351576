/* Maintenance windows: current and upcoming windows (alerts of their assets are suppressed), the recent past,
   and for maintenance/admin a form to plan one in the site's local time and buttons to end or cancel. */
"use strict";

(() => {
  const { el, api, apiAll, assetPicker, moreButton, qs, main, badge, timeCell, table, toast, can } = V;
  const STATE_CLASS = { current: "st-acknowledged", upcoming: "st-cleared", past: "", cancelled: "" };
  // The form's zone: the plant's (console.time_zone) when configured, else the browser's. A control-room PC set to
  // UTC planned a Helsinki plant's 22:00 window for 00:00 local when the planner did not notice the zone field.
  const browserZone = document.querySelector('meta[name="time-zone"]')?.content
    || Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  // the assets whose windows are listed (none: all), in the address so that a reload or a link keeps them
  let assetFilter = new URLSearchParams(location.search).getAll("asset");
  const filter = assetPicker({ id: "mw-filter", chosen: assetFilter, onchange: (names) => {
    assetFilter = names;
    history.replaceState(null, "", location.pathname + qs({ asset: names }));
    load().catch((e) => V.failed("Maintenance windows", e));
  } });
  const content = el("section", { id: "mw-content" });

  /** A time as the planner gave it (local in the window's zone) with the UTC instant as tooltip. */
  function when(local, utc, zone) {
    if (!local) return timeCell(utc);
    return el("time", { datetime: utc, title: utc }, local.replace("T", " ").slice(0, 16), " ", el("small", { class: "muted" }, zone));
  }

  // Ending or cancelling asks first: a stray click ended a running window at once, and the asset's alerts were
  // raised again in the middle of the work (neither can be undone).
  const what = (w) => `window #${w.id} on ${w.asset === "*" ? "every asset" : w.asset} (${w.reason})`;

  function actions(w, reload) {
    if (!can("windows.plan")) return "";
    if (w.state === "current") {
      return el("button", { class: "secondary", "data-action": "end", onclick: async () => {
        if (!window.confirm(`End ${what(w)} now? Its alerts are no longer suppressed; this cannot be undone.`)) return;
        await api(`/api/maintenance-windows/${w.id}/end`, { method: "POST", body: { comment: "ended from the console" } });
        toast(`window #${w.id} ended`); reload();
      } }, "End now");
    }
    if (w.state === "upcoming") {
      return el("button", { class: "bad", "data-action": "cancel", onclick: async () => {
        if (!window.confirm(`Cancel ${what(w)}? It will not suppress alerts when it starts; this cannot be undone.`)) return;
        await api(`/api/maintenance-windows/${w.id}/cancel`, { method: "POST", body: { reason: "cancelled from the console" } });
        toast(`window #${w.id} cancelled`); reload();
      } }, "Cancel");
    }
    return "";
  }

  function rows(items, reload) {
    return table(["#", "Asset", "State", "Start", "End", "Reason", "Planned by", ""], items.map((w) => row(w, reload)));
  }

  function row(w, reload) {
    return el("tr", { "data-window": w.id },
      el("td", {}, w.id), el("td", {}, w.asset === "*" ? "every asset" : w.asset, w.tag ? el("small", {}, ` (${w.tag})`) : ""),
      el("td", {}, badge(w.state, STATE_CLASS[w.state])),
      el("td", {}, when(w.starts_local, w.starts_at, w.time_zone)),
      el("td", {}, when(w.ends_local, w.ends_at, w.time_zone),
        w.ended_by ? el("small", { class: "muted" }, ` ended by ${w.ended_by}`) : "",
        w.cancelled_by ? el("small", { class: "muted" }, ` cancelled by ${w.cancelled_by}`) : ""),
      el("td", {}, w.reason), el("td", {}, w.created_by), el("td", {}, actions(w, reload)));
  }

  /** The planning form; built once (the lists below it are loaded again after a change of the filter, and a
   * half-filled form lost its assets and times), afresh after a window is planned. */
  // What the planner filled in is kept in the tab (V.draft) until the window is planned: a session that had ended
  // meanwhile sent "Plan window" to the log-in form and back to an empty form.
  const ASSETS_DRAFT = "valvoja-draft:mw-assets";
  const savedAssets = () => { try { return JSON.parse(sessionStorage.getItem(ASSETS_DRAFT)) || []; } catch (e) { return []; } };
  const saveAssets = (names) => { try { sessionStorage.setItem(ASSETS_DRAFT, JSON.stringify(names)); } catch (e) { /* storage off */ } };

  function form(reload) {
    const f = {
      assets: assetPicker({ id: "mw-assets", none: "none chosen yet", label: "Assets", chosen: savedAssets(), onchange: saveAssets }),
      start: el("input", { id: "mw-start", type: "datetime-local", required: true }),
      end: el("input", { id: "mw-end", type: "datetime-local", required: true }),
      zone: el("input", { id: "mw-zone", value: browserZone, size: 18 }),
      reason: el("input", { id: "mw-reason", placeholder: "work order, job", size: 30 }),
      long: el("input", { id: "mw-long", type: "checkbox" }),
      // A site-wide shutdown (a turnaround) is one window on '*', not one per asset picked from thousands.
      every: el("input", { id: "mw-every", type: "checkbox", onchange: () => {
        f.assets.classList.toggle("disabled", f.every.checked);
        f.assets.querySelector("input").disabled = f.every.checked;
      } }),
    };
    const forget = [["start", "mw-start"], ["end", "mw-end"], ["zone", "mw-zone"], ["reason", "mw-reason"]]
      .map(([field, key]) => V.draft(f[field], key));
    // One window per click: a double-click planned every window twice, and "End now" on one left its twin
    // suppressing the asset's alerts. The button stays off while the plan is on its way (on again if refused).
    const submit = async () => {
      if (button.disabled) return;
      button.disabled = true;
      let r;
      try {
        r = await api("/api/maintenance-windows", { method: "POST", body: {
          assets: f.every.checked ? ["*"] : f.assets.value, starts_at: f.start.value, ends_at: f.end.value, time_zone: f.zone.value,
          reason: f.reason.value, long: f.long.checked } });
      } catch (e) { button.disabled = false; return; }  // api() said why (its toast)
      toast(`planned ${r.items.length} window(s)`);
      forget.forEach((done) => done());
      saveAssets([]);
      planner.replaceWith(planner = form(reload));
      reload();
    };
    const button = el("button", { id: "mw-submit", onclick: submit }, "Plan window");
    return el("section", { class: "card", id: "mw-form" }, el("h2", {}, "Plan a window"),
      el("p", { class: "muted" }, "Start and end are wall-clock times in the time zone given (the site's); a window over a clock change ends when the clocks show its end."),
      el("div", { class: "row" },
        // the checkbox above the picker: the list of matches opens below the search box and would cover it
        el("div", { class: "field" }, "Assets", el("label", {}, f.every, " every asset (site-wide)"), f.assets),
        el("label", {}, "Start", f.start), el("label", {}, "End", f.end),
        el("label", {}, "Time zone (IANA)", f.zone), el("label", {}, "Reason", f.reason),
        el("label", {}, "Longer than 14 days", f.long),
        button));
  }

  async function load() {
    const asset = { asset: assetFilter };
    // Current and upcoming whole; the ended ones 20 at a time with "Load older" (only the newest 20 could be seen).
    const ended = { ...asset, state: ["past", "cancelled"], limit: 20 };
    const [active, recent] = await Promise.all([
      apiAll("/api/maintenance-windows", { ...asset, state: ["current", "upcoming"], limit: 200 }),
      api("/api/maintenance-windows" + qs(ended))]);
    const recentTable = recent.items.length ? rows(recent.items, load) : null;
    content.replaceChildren(
      el("h2", {}, "Current and upcoming"),
      active.length ? rows(active, load) : el("p", { class: "muted", id: "mw-none" }, "No current or upcoming windows."),
      planner,
      el("h2", {}, "Recently ended or cancelled"),
      recentTable ? el("div", { id: "mw-recent" }, recentTable, el("p", {}, moreButton("mw-recent-more", "/api/maintenance-windows", ended,
        recent.next_cursor, recentTable.tBodies[0], (w) => row(w, load)))) : el("p", { class: "muted" }, "None."));
    content.dataset.asset = assetFilter.join(" ");  // the filter the lists show (tests wait for it)
    document.body.dataset.ready = "1";
  }
  // The heading and the filter stay while the lists below are loaded again: the filter's search box keeps its focus.
  let planner = can("windows.plan") ? form(() => load().catch((e) => V.failed("Maintenance windows", e))) : "";
  main(el("h1", {}, "Maintenance windows"),
    el("p", { class: "muted" }, "Alerts of an asset are not raised while a window covers it; a running gateway sees a change within 15 s."),
    el("div", { class: "row" }, el("div", { class: "field" }, "Asset", filter)), content);
  load().catch((e) => V.failed("Maintenance windows", e));
})();
