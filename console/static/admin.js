/* Administration: users, API tokens, audit log. */
"use strict";

(async () => {
  const { el, api, main, table, timeCell, toast } = V;
  const ROLES = ["viewer", "engineer", "maintenance", "admin"];

  /** A button's action run once per click, the button off meanwhile: a double-click on "Create token" made two
   * tokens, the first shown and overwritten at once, the second a working credential nobody had seen. */
  function once(action) {
    return async (ev) => {
      const b = ev.currentTarget;
      if (b.disabled) return;
      b.disabled = true;
      try { await action(); } catch (e) { /* api() said why (its toast) */ } finally { b.disabled = false; }
    };
  }

  async function render() {
    const [users, tokens, audit] = await Promise.all([api("/api/users"), api("/api/tokens"), api("/api/audit" + V.qs(AUDIT))]);
    const nu = { username: el("input", { placeholder: "user name", id: "new-user" }),
      password: el("input", { type: "password", placeholder: "password (10+ characters)", id: "new-password" }),
      role: el("select", { id: "new-role" }, ROLES.map((r) => el("option", { value: r }, r))) };
    const nt = { name: el("input", { placeholder: "token name (the machine)" }), role: el("select", {}, ROLES.map((r) => el("option", { value: r }, r))) };
    const shown = el("p", { class: "muted", id: "token-shown" });
    main(el("h1", {}, "Administration"),
      el("h2", {}, "Users"),
      table(["User", "Role", "State", "Last log-in", ""], users.items.map((u) => {
        // A refused change (409: the last admin) puts the select back: it kept showing the role asked for, not the one held.
        const role = el("select", { class: "user-role", "data-user": u.username, onchange: async () => {
          try { await api(`/api/users/${encodeURIComponent(u.username)}`, { method: "PATCH", body: { role: role.value } }); }
          catch (e) { role.value = u.role; return; }
          u.role = role.value; toast(`${u.username} is now ${role.value}`);
        } },
          ROLES.map((r) => el("option", { value: r, selected: r === u.role }, r)));
        return el("tr", { "data-user": u.username }, el("td", {}, u.username), el("td", {}, role), el("td", {}, u.disabled ? "disabled" : "active"),
          el("td", {}, timeCell(u.last_login)),
          // Disabling ends the user's sessions at once and revoking cuts a machine off for good: each asks first.
          el("td", {}, el("button", { class: "secondary", "data-action": "disable", onclick: async () => {
            if (!u.disabled && !window.confirm(`Disable ${u.username}? Their sessions end now.`)) return;
            await api(`/api/users/${encodeURIComponent(u.username)}`, { method: "PATCH", body: { disabled: !u.disabled } }); render(); } }, u.disabled ? "Enable" : "Disable")));
      })),
      el("div", { class: "row" }, nu.username, nu.password, nu.role,
        el("button", { onclick: once(async () => { await api("/api/users", { method: "POST", body: { username: nu.username.value, password: nu.password.value, role: nu.role.value } }); toast("user created"); render(); }) }, "Add user")),
      el("h2", {}, "API tokens"),
      table(["Id", "Name", "Role", "Prefix", "Created", "Last used", ""], tokens.items.map((t) => el("tr", { "data-token": t.id },
        el("td", {}, t.id), el("td", {}, t.name), el("td", {}, t.role), el("td", {}, el("code", {}, t.prefix + "…")),
        el("td", {}, timeCell(t.created_at), " by ", t.created_by), el("td", {}, timeCell(t.last_used_at)),
        el("td", {}, t.revoked_at ? "revoked" : el("button", { class: "bad", "data-action": "revoke", onclick: async () => {
          if (!window.confirm(`Revoke token ${t.name} (${t.prefix}…)? What uses it is refused from now on; this cannot be undone.`)) return;
          await api(`/api/tokens/${t.id}`, { method: "DELETE" }); render(); } }, "Revoke"))))),
      el("div", { class: "row" }, nt.name, nt.role,
        el("button", { id: "create-token", onclick: once(async () => { const r = await api("/api/tokens", { method: "POST", body: { name: nt.name.value, role: nt.role.value } }); await render(); document.getElementById("token-shown").textContent = `New token (shown once): ${r.token}`; }) }, "Create token")),
      shown,
      el("h2", {}, "Audit log"), auditLog);
    auditLog.replaceChildren(table(["Time", "Who", "Action", "Target", "Detail", "From"], audit.items.map(auditRow)));
    auditLog.append(el("p", {}, V.moreButton("audit-more", "/api/audit", AUDIT, audit.next_cursor, auditLog.querySelector("tbody"), auditRow)));
  }
  // The newest 50, then "Load older" back to the first entry: only the newest 50 could be seen (a busy shift's
  // log-ins and acknowledgements), the record of who did what before them out of reach from the page.
  const AUDIT = { limit: 50 };
  const auditLog = el("div", { id: "audit" });
  function auditRow(a) {
    return el("tr", { "data-audit": a.id },
      el("td", {}, timeCell(a.time)), el("td", {}, a.actor), el("td", {}, a.action), el("td", {}, `${a.target_kind} ${a.target_id}`),
      el("td", {}, el("code", {}, JSON.stringify(a.detail))), el("td", {}, a.client));
  }
  render().catch((e) => V.failed("Administration", e));
})();
