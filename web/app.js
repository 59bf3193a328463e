// The voice demo: wires the microphone, the Realtime transport, playback and the transcript.
//
// Protocol decisions live here (what to send on which server event); audio.js moves samples,
// realtime.js moves events, ui.js draws. To add a transport, import a module that calls
// registerTransport() (e.g. `import './webrtc.js';`) next to the import of realtime.js below.

import { AudioEngine, CaptureClock, MicrophoneError, RATE, base64FromBytes, bytesFromBase64 } from './audio.js';
import { TokenError, fetchToken, openTransport, transportNames } from './realtime.js';
import './webrtc.js'; // registers the 'webrtc' transport
import { TextChat } from './text.js';
import { CLIENT_TOOLS, runClientTool } from './tools.js';
import { Transcript, formatMs, levelFromRms, setConnection } from './ui.js';

const CHUNK_MS = 20;
const SAMPLES_PER_MS = RATE / 1000;
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000, 8000];
const SETTINGS_KEY = 'voicebot.settings';
const DEFAULTS = {
  instructions: '', turn: 'auto', threshold: 0.5, silenceMs: 500, transport: 'websocket', token: '',
};
const EAGERNESS = ['auto', 'high', 'low'];
const MAX_CALLS_REMEMBERED = 200;

const $ = (id) => document.getElementById(id);

// --- read-only counters for automation: window.voicebot ---------------------------------------

const stats = {
  turnsCompleted: 0,
  lastUserTranscript: '',
  lastAssistantTranscript: '',
  playedMs: 0,
  bargeIns: 0,
  lastLatencyMs: null,
  truncatesSent: 0,
  connection: 'idle',
};

Object.defineProperty(window, 'voicebot', {
  value: Object.freeze({
    get turnsCompleted() { return stats.turnsCompleted; },
    get lastUserTranscript() { return stats.lastUserTranscript; },
    get lastAssistantTranscript() { return stats.lastAssistantTranscript; },
    get playedMs() { return stats.playedMs; },
    get bargeIns() { return stats.bargeIns; },
    get lastLatencyMs() { return stats.lastLatencyMs; },
    get truncatesSent() { return stats.truncatesSent; },
    get connection() { return stats.connection; },
  }),
  writable: false,
  configurable: false,
});

// --- settings ----------------------------------------------------------------------------------

function loadSettings() {
  try {
    return { ...DEFAULTS, ...JSON.parse(localStorage.getItem(SETTINGS_KEY) || '{}') };
  } catch {
    return { ...DEFAULTS };
  }
}

function saveSettings(settings) {
  // The token is short-lived and sensitive: keep it for this tab only.
  const { token, ...rest } = settings;
  try {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(rest));
    sessionStorage.setItem('voicebot.token', token || '');
  } catch { /* private mode: settings last for this page only */ }
}

// The server's default (semantic_vad) unless the person picked a fixed silence.
function turnDetection(settings) {
  const common = { create_response: true, interrupt_response: true };
  if (EAGERNESS.includes(settings.turn)) return { type: 'semantic_vad', eagerness: settings.turn, ...common };
  return {
    type: 'server_vad', threshold: Number(settings.threshold), prefix_padding_ms: 300,
    silence_duration_ms: Number(settings.silenceMs), ...common,
  };
}

function sessionUpdate(settings) {
  const session = {
    type: 'realtime',
    output_modalities: ['audio'],
    audio: {
      input: {
        format: { type: 'audio/pcm', rate: RATE },
        transcription: { model: 'whisper-1' },
        turn_detection: turnDetection(settings),
      },
      output: { format: { type: 'audio/pcm', rate: RATE } },
    },
    // Functions the model may call; they run in this page (tools.js).
    tools: CLIENT_TOOLS,
    tool_choice: 'auto',
  };
  if (settings.instructions.trim()) session.instructions = settings.instructions.trim();
  return { type: 'session.update', session };
}

// --- spoken text: reveal the transcript as its audio plays --------------------------------------

