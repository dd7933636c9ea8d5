// GoBalancer dashboard: plain JavaScript, no build step, talks only to the admin API it was served by.
//
// Data flow: /events (Server-Sent Events) tells us the moment anything changes (a `snapshot` first, then
// one event per change); each event updates its one row in place. A poll every POLL_MS reads /pools and
// each pool's /pools/NAME/backends (in-flight counts change without events; If-None-Match: a 304 while
// nothing changed) and /replicas, whose per-replica monotonic request totals give the request rates as
// deltas between polls (per backend, summed per pool; a proxy also pushes "rate_limit:RULE|limited", the
// requests each rate-limit rule refused). The route table (/routes) and the rate-limit rules
// (/rate-limits) are read again on their events (`routes`, `rate_limits`) and every ROUTES_EVERY polls. Rows are
// only written where a shown value differs, so a poll or a snapshot of 1,000 unchanged backends costs
// no DOM work. With a token in sessionStorage the stream is read with fetch() so it can carry the
// Authorization header (EventSource cannot send headers; needed when the admin protects reads).
"use strict";

(() => {
  const POLL_MS = 2000;
  const WINDOW_MS = 120000;
  const TOKEN_KEY = "gobalancer.admin.token";
  const ROUTES_EVERY = 5;
  const DEFAULT_POOL = "default";
  const RATE_LIMIT_KEY = "rate_limit:"; // (services/proxy/stats.py RATE_LIMIT_KEY)
  const EVENT_KINDS = ["backend_added", "backend_updated", "backend_removed", "health", "ejection", "algorithm",
    "pool_set", "pool_removed", "routes", "rate_limits"];
  const ERROR_CLASSES = new Set(["5xx", "error"]);

  const $ = (id) => document.getElementById(id);
  const state = {
    backends: new Map(), // address -> backend as /backends returns it
    rows: new Map(), // address -> {tr, cells}
    rates: new Map(), // address -> {rps, eps}
    replicaRates: new Map(), // replica id -> rps
    prev: null, // {at, totals: Map(replica id -> {"address|class": n})}
    history: [], // {t, total, errors}
    version: null,
    algorithm: "",
    stream: null, // {stop()}
    streamLive: false,
    pending: null, // a mutation waiting for the token
    readsNeedToken: false,
    tokenDismissed: false, // the operator cancelled the form: the poll does not pop it up again
    refreshTimer: 0,
    changes: 0, // events seen: a /backends read that overlapped one may predate it and is dropped
    dropped: 0, // ... but not forever while events keep coming
    pollTimer: 0,
    polls: 0,
    lists: new Map(), // pool -> {etag, list}: its last /pools/NAME/backends read
    pools: new Map(), // pool name -> pool as /pools returns it (algorithm, backends, usable)
    sections: new Map(), // pool name -> {section, tbody, summary}
    poolRates: new Map(), // pool name -> rps
    poolsTimer: 0,
    routes: null, // GET /routes
    limits: null, // GET /rate-limits
    limited: new Map(), // rule -> requests refused, all proxies
    limitedRates: new Map(), // rule -> refused/s
  };
  const NOT_MODIFIED = Symbol("304");

  // -- API --------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

  function authHeaders() {
    const t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  // ``cache``: {etag} of a list read before (If-None-Match; updated from the answer).
  async function api(method, path, body, cache) {
    const headers = { Accept: "application/json", ...authHeaders() };
    if (cache && cache.etag) headers["If-None-Match"] = cache.etag;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "cannot reach the admin API (" + err.message + ")");
    }
    if (resp.status === 204) return null;
    if (resp.status === 304) return NOT_MODIFIED;
    if (cache) cache.etag = resp.headers.get("ETag") || "";
    const type = resp.headers.get("content-type") || "";
    const data = type.includes("json") ? await resp.json().catch(() => null) : await resp.text().catch(() => "");
    if (!resp.ok) {
      // Errors are RFC 9457 problem documents: show their detail (a 400's names the field at fault).
      const detail = data && typeof data === "object" && data.detail ? data.detail : resp.status + " " + resp.statusText;
      throw new ApiError(resp.status, detail);
    }
    return data;
  }

  const poolOf = (b) => (b && b.pool) || DEFAULT_POOL;
  const poolPath = (name) => "pools/" + encodeURIComponent(name);
  // The default pool's backends are /backends (the original API); another pool's /pools/NAME/backends.
  function backendPath(address) {
    const pool = poolOf(state.backends.get(address));
    return (pool === DEFAULT_POOL ? "" : poolPath(pool) + "/") + "backends/" + encodeURIComponent(address);
  }
  const capitalize = (word) => word[0].toUpperCase() + word.slice(1);

  // -- errors and notices ---------------------------------------------------------------------

  function showError(key, message) {
    const box = $("errors");
    let item = box.querySelector('[data-key="' + CSS.escape(key) + '"]');
    if (!item) {
      item = document.createElement("div");
      item.className = "error";
      item.dataset.key = key;
      const text = document.createElement("span");
      const close = document.createElement("button");
      close.type = "button";
      close.textContent = "Dismiss";
      close.addEventListener("click", () => item.remove());
      item.append(text, close);
      box.append(item);
    }
    item.firstChild.textContent = message;
  }

  function clearError(key) {
    const item = $("errors").querySelector('[data-key="' + CSS.escape(key) + '"]');
    if (item) item.remove();
  }

  // -- token ----------------------------------------------------------------------------------

  function askToken(why) {
    const form = $("token-form");
    $("token-why").textContent = why;
    form.hidden = false;
    $("token-input").focus();
  }

  function updateTokenState() {
    const has = Boolean(token());
    $("token-state").textContent = has ? "Token set for this tab." : "No token set.";
    $("token-forget").hidden = !has;
  }

  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("token-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    $("token-input").value = "";
    $("token-form").hidden = true;
    updateTokenState();
    clearError("auth");
    const pending = state.pending;
    state.pending = null;
    state.readsNeedToken = false;
    connectEvents();
    poll();
    if (pending) mutate(pending.label, pending.method, pending.path, pending.body, pending.done);
  });

  $("token-cancel").addEventListener("click", () => {
    $("token-form").hidden = true;
    state.pending = null;
    state.tokenDismissed = true;
  });

  $("token-set").addEventListener("click", () => askToken("Enter the admin token (admin.token)."));

  $("token-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    updateTokenState();
    connectEvents();
  });

  // -- mutations ------------------------------------------------------------------------------

  async function mutate(label, method, path, body, done) {
    try {
      await api(method, path, body);
      clearError("mutation");
      if (done) done();
      scheduleRefresh(0);
    } catch (err) {
      if (err.status === 401) {
        state.pending = { label, method, path, body, done };
        askToken(token() ? label + ": the token was refused (" + err.message + "). Enter the right one." : label + " needs the admin token.");
        return;
      }
      showError("mutation", label + " failed: " + err.message);
    }
  }

  function setState(address, action) {
    if (action === "disable" && !window.confirm("Disable " + address + "? It gets no traffic at all, in-flight requests finish.")) return;
    mutate(capitalize(action) + " " + address, "POST", backendPath(address) + "/" + action);
  }

  // -- backends table -------------------------------------------------------------------------

  // Explicit roles: the backends table is laid out as grids (dashboard.css), which would drop the
  // table semantics screen readers rely on.
  function cell(tr, className) {
    const td = document.createElement("td");
    td.setAttribute("role", "cell");
    if (className) td.className = className;
    tr.append(td);
    return td;
  }

  function rowHeader(tr, text) {
    const th = document.createElement("th");
    th.scope = "row";
    th.setAttribute("role", "rowheader");
    const code = document.createElement("code");
    code.textContent = text;
    th.append(code);
    tr.append(th);
  }

  // A row is a clone of one prototype (cheaper than building each element: thousands of rows), and
  // the rows' controls share listeners on the table body (event delegation).
  const ACTIONS = ["drain", "enable", "disable"];
  const CELLS = ["health", "state", "origin", "weight", "num inflight", "num rate", "num errors", "actions"];
  let rowPrototype = null;
  let rowIds = 0;

  function prototypeRow() {
    const tr = document.createElement("tr");
    tr.setAttribute("role", "row");
    rowHeader(tr, "");
    for (const className of CELLS) cell(tr, className);
    const form = document.createElement("form");
    form.className = "weight-form";
    const label = document.createElement("label");
    label.className = "visually-hidden";
    const input = document.createElement("input");
    input.type = "number";
    input.min = "1";
    input.max = "10000";
    input.step = "1";
    input.required = true;
    const set = document.createElement("button");
    set.type = "submit";
    set.textContent = "Set weight";
    form.append(label, input, set);
    tr.children[4].append(form);
    const originName = document.createElement("span");
    originName.className = "origin-name";
    tr.children[3].append(originName);
    for (const action of ACTIONS) {
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.action = action;
      b.textContent = capitalize(action);
      tr.children[8].append(b);
    }
    return tr;
  }

  function makeRow(address) {
    rowPrototype = rowPrototype || prototypeRow();
    const tr = rowPrototype.cloneNode(true);
    tr.dataset.address = address;
    const [th, health, stateCell, origin, weight, inflight, rate, errors, actions] = tr.children;
    th.firstChild.textContent = address;
    const [label, input, set] = weight.firstChild.children;
    input.id = "weight-" + ++rowIds;
    label.htmlFor = input.id;
    label.textContent = "Weight of " + address;
    set.setAttribute("aria-label", "Set weight of " + address);
    const buttons = {};
    for (const b of actions.children) {
      b.setAttribute("aria-label", b.textContent + " " + address);
      buttons[b.dataset.action] = b;
    }
    const cells = { health, state: stateCell, origin, originName: origin.firstChild, override: null, clearOverride: null,
      weight, inflight, rate, errors, actions, weightInput: input, buttons };
    return { tr, cells, shown: {} };
  }

  function rowAddress(node) {
    const tr = node.closest("tr[data-address]");
    return tr ? tr.dataset.address : null;
  }

  const backendsBody = $("backends"); // (every pool's table: the listeners are shared)
  backendsBody.addEventListener("click", (e) => {
    const button = e.target.closest("button[data-action]");
    const address = button && rowAddress(button);
    if (address) setState(address, button.dataset.action);
    const clear = e.target.closest("button.clear-override");
    const overridden = clear && rowAddress(clear);
    if (overridden) mutate("Clear the override of " + overridden, "DELETE", backendPath(overridden) + "/override");
  });
  backendsBody.addEventListener("input", (e) => {
    if (e.target.matches(".weight-form input")) e.target.dataset.dirty = "1";
  });
  backendsBody.addEventListener("submit", (e) => {
    const form = e.target.closest(".weight-form");
    const address = form && rowAddress(form);
    if (!address) return;
    e.preventDefault();
    const input = form.querySelector("input");
    const weight = Number(input.value);
    if (!Number.isInteger(weight) || weight < 1 || weight > 10000) {
      showError("mutation", "Weight of " + address + ": give a whole number from 1 to 10000");
      return;
    }
    mutate("Set weight of " + address, "PUT", backendPath(address), { weight }, () => delete input.dataset.dirty);
  });

  const ACTION_STATE = { drain: "draining", enable: "enabled", disable: "disabled" };

  // The origin, and on a backend found by discovery what the operator changed: an override, kept until
  // cleared (its tag and button are made only for the rows that have one).
  function fillOrigin(cells, b) {
    setText(cells.originName, b.origin);
    const override = b.override ? Object.entries(b.override) : [];
    const discovered = b.discovered || {};
    const text = override
      .map(([k, v]) => "override " + k + "=" + v + (k in discovered ? " (source " + discovered[k] + ")" : ""))
      .join(", ");
    if (text && !cells.override) {
      cells.override = document.createElement("span");
      cells.override.className = "tag override";
      cells.override.title = "Set by an operator; discovery keeps it until the override is cleared";
      const clear = document.createElement("button");
      clear.type = "button";
      clear.className = "clear-override";
      clear.textContent = "Clear override";
      clear.setAttribute("aria-label", "Clear the override of " + b.address + ": the discovery source's values again");
      cells.clearOverride = clear;
    }
    if (!cells.override) return;
    setText(cells.override, text);
    // Attached only while there is one (a refresh must not move a focused button).
    if (text && !cells.override.isConnected) cells.origin.append(cells.override, cells.clearOverride);
    if (!text && cells.override.isConnected) {
      cells.override.remove();
      cells.clearOverride.remove();
    }
  }

  // Each setter writes the DOM only when the shown value changes (row.shown keeps what is shown).
  function fillRow(row, b) {
    const { tr, cells, shown } = row;
    const health = ["up", "down"].includes(b.health) ? b.health : "unknown";
    const healthKey = [health, b.ejected ? b.ejected_until || "" : "-", b.health_reason || ""].join("|");
    if (shown.health !== healthKey) {
      shown.health = healthKey;
      tr.className = "health-" + health;
      tr.dataset.health = health;
      cells.health.replaceChildren();
      const badge = document.createElement("span");
      badge.className = "badge " + health;
      badge.textContent = health;
      cells.health.append(badge);
      if (b.ejected) {
        const tag = document.createElement("span");
        tag.className = "tag";
        tag.textContent = "ejected";
        tag.title = b.ejected_until ? "until " + new Date(b.ejected_until * 1000).toLocaleTimeString() : "";
        cells.health.append(tag);
      }
      if (b.health_reason) {
        const reason = document.createElement("span");
        reason.className = "reason";
        reason.textContent = b.health_reason;
        reason.title = b.health_reason;
        cells.health.append(reason);
      }
    }
    if (shown.state !== b.state) {
      shown.state = b.state;
      tr.dataset.state = b.state;
      cells.state.textContent = b.state;
      cells.state.className = "state state-" + b.state;
      for (const [action, button] of Object.entries(cells.buttons)) button.disabled = b.state === ACTION_STATE[action];
    }
    fillOrigin(cells, b);
    const input = cells.weightInput;
    const weight = String(b.weight);
    if (document.activeElement !== input && !input.dataset.dirty && input.value !== weight) input.value = weight;
    setText(cells.inflight, String(b.conn_count ?? 0));
    fillRate(row, b.address);
  }

  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }

  function fillRate(row, address) {
    const r = state.rates.get(address);
    setText(row.cells.rate, r ? r.rps.toFixed(1) : "-");
    setText(row.cells.errors, r ? r.eps.toFixed(1) : "-");
  }

  function renderCounts() {
    const total = state.backends.size;
    let down = 0;
    for (const b of state.backends.values()) if (b.health === "down") down++;
    $("no-backends").hidden = total > 0;
    setText($("backend-count"), total + " total" + (down ? ", " + down + " down" : ""));
    renderSummary();
  }

  // -- pools: a section per pool, default first -----------------------------------------------

  const COLUMNS = ["Address", "Health", "State", "Origin", "Weight", "In flight", "Requests/s", "Errors/s", "Actions"];
  let poolIds = 0;

  function poolNames() {
    const names = new Set(state.pools.keys());
    for (const b of state.backends.values()) names.add(poolOf(b));
    names.delete(DEFAULT_POOL);
    return [DEFAULT_POOL, ...[...names].sort()];
  }

  function makeSection(name) {
    const id = "pool-title-" + ++poolIds;
    const section = document.createElement("section");
    section.className = "pool";
    section.dataset.pool = name;
    section.setAttribute("aria-labelledby", id);
    const h3 = document.createElement("h3");
    h3.id = id;
    const code = document.createElement("code");
    code.textContent = name;
    const summary = document.createElement("span");
    summary.className = "count pool-summary";
    h3.append("Pool ", code, " ", summary);
    const scroll = document.createElement("div");
    scroll.className = "scroll";
    const table = document.createElement("table");
    table.setAttribute("role", "table");
    table.setAttribute("aria-label", "Backends of pool " + name);
    const thead = table.createTHead();
    thead.setAttribute("role", "rowgroup");
    const tr = thead.insertRow();
    tr.setAttribute("role", "row");
    for (const label of COLUMNS) {
      const th = document.createElement("th");
      th.scope = "col";
      th.setAttribute("role", "columnheader");
      if (/\/s$|In flight/.test(label)) th.className = "num";
      th.textContent = label;
      tr.append(th);
    }
    const tbody = table.createTBody();
    tbody.setAttribute("role", "rowgroup");
    scroll.append(table);
    section.append(h3, scroll);
    return { section, tbody, summary, shown: "" };
  }

  // The sections in order (made, moved or dropped as pools come and go), and each one's summary line.
  function renderPools() {
    const box = $("backends");
    const names = poolNames();
    for (const [name, sec] of state.sections) {
      if (!names.includes(name) && !sec.tbody.rows.length) {
        sec.section.remove();
        state.sections.delete(name);
      }
    }
    let previous = null;
    for (const name of names) {
      let sec = state.sections.get(name);
      if (!sec) {
        sec = makeSection(name);
        state.sections.set(name, sec);
      }
      const want = previous ? previous.nextSibling : box.firstChild;
      if (sec.section !== want) box.insertBefore(sec.section, want);
      previous = sec.section;
      renderPoolSummary(name, sec);
    }
  }

  function renderPoolSummary(name, sec) {
    const pool = state.pools.get(name);
    const parts = [];
    if (pool) parts.push("algorithm " + pool.algorithm.name, pool.usable + "/" + pool.backends + " usable");
    else {
      let count = 0; // (no record from /pools yet: count the listing's)
      for (const b of state.backends.values()) if (poolOf(b) === name) count++;
      parts.push(count + " backends");
    }
    const rate = state.poolRates.get(name);
    parts.push((rate === undefined ? "-" : rate.toFixed(1)) + " requests/s");
    const text = parts.join(" · ");
    if (sec.shown !== text) {
      sec.shown = text;
      sec.summary.textContent = text;
      sec.section.dataset.rate = rate === undefined ? "" : rate.toFixed(1);
    }
  }

  function tbodyOf(pool) {
    if (!state.sections.has(pool)) renderPools();
    return state.sections.get(pool).tbody;
  }

  // Everything: rows added, removed, re-filled (only what differs) and kept in address order in their pool.
  function renderBackends() {
    for (const [address, row] of state.rows) {
      if (!state.backends.has(address)) {
        row.tr.remove();
        state.rows.delete(address);
      }
    }
    renderPools();
    const previous = new Map(); // pool -> the row placed last
    for (const address of [...state.backends.keys()].sort()) {
      const b = state.backends.get(address);
      const tbody = tbodyOf(poolOf(b));
      let row = state.rows.get(address);
      if (!row) {
        row = makeRow(address);
        state.rows.set(address, row);
      }
      fillRow(row, b);
      const before = previous.get(tbody);
      const want = before ? before.nextSibling : tbody.firstChild;
      if (row.tr !== want) tbody.insertBefore(row.tr, want); // (moving a node keeps its focus and input)
      previous.set(tbody, row.tr);
    }
    renderCounts();
  }

  // One backend, in place (an event): its row filled, added at its place (in its pool), or removed.
  function renderOne(address) {
    const b = state.backends.get(address);
    let row = state.rows.get(address);
    if (!b) {
      if (row) {
        row.tr.remove();
        state.rows.delete(address);
      }
    } else {
      const tbody = tbodyOf(poolOf(b));
      if (!row) {
        row = makeRow(address);
        state.rows.set(address, row);
      }
      if (row.tr.parentNode !== tbody) {
        let before = null;
        for (const tr of tbody.rows) {
          if (tr.dataset.address > address) {
            before = tr;
            break;
          }
        }
        tbody.insertBefore(row.tr, before);
      }
      fillRow(row, b);
    }
    renderCounts();
  }

  function setBackends(list) {
    state.backends = new Map(list.map((b) => [b.address, b]));
    renderBackends();
  }

  // -- replicas and rates ---------------------------------------------------------------------

  function computeRates(replicas, at) {
    const current = new Map(replicas.map((r) => [r.id, r.totals || {}]));
    const rates = new Map();
    const replicaRates = new Map();
    const limited = new Map();
    const limitedRates = new Map();
    for (const totals of current.values()) {
      for (const [key, n] of Object.entries(totals)) {
        if (key.startsWith(RATE_LIMIT_KEY)) {
          const rule = key.slice(RATE_LIMIT_KEY.length, key.lastIndexOf("|"));
          limited.set(rule, (limited.get(rule) || 0) + n);
        }
      }
    }
    let total = 0;
    let errors = 0;
    const prev = state.prev;
    const dt = prev ? (at - prev.at) / 1000 : 0;
    const known = Boolean(prev) && dt > 0.2; // (two polls: a rate)
    if (known) {
      for (const [id, totals] of current) {
        const before = prev.totals.get(id);
        if (!before) continue; // a new replica: its totals are the baseline for the next poll
        let replicaRate = 0;
        for (const [key, n] of Object.entries(totals)) {
          const delta = n - (before[key] || 0);
          if (delta <= 0) continue;
          const cut = key.lastIndexOf("|");
          if (key.startsWith(RATE_LIMIT_KEY)) {
            const rule = key.slice(RATE_LIMIT_KEY.length, cut);
            limitedRates.set(rule, (limitedRates.get(rule) || 0) + delta / dt);
            continue;
          }
          const address = key.slice(0, cut);
          const rate = delta / dt;
          const entry = rates.get(address) || { rps: 0, eps: 0 };
          entry.rps += rate;
          if (ERROR_CLASSES.has(key.slice(cut + 1))) {
            entry.eps += rate;
            errors += rate;
          }
          rates.set(address, entry);
          replicaRate += rate;
          total += rate;
        }
        replicaRates.set(id, replicaRate);
      }
      state.history.push({ t: at, total, errors });
    }
    state.prev = { at, totals: current };
    state.rates = rates;
    state.replicaRates = replicaRates;
    state.limited = limited;
    state.limitedRates = limitedRates; // (empty until rates are known)
    // A pool's rate: its backends' summed (a backend without requests counts 0 once rates are known).
    const poolRates = new Map();
    if (known) {
      for (const name of poolNames()) poolRates.set(name, 0);
      for (const [address, r] of rates) {
        const pool = poolOf(state.backends.get(address));
        poolRates.set(pool, (poolRates.get(pool) || 0) + r.rps);
      }
    }
    state.poolRates = poolRates;
    const cutoff = at - WINDOW_MS;
    while (state.history.length && state.history[0].t < cutoff) state.history.shift();
    $("rate-total").textContent = known ? total.toFixed(1) : "-";
    $("rate-errors").textContent = known ? errors.toFixed(1) : "-";
    for (const [address, row] of state.rows) fillRate(row, address);
    renderPools();
    renderLimits();
  }

  function renderReplicas(replicas) {
    const tbody = $("replicas").tBodies[0];
    const rows = replicas.map((r) => {
      const tr = document.createElement("tr");
      tr.dataset.replica = r.id;
      const inflight = Object.values(r.inflight || {}).reduce((a, b) => a + b, 0);
      const rate = state.replicaRates.get(r.id);
      const values = [r.service, r.host, r.listen || "-", r.heartbeat_age_sec.toFixed(1), String(inflight), rate === undefined ? "-" : rate.toFixed(1)];
      rowHeader(tr, r.id);
      values.forEach((v, i) => (cell(tr, i >= 3 ? "num" : "").textContent = v));
      return tr;
    });
    tbody.replaceChildren(...rows);
    $("no-replicas").hidden = rows.length > 0;
    const proxies = replicas.filter((r) => r.service === "proxy").length;
    $("replica-count").textContent = replicas.length + " live, " + proxies + " prox" + (proxies === 1 ? "y" : "ies");
  }

  // -- routes and rate limits -----------------------------------------------------------------

  function fillTable(id, rows, empty) {
    const trs = rows.map(([key, header, values, classes]) => {
      const tr = document.createElement("tr");
      tr.dataset.key = key;
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = header;
      tr.append(th);
      values.forEach((v, i) => {
        const td = document.createElement("td");
        td.textContent = v;
        if (classes[i]) td.className = classes[i];
        tr.append(td);
      });
      return tr;
    });
    $(id).tBodies[0].replaceChildren(...trs);
    $(empty).hidden = trs.length > 0;
  }

  function renderRoutes() {
    const data = state.routes;
    if (!data) return;
    const rows = data.routes.map((r, i) => {
      const rewrite = [r.strip_prefix ? "strip prefix" : "", r.rewrite_host ? "host " + r.rewrite_host : ""].filter(Boolean);
      const headers = Object.entries(r.headers || {}).map(([k, v]) => k + ": " + v);
      return [r.name, String(i + 1), [r.name, r.host || "any", r.path_prefix || "/", (r.methods || []).join(", ") || "any",
        headers.join("; ") || "-", r.pool, rewrite.join(", ") || "-"], ["", "", "path", "", "", "pool", ""]];
    });
    fillTable("routes", rows, "no-routes");
    for (const tr of $("routes").tBodies[0].rows) tr.firstChild.className = "num";
    const unmatched = data.default_pool ? "pool " + data.default_pool : "404";
    setText($("routes-summary"), data.routes.length + " in order · unmatched requests: " + unmatched + " · from the " + data.source);
  }

  function renderLimits() {
    const data = state.limits;
    if (!data) return;
    const rows = data.rules.map((r) => {
      const n = state.limited.get(r.name);
      const rate = state.limitedRates.get(r.name);
      return [r.name, r.name, [r.applies_to, r.key, r.rate, String(r.burst), r.fail_closed ? "refuse (fail closed)" : "allow (fail open)",
        n === undefined ? "0" : String(n), rate === undefined ? "-" : rate.toFixed(1)], ["", "", "", "num", "", "num limited", "num"]];
    });
    const shown = JSON.stringify(rows);
    if (shown === state.limitsShown) return;
    state.limitsShown = shown;
    fillTable("rate-limits", rows, "no-limits");
    setText($("limits-summary"), data.rules.length + (data.rules.length === 1 ? " rule" : " rules") + " · from the " + data.source);
  }

  async function refreshRoutes() {
    try {
      state.routes = await api("GET", "routes");
      renderRoutes();
    } catch (err) {
      readFailed("routes", err);
    }
  }

  async function refreshLimits() {
    try {
      state.limits = await api("GET", "rate-limits");
      renderLimits();
    } catch (err) {
      readFailed("rate limits", err);
    }
  }

  function setPools(list) {
    state.pools = new Map(list.map((p) => [p.name, p]));
    renderPools();
  }

  // Usable counts change with health and state: /pools read again shortly after such events.
  function schedulePools() {
    clearTimeout(state.poolsTimer);
    state.poolsTimer = setTimeout(async () => {
      try {
        setPools((await api("GET", "pools")).pools);
      } catch (err) {
        readFailed("pools", err);
      }
    }, 300);
  }

  // -- chart ----------------------------------------------------------------------------------

  function niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function drawChart() {
    const canvas = $("chart");
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth;
    const height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const g = canvas.getContext("2d");
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    const styles = getComputedStyle(document.documentElement);
    const color = (name) => styles.getPropertyValue(name).trim();
    const left = 48;
    const right = 10;
    const top = 10;
    const bottom = 22;
    const w = width - left - right;
    const h = height - top - bottom;
    const now = Date.now();
    const points = state.history;
    const max = niceMax(Math.max(0, ...points.map((p) => p.total)));
    const x = (t) => left + w * (1 - (now - t) / WINDOW_MS);
    const y = (v) => top + h * (1 - v / max);

    g.font = "12px system-ui, sans-serif";
    g.fillStyle = color("--muted");
    g.strokeStyle = color("--line");
    g.lineWidth = 1;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      const yy = Math.round(y(v)) + 0.5;
      g.beginPath();
      g.moveTo(left, yy);
      g.lineTo(left + w, yy);
      g.stroke();
      g.fillText(v >= 10 ? v.toFixed(0) : v.toFixed(1), left - 6, yy);
    }
    g.textAlign = "center";
    g.textBaseline = "top";
    for (const s of [120, 90, 60, 30, 0]) {
      g.textAlign = s === 120 ? "left" : s === 0 ? "right" : "center";
      g.fillText(s ? "-" + s + "s" : "now", x(now - s * 1000), top + h + 5);
    }

    const line = (key, stroke, lineWidth, fill) => {
      g.save();
      g.beginPath();
      g.rect(left, top - 2, w, h + 4);
      g.clip();
      g.beginPath();
      points.forEach((p, i) => (i ? g.lineTo(x(p.t), y(p[key])) : g.moveTo(x(p.t), y(p[key]))));
      g.strokeStyle = stroke;
      g.lineWidth = lineWidth;
      g.lineJoin = "round";
      g.stroke();
      if (fill) {
        g.lineTo(x(points[points.length - 1].t), y(0));
        g.lineTo(x(points[0].t), y(0));
        g.closePath();
        g.globalAlpha = 0.12;
        g.fillStyle = stroke;
        g.fill();
      }
      g.restore();
    };
    if (points.length > 1) {
      line("total", color("--accent"), 2, true);
      line("errors", color("--down"), 1.5);
    }
    const last = points[points.length - 1];
    canvas.setAttribute(
      "aria-label",
      last
        ? "Request rate over the last 2 minutes: now " + last.total.toFixed(1) + " requests/s, " + last.errors.toFixed(1) + " errors/s"
        : "Request rate chart: no data yet",
    );
  }

  // -- status line ----------------------------------------------------------------------------

  function renderSummary() {
    const live = $("live");
    if (state.readsNeedToken) {
      live.textContent = "token needed";
      live.className = "live off";
    } else if (state.streamLive) {
      live.textContent = "live";
      live.className = "live on";
    } else {
      live.textContent = "polling";
      live.className = "live polling";
    }
    const parts = [];
    if (state.version !== null) parts.push("state version " + state.version);
    if (state.algorithm) parts.push("algorithm " + state.algorithm);
    parts.push("updated " + new Date().toLocaleTimeString());
    $("summary").textContent = parts.join(" · ");
  }

  // -- reading: poll and events ---------------------------------------------------------------

  function readFailed(what, err) {
    if (err.status === 401) {
      state.readsNeedToken = true;
      renderSummary();
      if ($("token-form").hidden && !state.tokenDismissed) askToken("Reading the state needs the admin token (admin.protect_reads is on).");
      return;
    }
    showError("read", "Cannot load " + what + ": " + err.message);
  }

  // Every pool's backends: /pools/NAME/backends each (a 304 reuses the pool's last list); NOT_MODIFIED
  // when no pool's list changed.
  async function readBackends(names) {
    const reads = names.map(async (name) => {
      let cache = state.lists.get(name);
      if (!cache) state.lists.set(name, (cache = { etag: "", list: [] }));
      try {
        const got = await api("GET", poolPath(name) + "/backends", undefined, cache);
        if (got === NOT_MODIFIED) return false;
        cache.list = got;
      } catch (err) {
        if (err.status !== 404) throw err; // (a pool removed meanwhile: none)
        cache.list = [];
      }
      return true;
    });
    const changed = await Promise.all(reads);
    for (const name of state.lists.keys()) if (!names.includes(name)) state.lists.delete(name);
    if (!changed.some(Boolean) && names.length === state.lists.size) return NOT_MODIFIED;
    return [...state.lists.values()].flatMap((c) => c.list);
  }

  async function refreshBackends() {
    const seen = state.changes;
    try {
      const pools = (await api("GET", "pools")).pools;
      setPools(pools);
      applyRead(seen, await readBackends(pools.map((p) => p.name)));
      clearError("read");
    } catch (err) {
      readFailed("backends", err);
    }
  }

  function applyRead(seen, backends) {
    if (backends === NOT_MODIFIED) return; // nothing changed since the last read
    if (seen === state.changes || state.dropped >= 3) {
      state.dropped = 0;
      setBackends(backends);
    } else {
      state.dropped++;
      for (const cache of state.lists.values()) cache.etag = ""; // (what was dropped must be read again in full)
      renderBackends();
    }
  }

  function scheduleRefresh(delay) {
    clearTimeout(state.refreshTimer);
    state.refreshTimer = setTimeout(refreshBackends, delay);
  }

  async function poll() {
    clearTimeout(state.pollTimer);
    const seen = state.changes;
    try {
      const [pools, replicas] = await Promise.all([api("GET", "pools"), api("GET", "replicas")]);
      const backends = await readBackends(pools.pools.map((p) => p.name));
      state.readsNeedToken = false;
      clearError("read");
      setPools(pools.pools);
      computeRates(replicas, Date.now());
      // An event during the read may be newer than what was read; the refresh it scheduled follows.
      applyRead(seen, backends);
      renderReplicas(replicas);
      if (state.polls++ % ROUTES_EVERY === 0) {
        refreshRoutes();
        refreshLimits();
      }
      if (!state.stream) connectEvents();
    } catch (err) {
      readFailed("the state", err);
    }
    drawChart();
    state.pollTimer = setTimeout(poll, POLL_MS);
  }

  function applySnapshot(snap) {
    state.changes++;
    state.version = snap.version;
    state.algorithm = snap.algorithm ? snap.algorithm.algorithm : state.algorithm;
    if (snap.pools) state.pools = new Map(snap.pools.map((p) => [p.name, p]));
    setBackends(snap.backends);
    refreshRoutes(); // (a stored table, or none: the configuration's, which only GET /routes tells)
    refreshLimits();
  }

  // An event changes one backend: its row is updated in place (no read, no re-render of the others).
  function applyEvent(kind, event) {
    state.changes++;
    state.version = event.version;
    if (kind === "algorithm" && event.algorithm) {
      state.algorithm = event.algorithm.name;
      renderSummary();
      schedulePools();
      return;
    }
    if (kind === "routes") return void refreshRoutes();
    if (kind === "rate_limits") return void refreshLimits();
    if (kind === "pool_set" || kind === "pool_removed") {
      if (kind === "pool_removed") state.pools.delete(event.name);
      renderPools();
      return void schedulePools();
    }
    const address = event.address;
    if (!address) return;
    const known = state.backends.get(address);
    if ((kind === "backend_added" || kind === "backend_updated") && event.backend) {
      const b = known ? { ...known } : { address, conn_count: 0, health: "unknown", health_reason: "", ejected: false, ejected_until: null };
      b.weight = event.backend.weight;
      b.state = event.backend.state;
      b.origin = event.backend.origin;
      b.pool = poolOf(event.backend);
      b.override = event.backend.override || null;
      b.discovered = event.backend.discovered || null;
      state.backends.set(address, b);
    } else if (kind === "backend_removed") {
      state.backends.delete(address);
    } else if (kind === "health" && known && event.health) {
      state.backends.set(address, { ...known, health: event.health.status, health_reason: event.health.reason || "" });
    } else if (kind === "ejection" && known) {
      const e = event.ejection;
      const ejected = Boolean(e && e.until * 1000 > Date.now());
      state.backends.set(address, { ...known, ejected, ejected_until: ejected ? e.until : null });
    } else {
      return;
    }
    renderOne(address);
    schedulePools();
  }

  function dispatch(kind, data) {
    let parsed;
    try {
      parsed = JSON.parse(data);
    } catch {
      return;
    }
    if (kind === "snapshot") applySnapshot(parsed);
    else if (EVENT_KINDS.includes(kind)) applyEvent(kind, parsed);
  }

  function setLive(on) {
    state.streamLive = on;
    renderSummary();
  }

  function openEventSource() {
    const source = new EventSource("events");
    source.onopen = () => setLive(true);
    source.onerror = () => {
      setLive(false);
      if (source.readyState === EventSource.CLOSED) {
        // Refused (e.g. 401 with protect_reads): the poll goes on and asks for the token.
        state.stream = null;
      }
    };
    source.addEventListener("snapshot", (e) => dispatch("snapshot", e.data));
    for (const kind of EVENT_KINDS) source.addEventListener(kind, (e) => dispatch(kind, e.data));
    return { stop: () => source.close() };
  }

  function parseBlock(block) {
    let kind = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") kind = value;
      else if (field === "data") data.push(value);
    }
    if (data.length) dispatch(kind, data.join("\n"));
  }

  function openFetchStream() {
    const abort = new AbortController();
    const run = async () => {
      let backoff = 500;
      while (!abort.signal.aborted) {
        try {
          const resp = await fetch("events", {
            headers: { Accept: "text/event-stream", ...authHeaders() },
            cache: "no-store",
            signal: abort.signal,
          });
          if (resp.status === 401) {
            setLive(false);
            state.stream = null;
            readFailed("events", new ApiError(401, "unauthorized"));
            return;
          }
          if (!resp.ok || !resp.body) throw new Error("HTTP " + resp.status);
          setLive(true);
          backoff = 500;
          const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value;
            // A "\r" at the end may be half of a "\r\n": keep it until the next chunk.
            const keep = buffer.endsWith("\r") ? 1 : 0;
            let text = buffer.slice(0, buffer.length - keep).replace(/\r\n?/g, "\n");
            let end;
            while ((end = text.indexOf("\n\n")) >= 0) {
              parseBlock(text.slice(0, end));
              text = text.slice(end + 2);
            }
            buffer = text + buffer.slice(buffer.length - keep);
          }
        } catch (err) {
          if (abort.signal.aborted) return;
        }
        setLive(false);
        await new Promise((resolve) => setTimeout(resolve, backoff));
        backoff = Math.min(backoff * 2, 10000);
      }
    };
    run();
    return { stop: () => abort.abort() };
  }

  function connectEvents() {
    if (state.stream) state.stream.stop();
    setLive(false);
    state.stream = token() ? openFetchStream() : openEventSource();
  }

  window.addEventListener("resize", drawChart);
  updateTokenState();
  renderSummary();
  poll();
})();
