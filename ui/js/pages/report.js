// Reporting an incident from a phone: category, title, description, the village (chosen by name), a
// typed place, the position (tapped on the map or the phone's own where the browser allows it; both
// move the same pin), and photos. The map rings the open reports around, and the form names any close
// to the chosen place, so a reporter sees a likely duplicate before sending. Nothing here waits for
// the network: submitting puts the report and its downsized photos in the outbox (outbox.js), which
// sends them when it can, and until then what has been typed and picked is kept on the phone as a
// draft (drafts.js), so a reload, a session timeout or a lost connection loses nothing.
import { t } from '../i18n.js';
import { getJson } from '../api.js';
import { el, clear, errorBox } from '../dom.js';
import { currentUser } from '../session.js';
import { loadCatalog, mapLabels } from '../incidents-common.js';
import { loadAreas } from '../names.js';
import { areaPicker } from '../area-picker.js';
import { OPEN_STATES, areaAt, nearbyReports } from '../incidents-logic.js';
import { navigate } from '../router.js';
import { startView } from '../view.js';
import { formatTime } from '../format.js';
import * as outbox from '../outbox.js';
import { isOffline } from '../net.js';
import * as drafts from '../drafts.js';
import { preparePhoto, withLocation } from '../photo.js';
import { uuidv7 } from '../outbox-logic.js';
import { sizeText } from '../outbox-text.js';

const SAVE_DELAY_MS = 500;
// A report the node has (with every photo) this soon opens its incident; a slower one is followed on
// the outbox page, with its progress, rather than behind a spinner.
const SETTLE_MS = 3000;
const OFFLINE_SETTLE_MS = 300;
// Open reports this close to the chosen place are named under the map.
const NEARBY_METERS = 300;
const NEARBY_LISTED = 3;

function coordsText(p) {
  return `${p.lat}, ${p.lon}${p.accuracy ? ` (±${p.accuracy} m)` : ''}`;
}

