// How outbox items read on screen, shared by the outbox page and the incident page: the kind, the
// state with its progress, and a refusal in the person's language with the node's own words after it.
import { t, has } from './i18n.js';
import { refusalKey } from './outbox-logic.js';
import { problemText } from './problem.js';
import { formatTime } from './format.js';

export function kindText(kind) {
  return t(`outbox.kind.${kind}`);
}

export function errorText(error) {
  if (!error) return '';
  if (error.code === 'photo_missing') return t('outbox.photo_missing');
  if (error.code === 'checksum') return t('outbox.refused.460');
  if (error.code === 'upload_gone') return t('outbox.upload_gone');
  const status = error.status ? ` (${error.status})` : '';
  if (error.code && has(`problem.${error.code}`)) {
    return `${t(refusalKey(error.status))}${status}${t('outbox.colon')}${problemText(error.status, error)}`;
  }
  const words = error.message ? `${t('outbox.colon')}${error.message}` : '';
  return `${t(refusalKey(error.status))}${status}${words}`;
}

// Why a waiting item waits, and when it tries again.
export function waitingText(item) {
  const parts = [];
  const status = item.error?.status || 0;
  if (item.attempts > 0) {
    parts.push(status >= 500 || status === 429 || status === 408 ? `${t('outbox.wait.busy')} (${status})` : t('outbox.wait.offline'));
  }
  if (item.nextAttemptMs && item.nextAttemptMs > Date.now()) {
    parts.push(`${t('outbox.wait.next')} ${formatTime(item.nextAttemptMs, { date: false, seconds: true })}`);
  }
  return parts.join(' · ');
}

export function stateText(item) {
  switch (item.state) {
    case 'waiting': return t('outbox.state.waiting');
    case 'sending': return `${t('outbox.state.sending')} ${Math.round((item.progress || 0) * 100)}%`;
    case 'sent': return t('outbox.state.sent');
    case 'refused': return `${t('outbox.state.refused')}${t('outbox.colon')}${errorText(item.error)}`;
    case 'auth': return t('outbox.state.auth');
    default: return item.state;
  }
}

// One photo's step: waiting, how far, uploaded, attached.
export function photoText(photo) {
  if (photo.attached) return t('outbox.photo.attached');
  if (photo.uploadUrl && photo.offset >= photo.size) return t('outbox.photo.uploaded');
  if (photo.progress > 0) return `${Math.round(photo.progress * 100)}%`;
  return t('outbox.photo.waiting');
}

export function sizeText(bytes) {
  return bytes >= 1024 * 1024 ? `${(bytes / 1024 / 1024).toFixed(1)} MB` : `${Math.max(1, Math.round(bytes / 1024))} KB`;
}
