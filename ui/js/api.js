// A small fetch wrapper: JSON in and out, RFC 9457 problem details turned into errors with a message,
// the CSRF token on every change, and a timeout so a phone on bad Wi-Fi gets an answer instead of a
// spinner forever. No answer at all becomes an ApiError with status 0 and a sentence in the person's
// language, never the browser's "Failed to fetch". An answer the service worker gave from the phone's
// copy (sw.js) carries its age as `offlineAt` (ms), which pages show as "offline data · 3 min ago".
import { t } from './i18n.js';
import { noteReachable } from './net.js';
import { problemText, problemCode } from './problem.js';

const DEFAULT_TIMEOUT_MS = 15000;
let csrfToken = null;

export function setCsrf(token) {
  csrfToken = token || null;
}

export function getCsrf() {
  return csrfToken;
}

// `message` is in the person's language (from the problem's code); `detail` keeps the node's English.
export class ApiError extends Error {
  constructor(status, problem) {
    super(status ? problemText(status, problem) : (problem?.detail || t('common.unreachable')));
    this.status = status;
    this.problem = problem;
    this.field = problem?.field;
    this.code = status ? problemCode(status, problem) : null;
    this.detail = problem?.detail || '';
  }

  // True when the node never answered (network down, timeout).
  get offline() {
    return this.status === 0;
  }
}

async function request(method, path, body, { timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && csrfToken) headers['X-CSRF-Token'] = csrfToken;
  try {
    let response;
    let data;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: 'same-origin',
        signal: controller.signal,
      });
      const type = response.headers.get('content-type') || '';
      data = type.includes('json') ? await response.json() : null;
    } catch (error) {
      if (response && !(error instanceof DOMException)) {
        // The node answered with something that is not JSON: its status still says what happened.
        data = null;
      } else {
        noteReachable(false);
        throw new ApiError(0, { detail: t(controller.signal.aborted ? 'common.timeout' : 'common.unreachable') });
      }
    }
    const cachedAt = Number(response.headers.get('X-Offline-Cached-At')) || null;
    noteReachable(!cachedAt);
    if (!response.ok) throw new ApiError(response.status, data);
    if (cachedAt && data && typeof data === 'object') {
      Object.defineProperty(data, 'offlineAt', { value: cachedAt, enumerable: false });
    }
    return data;
  } finally {
    clearTimeout(timer);
  }
}

// Uploads one file as multipart/form-data field `file`; reports progress for slow links.
export function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', path);
    if (csrfToken) xhr.setRequestHeader('X-CSRF-Token', csrfToken);
    xhr.responseType = 'json';
    xhr.upload.onprogress = (e) => { if (e.lengthComputable && onProgress) onProgress(e.loaded / e.total); };
    xhr.onload = () => (xhr.status >= 200 && xhr.status < 300 ? resolve(xhr.response) : reject(new ApiError(xhr.status, xhr.response)));
    xhr.onerror = () => reject(new ApiError(0, { detail: t('common.unreachable') }));
    const form = new FormData();
    form.append('file', file);
    xhr.send(form);
  });
}

export function getJson(path, options) {
  return request('GET', path, undefined, options);
}

export function postJson(path, body, options) {
  return request('POST', path, body, options);
}

export function putJson(path, body, options) {
  return request('PUT', path, body, options);
}

export function del(path, options) {
  return request('DELETE', path, undefined, options);
}
