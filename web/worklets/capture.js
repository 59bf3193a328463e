// Microphone capture: the context's rate (usually 48 kHz) -> 24 kHz PCM16 little-endian chunks.
//
// Runs on the audio thread. Each input sample goes through a windowed-sinc low-pass (cut-off
// just under 12 kHz, the Nyquist of 24 kHz) before fractional decimation, so 48/44.1 kHz input
// does not alias into the band the server's VAD and ASR listen to. Every ~20 ms it posts one
// chunk with the context time of its last sample (for voice-to-voice latency) and its level.

const OUT_RATE = 24000;
const TAPS = 31;

function lowpass(inRate) {
  const cutoff = Math.min(0.5, 11000 / inRate); // normalised to the input rate
  const taps = new Float32Array(TAPS);
  const mid = (TAPS - 1) / 2;
  let sum = 0;
  for (let i = 0; i < TAPS; i++) {
    const x = i - mid;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const blackman = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (TAPS - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (TAPS - 1));
    taps[i] = sinc * blackman;
    sum += taps[i];
  }
  for (let i = 0; i < TAPS; i++) taps[i] /= sum; // unity gain at DC
  return taps;
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const chunkMs = (options.processorOptions && options.processorOptions.chunkMs) || 20;
    this.chunkSamples = Math.round((OUT_RATE * chunkMs) / 1000);
    this.step = sampleRate / OUT_RATE; // input samples per output sample
    this.passthrough = sampleRate === OUT_RATE;
    this.taps = lowpass(sampleRate);
    this.history = new Float32Array(TAPS); // ring of raw input
    this.hpos = 0;
    this.prev = 0; // last filtered input sample (index n-1)
    this.n = 0; // filtered input samples produced so far
    this.next = 0; // input position of the next output sample
    this.out = new Int16Array(this.chunkSamples);
    this.fill = 0;
    this.sumSquares = 0;
    this.peak = 0;
    this.port.onmessage = (e) => { if (e.data && e.data.type === 'stop') this.stopped = true; };
  }

  emit(value) {
    const s = Math.max(-1, Math.min(1, value));
    this.out[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
    this.sumSquares += s * s;
    const a = Math.abs(s);
    if (a > this.peak) this.peak = a;
    if (this.fill === this.chunkSamples) {
      const rms = Math.sqrt(this.sumSquares / this.fill);
      // Little-endian on every platform browsers run on; the server reads <i2.
      this.port.postMessage({ type: 'chunk', pcm: this.out.buffer, endTime: currentTime + 128 / sampleRate, rms, peak: this.peak },
        [this.out.buffer]);
      this.out = new Int16Array(this.chunkSamples);
      this.fill = 0;
      this.sumSquares = 0;
      this.peak = 0;
    }
  }

  process(inputs) {
    if (this.stopped) return false;
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    if (this.passthrough) {
      for (let i = 0; i < input.length; i++) this.emit(input[i]);
      return true;
    }
    const taps = this.taps;
    for (let i = 0; i < input.length; i++) {
      this.history[this.hpos] = input[i];
      this.hpos = (this.hpos + 1) % TAPS;
      let y = 0;
      for (let k = 0, p = this.hpos; k < TAPS; k++, p = (p + 1) % TAPS) y += taps[k] * this.history[p];
      // y is the filtered sample at index n; emit every output position in (n-1, n].
      while (this.next <= this.n) {
        const frac = this.next - (this.n - 1);
        this.emit(this.prev + (y - this.prev) * frac);
        this.next += this.step;
      }
      this.prev = y;
      this.n += 1;
    }
    return true;
  }
}

registerProcessor('voicebot-capture', CaptureProcessor);
