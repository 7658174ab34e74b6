// Reporting an incident from a phone: category, title, description, the phone's position where the
// browser allows it (a map-free fallback: the village code and a typed place), and photos taken with
// the camera. The report is saved first, then photos upload one by one with progress, so a bad link
// never loses the report itself.
import { postJson, upload } from '../api.js';
import { t } from '../i18n.js';
import { el, clear } from '../dom.js';
import { currentUser } from '../session.js';
import { loadCatalog } from '../incidents-common.js';
import { navigate } from '../router.js';

export async function render(main) {
  clear(main);
  main.append(el('h1', { 'data-i18n': 'incident.report' }, t('incident.report')));
  let catalog;
  try {
    catalog = await loadCatalog();
  } catch (e) {
    main.append(el('p', { class: 'error' }, e.message));
    return;
  }
  const me = currentUser();
  const category = el('select', { id: 'r-category', name: 'category', required: true },
    ...catalog.categories.map((c) => el('option', { value: c.name }, c.name)));
  const title = el('input', { id: 'r-title', name: 'title', required: true, maxlength: 100 });
  const description = el('textarea', { id: 'r-description', name: 'description', rows: 4, maxlength: 5000 });
  const area = el('input', { id: 'r-area', name: 'area', required: true, inputmode: 'numeric', value: me.area.length === 12 ? me.area : '' });
  const place = el('input', { id: 'r-place', name: 'place', maxlength: 200, placeholder: t('incident.place_hint') });
  const locationText = el('span', { class: 'muted small', id: 'r-location' }, t('incident.no_location'));
  let location = null;
  const locate = el('button', { type: 'button', class: 'secondary', id: 'r-locate', 'data-i18n': 'incident.locate' }, t('incident.locate'));
  if (!('geolocation' in navigator) || !window.isSecureContext) {
    locate.disabled = true;
    locationText.textContent = t('incident.location_unavailable');
  }
  locate.addEventListener('click', () => {
    locationText.textContent = t('common.loading');
    navigator.geolocation.getCurrentPosition(
      (pos) => {
        location = { lat: Number(pos.coords.latitude.toFixed(6)), lon: Number(pos.coords.longitude.toFixed(6)) };
        locationText.textContent = `${location.lat}, ${location.lon} (±${Math.round(pos.coords.accuracy)} m)`;
      },
      () => { locationText.textContent = t('incident.location_denied'); },
      { enableHighAccuracy: true, timeout: 15000, maximumAge: 60000 });
  });
  const photos = el('input', { id: 'r-photos', name: 'photos', type: 'file', accept: 'image/jpeg,image/png,image/webp,video/mp4', capture: 'environment', multiple: true });
  const progress = el('p', { class: 'muted small', id: 'r-progress' });
  const error = el('p', { class: 'error', role: 'alert', hidden: true });
  const submit = el('button', { type: 'submit', 'data-i18n': 'incident.submit' }, t('incident.submit'));
  const label = (id, key) => el('label', { for: id, 'data-i18n': key }, t(key));
  const form = el('form', { class: 'card form', id: 'report-form' },
    label('r-category', 'incident.category'), category,
    label('r-title', 'incident.title'), title,
    label('r-description', 'incident.description'), description,
    label('r-area', 'incident.area'), area,
    label('r-place', 'incident.place'), place,
    el('div', { class: 'row' }, locate, locationText),
    label('r-photos', 'incident.photos'), photos,
    progress, error, submit);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    submit.disabled = true;
    error.hidden = true;
    const body = { category: category.value, title: title.value.trim(), description: description.value, area: area.value.trim() };
    if (location) body.location = location;
    if (place.value.trim()) body.place = place.value.trim();
    try {
      const incident = await postJson('/api/v1/incidents', body);
      const files = [...photos.files];
      for (const [i, file] of files.entries()) {
        try {
          await upload(`/api/v1/incidents/${incident.id}/attachments`, file, (p) => {
            progress.textContent = `${t('incident.uploading')} ${i + 1}/${files.length} ${Math.round(p * 100)}%`;
          });
        } catch (e) {
          progress.textContent = `${file.name}: ${e.message}`;
        }
      }
      navigate(`/incidents/${incident.id}`);
    } catch (e) {
      error.hidden = false;
      error.textContent = e.message;
      ({ title, description, area, place, category, location: locate })[e.field]?.focus();
    } finally {
      submit.disabled = false;
    }
  });
  main.append(form);
}