// Transcript deltas arrive with the first audio of their clause (up to ~600 ms ahead of the
// speaker). Each is anchored at the number of samples queued when it arrived; words appear in
// proportion as the playback position crosses the clause's span.
function splitSpoken(reply, played) {
  let heard = '';
  let unheard = '';
  reply.segments.forEach((seg, i) => {
    const end = i + 1 < reply.segments.length ? reply.segments[i + 1].at : Math.max(reply.queued, seg.at + 1);
    const words = seg.text.match(/\s*\S+\s*/g) || [seg.text];
    const share = Math.max(0, Math.min(1, (played - seg.at) / Math.max(1, end - seg.at)));
    const count = played >= end ? words.length : Math.ceil(words.length * share);
    heard += words.slice(0, count).join('');
    unheard += words.slice(count).join('');
  });
  return { heard, unheard };
}

// --- the voice session --------------------------------------------------------------------------

class VoiceApp {
  constructor() {
    this.settings = loadSettings();
    try { this.settings.token = sessionStorage.getItem('voicebot.token') || ''; } catch { /* ignore */ }
    this.audio = new AudioEngine();
    this.clock = new CaptureClock();
    this.transcript = new Transcript($('voice-log'), $('voice-empty'));
    this.transport = null;
    this.want = false; // the person wants to be connected
    this.live = false; // session configured: mic audio flows
    this.attempt = 0;
    this.retryTimer = null;
    this.replies = new Map(); // item_id -> reply state
    this.responseItems = new Map(); // response_id -> item_id
    this.activeResponse = null;
    this.playingItem = null;
    this.pendingSpeechEnd = null; // context time the last user turn ended
    this.callsRun = new Set(); // call_ids already run (a call is announced by two events)
    this.callOutputs = new Map(); // response_id -> [{callId, output}], sent when that response is done
    this.answering = false; // results sent with response.create; the answer has not started yet
    this.userSpeaking = false;
    this.level = 0;
    this.audio.onchunk = (chunk) => this.onChunk(chunk);
    this.audio.onplayback = (msg) => this.onPlayback(msg);
    this.bindUi();
    this.setState('idle');
  }

  bindUi() {
    $('talk').addEventListener('click', () => (this.want ? this.stop() : this.start()));
    this.renderMeter();
  }

  setState(state, detail) {
    stats.connection = state;
    setConnection($('conn'), state, detail);
    document.body.dataset.conn = state;
    const on = this.want;
    $('talk').setAttribute('aria-pressed', String(on));
    $('talk-label').textContent = on ? 'Stop talking' : 'Start talking';
    if (!on) this.setPhase(state === 'needs-token' ? 'Access token needed' : 'Microphone off');
  }

  setPhase(text, phase = '') {
    $('phase').textContent = text;
    document.body.dataset.phase = phase;
  }

  // Nothing is playing or pending: show who holds the floor.
  idlePhase() {
    if (this.playingItem || this.activeResponse) return;
    if (this.userSpeaking) this.setPhase('Listening to you…', 'user');
    else if (this.answering) this.setPhase('Thinking…', 'thinking'); // a function's result was sent
    else this.setPhase('Listening', 'listening');
  }

  notice(message) {
    const box = $('voice-notice');
    box.hidden = !message;
    box.textContent = message || '';
  }

  async start() {
    this.want = true;
    this.notice('');
    this.setState('connecting');
    try {
      await this.audio.open();
    } catch (err) {
      this.want = false;
      this.setState('error', 'Microphone unavailable');
      this.notice(err instanceof MicrophoneError ? err.message : `Audio could not start: ${err.message}`);
      return;
    }
    this.setPhase('Connecting…', 'connecting');
    await this.connect();
  }

  async stop() {
    this.want = false;
    clearTimeout(this.retryTimer);
    this.live = false;
    const transport = this.transport;
    this.transport = null;
    if (transport) transport.close();
    this.cutEverything();
    await this.audio.close();
    this.level = 0;
    this.setState('idle');
  }

