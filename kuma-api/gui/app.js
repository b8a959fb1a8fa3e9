// The control plane's GUI: a single page over the HTTP API of the port it is served from.
// Pages (hash routes):
//   #/                                  meshes
//   #/meshes/<mesh>                     a mesh: data planes, services, policies by type
//   #/meshes/<mesh>/dataplanes/<name>   a data plane: status, matched policies, Envoy config
//   #/meshes/<mesh>/policies/<path>     the policies of one type
//   #/zones                             zones (global mode) and zone proxies per zone
// Everything shown is built with text nodes: nothing from the API is parsed as HTML.
"use strict";

const app = () => document.getElementById("app");

/** GET `path` from the API as JSON. */
async function api(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  if (!r.ok) {
    throw new Error(`${path}: ${r.status} ${r.statusText}`);
  }
  return r.json();
}

/** Every item of a paged list. */
async function all(path) {
  const items = [];
  let next = path + (path.includes("?") ? "&" : "?") + "size=1000";
  while (next) {
    const page = await api(next);
    items.push(...(page.items || []));
    next = page.next ? new URL(page.next, location.href).pathname + new URL(page.next, location.href).search : null;
  }
  return items;
}

/** An element: h("a", {href: "#/"}, "text", child, ...). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") el.className = v;
    else el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function table(headers, rows, empty) {
  if (rows.length === 0) return h("p", { class: "muted" }, empty);
  return h("table", {},
    h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))));
}

const enc = encodeURIComponent;
const meshLink = (m) => h("a", { href: `#/meshes/${enc(m)}` }, m);
const dpLink = (m, n) => h("a", { href: `#/meshes/${enc(m)}/dataplanes/${enc(n)}` }, n);
const tags = (t) => Object.entries(t || {}).map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`));

/** Online when the last xDS subscription is connected. */
function online(overview) {
  const subs = overview.dataplaneInsight?.subscriptions || [];
  const last = subs[subs.length - 1];
  return Boolean(last && last.connectTime && !last.disconnectTime);
}
const statusBadge = (on) => h("span", { class: `badge ${on ? "online" : "offline"}` }, on ? "Online" : "Offline");

/** What the last subscription reports: last update, ACKs, NACKs. */
function xdsStatus(overview) {
  const subs = overview.dataplaneInsight?.subscriptions || [];
  const s = subs[subs.length - 1]?.status || {};
  const total = s.total || {};
  return {
    last: s.lastUpdateTime ? new Date(s.lastUpdateTime).toLocaleString() : "never",
    acks: total.responsesAcknowledged || 0,
    nacks: total.responsesRejected || 0,
  };
}

function inbounds(dp) {
  return dp?.networking?.inbound || [];
}

async function meshesPage() {
  const meshes = await all("/meshes");
  const rows = await Promise.all(meshes.map(async (m) => {
    const dps = await all(`/meshes/${enc(m.name)}/dataplanes+insights`);
    const on = dps.filter(online).length;
    const mtls = m.mtls?.enabledBackend ? `on (${m.mtls.enabledBackend})` : "off";
    return [meshLink(m.name), mtls, `${on} online / ${dps.length}`];
  }));
  return [h("h1", {}, "Meshes"), table(["Mesh", "mTLS", "Data planes"], rows, "No meshes.")];
}

