// Maps for the incident pages, drawn with Leaflet (ui/vendor/leaflet/). Leaflet, its stylesheet and
// css/map.css are fetched only when the first map is mounted, from URLs resolved against this module,
// so they carry the same /assets/{version}/ prefix (and year-long cache) as the rest of the UI and
// pass the 'self'-only Content-Security-Policy. The page adds no <link> of its own.
//
// What the node says about maps comes from GET /api/v1/map, asked once per page load. With no tiles
// configured, or when the tiles do not load (an address the village cannot reach, a tile server
// that is down), the map is a plain one: a light background, the village outlines with their names,
// the points, a small "无底图 · No base map" note, and no request beyond the node's API.
//
// Exports:
//
// mountPickMap(container, { center, value, nearby, onPick, labels })
//     → { setValue({lat, lon} | null), setNearby(featureCollection), destroy(), ready }
//   The report form's map. A tap or click drops the single pin or moves it there; the pin can be
//   dragged; with the map focused, Enter or Space puts it at the map's centre (arrow keys pan, + and
//   - zoom). Each of these calls onPick({lat, lon}), six decimals. setValue moves the pin from the
//   form's own inputs (without calling onPick); null removes it. `center` ([lat, lon]) is where to
//   open when there is no `value` yet; `nearby` is a GeoJSON FeatureCollection of open reports,
//   drawn as small rings whose popups give the title, the category and a link to the incident.
//
// mountIncidentsMap(container, { features, labels })
//     → { setFeatures(featureCollection), destroy(), ready }
//   The incident list's map: one dot per located incident (GET /api/v1/incidents.geojson), coloured
//   by due_state (ok, near, overdue) with a legend, popups with the title, state, village and a link
//   to the incident. Opens on the points, else the outlines, else the configured centre.
//
// Both mount at once and draw when Leaflet and the settings have arrived; calls made before then are
// kept. `ready` resolves to true once drawn, false if the map could not be (then the container says
// so), and never rejects. destroy() is safe to call at any time, more than once; pages call it from
// their view's cleanup (view.add). The container gets its height from css/map.css (.tn-map) unless
// the page sets one.
//
// `labels` carries the texts in the page's language (from i18n keys); whatever is missing is shown in
// Chinese. The keys and defaults are DEFAULT_LABELS in map-logic.js.
import { getJson } from './api.js';
import { navigate } from './router.js';
import {
  NEARBY_COLOR, NAMES_MIN_ZOOM, MAX_POINTS, DUE_STATES, mergeLabels, fillCount, escapeHtml, readConfig,
  plainConfig, tilesFailed, pointsOf, pointCount, incidentsView, pickView, toLatLon, normalizePick,
  dueColor, dueCounts, drawOrder, popupModel, popupNode,
} from './map-logic.js';

const LEAFLET_DIR = '../vendor/leaflet/';

function stylesheet(href) {
  if ([...document.querySelectorAll('link[rel="stylesheet"]')].some((l) => l.href === href)) return Promise.resolve();
  const link = document.createElement('link');
  link.rel = 'stylesheet';
  link.href = href;
  // A stylesheet that fails only makes the map plainer; it must not stop it.
  const loaded = new Promise((resolve) => { link.addEventListener('load', resolve); link.addEventListener('error', resolve); });
  document.head.append(link);
  return loaded;
}

let leafletLoading = null;
// Leaflet and both stylesheets, fetched on first use. The map is built only once the CSS is in, as
// Leaflet measures the container when it starts. Leaflet's own way of finding its marker images
// (reading them back from its CSS) is not relied upon: the path is set from this module's URL.
function loadLeaflet() {
  if (!leafletLoading) {
    const url = (path) => new URL(path, import.meta.url).href;
    const css = Promise.all([stylesheet(url(`${LEAFLET_DIR}leaflet.css`)), stylesheet(url('../css/map.css'))]);
    leafletLoading = Promise.all([import('../vendor/leaflet/leaflet-src.esm.js'), css])
      .then(([L]) => {
        L.Icon.Default.imagePath = url(`${LEAFLET_DIR}images/`);
        return L;
      })
      .catch((e) => { leafletLoading = null; throw e; });
  }
  return leafletLoading;
}

