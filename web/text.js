// Text mode: the conversation HTTP API and its Server-Sent Events stream (voicebot/transports/sse.py).
//
// The stream is read with fetch() rather than EventSource: EventSource cannot send an
// Authorization header, and the server only mints URL tokens (?token=) for a long-lived API key,
// which this page never holds. `POST /v1/conversations/{id}/events` with `Authorization: Bearer
// <client token>` is the same stream; we parse the SSE frames ourselves and resume with
// Last-Event-ID after a drop, as EventSource would.

import { TokenError, fetchToken } from './realtime.js';
import { toolLine } from './tools.js';
import { Transcript } from './ui.js';

const RETRY_MS = [500, 1000, 2000, 4000, 8000];
const TOKEN_MARGIN_S = 20;

class HttpError extends Error {
  constructor(status, message, code) { super(message); this.status = status; this.code = code; }
}

// Bearer tokens for the HTTP API: a pasted one, or short-lived demo tokens renewed before expiry.
class Tokens {
  constructor(pasted) { this.pasted = pasted; this.cached = null; }

  async header() {
    const pasted = this.pasted();
    if (pasted) return { Authorization: `Bearer ${pasted}` };
    const now = Date.now() / 1000;
    if (!this.cached || (this.cached.expiresAt && this.cached.expiresAt - now < TOKEN_MARGIN_S)) {
      this.cached = await fetchToken('');
    }
    return this.cached.value ? { Authorization: `Bearer ${this.cached.value}` } : {};
  }
}

// Incremental text/event-stream parser (WHATWG): fields per line, a blank line ends an event.
export class SseParser {
  constructor(onEvent) { this.onEvent = onEvent; this.buffer = ''; this.reset(); this.lastId = null; }

  reset() { this.event = ''; this.data = []; this.id = null; }

  push(text) {
    this.buffer += text;
    const lines = this.buffer.split(/\r\n|\r|\n/);
    this.buffer = lines.pop();
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === '') {
      if (this.id !== null) this.lastId = this.id;
      if (this.data.length) this.onEvent(this.event || 'message', this.data.join('\n'), this.lastId);
      this.reset();
      return;
    }
    if (line.startsWith(':')) return; // heartbeat
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.event = value;
    else if (field === 'data') this.data.push(value);
    else if (field === 'id') this.id = value;
  }
}

export class TextChat {
  constructor({ list, empty, notice, form, input, button, token }) {
    this.transcript = new Transcript(list, empty);
    this.noticeBox = notice;
    this.input = input;
    this.button = button;
    this.tokens = new Tokens(token);
    this.conversationId = null;
    this.lastEventId = null;
    this.streaming = false;
    this.available = true;
    this.attempt = 0;
    this.texts = new Map(); // assistant item_id -> text so far
    this.calls = new Map(); // call_id -> {itemId, name, args}: a voice session's function calls
    form.addEventListener('submit', (e) => { e.preventDefault(); this.send(); });
  }

  notice(message) {
    this.noticeBox.hidden = !message;
    this.noticeBox.textContent = message || '';
  }

  async api(path, body) {
    const headers = { 'Content-Type': 'application/json', ...(await this.tokens.header()) };
    const response = await fetch(path, { method: 'POST', headers, body: JSON.stringify(body || {}) });
    let payload = {};
    try { payload = await response.json(); } catch { /* empty or not JSON */ }
    if (!response.ok) {
      const err = payload.error || {};
      throw new HttpError(response.status, err.message || `Request failed (${response.status}).`, err.code);
    }
    return payload;
  }

  disable(message) {
    this.available = false;
    this.input.disabled = true;
    this.button.disabled = true;
    this.notice(message);
  }

  // Called when the Text tab is shown: create the conversation and start listening, once.
  async open() {
    if (!this.available) return;
    if (this.conversationId) return;
    try {
      const conversation = await this.api('/v1/conversations', {});
      this.conversationId = conversation.id;
    } catch (err) {
      if (err instanceof HttpError && (err.status === 404 || err.status === 405)) {
        this.disable('Text mode is not available on this server (it has no /v1/conversations endpoints).');
      } else if (err instanceof TokenError && err.code === 'demo_tokens_disabled') {
        this.notice('This server needs an access token. Open Settings and paste a client token (ek_…).');
      } else {
        this.notice(`Text mode could not start: ${err.message}`);
      }
      return;
    }
    this.notice('');
    this.stream();
  }

