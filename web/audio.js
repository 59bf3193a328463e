// Microphone in and assistant audio out, through AudioWorklets on one AudioContext.
//
// One context at the device's own rate (48 kHz usually): Firefox refuses to connect a microphone
// to a context of another rate, so resampling to and from 24 kHz happens in the worklets.

export const RATE = 24000;

export class MicrophoneError extends Error {}

export class AudioEngine {
  constructor() {
    this.ctx = null;
    this.stream = null;
    this.capture = null;
    this.playback = null;
    this.onchunk = null; // ({pcm: ArrayBuffer, endTime, rms, peak})
    this.onplayback = null; // worklet reports: started / ended / position
    this.flushes = new Map();
    this.flushId = 0;
  }

  get running() { return this.ctx !== null; }

  // Must be called from a user gesture (click): the context is created before any await so
  // autoplay policies let it run.
  async open() {
    if (this.ctx) return;
    const ctx = new AudioContext({ latencyHint: 'interactive' });
    this.ctx = ctx;
    try {
      if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
        throw new MicrophoneError('This browser cannot use a microphone here (a secure origin is needed: https or localhost).');
      }
      const micPromise = navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
      }).catch((err) => {
        const denied = err && (err.name === 'NotAllowedError' || err.name === 'SecurityError');
        throw new MicrophoneError(denied ? 'Microphone access was blocked. Allow it in the address bar and try again.'
          : `No microphone available (${err && err.name}).`);
      });
      await Promise.all([
        ctx.audioWorklet.addModule(new URL('./worklets/capture.js', import.meta.url)),
        ctx.audioWorklet.addModule(new URL('./worklets/playback.js', import.meta.url)),
      ]);
      this.stream = await micPromise;
      if (ctx.state !== 'running') await ctx.resume();

      this.playback = new AudioWorkletNode(ctx, 'voicebot-playback', {
        numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { prebufferMs: 60 },
      });
      this.playback.connect(ctx.destination);
      this.playback.port.onmessage = (e) => this.onPlaybackMessage(e.data);

      const source = ctx.createMediaStreamSource(this.stream);
      this.capture = new AudioWorkletNode(ctx, 'voicebot-capture', {
        numberOfInputs: 1, numberOfOutputs: 0, channelCount: 1, channelCountMode: 'explicit',
        processorOptions: { chunkMs: 20 },
      });
      source.connect(this.capture);
      this.capture.port.onmessage = (e) => { if (this.onchunk && e.data.type === 'chunk') this.onchunk(e.data); };
      this.source = source;
    } catch (err) {
      await this.close();
      throw err;
    }
  }

  async close() {
    const ctx = this.ctx;
    this.ctx = null;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    this.stream = null;
    if (this.capture) this.capture.port.postMessage({ type: 'stop' });
    this.capture = null;
    this.playback = null;
    for (const resolve of this.flushes.values()) resolve(null);
    this.flushes.clear();
    if (ctx && ctx.state !== 'closed') await ctx.close().catch(() => {});
  }

  // Seconds between a sample leaving the worklet and leaving the speaker.
  get outputLatency() {
    if (!this.ctx) return 0;
    return (this.ctx.outputLatency || 0) || (this.ctx.baseLatency || 0);
  }

  get currentTime() { return this.ctx ? this.ctx.currentTime : 0; }

  enqueue(itemId, pcm) {
    if (this.playback) this.playback.port.postMessage({ type: 'push', itemId, pcm }, [pcm]);
  }

  endItem(itemId) {
    if (this.playback) this.playback.port.postMessage({ type: 'end', itemId });
  }

  // Drop all queued assistant audio now; resolves with {itemId, itemPlayed, totalPlayed}
  // (source samples actually handed to the speaker).
  flush() {
    if (!this.playback) return Promise.resolve(null);
    const id = ++this.flushId;
    return new Promise((resolve) => {
      this.flushes.set(id, resolve);
      this.playback.port.postMessage({ type: 'flush', id });
    });
  }

  onPlaybackMessage(msg) {
    if (msg.type === 'flushed') {
      const resolve = this.flushes.get(msg.id);
      this.flushes.delete(msg.id);
      if (resolve) resolve(msg);
    }
    if (this.onplayback) this.onplayback(msg);
  }
}

// --- PCM helpers --------------------------------------------------------------------------------

export function base64FromBytes(buffer) {
  const bytes = new Uint8Array(buffer);
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

export function bytesFromBase64(text) {
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return bytes.buffer;
}

// Maps "ms of input audio sent on this connection" (the server's audio_end_ms clock) to the
// AudioContext time at which that sample was captured.
export class CaptureClock {
  constructor(limit = 3000) { this.limit = limit; this.reset(); }

  reset() { this.sentMs = 0; this.marks = []; }

  add(chunkMs, endTime) {
    this.sentMs += chunkMs;
    this.marks.push([this.sentMs, endTime]);
    if (this.marks.length > this.limit) this.marks.splice(0, this.marks.length - this.limit);
  }

  contextTimeAt(streamMs) {
    // The chunk that holds the sample: the first one ending at or after it.
    const marks = this.marks;
    if (!marks.length) return null;
    let i = marks.length - 1;
    while (i > 0 && marks[i - 1][0] >= streamMs) i--;
    return marks[i][1] - (marks[i][0] - streamMs) / 1000;
  }
}