let configLoading = null;
// The node's map settings, asked once per page load. When the node cannot say (offline, an older
// node) the map is drawn plain, and the next map asks again.
export function loadMapConfig() {
  if (!configLoading) {
    configLoading = getJson('/api/v1/map').then(readConfig, () => {
      configLoading = null;
      return readConfig(null);
    });
  }
  return configLoading;
}

function textEl(tag, className, text) {
  const node = document.createElement(tag);
  node.className = className;
  node.textContent = text;
  return node;
}

// A popup's content, built when it opens (not for every marker up front). Leaflet stops clicks from
// leaving a popup, so the document-wide router never sees its link: the link routes itself.
function popupContent(feature, labels, kind) {
  const box = popupNode(document, popupModel(feature, labels, kind));
  const link = box.querySelector('a[data-link]');
  if (link) {
    link.addEventListener('click', (e) => {
      if (e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
      e.preventDefault();
      navigate(link.getAttribute('href'));
    });
  }
  return box;
}

function control(L, position, node) {
  const c = L.control({ position });
  c.onAdd = () => node;
  return c;
}

// The map both pages share: the container, controls, base map (or its absence) and outlines.
function baseMap(L, container, config, labels, ariaLabel) {
  container.classList.add('tn-map');
  const map = L.map(container, {
    zoomControl: false,
    attributionControl: false,
    minZoom: config.minZoom,
    maxZoom: config.maxZoom,
    // Old phones: no tile fades, no rubber-banding at the zoom limits.
    fadeAnimation: false,
    bounceAtZoomLimits: false,
    // The map sits inside a scrolling page; the wheel zooms it only once it has been focused.
    scrollWheelZoom: false,
  });
  container.setAttribute('role', 'region');
  container.setAttribute('aria-label', ariaLabel);
  // Leaflet focuses the map itself on every tap, which browsers then treat as keyboard focus; the
  // focus ring and the centre cross (map.css) are kept for focus that really came from the keyboard.
  const byPointer = () => container.classList.add('tn-map-pointer');
  const byKeyboard = () => container.classList.remove('tn-map-pointer');
  container.addEventListener('pointerdown', byPointer, true);
  container.addEventListener('keydown', byKeyboard, true);
  container.addEventListener('blur', byKeyboard);
  map.on('focus', () => map.scrollWheelZoom.enable());
  map.on('blur', () => map.scrollWheelZoom.disable());
  L.control.zoom({ zoomInTitle: labels.zoomIn, zoomOutTitle: labels.zoomOut }).addTo(map);
  // Leaflet's own credit as plain text: its usual one links to a site the villages cannot reach.
  L.control.attribution({ prefix: 'Leaflet' }).addTo(map);
  map.on('popupopen', (e) => {
    const close = e.popup.getElement()?.querySelector('.leaflet-popup-close-button');
    if (close) close.setAttribute('aria-label', labels.close);
  });

  const note = control(L, 'topright', textEl('div', 'tn-map-note', labels.noBaseMap));
  let tiles = null;
  const goPlain = () => {
    if (tiles) tiles.remove();
    tiles = null;
    const plain = plainConfig(config);
    map.setMinZoom(plain.minZoom);
    map.setMaxZoom(plain.maxZoom);
    container.classList.add('tn-map-plain');
    note.addTo(map);
  };
  if (config.tiles) {
    let loaded = 0;
    let failed = 0;
    // Given up only when no tile at all has loaded; the removal waits for Leaflet's own handler.
    const check = (settled) => {
      if (tiles && tilesFailed({ loaded, failed, settled })) setTimeout(() => { if (tiles) goPlain(); }, 0);
    };
    tiles = L.tileLayer(config.tiles.url, {
      minZoom: config.tiles.minZoom,
      maxZoom: config.tiles.maxZoom,
      attribution: escapeHtml(config.tiles.attribution),
      keepBuffer: 1,
    });
    tiles.on('tileload', () => { loaded += 1; });
    tiles.on('tileerror', () => { failed += 1; check(false); });
    tiles.on('load', () => check(true));
    tiles.addTo(map);
  } else {
    goPlain();
  }

  if (config.outlines.features.length) {
    L.geoJSON(config.outlines, {
      interactive: false,
      style: () => ({ className: 'tn-map-outline', color: '#0b5394', weight: 2, opacity: 0.8, fillColor: '#0b5394', fillOpacity: 0.04 }),
      onEachFeature: (f, layer) => {
        const p = f.properties || {};
        const name = String(p.name || p.code || '').trim();
        if (name) layer.bindTooltip(textEl('span', '', name), { permanent: true, direction: 'center', className: 'tn-map-name' });
      },
    }).addTo(map);
  }
  const names = () => container.classList.toggle('tn-map-far', map.getZoom() < NAMES_MIN_ZOOM);
  map.on('zoomend', names);

  // A map mounted while hidden (zero size) cannot fit anything; it is fitted again once it shows.
  let pendingView = null;
  const show = (view) => {
    if (!container.clientWidth || !container.clientHeight) {
      pendingView = view;
      map.setView(view.center || [(view.bounds[0][0] + view.bounds[1][0]) / 2, (view.bounds[0][1] + view.bounds[1][1]) / 2], view.zoom ?? config.zoom, { animate: false });
    } else if (view.bounds) {
      pendingView = null;
      // Points are kept clear of the legend and attribution in the bottom-right corner.
      const corner = container.querySelector('.leaflet-bottom.leaflet-right');
      const bottom = 16 + (corner ? corner.offsetHeight : 0);
      map.fitBounds(view.bounds, { maxZoom: view.maxZoom, paddingTopLeft: [24, 24], paddingBottomRight: [24, bottom], animate: false });
    } else {
      pendingView = null;
      map.setView(view.center, view.zoom, { animate: false });
    }
    names();
  };
  let observer = null;
  if ('ResizeObserver' in window) {
    observer = new ResizeObserver(() => {
      map.invalidateSize({ animate: false });
      if (pendingView && container.clientWidth && container.clientHeight) show(pendingView);
    });
    observer.observe(container);
  }

  return {
    map,
    show,
    destroy() {
      if (observer) observer.disconnect();
      container.removeEventListener('pointerdown', byPointer, true);
      container.removeEventListener('keydown', byKeyboard, true);
      container.removeEventListener('blur', byKeyboard);
      map.remove();
      // Leaflet leaves some of its classes and the tabindex behind; the container goes back to plain.
      container.classList.remove(...[...container.classList].filter((c) => c.startsWith('leaflet-') || c.startsWith('tn-map')));
      for (const a of ['role', 'aria-label', 'tabindex']) container.removeAttribute(a);
    },
  };
}

// Mounting shared by both maps: load, build, or say the map could not be shown.
function mount(container, labels, build) {
  let built = null;
  let destroyed = false;
  const ready = Promise.all([loadLeaflet(), loadMapConfig()])
    .then(([L, config]) => {
      if (destroyed) return false;
      built = build(L, config);
      return true;
    })
    .catch(() => {
      // Leaflet could not be fetched (offline before it was ever cached) or would not start here.
      if (!destroyed) container.replaceChildren(textEl('p', 'tn-map-failed muted small', labels.loadFailed));
      return false;
    });
  return {
    ready,
    get built() { return built; },
    destroy() {
      if (destroyed) return;
      destroyed = true;
      if (built) built.destroy();
      built = null;
    },
  };
}

export function mountPickMap(container, { center, value, nearby, onPick, labels } = {}) {
  const text = mergeLabels(labels);
  const state = { value: toLatLon(value), nearby: nearby || null };
  const m = mount(container, text, (L, config) => {
    const base = baseMap(L, container, config, text, text.pickMap);
    const { map } = base;
    container.classList.add('tn-map-pick');
    const nearbyLayer = L.layerGroup().addTo(map);
    let pin = null;

    const pick = (latlng) => {
      const v = normalizePick(latlng.lat, latlng.lng);
      place([v.lat, v.lon]);
      if (typeof onPick === 'function') onPick(v);
    };
    const place = (at) => {
      if (!at) {
        if (pin) pin.remove();
        pin = null;
        return;
      }
      if (pin) {
        pin.setLatLng(at);
        return;
      }
      pin = L.marker(at, { draggable: true, autoPan: true, keyboard: true, title: text.pin, alt: text.pin, zIndexOffset: 1000 }).addTo(map);
      pin.on('dragend', () => pick(pin.getLatLng()));
    };
    const drawNearby = () => {
      nearbyLayer.clearLayers();
      for (const p of pointsOf(state.nearby)) {
        L.circleMarker([p.lat, p.lon], {
          radius: 6, color: NEARBY_COLOR, weight: 2, fillColor: '#ffffff', fillOpacity: 1,
          className: 'tn-map-nearby',
          // A tap on a nearby report opens its popup; it must not also move the pin.
          bubblingMouseEvents: false,
        }).bindPopup(() => popupContent(p.feature, text, 'nearby')).addTo(nearbyLayer);
      }
    };

    // A tap that closes an open popup only closes it; the pin stays where it was.
    let popupOpen = false;
    let closingTap = false;
    map.on('popupopen', () => { popupOpen = true; });
    map.on('popupclose', () => { popupOpen = false; });
    map.on('preclick', () => { closingTap = popupOpen; });
    map.on('click', (e) => { if (!closingTap) pick(e.latlng); });
    // Enter or Space on the focused map (not on a control or the pin inside it) puts the pin at the
    // centre, which map.css marks with a cross while the map has keyboard focus.
    const onKey = (e) => {
      if (e.target !== container || (e.key !== 'Enter' && e.key !== ' ')) return;
      e.preventDefault();
      pick(map.getCenter());
    };
    container.addEventListener('keydown', onKey);

    place(state.value);
    drawNearby();
    base.show(pickView({ value: state.value, center, nearby: state.nearby }, config));
    return {
      setValue(v) {
        const at = toLatLon(v);
        place(at);
        if (at && !map.getBounds().contains(at)) map.panTo(at, { animate: false });
      },
      setNearby: drawNearby,
      destroy() {
        container.removeEventListener('keydown', onKey);
        base.destroy();
      },
    };
  });
  return {
    ready: m.ready,
    setValue(v) {
      state.value = toLatLon(v);
      if (m.built) m.built.setValue(v);
    },
    setNearby(fc) {
      state.nearby = fc || null;
      if (m.built) m.built.setNearby();
    },
    destroy: m.destroy,
  };
}

export function mountIncidentsMap(container, { features, labels } = {}) {
  const text = mergeLabels(labels);
  const state = { features: features || null };
  const m = mount(container, text, (L, config) => {
    const base = baseMap(L, container, config, text, text.incidentsMap);
    const { map } = base;
    const points = L.layerGroup().addTo(map);
    const legend = document.createElement('div');
    legend.className = 'tn-map-legend';
    // Bottom right, above the attribution: one corner, so the two never overlap on a narrow phone.
    control(L, 'bottomright', legend).addTo(map);

    const drawLegend = (drawn, total) => {
      const counts = dueCounts(drawn);
      const rows = [textEl('strong', 'tn-map-legend-title', text.legend)];
      for (const d of DUE_STATES) {
        const swatch = textEl('span', 'tn-map-swatch', '');
        // Set through the CSSOM, which the 'self'-only style policy allows (a style attribute it would not).
        swatch.style.background = dueColor(d);
        const row = textEl('span', `tn-map-legend-row due-${d}`, '');
        row.append(swatch, `${text.due[d]} ${counts[d]}`);
        rows.push(row);
      }
      if (!total) rows.push(textEl('span', 'tn-map-legend-row muted', text.noPoints));
      else if (total > drawn.length) rows.push(textEl('span', 'tn-map-legend-row muted', fillCount(text.capped, drawn.length)));
      legend.replaceChildren(...rows);
    };
    const draw = () => {
      points.clearLayers();
      const drawn = pointsOf(state.features, MAX_POINTS);
      // Overdue last, so it is drawn on top where dots overlap.
      for (const p of drawOrder(drawn)) {
        const due = p.feature.properties?.due_state;
        L.circleMarker([p.lat, p.lon], {
          radius: 7, color: '#ffffff', weight: 2, fillColor: dueColor(due), fillOpacity: 0.95,
          className: `tn-map-point due-${DUE_STATES.includes(due) ? due : 'ok'}`,
        }).bindPopup(() => popupContent(p.feature, text, 'incident')).addTo(points);
      }
      drawLegend(drawn, pointCount(state.features));
      base.show(incidentsView(state.features, config));
    };
    draw();
    return { setFeatures: draw, destroy: base.destroy };
  });
  return {
    ready: m.ready,
    setFeatures(fc) {
      state.features = fc || null;
      if (m.built) m.built.setFeatures();
    },
    destroy: m.destroy,
  };
}