  async connect() {
    if (!this.want) return;
    let token;
    try {
      token = await fetchToken(this.settings.token);
    } catch (err) {
      if (err instanceof TokenError && err.code === 'demo_tokens_disabled') {
        this.want = false;
        await this.audio.close();
        this.setState('needs-token');
        this.notice('This server needs an access token. Open Settings and paste a client token (ek_…) minted with your API key.');
        return;
      }
      this.scheduleReconnect(err.message);
      return;
    }
    if (!this.want) return;
    let transport;
    try {
      transport = await openTransport(this.settings.transport, { token: token.value });
    } catch (err) {
      const hint = this.settings.token ? ' The access token may have expired.' : '';
      this.scheduleReconnect(`Could not connect.${hint}`);
      return;
    }
    if (!this.want) { transport.close(); return; }
    this.transport = transport;
    this.clock.reset();
    transport.onevent = (event) => this.onEvent(event);
    transport.onclose = () => {
      if (this.transport !== transport) return;
      this.transport = null;
      this.live = false;
      this.cutEverything();
      this.scheduleReconnect('Connection lost.');
    };
  }

  scheduleReconnect(reason) {
    if (!this.want) return;
    const delay = RECONNECT_DELAYS_MS[Math.min(this.attempt, RECONNECT_DELAYS_MS.length - 1)];
    this.attempt += 1;
    this.setState('reconnecting', `Reconnecting in ${Math.ceil(delay / 1000)} s…`);
    this.setPhase(reason || 'Reconnecting…', 'connecting');
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.setState('reconnecting');
      this.connect();
    }, delay);
  }

  send(event) {
    if (this.transport) this.transport.send(event);
  }

  // Settings changed in the panel: live sessions take the new turn detection at once.
  applySettings(next) {
    const transportChanged = next.transport !== this.settings.transport;
    this.settings = { ...this.settings, ...next };
    saveSettings(this.settings);
    if (this.transport && transportChanged) {
      this.transport.close(); // onclose reconnects with the new transport
    } else if (this.transport) {
      this.send(sessionUpdate(this.settings));
    }
  }

  // --- microphone ---

  onChunk(chunk) {
    this.level = Math.max(levelFromRms(chunk.rms), this.level * 0.85);
    if (!this.live || !this.transport) return;
    this.send({ type: 'input_audio_buffer.append', audio: base64FromBytes(chunk.pcm) });
    this.clock.add(CHUNK_MS, chunk.endTime);
  }

  renderMeter() {
    const level = this.want ? this.level : 0;
    $('meter-fill').style.transform = `scaleX(${level.toFixed(3)})`;
    $('talk-ring').style.transform = `scale(${(1 + level * 0.45).toFixed(3)})`;
    const meter = $('meter');
    const value = String(Math.round(level * 100));
    if (meter.getAttribute('aria-valuenow') !== value) meter.setAttribute('aria-valuenow', value);
    this.level *= 0.92;
    requestAnimationFrame(() => this.renderMeter());
  }

  // --- server events ---

  onEvent(event) {
    switch (event.type) {
      case 'session.created':
        if (!$('instructions').value && event.session && event.session.instructions) {
          $('instructions').placeholder = event.session.instructions;
        }
        this.send(sessionUpdate(this.settings));
        break;
      case 'session.updated':
        if (!this.live) {
          this.live = true;
          this.attempt = 0;
          this.setState('live');
          this.notice('');
          this.setPhase('Listening', 'listening');
        }
        break;
      case 'error': {
        const err = event.error || {};
        this.answering = false;
        console.warn('voicebot server error', err.code, err.message);
        if (err.code !== 'response_cancel_not_active') this.notice(err.message || 'The server reported an error.');
        break;
      }
      case 'input_audio_buffer.speech_started':
        this.onSpeechStarted(event);
        break;
      case 'input_audio_buffer.speech_stopped':
        this.userSpeaking = false;
        this.pendingSpeechEnd = this.clock.contextTimeAt(event.audio_end_ms);
        this.transcript.setText(event.item_id, 'user', '', { pending: true });
        this.setPhase('Thinking…', 'thinking');
        break;
      case 'conversation.item.input_audio_transcription.delta': {
        const entry = this.transcript.add(event.item_id, 'user');
        this.transcript.setText(event.item_id, 'user', entry.heard.textContent + event.delta, { pending: true });
        break;
      }
      case 'conversation.item.input_audio_transcription.completed':
        stats.lastUserTranscript = event.transcript;
        if (event.transcript) this.transcript.setText(event.item_id, 'user', event.transcript);
        else this.transcript.setNote(event.item_id, 'user', '(nothing understood)');
        break;
      case 'conversation.item.input_audio_transcription.failed':
        this.transcript.setNote(event.item_id, 'user', '(could not transcribe)');
        break;
      case 'response.created':
        this.activeResponse = event.response.id;
        this.answering = false;
        break;
      case 'response.output_item.added':
        // A function call is no spoken reply: it is shown once it is complete (below).
        if (event.item.type !== 'function_call') this.onReplyItem(event.response_id, event.item.id);
        break;
      case 'response.function_call_arguments.done':
        this.onFunctionCall(event.response_id, event.item_id, event.call_id, event.name, event.arguments);
        break;
      case 'response.output_item.done': {
        const item = event.item;
        if (item.type === 'function_call' && item.status === 'completed') {
          this.onFunctionCall(event.response_id, item.id, item.call_id, item.name, item.arguments);
        }
        break;
      }
      case 'response.output_audio.delta':
        this.onAudioDelta(event);
        break;
      case 'response.output_audio_transcript.delta':
      case 'response.output_text.delta': {
        const reply = this.replies.get(event.item_id);
        if (!reply || reply.cut) break;
        reply.segments.push({ at: reply.queued, text: event.delta });
        if (event.type === 'response.output_text.delta') reply.textOnly = true;
        this.renderReply(reply);
        break;
      }
      case 'response.output_audio.done':
        if (this.replies.has(event.item_id)) this.replies.get(event.item_id).audioDone = true;
        this.audio.endItem(event.item_id);
        break;
      case 'response.done':
        this.onResponseDone(event.response);
        break;
      default:
        break;
    }
  }

  onReplyItem(responseId, itemId) {
    const reply = {
      itemId, responseId, segments: [], queued: 0, played: 0, cut: false, done: false, audioDone: false,
      speechEnd: this.pendingSpeechEnd, latencyMs: null, metrics: null, textOnly: false,
    };
    this.pendingSpeechEnd = null;
    this.replies.set(itemId, reply);
    this.responseItems.set(responseId, itemId);
    if (this.replies.size > 50) this.replies.delete(this.replies.keys().next().value);
    this.transcript.setSpoken(itemId, '', '');
  }

  onAudioDelta(event) {
    const reply = this.replies.get(event.item_id);
    if (!reply || reply.cut) return; // audio of an interrupted reply is never played
    const pcm = bytesFromBase64(event.delta);
    reply.queued += pcm.byteLength / 2;
    this.audio.enqueue(event.item_id, pcm);
  }

  renderReply(reply) {
    const played = reply.textOnly ? Infinity : reply.played;
    const { heard, unheard } = splitSpoken(reply, played);
    this.transcript.setSpoken(reply.itemId, heard, unheard, { cut: reply.cut, done: reply.done && !unheard });
  }

  // --- function calls: run in the page, answered when the response that made them is done ---

  onFunctionCall(responseId, itemId, callId, name, args) {
    if (!callId || this.callsRun.has(callId)) return;
    this.callsRun.add(callId);
    if (this.callsRun.size > MAX_CALLS_REMEMBERED) this.callsRun.delete(this.callsRun.values().next().value);
    const { output, line } = runClientTool(name, args);
    this.transcript.setTool(itemId, line);
    const outputs = this.callOutputs.get(responseId) || [];
    outputs.push({ callId, output });
    this.callOutputs.set(responseId, outputs);
  }

  // The results go back once the response is over (a new response.create while it is still
  // active would be refused); one response.create answers all of its calls.
  answerCalls(response) {
    const outputs = this.callOutputs.get(response.id);
    this.callOutputs.delete(response.id);
    if (!outputs || response.status !== 'completed' || !this.transport) return;
    for (const { callId, output } of outputs) {
      this.send({ type: 'conversation.item.create', item: { type: 'function_call_output', call_id: callId, output } });
    }
    this.send({ type: 'response.create' });
    this.answering = true;
  }

  onResponseDone(response) {
    if (this.activeResponse === response.id) this.activeResponse = null;
    this.answerCalls(response);
    const itemId = this.responseItems.get(response.id);
    const reply = itemId && this.replies.get(itemId);
    if (!reply) {
      this.idlePhase();
      return;
    }
    reply.metrics = response.metrics || null;
    reply.done = true;
    if (response.status === 'completed') {
      stats.turnsCompleted += 1;
      const message = (response.output || []).find((item) => (item.type || 'message') === 'message');
      const part = message && message.content && message.content[0];
      stats.lastAssistantTranscript = (part && (part.transcript || part.text)) || reply.segments.map((s) => s.text).join('');
    } else if (!reply.cut) {
      this.markCut(reply, reply.played);
    }
    if (reply.queued === 0 && !reply.cut) {
      reply.textOnly = true;
      this.renderReply(reply);
    }
    this.transcript.setMetrics(reply.itemId, reply.latencyMs, reply.metrics);
    this.idlePhase();
  }

  // --- playback reports ---

  onPlayback(msg) {
    if (msg.totalPlayed !== undefined) stats.playedMs = msg.totalPlayed / SAMPLES_PER_MS;
    const reply = msg.itemId ? this.replies.get(msg.itemId) : null;
    if (msg.type === 'started') {
      this.playingItem = msg.itemId;
      this.setPhase('Speaking', 'speaking');
      if (reply && reply.speechEnd !== null && reply.latencyMs === null) {
        const heardAt = msg.time + this.audio.outputLatency;
        reply.latencyMs = Math.max(0, (heardAt - reply.speechEnd) * 1000);
        stats.lastLatencyMs = Math.round(reply.latencyMs);
        $('last-latency').textContent = formatMs(reply.latencyMs);
        this.transcript.setMetrics(reply.itemId, reply.latencyMs, reply.metrics);
      }
      return;
    }
    if (reply && !reply.cut && msg.itemPlayed !== undefined) {
      reply.played = msg.itemPlayed;
      this.renderReply(reply);
    }
    if (msg.type === 'ended') {
      if (reply && !reply.cut) { reply.played = reply.queued; this.renderReply(reply); }
      if (this.playingItem === msg.itemId) this.playingItem = null;
      this.idlePhase();
    }
  }

  // --- barge-in ---

  onSpeechStarted(event) {
    this.transcript.setText(event.item_id, 'user', '', { pending: true });
    this.userSpeaking = true;
    this.setPhase('Listening to you…', 'user');
    const active = this.activeResponse ? this.replies.get(this.responseItems.get(this.activeResponse)) : null;
    const playing = this.playingItem ? this.replies.get(this.playingItem) : null;
    const victims = [...new Set([active, playing].filter((r) => r && !r.cut))];
    if (!victims.length && !this.activeResponse) return;
    stats.bargeIns += 1;
    this.interrupt(victims);
  }

  // Drop queued audio at once, then tell the server exactly how much of each item was heard.
  async interrupt(replies) {
    replies.forEach((r) => { r.cut = true; });
    const flushed = await this.audio.flush();
    this.playingItem = null;
    for (const reply of replies) {
      let played = reply.played;
      if (flushed && flushed.itemId === reply.itemId) played = flushed.itemPlayed;
      else if (!flushed || reply.played === 0) played = reply.played;
      reply.played = played;
      if (flushed) stats.playedMs = flushed.totalPlayed / SAMPLES_PER_MS;
      if (reply.queued > 0) {
        this.send({ type: 'conversation.item.truncate', item_id: reply.itemId, content_index: 0,
          audio_end_ms: Math.floor(played / SAMPLES_PER_MS) });
        stats.truncatesSent += 1;
      }
      this.markCut(reply, played);
    }
  }

  markCut(reply, played) {
    reply.cut = true;
    reply.played = played;
    const { heard, unheard } = splitSpoken(reply, played);
    this.transcript.setSpoken(reply.itemId, heard, unheard, { cut: true });
    const hasWords = (heard + unheard).trim();
    if (hasWords) stats.lastAssistantTranscript = heard.trim();
  }

  // The connection ended or the person stopped: nothing more will play.
  cutEverything() {
    const open = [...this.replies.values()].filter((r) => !r.cut && (!r.done || r.itemId === this.playingItem));
    this.audio.flush();
    this.playingItem = null;
    this.activeResponse = null;
    this.callOutputs.clear(); // a new connection is a new session: those calls are gone
    this.answering = false;
    open.forEach((r) => this.markCut(r, r.played));
  }
}

