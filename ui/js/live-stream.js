// The node's live event stream (/api/v1/stream) for a view: readings and status changes, gathered
// into one update per burst, held only while the page is visible, and retried after HTTP errors.
import { t } from './i18n.js';

// Readings arrive in bursts (one event per committed batch); gathering them for a moment means one
// DOM and chart update per burst instead of one per event.
const FLUSH_DELAY_MS = 250;
// The browser re-establishes a dropped stream by itself, but gives up after an HTTP error (for
// example an expired session); then we try again this much later.
const RETRY_MS = 30e3;

// One EventSource while the page is visible: a hidden tab or a locked phone should not keep a
// connection and the radio busy. Coming back (or reconnecting) means events were missed, so the view
// reloads instead of trusting a gap. `view` is from startView() (view.js), which ends the stream with
// the view; `stateEl` tells the user whether the data is live.
export function liveStream(view, stateEl, { onReadings, onStatus, reload }) {
  let source = null;
  let queue = [];
  let statuses = new Map();
  let timer = null;
  let frame = null;
  let retry = null;
  let reconnecting = false;

  const setState = (state) => {
    stateEl.dataset.state = state;
    stateEl.textContent = state === 'live' ? t('sensors.live') : state === 'lost' ? t('sensors.live_lost') : '';
  };
  const flush = () => {
    frame = null;
    const readings = queue;
    const changed = [...statuses.values()];
    queue = [];
    statuses = new Map();
    if (readings.length) onReadings(readings);
    for (const s of changed) onStatus(s);
  };
  const schedule = () => {
    if (timer !== null || frame !== null) return;
    timer = setTimeout(() => { timer = null; frame = requestAnimationFrame(flush); }, FLUSH_DELAY_MS);
  };
  const drop = () => {
    clearTimeout(timer);
    if (frame !== null) cancelAnimationFrame(frame);
    timer = null;
    frame = null;
    queue = [];
    statuses = new Map();
  };
  const disconnect = () => {
    clearTimeout(retry);
    retry = null;
    if (source) source.close();
    source = null;
    drop();
  };
  const connect = () => {
    if (source || !view.alive || document.hidden) return;
    source = new EventSource('/api/v1/stream');
    source.addEventListener('open', () => {
      setState('live');
      if (reconnecting) reload();
      reconnecting = false;
    });
    source.addEventListener('readings', (e) => {
      let batch;
      try { batch = JSON.parse(e.data); } catch (_) { return; }
      if (Array.isArray(batch)) for (const r of batch) queue.push(r);
      schedule();
    });
    source.addEventListener('status', (e) => {
      let s;
      try { s = JSON.parse(e.data); } catch (_) { return; }
      if (s && s.device) statuses.set(s.device, s);
      schedule();
    });
    source.addEventListener('lagged', () => {
      // Some events were dropped for this client; what is queued has gaps too.
      drop();
      reload();
    });
    source.addEventListener('error', () => {
      setState('lost');
      reconnecting = true;
      if (source && source.readyState === EventSource.CLOSED) {
        source = null;
        retry = setTimeout(() => { retry = null; connect(); }, RETRY_MS);
      }
    });
  };
  const onVisibility = () => {
    if (document.hidden) {
      disconnect();
      return;
    }
    reconnecting = false;
    reload();
    connect();
  };
  view.listen(document, 'visibilitychange', onVisibility);
  view.add(disconnect);
  connect();
}
