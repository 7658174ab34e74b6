// The incident pages' rules that need no browser and no dictionary: which name to show for a code or
// a username, the category's default deadline, the departments that may assist, how late an overdue
// item is, which reports to offer as the original of a duplicate, and which named area a point lies
// in. No imports, so the unit tests (tests/ui/incidents-logic.test.mjs) load it as it is; the pages
// turn the results into words with t().

// The states in which a report is still being handled: the ones a new report may duplicate, and the
// ones the report form's map shows around the reporter.
export const OPEN_STATES = ['reported', 'accepted', 'escalated', 'dispatched', 'in_progress'];

function present(v) {
  return typeof v === 'string' && v.trim() !== '';
}

// An area as a person reads it: the name the node sent, else the directory's (GET /api/v1/areas, as
// a Map code → name), else the bare code. `named` says whether a name was found, so the page can put
// the code beside it only when it adds something.
export function areaText(code, name, directory) {
  const c = typeof code === 'string' ? code : '';
  if (present(name)) return { text: name.trim(), code: c, named: true };
  const known = directory && c ? directory.get(c) : null;
  if (present(known)) return { text: known.trim(), code: c, named: true };
  return { text: c, code: c, named: false };
}

// A person: the display name when the node knows one, else the username it has.
export function personText(name, username) {
  if (present(name)) return name.trim();
  return typeof username === 'string' ? username : '';
}

// A department: the name the node sent, else the catalog's, else the id.
export function departmentText(id, name, departments) {
  if (present(name)) return name.trim();
  const d = Array.isArray(departments) ? departments.find((x) => x && x.id === id) : null;
  return d && present(d.name) ? d.name.trim() : (id ?? '');
}

// The named areas a person may choose (their own area and what lies inside it), in code order, so a
// township comes before its villages.
export function areasWithin(areas, scope) {
  const s = typeof scope === 'string' ? scope : '';
  return (Array.isArray(areas) ? areas : [])
    .filter((a) => a && typeof a.code === 'string' && a.code.startsWith(s))
    .slice()
    .sort((a, b) => (a.code < b.code ? -1 : a.code > b.code ? 1 : 0));
}

function trimmed(x) {
  return Number.isInteger(x) ? x : Number(x.toFixed(1));
}

// A span of minutes in the unit it reads best in: up to three days in hours ("72 小时", what staff
// count a safety deadline in), beyond that in days, under an hour in minutes.
export function durationParts(minutes) {
  const m = Math.max(0, Number(minutes) || 0);
  if (m < 60) return { n: Math.round(m), unit: 'minutes' };
  if (m <= 72 * 60) return { n: trimmed(m / 60), unit: 'hours' };
  return { n: trimmed(m / 1440), unit: 'days' };
}

// How late an item is, or null when it is not past `dueMs`: whole minutes under an hour, whole hours
// under two days, whole days after that, never "0" (an item one second late is late).
export function lateness(dueMs, nowMs) {
  if (typeof dueMs !== 'number' || !Number.isFinite(dueMs) || nowMs <= dueMs) return null;
  const minutes = Math.floor((nowMs - dueMs) / 60000);
  if (minutes < 60) return { minutes, n: Math.max(1, minutes), unit: 'minutes' };
  if (minutes < 48 * 60) return { minutes, n: Math.floor(minutes / 60), unit: 'hours' };
  return { minutes, n: Math.floor(minutes / 1440), unit: 'days' };
}

// The deadline a dispatch gets by default: now plus the category's time to resolve, which is what
// the node would count from acceptance. Null when the catalog does not know the category.
export function defaultDeadline(categoryName, categories, nowMs) {
  const c = (Array.isArray(categories) ? categories : []).find((x) => x && x.name === categoryName);
  if (!c || !Number.isFinite(c.resolve_within_minutes) || c.resolve_within_minutes <= 0) return null;
  return { ms: nowMs + c.resolve_within_minutes * 60000, minutes: c.resolve_within_minutes, category: c.name };
}

const pad = (n) => String(n).padStart(2, '0');