  async send() {
    const text = this.input.value.trim();
    if (!text) return;
    if (!this.conversationId) await this.open();
    if (!this.conversationId) return;
    this.button.disabled = true;
    try {
      const result = await this.api(`/v1/conversations/${encodeURIComponent(this.conversationId)}/messages`, { text });
      this.input.value = '';
      // Show it now; the stream's user.message for the same item id only confirms it.
      if (result.item) this.transcript.setText(result.item.item_id, 'user', result.item.text || text);
      this.notice('');
    } catch (err) {
      this.notice(`Not sent: ${err.message}`);
    } finally {
      this.button.disabled = false;
      this.input.focus();
    }
  }

  async stream() {
    if (this.streaming || !this.conversationId) return;
    this.streaming = true;
    const parser = new SseParser((event, data, id) => {
      if (id !== null) this.lastEventId = id;
      let payload;
      try { payload = JSON.parse(data); } catch { return; }
      this.onEvent(event, payload);
    });
    try {
      const headers = { 'Content-Type': 'application/json', Accept: 'text/event-stream', ...(await this.tokens.header()) };
      if (this.lastEventId !== null) headers['Last-Event-ID'] = this.lastEventId;
      const url = `/v1/conversations/${encodeURIComponent(this.conversationId)}/events`;
      const response = await fetch(url, { method: 'POST', headers, body: '{}' });
      if (!response.ok || !response.body) throw new HttpError(response.status, `Stream refused (${response.status}).`);
      this.attempt = 0;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
      }
    } catch (err) {
      if (err instanceof HttpError && err.status === 404) {
        this.conversationId = null; // the server forgot it (restart): start a new one
      }
    } finally {
      this.streaming = false;
    }
    // The stream ended (server restart, proxy timeout, network): resume where we left off.
    const delay = RETRY_MS[Math.min(this.attempt, RETRY_MS.length - 1)];
    this.attempt += 1;
    setTimeout(() => (this.conversationId ? this.stream() : this.open()), delay);
  }

  onEvent(event, data) {
    switch (event) {
      case 'reset':
        this.transcript.clear();
        this.texts.clear();
        this.calls.clear();
        for (const item of data.items || []) {
          if (item.type === 'function_call') this.onCall(item);
          else if (item.type === 'function_call_output') this.onCallOutput(item);
          else if (item.role === 'user') this.transcript.setText(item.item_id, 'user', item.text || '');
          else if (item.role === 'assistant') {
            this.texts.set(item.item_id, item.text || '');
            this.transcript.setSpoken(item.item_id, item.text || '', '', { done: true });
          }
        }
        break;
      case 'user.message':
        this.transcript.setText(data.item_id, 'user', data.text);
        break;
      case 'assistant.started':
        this.texts.set(data.item_id, '');
        this.transcript.setSpoken(data.item_id, '', '');
        break;
      case 'assistant.delta': {
        const text = (this.texts.get(data.item_id) || '') + data.delta;
        this.texts.set(data.item_id, text);
        this.transcript.setSpoken(data.item_id, text, '');
        break;
      }
      case 'assistant.done': {
        const text = data.text || this.texts.get(data.item_id) || '';
        this.texts.set(data.item_id, text);
        const cut = data.status === 'cancelled';
        this.transcript.setSpoken(data.item_id, text, '', { done: true, cut });
        if (data.status === 'failed') this.notice('The answer failed on the server.');
        break;
      }
      case 'tool.call':
        this.onCall(data);
        break;
      case 'tool.output':
        this.onCallOutput(data);
        break;
      case 'error':
        this.notice(data.message || 'The server reported an error.');
        break;
      default:
        break;
    }
  }

  // A function call made in this conversation (by a voice session with tools), and its result.
  onCall({ item_id: itemId, call_id: callId, name, arguments: args }) {
    this.calls.set(callId, { itemId, name, args });
    this.transcript.setTool(itemId, toolLine(name, args, '…'));
  }

  onCallOutput({ call_id: callId, output }) {
    const call = this.calls.get(callId);
    if (!call) return;
    const shown = String(output || '');
    this.transcript.setTool(call.itemId, toolLine(call.name, call.args, shown.length > 80 ? `${shown.slice(0, 79)}…` : shown));
  }
}