async function meshPage(mesh) {
  const [dps, types] = await Promise.all([
    all(`/meshes/${enc(mesh)}/dataplanes+insights`),
    api("/policies"),
  ]);
  const dpRows = dps.map((o) => {
    const x = xdsStatus(o);
    return [
      dpLink(mesh, o.name),
      statusBadge(online(o)),
      o.dataplane?.networking?.address || "",
      inbounds(o.dataplane).map((i) => i.tags?.["kuma.io/service"]).filter(Boolean).join(", "),
      x.last,
      `${x.acks} ACK / ${x.nacks} NACK`,
    ];
  });
  const services = new Map();
  for (const o of dps) {
    for (const i of inbounds(o.dataplane)) {
      const name = i.tags?.["kuma.io/service"];
      if (!name) continue;
      const s = services.get(name) || { total: 0, online: 0, protocol: i.tags["kuma.io/protocol"] || "tcp" };
      s.total += 1;
      if (online(o)) s.online += 1;
      services.set(name, s);
    }
  }
  const serviceRows = [...services.entries()].sort(([a], [b]) => a.localeCompare(b))
    .map(([name, s]) => [name, s.protocol, `${s.online} online / ${s.total}`]);
  const counts = await Promise.all(types.policies.map(async (t) => {
    const list = await api(`/meshes/${enc(mesh)}/${t.path}?size=1`).catch(() => ({ total: 0 }));
    return [t, list.total || 0];
  }));
  const policyRows = counts.filter(([, n]) => n > 0)
    .map(([t, n]) => [h("a", { href: `#/meshes/${enc(mesh)}/policies/${enc(t.path)}` }, t.name), String(n)]);
  return [
    h("h1", {}, `Mesh ${mesh}`),
    h("h2", {}, "Data planes"),
    table(["Name", "Status", "Address", "Services", "Last update", "xDS"], dpRows, "No data planes."),
    h("h2", {}, "Services"),
    table(["Service", "Protocol", "Instances"], serviceRows, "No services."),
    h("h2", {}, "Policies"),
    table(["Type", "Count"], policyRows, "No policies."),
  ];
}

async function policiesPage(mesh, path) {
  const items = await all(`/meshes/${enc(mesh)}/${enc(path)}`);
  const kind = items[0]?.type || path;
  const rows = items.map((p) => [
    p.name,
    p.spec?.targetRef ? `${p.spec.targetRef.kind}${p.spec.targetRef.name ? " " + p.spec.targetRef.name : ""}` : "",
    p.creationTime ? new Date(p.creationTime).toLocaleString() : "",
  ]);
  return [
    h("p", {}, meshLink(mesh)),
    h("h1", {}, `${kind} in ${mesh}`),
    table(["Name", "Target", "Created"], rows, "None."),
  ];
}

async function dataplanePage(mesh, name) {
  const base = `/meshes/${enc(mesh)}/dataplanes/${enc(name)}`;
  const [o, matched, config] = await Promise.all([
    api(`/meshes/${enc(mesh)}/dataplanes+insights/${enc(name)}`),
    api(`${base}/_rules`).catch((e) => ({ error: e.message })),
    api(`${base}/_config`).catch((e) => ({ error: e.message })),
  ]);
  const x = xdsStatus(o);
  const dp = o.dataplane || {};
  const inboundRows = inbounds(dp).map((i) => [String(i.port), String(i.servicePort ?? ""), tags(i.tags)]);
  const policyRows = (matched.rules || []).map((r) => {
    const names = new Set();
    const directions = [];
    const collect = (direction, rules) => {
      if (rules.length === 0) return;
      directions.push(direction);
      for (const rule of rules) for (const o of rule.origin || []) names.add(o.name || o.resourceMeta?.name);
    };
    collect("to", r.toRules || []);
    collect("from", (r.fromRules || []).flatMap((f) => f.rules || []));
    collect("proxy", r.proxyRule ? [r.proxyRule] : []);
    return [r.type, directions.join(", "), [...names].filter(Boolean).sort().join(", ")];
  });
  return [
    h("p", {}, meshLink(mesh)),
    h("h1", {}, `Data plane ${name}`),
    h("dl", {},
      h("dt", {}, "Status"), h("dd", {}, statusBadge(online(o))),
      h("dt", {}, "Mesh"), h("dd", {}, mesh),
      h("dt", {}, "Address"), h("dd", {}, dp.networking?.address || ""),
      h("dt", {}, "Last update"), h("dd", {}, x.last),
      h("dt", {}, "xDS"), h("dd", {}, `${x.acks} ACK / ${x.nacks} NACK`)),
    h("h2", {}, "Inbounds"),
    table(["Port", "Service port", "Tags"], inboundRows, "No inbounds."),
    h("h2", {}, "Matched policies"),
    matched.error ? h("p", { class: "error" }, matched.error)
      : table(["Type", "Applies to", "Policies"], policyRows, "No policies apply."),
    h("h2", {}, "Envoy config"),
    config.error ? h("p", { class: "error" }, config.error)
      : h("pre", { id: "envoy-config" }, JSON.stringify(config, null, 2)),
  ];
}

