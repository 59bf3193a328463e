// Transports for the Realtime protocol, keyed by name, and the page's access token.
//
// A transport factory takes {token, signal} and resolves, once connected, to an object with
//   send(event)      send one client event (a plain object)
//   onevent = fn     called with every server event (a plain object)
//   onclose = fn     called once with {code, reason} when the connection ends, whoever ended it
//   close()          end it; idempotent
// The WebSocket transport lives here; web/webrtc.js registers 'webrtc' the same way.

const factories = new Map();

export function registerTransport(name, label, factory) {
  factories.set(name, { label, factory });
}

export function transportNames() {
  return [...factories.entries()].map(([name, { label }]) => ({ name, label }));
}

export function openTransport(name, options) {
  const entry = factories.get(name) || factories.get('websocket');
  return entry.factory(options);
}

export const KEY_SUBPROTOCOL = 'openai-insecure-api-key.';

export function realtimeUrl(path = '/v1/realtime?model=voicebot') {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}${path}`;
}

function websocketTransport({ token, url = realtimeUrl() }) {
  return new Promise((resolve, reject) => {
    const protocols = ['realtime'];
    if (token) protocols.push(KEY_SUBPROTOCOL + token);
    let ws;
    try {
      ws = new WebSocket(url, protocols);
    } catch (err) {
      reject(err);
      return;
    }
    let opened = false;
    let closed = false;
    const transport = {
      name: 'websocket',
      onevent: null,
      onclose: null,
      send(event) {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(event));
      },
      close() {
        if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close(1000, 'bye');
      },
      get bufferedAmount() { return ws.bufferedAmount; },
    };
    ws.onopen = () => { opened = true; resolve(transport); };
    ws.onmessage = (e) => {
      let event;
      try { event = JSON.parse(e.data); } catch { return; }
      if (transport.onevent) transport.onevent(event);
    };
    // A refused handshake (401/403) and a dropped connection look the same to a page: close 1006.
    ws.onerror = () => {};
    ws.onclose = (e) => {
      if (closed) return;
      closed = true;
      if (!opened) { reject(new Error(`connection refused (${e.code})`)); return; }
      if (transport.onclose) transport.onclose({ code: e.code, reason: e.reason });
    };
  });
}

registerTransport('websocket', 'WebSocket', websocketTransport);

// --- access token -----------------------------------------------------------------------------

export class TokenError extends Error {
  constructor(message, code) { super(message); this.code = code; }
}

// A short-lived client token for one connection. A token the person pasted wins; otherwise the
// server's demo route mints one (when the operator allows it, or when it needs no key at all).
export async function fetchToken(pasted) {
  if (pasted) return { value: pasted, authRequired: true };
  let response;
  try {
    response = await fetch('/v1/demo/client_secret', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}' });
  } catch {
    throw new TokenError('The server cannot be reached.', 'unreachable');
  }
  if (response.status === 404 || response.status === 405) return { value: null, authRequired: false };
  let body = {};
  try { body = await response.json(); } catch { /* not JSON: handled below */ }
  if (response.ok && body.value) return { value: body.value, authRequired: !!body.auth_required, expiresAt: body.expires_at };
  const code = (body.error && body.error.code) || `http_${response.status}`;
  throw new TokenError((body.error && body.error.message) || `Token request failed (${response.status}).`, code);
}
