// The npm `openai` package's own Realtime client (OpenAIRealtimeWS, which only speaks wss://) holding
// one spoken turn: it streams a recording as input_audio_buffer.append and prints one JSON line per
// server event it gets (audio deltas reduced to their byte count), then exits after response.done.
// Usage: node realtime_wss.mjs HTTPS_BASE_URL API_KEY PCM24K_FILE
// The self-signed certificate is trusted through NODE_EXTRA_CA_CERTS, as a deployment would.
import { readFileSync } from "node:fs";
import OpenAI from "openai";
import { OpenAIRealtimeWS } from "openai/realtime/ws";

const [baseURL, apiKey, pcmPath] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
const client = new OpenAI({ apiKey, baseURL });
const rt = new OpenAIRealtimeWS({ model: "voicebot" }, client);
const pcm = readFileSync(pcmPath);
const timer = setTimeout(() => { out({ type: "timeout" }); process.exit(3); }, 120_000);

rt.on("error", (err) => { out({ type: "sdk_error", message: String(err.message ?? err) }); });
rt.on("event", (event) => {
  if (event.type === "response.output_audio.delta") {
    out({ type: event.type, bytes: Buffer.from(event.delta, "base64").length });
    return;
  }
  out(event);
  if (event.type === "session.created") {
    rt.send({ type: "session.update", session: { type: "realtime", output_modalities: ["audio"] } });
    // 100 ms chunks of 24 kHz int16 mono; the server's turn detection ends the turn in the trailing silence.
    for (let at = 0; at < pcm.length; at += 4800) {
      rt.send({ type: "input_audio_buffer.append", audio: pcm.subarray(at, at + 4800).toString("base64") });
    }
  }
  if (event.type === "response.done") {
    clearTimeout(timer);
    rt.close();
  }
});
rt.socket.on("close", (code) => { out({ type: "closed", code }); });
