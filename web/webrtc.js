// The WebRTC transport for the demo page: the same Realtime events as the WebSocket, on a data
// channel named 'oai-events'; the microphone and the assistant's voice travel as Opus tracks, so
// the browser's jitter buffer, packet-loss concealment and echo canceller do their work.
//
// Same shape as realtime.js's WebSocket transport: a factory taking {token} that resolves, once
// the data channel is open, to {send(event), onevent, onclose, close()}. Differences a page sees:
//   * input_audio_buffer.append events are dropped by send(): the microphone is on the track;
//   * no response.output_audio.delta events arrive: the remote track plays in an <audio> element
//     (output_audio_buffer.started / .stopped say when it is audible, as with the hosted API).
// The server answers POST /v1/realtime/calls (SDP offer in, SDP answer out); see docs/webrtc.md.

import { registerTransport } from './realtime.js';

const CALLS_URL = '/v1/realtime/calls?model=voicebot';
const GATHER_TIMEOUT_MS = 2000; // the offer carries our candidates (no trickle ICE)
const OPEN_TIMEOUT_MS = 15000;
const MIC_CONSTRAINTS = { audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true } };

// For automation (tests): the live connection's state and received-audio counters, read-only.
let current = null;
Object.defineProperty(window, 'voicebotRtc', {
  value: Object.freeze({
    get connectionState() { return current ? current.connectionState : 'none'; },
    async inboundAudio() {
      if (!current) return null;
      const stats = await current.getStats();
      for (const report of stats.values()) {
        if (report.type === 'inbound-rtp' && report.kind === 'audio') {
          return { packets: report.packetsReceived || 0, energy: report.totalAudioEnergy || 0,
            samples: report.totalSamplesReceived || 0 };
        }
      }
      return null;
    },
  }),
  writable: false,
  configurable: false,
});

function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    pc.addEventListener('icegatheringstatechange', () => {
      if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); }
    });
  });
}

function opened(channel) {
  if (channel.readyState === 'open') return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the call did not connect')), OPEN_TIMEOUT_MS);
    channel.addEventListener('open', () => { clearTimeout(timer); resolve(); }, { once: true });
    channel.addEventListener('close', () => { clearTimeout(timer); reject(new Error('the call was refused')); }, { once: true });
  });
}

async function refusal(response) {
  let message = `call refused (${response.status})`;
  try {
    const body = await response.json();
    if (body.error && body.error.message) message = body.error.message;
  } catch { /* not JSON */ }
  return new Error(message);
}

async function webrtcTransport({ token, url = CALLS_URL, microphone = null } = {}) {
  // No STUN/TURN: the page talks to the server it was loaded from; a deployment behind NAT
  // configures ICE servers on the server (--ice-servers) and here alike.
  const pc = new RTCPeerConnection({ iceServers: [] });
  const stream = microphone || await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
  const player = new Audio();
  player.autoplay = true;
  const channel = pc.createDataChannel('oai-events');
  let handler = null;
  const early = []; // events that arrive before the page sets onevent
  let closed = false;

  const transport = {
    name: 'webrtc',
    onclose: null,
    get onevent() { return handler; },
    set onevent(fn) {
      handler = fn;
      while (handler && early.length) handler(early.shift());
    },
    send(event) {
      if (!event || event.type === 'input_audio_buffer.append') return; // the mic is on the track
      if (channel.readyState === 'open') channel.send(JSON.stringify(event));
    },
    close() { finish(null); },
    get bufferedAmount() { return channel.bufferedAmount; },
  };

  function finish(info) {
    if (closed) return;
    closed = true;
    if (current === pc) current = null;
    try { channel.close(); } catch { /* already closed */ }
    pc.close();
    if (!microphone) stream.getTracks().forEach((t) => t.stop());
    player.srcObject = null;
    if (info && transport.onclose) transport.onclose(info);
  }

  try {
    for (const track of stream.getAudioTracks()) pc.addTrack(track, stream);
    pc.ontrack = (e) => {
      player.srcObject = e.streams[0] || new MediaStream([e.track]);
      player.play().catch(() => { /* autoplay needs the click that started the call: it had one */ });
    };
    channel.onmessage = (e) => {
      let event;
      try { event = JSON.parse(e.data); } catch { return; }
      if (handler) handler(event); else early.push(event);
    };
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const headers = { 'Content-Type': 'application/sdp' };
    if (token) headers.Authorization = `Bearer ${token}`;
    const response = await fetch(url, { method: 'POST', body: pc.localDescription.sdp, headers });
    if (response.status !== 201) throw await refusal(response);
    await pc.setRemoteDescription({ type: 'answer', sdp: await response.text() });
    await opened(channel);
  } catch (err) {
    finish(null);
    throw err;
  }
  current = pc;
  channel.onclose = () => finish({ code: 1000, reason: 'call ended' });
  pc.onconnectionstatechange = () => {
    if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
      finish({ code: 1006, reason: `connection ${pc.connectionState}` });
    }
  };
  return transport;
}

registerTransport('webrtc', 'WebRTC', webrtcTransport);
