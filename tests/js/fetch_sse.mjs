// A real fetch-based SSE client: @microsoft/fetch-event-source streams a conversation with POST +
// Authorization, and resumes by itself (it resends `last-event-id`) when the server ends the stream.
// Usage: node fetch_sse.mjs URL API_KEY   — prints one JSON line per open / message / close.
import { fetchEventSource } from "@microsoft/fetch-event-source";

// The library is written for browsers; node has fetch but no window/document.
globalThis.window = globalThis;
globalThis.document = { hidden: false, addEventListener() {}, removeEventListener() {} };

const [url, key] = process.argv.slice(2);
const out = (obj) => process.stdout.write(JSON.stringify(obj) + "\n");
class Retry extends Error {}
const ctrl = new AbortController();

await fetchEventSource(url, {
  method: "POST",
  headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
  body: "{}",
  openWhenHidden: true,
  signal: ctrl.signal,
  async onopen(res) {
    out({ kind: "open", status: res.status, type: res.headers.get("content-type") });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
  },
  onmessage(ev) {
    out({ kind: "message", id: ev.id, event: ev.event, data: ev.data });
    if (ev.event === "assistant.done") ctrl.abort();
  },
  onclose() {
    out({ kind: "close" });
    throw new Retry(); // the server ended the stream: reconnect (with last-event-id)
  },
  onerror(err) {
    if (err instanceof Retry) return 100; // retry after 100 ms
    out({ kind: "error", message: String(err) });
    throw err; // anything else is fatal
  },
});
out({ kind: "end" });
