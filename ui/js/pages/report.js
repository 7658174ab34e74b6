// Reporting an incident from a phone: category, title, description, the village code, a typed place,
// the phone's position where the browser allows it, and photos. Nothing here waits for the network:
// submitting puts the report and its downsized photos in the outbox (outbox.js), which sends them
// when it can, and until then what has been typed and picked is kept on the phone as a draft
// (drafts.js), so a reload, a session timeout or a lost connection loses nothing.
import { t } from '../i18n.js';
import { el, clear, errorBox } from '../dom.js';
import { currentUser } from '../session.js';
import { loadCatalog } from '../incidents-common.js';
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

function positionText(p) {
  return `${p.lat}, ${p.lon}${p.accuracy ? ` (±${p.accuracy} m)` : ''}`;
}

export async function render(main) {
  clear(main);
  const view = startView();
  main.append(el('h1', { 'data-i18n': 'incident.report' }, t('incident.report')));
  let catalog;
  try {
    catalog = await loadCatalog();
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
  const area = el('input', { id: 'r-area', name: 'area', required: true, inputmode: 'numeric', pattern: '[0-9]{6}([0-9]{3}){0,2}', title: t('incident.area_format'), maxlength: 12, autocomplete: 'off' });
  const place = el('input', { id: 'r-place', name: 'place', maxlength: 200, placeholder: t('incident.place_hint') });
  if (saved.category && catalog.categories.some((c) => c.name === saved.category)) category.value = saved.category;
  title.value = saved.title || '';
  description.value = saved.description || '';
  area.value = saved.area || (me.area.length === 12 ? me.area : '');
  place.value = saved.place || '';
  // The node refuses a village outside the reporter's area: say so before it is queued, not after.
  const checkArea = () => {
    const v = area.value.trim();
    area.setCustomValidity(v && me.area && !v.startsWith(me.area) ? `${t('incident.area_outside')} ${me.area}` : '');
  };
  area.addEventListener('input', checkArea);
  checkArea();
  const checkTitle = () => title.setCustomValidity(title.value && !title.value.trim() ? t('incident.title_blank') : '');
  title.addEventListener('input', checkTitle);
  checkTitle();

  let position = saved.location && Number.isFinite(saved.location.lat) ? saved.location : null;
  const locationText = el('span', { class: 'muted small', id: 'r-location' }, position ? positionText(position) : t('incident.no_location'));
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
    area: area.value,
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

  locate.addEventListener('click', () => {
    locationText.textContent = t('common.loading');
    navigator.geolocation.getCurrentPosition(
      (pos) => {
        position = { lat: Number(pos.coords.latitude.toFixed(6)), lon: Number(pos.coords.longitude.toFixed(6)), accuracy: Math.round(pos.coords.accuracy) };
        locationText.textContent = positionText(position);
        saveSoon();
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
    area.value = me.area.length === 12 ? me.area : '';
    keep.checked = false;
    checkTitle();
    position = null;
    if (!locate.disabled) locationText.textContent = t('incident.no_location');
    checkArea();
    showSaved(null);
    draftState.textContent = t('incident.draft_cleared');
  });

  const form = el('form', { class: 'card form', id: 'report-form' },
    el('p', { class: 'muted small required-note', id: 'r-required-note', 'data-i18n': 'incident.required_note' }, t('incident.required_note')),
    label('r-category', 'incident.category', true), category,
    label('r-title', 'incident.title', true), title,
    label('r-description', 'incident.description'), description,
    label('r-area', 'incident.area', true), area,
    label('r-place', 'incident.place'), place,
    el('div', { class: 'row' }, locate, locationText),
    locationHint,
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
      const body = { id, category: category.value, title: title.value.trim(), description: description.value, area: area.value.trim() };
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
