// Rendering: the transcript, the connection pill, the level meter. No protocol logic here.

const SCROLL_SLACK_PX = 80;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function formatMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '–';
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

// One conversation's messages in a role="log" list. Items are keyed by the server's item ids.
export class Transcript {
  constructor(list, empty) {
    this.list = list;
    this.empty = empty;
    this.items = new Map();
  }

  clear() {
    this.items.clear();
    this.list.replaceChildren();
    this.empty.hidden = false;
  }

  add(itemId, role) {
    let entry = this.items.get(itemId);
    if (entry) return entry;
    const nearBottom = this.atBottom();
    const li = el('li', `msg ${role}`);
    li.dataset.item = itemId;
    li.append(el('span', 'sr-only', role === 'user' ? 'You said: ' : 'Assistant: '));
    const bubble = el('p', 'bubble');
    const heard = el('span', 'heard');
    const unheard = el('span', 'unheard');
    unheard.hidden = true;
    bubble.append(heard, unheard);
    const meta = el('div', 'meta');
    li.append(bubble, meta);
    this.list.append(li);
    this.empty.hidden = true;
    entry = { li, bubble, heard, unheard, meta, role };
    this.items.set(itemId, entry);
    if (nearBottom) this.scroll();
    return entry;
  }

  atBottom() {
    const scroller = this.list.parentElement;
    return scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < SCROLL_SLACK_PX;
  }

  scroll() {
    const scroller = this.list.parentElement;
    scroller.scrollTop = scroller.scrollHeight;
  }

  // Text that may still change (partial transcript, "listening" placeholder) is styled as pending.
  setText(itemId, role, text, { pending = false } = {}) {
    const entry = this.add(itemId, role);
    const nearBottom = this.atBottom();
    entry.heard.textContent = text;
    entry.li.classList.toggle('pending', pending);
    entry.li.classList.toggle('placeholder', pending && !text);
    if (nearBottom) this.scroll();
  }

  // Assistant words: what has been spoken so far, and (after an interruption) what never was.
  setSpoken(itemId, heard, unheard, { cut = false, done = false } = {}) {
    const entry = this.add(itemId, 'assistant');
    const nearBottom = this.atBottom();
    entry.heard.textContent = heard;
    entry.unheard.textContent = unheard;
    entry.unheard.hidden = !cut || !unheard;
    entry.li.classList.toggle('speaking', !cut && !done);
    entry.li.classList.toggle('cut', cut);
    entry.li.classList.toggle('placeholder', !heard && !cut && !done);
    if (cut && !entry.badge) {
      entry.badge = el('span', 'badge', 'Interrupted');
      entry.badge.title = 'You spoke over this answer; the struck-through words were never played.';
      entry.meta.prepend(entry.badge);
    }
    if (nearBottom) this.scroll();
  }

  // A function call the page ran for the model, with its result: one small line of plain text.
  setTool(itemId, text) {
    let entry = this.items.get(itemId);
    if (!entry) {
      const nearBottom = this.atBottom();
      const li = el('li', 'msg tool');
      li.dataset.item = itemId;
      li.append(el('span', 'sr-only', 'Function call: '));
      const line = el('p', 'tool-line');
      li.append(line);
      this.list.append(li);
      this.empty.hidden = true;
      entry = { li, line, role: 'tool' };
      this.items.set(itemId, entry);
      if (nearBottom) this.scroll();
    }
    entry.line.textContent = text;
  }

  setNote(itemId, role, note) {
    const entry = this.add(itemId, role);
    entry.li.classList.remove('pending', 'placeholder');
    if (!entry.heard.textContent) entry.heard.textContent = note;
    entry.li.classList.add('note');
  }

  // Per-turn numbers under an assistant message.
  setMetrics(itemId, latencyMs, metrics) {
    const entry = this.add(itemId, 'assistant');
    let box = entry.meta.querySelector('.timing');
    if (!box) {
      box = el('span', 'timing');
      entry.meta.append(box);
    }
    box.replaceChildren();
    if (latencyMs !== null && latencyMs !== undefined) {
      const v2v = el('span', 'v2v');
      v2v.append(el('strong', '', formatMs(latencyMs)), document.createTextNode(' voice-to-voice'));
      v2v.title = 'From the end of your speech to the first sound of the answer, measured in this page.';
      box.append(v2v);
    }
    if (metrics) {
      // Every stage, in the order they happen, in ms since the reply started (response.done metrics).
      const parts = [
        ['transcript', metrics.history_ready_ms],
        ['LLM asked', metrics.llm_started_ms],
        ['first token', metrics.llm_first_token_ms],
        ['first words', metrics.first_clause_ms],
        ['first audio', metrics.tts_first_audio_ms],
        ['turn ended', metrics.speculative ? metrics.released_ms : null],
        ['sent', metrics.first_audio_sent_ms],
      ].filter(([, v]) => v !== null && v !== undefined);
      if (parts.length) {
        const detail = el('span', 'breakdown');
        if (metrics.speculative) {
          const ahead = el('span', 'part ahead', 'prepared during your pause');
          ahead.title = 'The reply started while you were still silent and was released when your turn ended.';
          detail.append(ahead, document.createTextNode(' · '));
        }
        parts.forEach(([k, v], i) => {
          if (i) detail.append(document.createTextNode(' · '));
          detail.append(el('span', 'part', `${k} ${formatMs(v)}`));
        });
        detail.title = 'Server-side stages, in ms since the reply started (response.done metrics). '
          + 'A reply prepared during your pause starts before your turn ends.';
        box.append(detail);
      }
    }
  }
}

const STATE_LABELS = {
  idle: 'Not connected',
  connecting: 'Connecting…',
  live: 'Connected',
  reconnecting: 'Reconnecting…',
  'needs-token': 'Access token needed',
  error: 'Connection problem',
};

export function setConnection(pill, state, detail) {
  pill.dataset.state = state;
  pill.querySelector('.label').textContent = detail || STATE_LABELS[state] || state;
}

// 0..1 from an RMS level, on a dB scale (-60 dBFS .. 0).
export function levelFromRms(rms) {
  if (!(rms > 0)) return 0;
  return Math.max(0, Math.min(1, (20 * Math.log10(rms) + 60) / 60));
}
