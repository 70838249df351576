/* Valvoja console: shared helpers for every page (no framework, no build step). */
"use strict";

const V = (() => {
  let csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";
  const role = document.getElementById("user")?.dataset.role || "viewer";
  const userName = document.getElementById("user")?.dataset.name || "";
  const PERMS = {
    viewer: ["read"], engineer: ["read", "alerts.write"], maintenance: ["read", "predictions.review", "windows.plan"],
    admin: ["read", "alerts.write", "predictions.review", "windows.plan", "users.admin", "models.admin"],
  };

  /** Build an element: el("td", {class: "x", onclick: f}, child, "text", ...). */
  function el(tag, attrs, ...children) {
    const svg = ["svg", "g", "path", "line", "rect", "text", "polygon", "polyline", "circle", "title"].includes(tag);
    const e = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (k === "text") e.textContent = v;
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children.flat(Infinity)) {  // nested lists of children (a section built from parts)
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  // At most TOAST_MAX notices at once; more within their time become one "and N more" line. An alert storm (a
  // gateway back after an outage, a plant trip) stacked one toast per new alert over the board it was about:
  // 200 alerts, 200 toasts, the whole screen. Errors (a refused action) are always shown: they are the user's.
  const TOAST_MAX = 4;
  let more = null, moreN = 0, moreTimer = null;
  function toast(msg, kind) {
    const box = document.getElementById("toasts");
    if (kind !== "error" && box.querySelectorAll(".toast:not(.error):not(.toast-more)").length >= TOAST_MAX) {
      moreN += 1;
      if (!more) { more = el("div", { class: "toast toast-more" }); box.append(more); }
      more.textContent = `… and ${moreN} more`;
      clearTimeout(moreTimer);
      moreTimer = setTimeout(() => { more.remove(); more = null; moreN = 0; }, 6000);
      return;
    }
    const t = el("div", { class: "toast " + (kind || "") }, msg);
    box.insertBefore(t, more);  // the "more" line stays last
    setTimeout(() => t.remove(), kind === "error" ? 8000 : 4000);
  }

  /** fetch JSON from the API; unsafe methods carry the CSRF token; problem documents become errors. */
  async function api(path, opts = {}) {
    const init = { method: opts.method || "GET", headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (opts.body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(opts.body);
    }
    if (init.method !== "GET") init.headers["X-CSRF-Token"] = csrf;
    const r = await fetch(path, init);
    if (r.status === 403 && init.method !== "GET" && !opts.renewed && await renewCsrf(r)) return api(path, { ...opts, renewed: true });
    // back to this page with its filters (the address's query): only the path came back, the board unfiltered
    if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search); throw new Error("log in"); }
    if (r.status === 204) return null;
    const body = await r.json().catch(() => ({}));
    if (!r.ok) {
      // times the server quotes (an acknowledgement that came first, a window's start) in plant time, as the page
      // shows them: "acknowledged by anna at 2026-12-07T08:10:00.52+00:00" on a Helsinki board read as 08:10
      const detail = typeof body.detail === "string" ? body.detail.replace(ISO_IN_TEXT, (t) => fmtTime(t)) : "";
      const err = new Error(detail || r.statusText);
      err.status = r.status; err.problem = body;
      if (!opts.quiet) toast(detail || `${r.status} ${r.statusText}`, "error");
      throw err;
    }
    return body;
  }

  /** After a 403 ``/problems/csrf``: whether this page now holds the CSRF token of the browser's session. The browser
   * logged in again meanwhile (in another tab, after the session had ended): the page held the old session's token,
   * and each acknowledgement or review was refused as "missing or wrong CSRF token" until it was reloaded. Taken
   * from ``/api/auth/me`` (same origin only) when the session is the same user's; another user's (a shared PC) is
   * refused with a toast saying so: what this page sends would be done in that user's name. */
  async function renewCsrf(r) {
    const problem = await r.clone().json().catch(() => ({}));
    if (problem.type !== "/problems/csrf") return false;
    const me = await fetch("/api/auth/me", { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((x) => (x.ok ? x.json() : null)).catch(() => null);
    if (!me || !me.csrf_token) return false;
    if (me.name !== userName) {
      const err = new Error(`This browser is now logged in as ${me.name}, not ${userName}: reload the page to go on as ${me.name}.`);
      err.status = 403;
      toast(err.message, "error");
      throw err;
    }
    csrf = me.csrf_token;
    return true;
  }

  /** Every item of a paged list (``next_cursor`` followed): the asset filters took one page of 1,000 and a site
   * with more lost the rest from its filters and its asset list without a word. */
  async function apiAll(path, params = {}, opts = {}) {
    const items = [];
    let cursor = null;
    do {
      const page = await api(path + qs({ ...params, cursor }), opts);
      items.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor);
    return items;
  }

  /** A "Load older" button (or ``label``) that appends the next pages of a list to ``tbody`` (rows made by ``row``);
   * hidden while there is no ``cursor``. The same paging as the board's and the asset page's reviews. */
  function moreButton(id, path, params, cursor, tbody, row, label = "Load older") {
    const b = el("button", { class: "secondary", id, hidden: !cursor, onclick: async () => {
      b.disabled = true;
      try {
        const next = await api(path + qs({ ...params, cursor }));
        tbody.append(...next.items.map(row));
        cursor = next.next_cursor;
        b.hidden = !cursor;
      } finally { b.disabled = false; }
    } }, label);
    return b;
  }

  /** Search-as-you-type over ``GET /api/assets?q=`` for the text of the input ``box``: a search 250 ms after the
   * last key, and ``show(page, q, query)`` with the answer to the newest search only (an answer to an older one that
   * arrives late is dropped: it would put back a list the user had typed past). Returns ``search()``, the search
   * of what the box holds now; a failed typed search goes to ``failed(e)``. Every asset list with a search box (the
   * assets page, the pickers below) uses it: a site of 20,000 assets is never read whole. */
  function assetSearch(box, show, { limit = 200, failed = () => {} } = {}) {
    let latest = 0, timer = null;
    async function search() {
      const q = box.value.trim();
      const mine = ++latest;
      const query = { q, limit };
      const page = await api("/api/assets" + qs(query), { quiet: true });
      if (mine === latest) show(page, q, query);
    }
    box.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => search().catch(failed), 250); });
    return search;
  }

  /** A picker of one or several assets (id ``id``): the chosen ones as chips with a remove button (``#ID-chosen``),
   * a search box (``#ID-q``) whose first matches (``#ID-results``, ``data-q`` the search shown) are buttons that add
   * one (Enter: the first; the arrow keys move among them). ``onchange(names)`` after each change; ``.value`` is the choice. It replaces a select of
   * every asset: at 20,000 assets a page read the whole list (20 requests) to fill one. */
  function assetPicker({ id, chosen = [], none = "all assets", onchange = () => {}, label = "Asset" }) {
    let value = [...new Set(chosen)];
    const box = el("input", { type: "search", id: id + "-q", autocomplete: "off", size: 18,
      placeholder: "search assets", "aria-label": label + ": search" });
    const results = el("div", { class: "picker-results", id: id + "-results", role: "listbox", hidden: true });
    const chips = el("span", { class: "picker-chosen", id: id + "-chosen" });
    const wrap = el("span", { class: "picker-box" }, box, results);
    const picker = el("span", { class: "asset-picker", id }, chips, wrap);

    function renderChips() {
      chips.replaceChildren(...(value.length ? value.map((name) => el("span", { class: "chip", "data-asset": name },
        name, el("button", { type: "button", class: "chip-x", title: "remove " + name, "aria-label": "remove " + name,
          onclick: () => set(value.filter((x) => x !== name)) }, "×")))
        : [el("span", { class: "muted" }, none)]));
    }
    function set(names) {
      value = names;
      renderChips();
      results.querySelectorAll("button[data-asset]").forEach((b) => b.classList.toggle("chosen",
        value.includes(b.dataset.asset)));
      onchange([...value]);
    }
    const failed = (e) => { results.replaceChildren(el("small", { class: "bad-text" },
      `search failed: ${e.status ? e.status + ": " : ""}${e.message}`)); results.hidden = false; };
    const search = assetSearch(box, (page, q) => {
      results.replaceChildren(...page.items.map((a) => el("button", { type: "button", role: "option",
        class: "secondary" + (value.includes(a.name) ? " chosen" : ""), "data-asset": a.name,
        title: [a.site, a.kind, a.description].filter(Boolean).join(" · "),
        // a mousedown would move the focus out of the box, which hides the list before the click lands
        onmousedown: (ev) => ev.preventDefault(),
        onclick: () => { if (!value.includes(a.name)) set([...value, a.name]); box.focus(); } }, a.name)),
      page.next_cursor ? el("small", { class: "muted" }, `the first ${page.items.length}: type more`) : "",
      page.items.length ? "" : el("small", { class: "muted" }, q ? `no asset matches "${q}"` : "no assets"));
      results.dataset.q = q;  // what the list shows now (tests wait for it)
      results.hidden = !wrap.contains(document.activeElement);
    }, { limit: 20, failed });
    // A search when the focus comes from outside the picker; back from one of its matches (an arrow key, a pick)
    // the list stays: an answer arriving while a match has the focus would replace that button and drop the focus.
    box.addEventListener("focus", (ev) => {
      if (wrap.contains(ev.relatedTarget)) results.hidden = false;
      else search().catch(failed);
    });
    wrap.addEventListener("focusout", (ev) => { if (!wrap.contains(ev.relatedTarget)) results.hidden = true; });
    box.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") results.hidden = true;
      const first = results.querySelector("button[data-asset]");
      // only from the list of what the box says now: within 250 ms of a key it can still be the previous search's
      if (ev.key === "Enter" && first && results.dataset.q === box.value.trim()) { ev.preventDefault(); first.click(); }
      if (ev.key === "ArrowDown" && first && !results.hidden && results.dataset.q === box.value.trim()) {
        ev.preventDefault();
        first.focus();
      }
    });
    // A listbox's keys: up and down move among the matches (up from the first: back to the box), Escape goes back
    // to the box; Enter or Space on a match adds it (a button's own keys).
    results.addEventListener("keydown", (ev) => {
      const options = [...results.querySelectorAll("button[data-asset]")];
      const at = options.indexOf(document.activeElement);
      if (at < 0) return;
      if (ev.key === "ArrowDown") { ev.preventDefault(); options[Math.min(at + 1, options.length - 1)].focus(); }
      else if (ev.key === "ArrowUp") { ev.preventDefault(); (at ? options[at - 1] : box).focus(); }
      else if (ev.key === "Escape") { ev.preventDefault(); box.focus(); results.hidden = true; }
    });
    renderChips();
    Object.defineProperty(picker, "value", { get: () => [...value] });
    return picker;
  }

  /** What is typed into ``input`` (a comment), kept in this tab's sessionStorage under ``key`` and put back when the
   * input is made again: a session that ends sends the page to the log-in form (an API call answered 401, the board's
   * stream ending) and back, and the comment typed for an acknowledgement or a review was gone with the page.
   * Returns ``forget()``, for when it was sent. */
  function draft(input, key) {
    const k = "valvoja-draft:" + key;
    const store = (f) => { try { return f(sessionStorage); } catch (e) { return null; } };  // storage off: no drafts
    const saved = store((s) => s.getItem(k));
    if (saved) input.value = saved;  // over a default (the windows form's zone): it is what was typed
    input.addEventListener("input", () => store((s) => (input.value ? s.setItem(k, input.value) : s.removeItem(k))));
    return () => store((s) => s.removeItem(k));
  }

  /** A "CSV" link to a download route (``path``: ``/api/alerts.csv``, ...) for the query ``params``; the browser saves
   * the file under the name the server gives (what, which range; ``_TRUNCATED-<n>-rows`` when cut at the row cap).
   * ``.set(params)`` points it at another query (the board's filters changed). A plain link, no ``download``
   * attribute: the file comes as ``Content-Disposition: attachment`` anyway, and with the attribute the browser also
   * saved whatever else came back as the file (the log-in form after a session expired, a problem document). */
  function csvLink(path, params, { id, title } = {}) {
    const a = el("a", { class: "button secondary csv", id, title, href: path + qs(params) }, "CSV");
    a.set = (p) => { a.href = path + qs(p); };
    return a;
  }

  function qs(params) {
    const u = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) {
      if (v === undefined || v === null || v === "") continue;
      (Array.isArray(v) ? v : [v]).forEach((x) => u.append(k, x));
    }
    const s = u.toString();
    return s ? "?" + s : "";
  }

  // The plant's zone (console.time_zone), else the browser's: a wall screen set to UTC shows plant time.
  const plantZone = document.querySelector('meta[name="time-zone"]')?.content || undefined;
  /** A time in the IANA zone ``tz`` with its UTC offset, to the minute (``seconds``: to the second). */
  function zoned(d, tz, seconds) {
    const parts = Object.fromEntries(new Intl.DateTimeFormat("en-GB", { timeZone: tz, year: "numeric",
      month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", second: seconds ? "2-digit" : undefined,
      hourCycle: "h23", timeZoneName: "longOffset" }).formatToParts(d).map((x) => [x.type, x.value]));
    const off = parts.timeZoneName === "GMT" ? "+00:00" : parts.timeZoneName.replace("GMT", "");
    return { text: `${parts.year}-${parts.month}-${parts.day} ${parts.hour}:${parts.minute}${seconds ? ":" + parts.second : ""}`, off };
  }
  let clockFmt = null;
  /** The wall clock of the plant's zone at ``t`` (ms or Date): two-digit ``month``, ``day``, ``hour``, ``minute``,
   * ``second`` strings, and ``offMs``, the zone's UTC offset then. Chart axes are labelled with it, as every other
   * time on the pages: their labels in the browser's zone put an alert marker at "12:00" that the table said
   * happened at 14:00 +02:00. */
  function plantClock(t) {
    clockFmt = clockFmt || new Intl.DateTimeFormat("en-GB", { timeZone: plantZone, year: "numeric", month: "2-digit",
      day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23", timeZoneName: "longOffset" });
    const p = Object.fromEntries(clockFmt.formatToParts(new Date(t)).map((x) => [x.type, x.value]));
    const m = /GMT([+-])(\d{2}):(\d{2})/.exec(p.timeZoneName);
    p.offMs = m ? (m[1] === "-" ? -1 : 1) * (Number(m[2]) * 60 + Number(m[3])) * 6e4 : 0;
    return p;
  }
  /** Plant time, unambiguous: 2024-05-01 14:03:07 +03:00 (the tooltip shows the ISO-8601 UTC time). */
  function fmtTime(t) {
    if (!t) return "";
    const z = zoned(t instanceof Date ? t : new Date(t), plantZone, true);
    return `${z.text} ${z.off}`;
  }
  /** A time in the IANA zone ``tz`` (else the plant's) with its offset: 2026-12-07 06:00 (UTC+02:00 Europe/Helsinki). */
  function fmtZoned(t, tz) {
    if (!t) return "";
    const d = t instanceof Date ? t : new Date(t);
    let z;
    try { z = zoned(d, tz || plantZone); } catch (e) { z = zoned(d, plantZone); tz = plantZone; }  // unknown zone
    return `${z.text} (UTC${z.off}${tz || plantZone ? " " + (tz || plantZone) : ""})`;
  }
  /** One condition hidden by a maintenance window: "P-102 · tag: message — suppressed by window #12 until …". */
  function suppressedRow(s) {
    const w = s.window;
    return el("tr", { "data-asset": s.asset, "data-window": w.id },
      el("td", {}, badge(s.severity || "", "sev-" + (s.severity || "info"))),
      el("td", {}, el("a", { href: "/assets/" + encodeURIComponent(s.asset) }, s.asset), s.tag ? [el("br"), el("small", {}, s.tag)] : ""),
      el("td", { class: "msg" }, s.message || s.kind),
      el("td", {}, `suppressed by `, el("a", { href: "/maintenance" + qs({ asset: s.asset }) }, `window #${w.id}`),
        ` until ${fmtZoned(w.ends_at, w.time_zone)}`, el("br"), el("small", {}, w.reason || ""),
        el("br"), el("small", { class: "muted" }, "first seen ", fmtZoned(s.seen_at, w.time_zone))));
  }
  const ISO_IN_TEXT = /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z)/g;
  const ISO_TIME = /^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})$/;
  /** Evidence as indented JSON with its times in plant time, as everywhere else on the page: the stored UTC
   *  times read like another zone's wall clock next to the plant-time history above them. */
  function jsonInPlantTime(x) {
    return JSON.stringify(x || {}, (k, v) => (typeof v === "string" && ISO_TIME.test(v) ? fmtTime(v.replace(" ", "T")) : v), 1);
  }
  function timeCell(t) { return el("time", { datetime: t || "", title: t || "" }, fmtTime(t)); }
  /** A number to 4 significant digits, but never fewer than its integer part has: a flue gas flow of 234,567 Nm³/h
   * read "234600" (4 digits, the rest made zeros); 1e6 and more, and under 0.001, in exponent form. */
  function fmtNum(v, digits = 4) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e6 || a < 1e-3)) return v.toExponential(Math.max(2, digits - 2));
    return String(parseFloat(a >= 10 ** digits ? v.toFixed(0) : v.toPrecision(digits)));
  }
  /** A value and what it is judged against (its limit), each as ``fmtNum`` but with as many more digits as it takes
   * to tell them apart: a day average of 200.04 mg/Nm³ over its limit of 200 read "200 mg/Nm³ > 200 mg/Nm³". */
  function fmtVs(value, limit) {
    let digits = 4, x = fmtNum(value), y = fmtNum(limit);
    while (x === y && value !== limit && typeof value === "number" && typeof limit === "number" && digits < 15) {
      digits += 1;
      x = fmtNum(value, digits); y = fmtNum(limit, digits);
    }
    return [x, y];
  }
  // A prediction's uncertainty as stored. A null bound next to a set one is an open end (maintenance's RUL at the
  // model's cap is "lower or more"), not a missing value; the nominal coverage is stated with the interval.
  function fmtInterval(lower, upper, coverage) {
    if (lower === null && upper === null) return "";
    const lo = lower === null ? "(−∞" : `[${fmtNum(lower)}`, hi = upper === null ? "∞)" : `${fmtNum(upper)}]`;
    return `${lo} … ${hi}` + (coverage ? ` @ ${Math.round(coverage * 100)} %` : "");
  }
  function badge(text, cls) { return el("span", { class: "badge " + (cls || "") }, text); }

  function main(...children) {
    const m = document.getElementById("main");
    m.replaceChildren(...children);
    return m;
  }
  /** A page that could not load says so in place of "Loading…" (a 404, a 503 naming a missing table, the console
   * or its database down), instead of staying on "Loading…" with the error only in the browser's console. */
  function failed(title, e) {
    const why = e && e.status ? `${e.status}: ${e.message}` : `the console did not answer (${(e && e.message) || e})`;
    main(el("h1", {}, title), el("p", { class: "bad-text", id: "page-error", role: "alert" }, why));
    document.body.dataset.ready = "error";
  }
  function can(perm) { return (PERMS[role] || []).includes(perm); }

  function table(headers, rows) {
    return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
      el("tbody", {}, rows));
  }

  return { el, api, apiAll, moreButton, csvLink, draft, assetSearch, assetPicker, qs, toast, fmtTime, fmtZoned, jsonInPlantTime, plantClock, suppressedRow, fmtNum, fmtVs, fmtInterval, timeCell, badge, main, failed, can, role, table };
})();
