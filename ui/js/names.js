// Names instead of codes: the directory of named areas (GET /api/v1/areas — the caller's area, what
// lies inside it and what lies above), fetched once and shared by every page that shows an area, and
// the small pieces that put a name on screen with its code beside it.
//
// Most answers already carry names (area_name, reporter_name …); the directory is for codes that come
// without one: the report form's and the users page's choices, the indicators' per-area keys, the
// list's filter. The phone keeps a copy, so a page opened offline still says 王宅村, not 330723001001;
// area names are public and the same for everyone on the node, so the copy is not cleared on sign-out.
import { getJson } from './api.js';
import { el } from './dom.js';
import { areaText, personText } from './incidents-logic.js';

const STORE_KEY = 'township.areas';
// Areas are named in the node's configuration and change only with it; a page opened within this
// span reuses the last answer instead of asking again.
const FRESH_MS = 5 * 60 * 1000;

let loading = null;
let loadedAt = 0;

function stored() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE_KEY) || 'null');
    return Array.isArray(saved) ? saved : null;
  } catch (_) {
    return null;
  }
}

function keep(areas) {
  try { localStorage.setItem(STORE_KEY, JSON.stringify(areas)); } catch (_) { /* names only; the codes still show */ }
}

function valid(areas) {
  return (Array.isArray(areas) ? areas : []).filter((a) => a && typeof a.code === 'string' && typeof a.name === 'string');
}

// The directory: { areas: [{code, name, parent}], directory: Map code → name }. Never rejects: with
// no answer and no copy on the phone it is empty, and every area shows as its code.
export function loadAreas() {
  if (!loading || Date.now() - loadedAt > FRESH_MS) {
    loadedAt = Date.now();
    loading = getJson('/api/v1/areas', { timeoutMs: 8000 })
      .then((data) => {
        const areas = valid(data && data.areas);
        keep(areas);
        return areas;
      })
      .catch(() => {
        // The next page asks again.
        loadedAt = 0;
        return valid(stored());
      })
      .then((areas) => ({ areas, directory: new Map(areas.map((a) => [a.code, a.name])) }));
  }
  return loading;
}

// An area inline: its name, with the code as the tooltip; the bare code when it has no name.
// `code: true` puts the code after the name as a small second part too, for pages where the code is
// worth reading (a tooltip cannot be seen on a phone).
export function areaNode(dir, code, name, { code: showCode = false } = {}) {
  const a = areaText(code, name, dir && dir.directory);
  if (!a.named) return el('span', { class: 'area-name', 'data-area': a.code }, a.text);
  return el('span', { class: 'area-name', title: a.code, 'data-area': a.code }, a.text,
    showCode ? el('span', { class: 'area-code' }, ` ${a.code}`) : null);
}

// The same as text, for places that take a string (an <option>, a chart label).
export function areaLabel(dir, code, name) {
  return areaText(code, name, dir && dir.directory).text;
}

// A person inline: the display name, with the username as the tooltip when they differ.
export function personNode(name, username) {
  const text = personText(name, username);
  return el('span', { class: 'person', title: text !== username ? username : null }, text);
}