/** Whether a zone is online: enabled, and its last connection to global still open. */
function zoneOnline(z) {
  const subs = (z.zoneInsight && z.zoneInsight.subscriptions) || [];
  const last = subs[subs.length - 1];
  return z.zone.enabled !== false && !!last && !!last.connectTime && !last.disconnectTime;
}

async function zonesPage() {
  const zones = await all("/zones+insights");
  const rows = zones.map((z) => {
    const subs = (z.zoneInsight && z.zoneInsight.subscriptions) || [];
    const last = subs[subs.length - 1] || {};
    const total = subs.reduce((n, s) => n + Number(((s.status || {}).total || {}).responsesSent || 0), 0);
    return [
      z.name,
      z.zone.enabled === false ? "disabled" : zoneOnline(z) ? "online" : "offline",
      last.connectTime || "never",
      ((last.version || {}).kumaCp || {}).version || "",
      String(total),
    ];
  });
  const [ingresses, egresses] = await Promise.all([all("/zoneingresses"), all("/zoneegresses")]);
  const net = (p) => p.networking || {};
  const proxies = [
    ...ingresses.map((p) => [p.zone || "", "ingress", p.name, `${net(p).address || ""}:${net(p).port || ""}`,
      net(p).advertisedAddress ? `${net(p).advertisedAddress}:${net(p).advertisedPort || ""}` : "",
      String((p.availableServices || []).length)]),
    ...egresses.map((p) => [p.zone || "", "egress", p.name, `${net(p).address || ""}:${net(p).port || ""}`, "", ""]),
  ].sort((a, b) => (a[0] + "/" + a[2]).localeCompare(b[0] + "/" + b[2]));
  return [h("h1", {}, "Zones"),
    table(["Zone", "Status", "Last connected", "Zone CP version", "Updates sent"], rows, "No zones."),
    h("h2", {}, "Zone proxies"),
    table(["Zone", "Kind", "Name", "Address", "Advertised", "Services"], proxies, "No zone proxies.")];
}

/** The page for the current hash. */
function page() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts.length === 0) return meshesPage();
  if (parts[0] === "zones") return zonesPage();
  if (parts[0] === "meshes" && parts.length === 2) return meshPage(parts[1]);
  if (parts[0] === "meshes" && parts[2] === "dataplanes" && parts.length === 4) return dataplanePage(parts[1], parts[3]);
  if (parts[0] === "meshes" && parts[2] === "policies" && parts.length === 4) return policiesPage(parts[1], parts[3]);
  return Promise.resolve([h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/" }, "Meshes"))]);
}

async function render() {
  document.body.dataset.ready = "false";
  try {
    app().replaceChildren(...(await page()));
  } catch (e) {
    app().replaceChildren(h("h1", {}, "Error"), h("p", { class: "error" }, e.message));
  }
  document.body.dataset.ready = "true";
}

async function header() {
  try {
    const [info, config] = await Promise.all([api("/"), api("/config").catch(() => ({}))]);
    document.getElementById("about").textContent =
      `${info.product || "Kuma"} ${info.version || ""} · ${config.mode || ""} · ${info.hostname || ""}`;
    if (config.mode === "global") {
      document.getElementById("nav").append(h("a", { href: "#/zones" }, "Zones"));
    }
  } catch (e) {
    document.getElementById("about").textContent = e.message;
  }
}

window.addEventListener("hashchange", render);
header();
render();