// A moment as <input type="datetime-local"> takes it: the phone's local time, to the minute.
export function localInputValue(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

// The departments that may assist: all but the lead, which cannot assist itself.
export function assistChoices(departments, lead) {
  return (Array.isArray(departments) ? departments : []).filter((d) => d && d.id !== lead);
}

// The assisting departments to send: the ticked ones, without the lead, once each, in catalog order.
export function assistSelection(departments, ticked, lead) {
  const chosen = new Set(ticked);
  return assistChoices(departments, lead).filter((d) => chosen.has(d.id)).map((d) => d.id);
}

// Reports offered as the original of `subject`: not itself, not one already closed as a duplicate;
// open reports of the same category in the same village first, then the rest of the open ones, then
// the others, each group newest first.
export function rankCandidates(incidents, subject) {
  const seen = new Set([subject && subject.id]);
  const out = [];
  for (const i of Array.isArray(incidents) ? incidents : []) {
    if (!i || seen.has(i.id) || i.duplicate_of || i.state === 'duplicate') continue;
    seen.add(i.id);
    out.push(i);
  }
  const rank = (i) => {
    const open = OPEN_STATES.includes(i.state);
    const alike = subject && i.category === subject.category && i.area === subject.area;
    return open && alike ? 0 : open ? 1 : 2;
  };
  return out
    .map((i, n) => [i, n])
    .sort((a, b) => rank(a[0]) - rank(b[0]) || (b[0].created_ms || 0) - (a[0].created_ms || 0) || a[1] - b[1])
    .map(([i]) => i);
}

function inRing(ring, lat, lon) {
  let inside = false;
  for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
    const [xi, yi] = ring[i];
    const [xj, yj] = ring[j];
    if ((yi > lat) !== (yj > lat) && lon < ((xj - xi) * (lat - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}

function inPolygon(rings, lat, lon) {
  if (!Array.isArray(rings) || !rings.length || !inRing(rings[0], lat, lon)) return false;
  return !rings.slice(1).some((hole) => inRing(hole, lat, lon));
}

// The named area a point lies in, from the map's outlines (GeoJSON, [lon, lat]): the most specific
// one (the longest code), so a point in a village names the village, not its township. Null outside
// every outline.
export function areaAt(outlines, lat, lon) {
  if (!Number.isFinite(lat) || !Number.isFinite(lon)) return null;
  let best = null;
  for (const f of outlines && Array.isArray(outlines.features) ? outlines.features : []) {
    const g = f && f.geometry;
    const p = (f && f.properties) || {};
    if (!g || typeof p.code !== 'string') continue;
    const polygons = g.type === 'Polygon' ? [g.coordinates] : g.type === 'MultiPolygon' ? g.coordinates : [];
    if (!polygons.some((rings) => inPolygon(rings, lat, lon))) continue;
    if (!best || p.code.length > best.code.length) best = { code: p.code, name: present(p.name) ? p.name.trim() : p.code };
  }
  return best;
}

// Metres between two points (haversine; plenty for a village).
export function distanceMeters(lat1, lon1, lat2, lon2) {
  const rad = Math.PI / 180;
  const dLat = (lat2 - lat1) * rad;
  const dLon = (lon2 - lon1) * rad;
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(lat1 * rad) * Math.cos(lat2 * rad) * Math.sin(dLon / 2) ** 2;
  return 2 * 6371000 * Math.asin(Math.min(1, Math.sqrt(h)));
}

// The open reports (GeoJSON points) within `meters` of a place, nearest first, each with its
// distance: what the report form names under the map as a likely duplicate.
export function nearbyReports(fc, lat, lon, meters) {
  if (!Number.isFinite(lat) || !Number.isFinite(lon)) return [];
  const out = [];
  for (const f of fc && Array.isArray(fc.features) ? fc.features : []) {
    const g = f && f.geometry;
    if (!g || g.type !== 'Point' || !Array.isArray(g.coordinates)) continue;
    const [flon, flat] = g.coordinates;
    if (!Number.isFinite(flat) || !Number.isFinite(flon)) continue;
    const d = distanceMeters(lat, lon, flat, flon);
    if (d <= meters) out.push({ feature: f, meters: Math.round(d) });
  }
  return out.sort((a, b) => a.meters - b.meters);
}
