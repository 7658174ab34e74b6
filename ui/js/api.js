// A small fetch wrapper: JSON in and out, RFC 9457 problem details turned into errors with a message,
// and a timeout so a phone on bad Wi-Fi gets an answer instead of a spinner forever.
const DEFAULT_TIMEOUT_MS = 15000;

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export async function getJson(path, { timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const response = await fetch(path, {
      headers: { Accept: 'application/json' },
      credentials: 'same-origin',
      signal: controller.signal,
    });
    const type = response.headers.get('content-type') || '';
    const body = type.includes('json') ? await response.json() : null;
    if (!response.ok) throw new ApiError(response.status, body);
    return body;
  } finally {
    clearTimeout(timer);
  }
}