export async function render(main) {
  clear(main);
  const view = startView();
  main.append(el('h1', { 'data-i18n': 'incident.report' }, t('incident.report')));
  let catalog;
  let dir;
  try {
    [catalog, dir] = await Promise.all([loadCatalog(), loadAreas()]);
  } catch (e) {
    main.append(errorBox(e.message, () => render(main)));
    return;
  }
  const me = currentUser();
  const user = me.username;
  const draft = await drafts.loadDraft(user).catch(() => null);
  if (!view.alive) return;
  const saved = draft?.fields || {};

  const category = el('select', { id: 'r-category', name: 'category', required: true },
    ...catalog.categories.map((c) => el('option', { value: c.name }, c.name)));
  const title = el('input', { id: 'r-title', name: 'title', required: true, maxlength: 100, autocomplete: 'off' });
  const description = el('textarea', { id: 'r-description', name: 'description', rows: 4, maxlength: 5000 });
  const ownVillage = me.area.length === 12 ? me.area : '';
  const picker = areaPicker({
    id: 'r-area', labelKey: 'incident.area_pick', otherLabelKey: 'incident.area', dir, scope: me.area,
    value: saved.area || ownVillage, extra: [ownVillage],
  });
  // The field a code is typed into (the only one that can hold a code outside the person's area).
  const typedArea = picker.nodes.find((n) => n.tagName === 'INPUT');
  const place = el('input', { id: 'r-place', name: 'place', maxlength: 200, placeholder: t('incident.place_hint') });
  if (saved.category && catalog.categories.some((c) => c.name === saved.category)) category.value = saved.category;
  title.value = saved.title || '';
  description.value = saved.description || '';
  place.value = saved.place || '';
  // The node refuses a village outside the reporter's area: say so before it is queued, not after.
  const checkArea = () => {
    const v = typedArea.value.trim();
    typedArea.setCustomValidity(v && me.area && !v.startsWith(me.area) ? `${t('incident.area_outside')} ${me.area}` : '');
  };
  typedArea.addEventListener('input', checkArea);
  checkArea();
  const checkTitle = () => title.setCustomValidity(title.value && !title.value.trim() ? t('incident.title_blank') : '');
  title.addEventListener('input', checkTitle);
  checkTitle();

  let position = saved.location && Number.isFinite(saved.location.lat) ? saved.location : null;
  const locationText = el('span', { class: 'muted small location-text', id: 'r-location', 'aria-live': 'polite' }, t('incident.no_location'));
  const locationHint = el('p', { class: 'muted small', id: 'r-location-hint', hidden: true });
  const locate = el('button', { type: 'button', class: 'secondary', id: 'r-locate', 'data-i18n': 'incident.locate' }, t('incident.locate'));
  if (!window.isSecureContext) {
    // Browsers allow the position only to pages opened over HTTPS; the fix is the address, not the
    // phone, and the node's /ca page explains how to trust its certificate.
    locate.disabled = true;
    locationText.textContent = t('incident.location_insecure');
    locationHint.hidden = false;
    locationHint.append(t('incident.location_insecure_help'), ' ',
      el('a', { href: '/ca', id: 'r-ca-link' }, t('incident.ca_link')));
  } else if (!('geolocation' in navigator)) {
    locate.disabled = true;
    locationText.textContent = t('incident.location_unavailable');
  }

  const keep = el('input', { type: 'checkbox', id: 'r-keep-location', name: 'keep_location', 'aria-describedby': 'r-keep-location-hint' });
  keep.checked = Boolean(saved.keepLocation);
  const photosInput = el('input', { id: 'r-photos', name: 'photos', type: 'file', accept: 'image/jpeg,image/png,image/webp,video/mp4', multiple: true });
  const photoList = el('ul', { class: 'photo-list', id: 'r-photo-list' });
  const photoState = el('p', { class: 'muted small', id: 'r-photo-state', role: 'status' });
  const draftState = el('p', { class: 'muted small', id: 'r-draft-state', role: 'status' });
  const clearDraft = el('button', { type: 'button', class: 'secondary small', id: 'r-clear-draft', 'data-i18n': 'incident.clear_draft' }, t('incident.clear_draft'));
  const error = el('p', { class: 'error', role: 'alert', id: 'r-error', hidden: true });
  const submit = el('button', { type: 'submit', id: 'r-submit', 'data-i18n': 'incident.submit' }, t('incident.submit'));
  const label = (id, key, required = false) => el('label', { for: id },
    el('span', { 'data-i18n': key }, t(key)),
    required ? el('span', { class: 'required-mark', 'aria-hidden': 'true' }, ' *') : null);

  // The photos of this draft: { blobKey, name, type, size, gps, url, blob? }.
  const photos = [];
  let submitted = false;
  let saveTimer = null;

  const fields = () => ({
    category: category.value,
    title: title.value,
    description: description.value,
    area: picker.value(),
    place: place.value,
    location: position,
    keepLocation: keep.checked,
  });
  const showSaved = (ms) => {
    draftState.textContent = ms ? `${t('incident.draft_saved')} ${formatTime(ms, { date: false, seconds: true })}` : '';
  };
  const saveNow = () => {
    clearTimeout(saveTimer);
    saveTimer = null;
    if (submitted) return Promise.resolve();
    return drafts.saveFields(user, fields()).then((d) => { if (view.alive) showSaved(d.savedMs); }).catch(() => {});
  };
  const saveSoon = () => {
    if (submitted) return;
    clearTimeout(saveTimer);
    saveTimer = setTimeout(saveNow, SAVE_DELAY_MS);
  };
  // Leaving the page (the language switch re-renders it too) saves what was typed just before.
  view.add(() => { if (saveTimer) saveNow(); });
  view.add(() => { for (const p of photos) URL.revokeObjectURL(p.url); });

  function thumb(p) {
    const n = photos.indexOf(p) + 1;
    const remove = el('button', { type: 'button', class: 'secondary small photo-remove', 'aria-label': `${t('incident.remove_photo')} ${n}` }, '✕');
    remove.addEventListener('click', async () => {
      photos.splice(photos.indexOf(p), 1);
      URL.revokeObjectURL(p.url);
      drawPhotos();
      if (p.blobKey) await drafts.removePhoto(user, p.blobKey).catch(() => {});
    });
    const preview = p.type.startsWith('image/')
      ? el('img', { src: p.url, alt: `${t('incident.photo')} ${n}`, width: 72, height: 72 })
      : el('span', { class: 'photo-video' }, `▶ ${t('incident.video')}`);
    return el('li', { class: 'photo-thumb', 'data-key': p.blobKey || '' }, preview,
      el('span', { class: 'muted small' }, sizeText(p.size), p.gps ? ` · ${t('incident.has_location')}` : ''), remove);
  }
  function drawPhotos() {
    photoList.replaceChildren(...photos.map(thumb));
  }

  for (const p of draft?.photos || []) {
    const blob = await drafts.getBlob(p.blobKey).catch(() => null);
    if (!blob) continue;
    photos.push({ ...p, size: blob.size, blob, url: URL.createObjectURL(blob) });
  }
  if (!view.alive) {
    for (const p of photos) URL.revokeObjectURL(p.url);
    return;
  }
  drawPhotos();
  if (draft) showSaved(draft.savedMs);

  // Photos are downsized one after another as they are picked (a 12-megapixel photo decoded takes
  // 48 MB; two at once can end an old phone's browser), and kept with the draft.
  let processing = Promise.resolve();
  photosInput.addEventListener('change', () => {
    const files = [...photosInput.files];
    photosInput.value = '';
    if (!files.length) return;
    submit.disabled = true;
    processing = processing.then(async () => {
      for (const [i, file] of files.entries()) {
        photoState.textContent = `${t('incident.preparing')} ${i + 1}/${files.length}`;
        try {
          const p = await preparePhoto(file);
          const entry = { name: p.name, type: p.type, size: p.blob.size, gps: p.gps, blob: p.blob, url: URL.createObjectURL(p.blob), blobKey: null };
          photos.push(entry);
          if (view.alive) drawPhotos();
          entry.blobKey = await drafts.addPhoto(user, p, p.blob).catch(() => null);
          if (!view.alive) URL.revokeObjectURL(entry.url);
        } catch (_) {
          photoState.textContent = `${file.name}${t('outbox.colon')}${t('incident.photo_failed')}`;
          continue;
        }
      }
      if (view.alive && photoState.textContent.startsWith(t('incident.preparing'))) photoState.textContent = '';
    }).finally(() => { if (!submitted) submit.disabled = false; });
  });

  // The map: a pin that a tap, a drag or the phone's position puts down, the open reports around as
  // rings, and the village outlines, which also name the place a position lies in.
  const mapBox = el('div', { id: 'r-map', class: 'report-map' });
  const nearbyNote = el('div', { class: 'nearby-note', id: 'r-nearby', 'aria-live': 'polite' });
  let mapHandle = null;
  let outlines = null;
  let nearby = null;
  const showPosition = () => {
    if (!position) {
      if (!locate.disabled) locationText.textContent = t('incident.no_location');
      nearbyNote.replaceChildren();
      return;
    }
    const where = outlines ? areaAt(outlines, position.lat, position.lon) : null;
    locationText.replaceChildren(
      el('strong', { class: 'location-place' }, where ? t('incident.location_in', { name: where.name }) : t('incident.location_set')),
      el('span', { class: 'coords' }, ` · ${coordsText(position)}`));
    showNearby();
  };
  // Open reports close to the chosen place, by title, each a link to look at before sending.
  const showNearby = () => {
    const close = position && nearby ? nearbyReports(nearby, position.lat, position.lon, NEARBY_METERS) : [];
    if (!close.length) {
      nearbyNote.replaceChildren();
      return;
    }
    nearbyNote.replaceChildren(el('p', { class: 'notice' }, t('incident.nearby_open', { n: close.length, m: NEARBY_METERS })),
      el('ul', { class: 'nearby-list' }, ...close.slice(0, NEARBY_LISTED).map(({ feature, meters }) => el('li', {},
        el('a', { href: `/incidents/${encodeURIComponent(feature.id)}`, 'data-link': true, 'data-id': feature.id }, feature.properties?.title || feature.id),
        el('span', { class: 'muted small' }, ` · ${t(`state.${feature.properties?.state}`)} · ${meters} m`)))));
  };
  // A place picked on the map fills in the village when none is chosen yet.
  const fillArea = () => {
    if (!position || !outlines || picker.value()) return;
    const where = areaAt(outlines, position.lat, position.lon);
    if (where && where.code.startsWith(me.area)) {
      picker.setValue(where.code);
      checkArea();
    }
  };
  const setPosition = (p, fromMap) => {
    position = p;
    if (!fromMap && mapHandle) mapHandle.setValue(p);
    showPosition();
    fillArea();
    saveSoon();
  };
  showPosition();
  view.add(() => { if (mapHandle) mapHandle.destroy(); });
  import('../map.js').then(async ({ mountPickMap, loadMapConfig }) => {
    if (!view.alive) return;
    mapHandle = mountPickMap(mapBox, {
      value: position,
      labels: mapLabels(),
      onPick: (v) => setPosition({ lat: v.lat, lon: v.lon }, true),
    });
    const [config, open] = await Promise.all([
      loadMapConfig(),
      getJson(`/api/v1/incidents/export.geojson?state=${OPEN_STATES.join(',')}`).catch(() => null),
    ]);
    if (!view.alive) return;
    outlines = config.outlines;
    nearby = open;
    if (open) mapHandle.setNearby(open);
    showPosition();
  }).catch(() => {
    mapBox.replaceChildren(el('p', { class: 'muted small' }, t('map.load_failed')));
  });

  locate.addEventListener('click', () => {
    locationText.textContent = t('common.loading');
    navigator.geolocation.getCurrentPosition(
      (pos) => {
        setPosition({ lat: Number(pos.coords.latitude.toFixed(6)), lon: Number(pos.coords.longitude.toFixed(6)), accuracy: Math.round(pos.coords.accuracy) }, false);
      },
      () => { locationText.textContent = t('incident.location_denied'); },
      { enableHighAccuracy: true, timeout: 15000, maximumAge: 60000 });
  });

  clearDraft.addEventListener('click', async () => {
    clearTimeout(saveTimer);
    saveTimer = null;
    await processing;
    await drafts.clearDraft(user).catch(() => {});
    for (const p of photos) URL.revokeObjectURL(p.url);
    photos.length = 0;
    drawPhotos();
    title.value = '';
    description.value = '';
    place.value = '';
    picker.setValue(ownVillage);
    keep.checked = false;
    checkTitle();
    position = null;
    if (mapHandle) mapHandle.setValue(null);
    showPosition();
    checkArea();
    showSaved(null);
    draftState.textContent = t('incident.draft_cleared');
  });

  const form = el('form', { class: 'card form', id: 'report-form' },
    el('p', { class: 'muted small required-note', id: 'r-required-note', 'data-i18n': 'incident.required_note' }, t('incident.required_note')),
    label('r-category', 'incident.category', true), category,
    label('r-title', 'incident.title', true), title,
    label('r-description', 'incident.description'), description,
    ...picker.nodes,
    label('r-place', 'incident.place'), place,
    el('p', { class: 'field-title', id: 'r-map-title', 'data-i18n': 'incident.location' }, t('incident.location')),
    el('p', { class: 'muted small', id: 'r-map-hint', 'data-i18n': 'incident.map_hint' }, t('incident.map_hint')),
    mapBox,
    el('div', { class: 'row' }, locate, locationText),
    locationHint,
    nearbyNote,
    label('r-photos', 'incident.photos'), photosInput,
    el('div', { class: 'check-row' }, keep,
      el('label', { for: 'r-keep-location', 'data-i18n': 'incident.keep_location' }, t('incident.keep_location'))),
    el('p', { class: 'muted small', id: 'r-keep-location-hint', 'data-i18n': 'incident.keep_location_hint' }, t('incident.keep_location_hint')),
    photoState, photoList,
    el('p', { class: 'muted small', 'data-i18n': 'incident.queue_hint' }, t('incident.queue_hint')),
    error, submit,
    el('div', { class: 'row' }, draftState, clearDraft));
  form.addEventListener('input', saveSoon);
  form.addEventListener('change', (e) => { if (e.target !== photosInput) saveSoon(); });

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (submitted) return;
    submitted = true;
    submit.disabled = true;
    error.hidden = true;
    clearTimeout(saveTimer);
    saveTimer = null;
    try {
      await processing;
      await drafts.settled();
      const id = uuidv7();
      const body = { id, category: category.value, title: title.value.trim(), description: description.value, area: picker.value() };
      if (place.value.trim()) body.place = place.value.trim();
      if (position) body.location = { lat: position.lat, lon: position.lon };
      const queued = [];
      for (const p of photos) {
        let blob = p.blob || (p.blobKey ? await drafts.getBlob(p.blobKey) : null);
        if (!blob) continue;
        if (keep.checked && p.gps) blob = await withLocation(blob, p.gps);
        queued.push({ blob, name: p.name, type: p.type });
      }
      const item = await outbox.enqueue({
        kind: 'report',
        label: body.title,
        method: 'POST',
        path: '/api/v1/incidents',
        body,
        incidentClientId: id,
        photos: queued,
        draftUser: user,
      });
      const settled = await outbox.settle(item.id, isOffline() ? OFFLINE_SETTLE_MS : SETTLE_MS);
      if (!view.alive) return;
      if (settled && settled.state === 'sent') navigate(`/incidents/${encodeURIComponent(settled.incidentId)}`);
      else navigate('/outbox');
    } catch (_) {
      // Not even the phone could keep it (storage full or disabled): the form stays as it is.
      submitted = false;
      submit.disabled = false;
      error.hidden = false;
      error.textContent = t('incident.queue_failed');
    }
  });
  main.append(form);
}