// --- settings sheet, tabs --------------------------------------------------------------------------

function bindSettings(app) {
  const dialog = $('settings');
  const form = $('settings-form');
  const select = $('transport');
  for (const { name, label } of transportNames()) select.append(new Option(label, name));
  const sync = () => {
    $('threshold-out').value = Number($('threshold').value).toFixed(2);
    $('silence-out').value = `${$('silence').value} ms`;
    $('fixed-silence').hidden = $('turn').value !== 'server_vad';
  };
  const fill = () => {
    const s = app.settings;
    $('instructions').value = s.instructions;
    $('turn').value = EAGERNESS.includes(s.turn) ? s.turn : 'server_vad';
    $('threshold').value = s.threshold;
    $('silence').value = s.silenceMs;
    select.value = transportNames().some((t) => t.name === s.transport) ? s.transport : 'websocket';
    $('token').value = s.token;
    sync();
  };
  $('threshold').addEventListener('input', sync);
  $('silence').addEventListener('input', sync);
  $('turn').addEventListener('change', sync);
  $('open-settings').addEventListener('click', () => { fill(); dialog.showModal(); });
  form.addEventListener('submit', (e) => {
    if (e.submitter && e.submitter.value === 'apply') {
      app.applySettings({
        instructions: $('instructions').value,
        turn: $('turn').value,
        threshold: Number($('threshold').value),
        silenceMs: Number($('silence').value),
        transport: select.value,
        token: $('token').value.trim(),
      });
      if (app.settings.token) app.notice('');
    }
  });
  fill();
}

function bindTabs(onText) {
  const tabs = [$('tab-voice'), $('tab-text')];
  const select = (tab) => {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute('aria-selected', String(on));
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute('aria-controls')).hidden = !on;
    }
    document.body.dataset.mode = tab.id === 'tab-text' ? 'text' : 'voice';
    if (tab.id === 'tab-text') onText();
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener('click', () => select(tab));
    tab.addEventListener('keydown', (e) => {
      if (e.key !== 'ArrowRight' && e.key !== 'ArrowLeft') return;
      const next = tabs[(i + (e.key === 'ArrowRight' ? 1 : tabs.length - 1)) % tabs.length];
      next.focus();
      select(next);
    });
  });
  document.body.dataset.mode = 'voice';
}

const app = new VoiceApp();
const text = new TextChat({
  list: $('text-log'), empty: $('text-empty'), notice: $('text-notice'), form: $('composer'),
  input: $('message'), button: $('send'), token: () => app.settings.token,
});
bindSettings(app);
bindTabs(() => text.open());
