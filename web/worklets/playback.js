// Assistant audio: a small jitter buffer of 24 kHz PCM16 played at the context's rate.
//
// It counts every source sample it hands to the audio device, per assistant item, and reports
// the count (~every 40 ms and on demand). Samples handed to the device are heard, so on barge-in
// the count at the moment of `flush` is exactly what the listener heard: the page truncates the
// item to it. `flush` drops everything queued at once, within one 128-frame render quantum.

const SRC_RATE = 24000;
const REPORT_EVERY_S = 0.04;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const prebufferMs = (options.processorOptions && options.processorOptions.prebufferMs) || 60;
    this.prebuffer = Math.round((SRC_RATE * prebufferMs) / 1000);
    this.step = SRC_RATE / sampleRate; // source samples per output sample
    this.queue = []; // {itemId, data: Int16Array, offset}
    this.queued = 0; // source samples waiting
    this.ended = new Set(); // items whose last delta has arrived
    this.state = 'idle'; // idle | buffering | playing
    this.item = null; // item currently (or last) playing
    this.itemPlayed = 0;
    this.totalPlayed = 0;
    this.cur = 0;
    this.nxt = 0;
    this.frac = 0;
    this.primed = false; // cur/nxt hold real samples
    this.lastReport = 0;
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === 'push') {
      const data = new Int16Array(msg.pcm);
      if (data.length === 0) return;
      this.queue.push({ itemId: msg.itemId, data, offset: 0 });
      this.queued += data.length;
      if (this.state === 'idle') this.state = 'buffering';
    } else if (msg.type === 'end') {
      this.ended.add(msg.itemId);
      if (this.ended.size > 32) this.ended.delete(this.ended.values().next().value);
      const waiting = this.queue.some((c) => c.itemId === msg.itemId && c.offset < c.data.length);
      if (!waiting && this.item === msg.itemId) { // it already played out (an underrun at its very end)
        this.port.postMessage({ type: 'ended', itemId: msg.itemId, itemPlayed: this.itemPlayed, totalPlayed: this.totalPlayed });
      }
    } else if (msg.type === 'flush') {
      this.queue = [];
      this.queued = 0;
      this.primed = false;
      this.frac = 0;
      this.state = 'idle';
      this.port.postMessage({ type: 'flushed', id: msg.id, itemId: this.item, itemPlayed: this.itemPlayed, totalPlayed: this.totalPlayed });
    }
  }

  // Next source sample as a float, or null when the queue is empty.
  pull(frameIndex) {
    while (this.queue.length && this.queue[0].offset >= this.queue[0].data.length) this.queue.shift();
    const head = this.queue[0];
    if (!head) return null;
    if (head.itemId !== this.item) {
      this.item = head.itemId;
      this.itemPlayed = 0;
      this.port.postMessage({ type: 'started', itemId: head.itemId, time: currentTime + frameIndex / sampleRate });
    }
    const v = head.data[head.offset++] / 32768;
    this.queued -= 1;
    this.itemPlayed += 1;
    this.totalPlayed += 1;
    if (head.offset >= head.data.length && this.queue.length === 1 && this.ended.has(head.itemId)) {
      this.port.postMessage({ type: 'ended', itemId: head.itemId, itemPlayed: this.itemPlayed, totalPlayed: this.totalPlayed });
    }
    return v;
  }

  canStart() {
    if (this.queued >= this.prebuffer) return true;
    // The tail of an item is shorter than the prebuffer: play it rather than wait forever.
    const last = this.queue[this.queue.length - 1];
    return !!last && this.ended.has(last.itemId);
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    if (this.state === 'buffering' && this.canStart()) this.state = 'playing';
    if (this.state === 'playing') {
      for (let i = 0; i < out.length; i++) {
        if (!this.primed) {
          const a = this.pull(i);
          const b = a === null ? null : this.pull(i);
          if (b === null) { this.underrun(out, i, a); break; }
          this.cur = a; this.nxt = b; this.frac = 0; this.primed = true;
        }
        out[i] = this.cur + (this.nxt - this.cur) * this.frac;
        this.frac += this.step;
        let starved = false;
        while (this.frac >= 1) {
          const v = this.pull(i);
          if (v === null) { starved = true; break; }
          this.cur = this.nxt; this.nxt = v; this.frac -= 1;
        }
        if (starved) { this.underrun(out, i + 1, null); break; }
      }
    }
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (currentTime - this.lastReport >= REPORT_EVERY_S) {
      this.lastReport = currentTime;
      this.port.postMessage({ type: 'position', itemId: this.item, itemPlayed: this.itemPlayed, totalPlayed: this.totalPlayed,
        queued: this.queued, state: this.state });
    }
    return true;
  }

  underrun(out, from, pending) {
    out.fill(0, from);
    this.primed = false;
    this.frac = 0;
    if (pending !== null) { // one lonely sample: keep it for the next block
      this.queue.unshift({ itemId: this.item, data: Int16Array.of(Math.round(pending * 32768)), offset: 0 });
      this.queued += 1; this.itemPlayed -= 1; this.totalPlayed -= 1;
    }
    this.state = this.queue.length ? 'buffering' : 'idle';
  }
}

registerProcessor('voicebot-playback', PlaybackProcessor);
