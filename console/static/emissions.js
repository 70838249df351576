/* Emissions: live values against limits, running averages with projection, daily compliance calendar,
   exceedances and report files. */
"use strict";

(() => {
  const { el, api, qs, main, badge, fmtNum, timeCell, table } = V;
  const params = new URLSearchParams(location.search);

  function bar(pct) {
    const p = Math.max(0, Math.min(pct || 0, 100));
    const b = el("div", { class: "bar" + (pct > 100 ? " over" : pct > 80 ? " near" : "") }, el("span"));
    b.firstChild.style.width = p + "%";
    return b;
  }

  /** "YYYY-MM-DD HH:MM" of an instant in the IANA zone ``tz``: averaging periods are the stack's calendar periods
      (its ``timezone``), not the browser's. */
  function inZone(t, tz) {
    const p = Object.fromEntries(new Intl.DateTimeFormat("en-GB", { timeZone: tz, year: "numeric", month: "2-digit",
      day: "2-digit", hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).formatToParts(new Date(t)).map((x) => [x.type, x.value]));
    return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}`;
  }

  /** An averaging period by its start in the stack's zone: a day by its date, a month by YYYY-MM, a shorter period
      by date and time; the UTC start as tooltip. Exceedances were labelled in the plant's or browser's zone, so on a
      browser west of the stack a day exceedance of 12-06 read "2026-12-05 19:00 -05:00". */
  function periodCell(period, start, tz) {
    const t = inZone(start, tz);
    const text = period === "day" ? t.slice(0, 10) : period === "month" ? t.slice(0, 7) : period === "year" ? t.slice(0, 4) : t;
    return el("time", { datetime: start, title: start }, text);
  }

  const QUALITY = ["good", "UNCERTAIN", "BAD"];

  function liveCard(item, tz) {
    const ORDER = ["ten_min", "half_hour", "hour", "day", "month"];
    const rows = Object.values(item.averages).sort((a, b) => ORDER.indexOf(a.period) - ORDER.indexOf(b.period));
    // A sub-day average is labelled by its clock time only when it is of the stack's today: the newest stored one may
    // be days old (the averaging job stopped), and "14:30" alone read as this afternoon's.
    const today = inZone(Date.now(), tz).slice(0, 10);
    const when = (r) => {
      const t = inZone(r.period_start, tz);
      return ["day", "month"].includes(r.period) ? t.slice(0, 10) : t.slice(0, 10) === today ? t.slice(11, 16) : t;
    };
    const day = item.day;
    return el("div", { class: "card pollutant", "data-pollutant": item.pollutant },
      el("h2", {}, item.pollutant, " ", el("small", {}, item.tag || "")),
      item.reading ? el("p", { class: "analyser-now" }, "Analyser now: ", el("b", {}, `${fmtNum(item.reading.value)} ${item.reading.unit || ""}`), " ",
        // its quality: the newest reading may be the analyser's fault value (BAD) and read as a concentration
        item.reading.quality >= 1 ? badge(QUALITY[item.reading.quality] || `quality ${item.reading.quality}`, "sev-" + (item.reading.quality >= 2 ? "critical" : "warning")) : "",
        " ", el("small", {}, "(raw) "), timeCell(item.reading.time)) : "",
      table(["Period", "Normalised mg/Nm³", "Validated mg/Nm³", "Limit mg/Nm³", ""], rows.map((r) => el("tr", { "data-period": r.period },
        el("td", {}, r.period.replace("_", "-"), " ", el("small", { title: r.period_start }, when(r), r.running ? " (running)" : "")),
        // a running average with too few values yet is not (yet) an invalid one
        el("td", {}, fmtNum(r.value), r.valid ? "" : el("small", { class: r.running ? "muted" : "warn-text" }, r.running ? " too few values yet" : " invalid")),
        // the validated average next to its limit with the digits that tell them apart (200.04 against 200)
        el("td", {}, r.limits.length ? V.fmtVs(r.validated, r.limits[0].limit)[0] : fmtNum(r.validated)),
        el("td", { title: r.limits.map((l) => `${l.rule}: ${fmtNum(l.limit)} mg/Nm³, ${fmtNum(l.share)} % of ${l.period.replace("_", "-")} averages within`).join("\n") },
          r.limits.length ? [V.fmtVs(r.validated, r.limits[0].limit)[1], r.limits[0].share < 100 ? el("small", {}, ` (${fmtNum(r.limits[0].share)} %)`) : ""] : "–"),
        el("td", {}, r.percent_of_limit !== null ? [bar(r.percent_of_limit), el("small", {}, `${V.fmtVs(r.percent_of_limit, 100)[0]} %`)] : "")))),
      el("p", { class: "projection" + (day.projected_over ? " bad-text" : "") },
        `Day so far: ${day.subs_done}/${day.subs_total} ${day.sub_period.replace("_", "-")} averages; projected day average `,
        el("b", {}, fmtNum(day.projection)), day.limit !== null ? ` against ${fmtNum(day.limit)} mg/Nm³` : " (no daily limit)"));
  }

  /** An event's value or limit with its unit: a window's is a share of its averages, the invalid-day count a number
   * of days, a PEMS deviation a share outside the interval; only an exceedance's is a concentration. */
  const EVENT_UNIT = { window: " %", invalid_days: " days", pems_deviation: " %" };
  const unitOf = (e) => EVENT_UNIT[e.kind] || " mg/Nm³";
  /** An event's value and limit with their unit, with the digits it takes to tell them apart (V.fmtVs). */
  const eventNums = (e) => V.fmtVs(e.value, e.limit_value).map((x) => x + unitOf(e));
  /** What an event says: a window fails under its required share ("93 % within, 95 % required"), not over it. */
  function eventText(e) {
    const [value, limit] = eventNums(e);
    if (e.kind === "window") return `${value} within, ${limit} required`;
    if (e.kind === "invalid_days") return `${value} invalid, ${limit} allowed`;
    if (e.kind === "pems_deviation") return `${value} outside the PEMS interval, flagged from ${limit}`;
    return `${value} > ${limit}`;
  }

  const STATUS = ["valid", "invalid", "not operating"];
  /** "12.3 (invalid) → 10.1 (valid)": a stored average before and after a later run changed it. */
  function change(r) {
    return `${fmtNum(r.old_value)} (${STATUS[r.old_status]}) → ${fmtNum(r.new_value)} (${STATUS[r.new_status]})`;
  }

  function calendarView(cal) {
    const first = new Date(cal.days[0].date + "T00:00:00");
    const blanks = (first.getDay() + 6) % 7;
    const cells = [..."MTWTFSS"].map((d) => el("div", { class: "none" }, el("b", {}, d)));
    for (let i = 0; i < blanks; i++) cells.push(el("div", { class: "none" }));
    for (const d of cal.days) {
      const title = d.pollutants.map((p) => `${p.pollutant}: ${fmtNum(p.validated)} ${p.valid ? "" : "(invalid)"}`).join("\n")
        + (d.events.length ? "\n" + d.events.map((e) => `${e.pollutant} ${e.rule}: ${eventText(e)}`).join("\n") : "")
        + (d.revisions.length ? "\nchanged after the day closed: " + d.revisions.map((r) => `${r.pollutant} ${change(r)}`).join("; ") : "");
      cells.push(el("div", { class: d.status + (d.revisions.length ? " revised" : ""), "data-date": d.date, title },
        el("b", {}, d.date.slice(8)), el("br"), d.status === "none" ? "" : d.status, d.revisions.length ? el("small", {}, " (revised)") : ""));
    }
    return el("div", { class: "calendar", id: "calendar" }, cells);
  }

  /** The exceedances of the last 31 days, a page at a time ("Load older"): a month of half-hours over a limit is more
   * than a page, and the rest was left out without a word. */
  function eventsTable(stack, events, tz) {
    const row = (e) => el("tr", {},
      el("td", {}, e.period.replace("_", "-"), " ", periodCell(e.period, e.period_start, tz)), el("td", {}, e.pollutant), el("td", {}, e.rule),
      ...eventNums(e).map((x) => el("td", {}, x)),
      el("td", {}, e.breach ? badge("breach", "st-raised") : badge("tolerated", "st-acknowledged"), e.provisional ? " (provisional)" : ""));
    const t = table(["Period", "Pollutant", "Rule", "Value", "Limit", "Breach"], events.items.map(row));
    t.id = "events";
    return el("div", {}, t, el("p", {}, V.moreButton("events-more", `/api/emissions/${encodeURIComponent(stack.stack)}/events`,
      { last: "P31D" }, events.next_cursor, t.tBodies[0], row)));
  }

  /** Closed days changed in the last 31 days, a page at a time: a backlog taken over many runs changes the same days
   * again at each. */
  function revisionsTable(stack, revised, tz) {
    const row = (r) => el("tr", { "data-day": r.period_start },
      el("td", {}, timeCell(r.revised_at)), el("td", {}, inZone(r.period_start, tz).slice(0, 10)), el("td", {}, r.pollutant),
      el("td", {}, change(r)), el("td", {}, String(r.run_id) + (r.run_reason ? `: ${r.run_reason}` : "")));
    const t = table(["Changed at", "Day", "Pollutant", "Before → after", "Run"], revised.items.map(row));
    return [t, el("p", {}, V.moreButton("revisions-more", `/api/emissions/${encodeURIComponent(stack.stack)}/revisions`,
      { last: "P31D", period: "day" }, revised.next_cursor, t.tBodies[0], row))];
  }

  /** "YYYY-MM" ``n`` months after (before, negative) ``month``. */
  function addMonths(month, n) {
    const i = Number(month.slice(0, 4)) * 12 + Number(month.slice(5, 7)) - 1 + n;
    return `${String(Math.floor(i / 12)).padStart(4, "0")}-${String(i % 12 + 1).padStart(2, "0")}`;
  }
  /** Links to the month before and after (none after the stack's current month): the calendar showed one month, the
   * current one unless the address was edited by hand, so last month's days were out of reach on the first of the
   * next, when its report is due. */
  function monthLinks(stack, month, tz) {
    const link = (m, id, text) => el("a", { id, class: "month-link", href: "/emissions" + qs({ stack: stack.stack, month: m }) }, text);
    const next = addMonths(month, 1);
    return el("small", { class: "months" }, link(addMonths(month, -1), "month-prev", `‹ ${addMonths(month, -1)}`),
      next <= inZone(Date.now(), tz).slice(0, 7) ? [" · ", link(next, "month-next", `${next} ›`)] : "");
  }

  async function load(stack) {
    const [live, cal, events, revised, reports] = await Promise.all([
      api(`/api/emissions/${encodeURIComponent(stack.stack)}/live`),
      api(`/api/emissions/${encodeURIComponent(stack.stack)}/calendar` + qs({ month: params.get("month") })),
      api(`/api/emissions/${encodeURIComponent(stack.stack)}/events?last=P31D`),
      api(`/api/emissions/${encodeURIComponent(stack.stack)}/revisions?last=P31D&period=day`),
      api("/api/emissions/reports/files")]);
    return [
      el("h2", {}, `Stack ${stack.stack} `, el("small", {}, `${stack.description || ""} · ${stack.regime || ""} · ${live.timezone}`)),
      el("div", { class: "grid wide", id: "live" }, live.items.map((item) => liveCard(item, live.timezone))),
      el("h2", {}, `Daily compliance ${cal.month} `, monthLinks(stack, cal.month, live.timezone)), calendarView(cal),
      // A month's or year's exceedance is no day's: listed under the calendar, not on its first day.
      cal.period_events.length ? el("ul", { id: "period-events" }, cal.period_events.map((e) => el("li", {},
        `${e.period.replace("_", "-")} `, periodCell(e.period, e.period_start, live.timezone),
        ` ${e.pollutant} ${e.rule}: ${eventText(e)} `,
        e.breach ? badge("breach", "st-raised") : badge("tolerated", "st-acknowledged"), e.provisional ? " (provisional)" : ""))) : "",
      el("p", { class: "muted" }, "green: valid and within limits · red: exceedance · yellow: invalid day · blue: today, not over yet (its averages so far) · grey: no data or not operating · dashed: changed after it closed"),
      el("h2", {}, "Exceedances (31 days)"),
      events.items.length ? eventsTable(stack, events, live.timezone) : el("p", { class: "muted" }, "None."),
      el("h2", {}, "Closed days changed (last 31 days)"),
      el("p", { class: "muted" }, "Daily averages a later run changed after the day had closed (late readings, a recomputation): a report made before the change differs from one made now."),
      el("div", { id: "revisions" }, revised.items.length ? revisionsTable(stack, revised, live.timezone) : el("p", { class: "muted" }, "None.")),
      el("h2", {}, "Reports"),
      reports.items.length ? el("ul", { id: "reports" }, reports.items.map((r) => el("li", {}, el("a", { href: r.href }, r.name), ` (${fmtNum(r.bytes / 1024)} kB)`)))
        : el("p", { class: "muted" }, reports.configured ? "No reports yet." : "No reports folder configured (console.reports_dir)."),
      reports.total > reports.items.length ? el("p", { class: "warn-text", id: "reports-more" },
        `The newest ${reports.items.length} of ${reports.total} report files are listed; the older ones are in the reports folder (console.reports_dir).`) : "",
    ];
  }

  async function init() {
    let stacks;
    try { stacks = (await api("/api/emissions/stacks", { quiet: true })).items; }
    catch (e) { main(el("h1", {}, "Emissions"), el("p", { class: "bad-text" }, e.message)); return; }
    if (!stacks.length) { main(el("h1", {}, "Emissions"), el("p", { class: "muted" }, "No emission averages stored yet.")); return; }
    const chosen = stacks.find((s) => s.stack === params.get("stack")) || stacks[0];
    // The month shown stays when the stack changes (it was dropped: back to this month's calendar).
    const pick = el("select", { id: "stack", onchange: () => { location.search = qs({ stack: pick.value, month: params.get("month") }); } },
      stacks.map((s) => el("option", { value: s.stack, selected: s === chosen }, s.stack)));
    main(el("h1", {}, "Emissions"), el("div", { class: "row" }, el("label", {}, "Stack", pick)), ...(await load(chosen)));
    document.body.dataset.ready = "1";
  }
  init().catch((e) => V.failed("Emissions", e));
})();
