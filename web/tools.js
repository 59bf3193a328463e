// Client-side tools: functions the model may call that run in this page (Realtime function calling).
//
// app.js declares CLIENT_TOOLS in its session.update; when the model calls one, app.js runs it
// with runClientTool() and sends the result back as a function_call_output item. Pure functions:
// no DOM, no network (tests/unit/test_web_tools.py runs them in node).

export const LOCAL_TIME_TOOL = Object.freeze({
  type: 'function',
  name: 'get_local_time',
  description: "The user's current local date, time and time zone, from their browser",
  parameters: { type: 'object', properties: {} },
});

export const CLIENT_TOOLS = Object.freeze([LOCAL_TIME_TOOL]);

const MAX_ARGS_SHOWN = 60;

function browserTimeZone() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone;
}

function localTime(now, timeZone) {
  const output = { local_time: now.toLocaleString(), time_zone: timeZone, iso: now.toISOString() };
  const clock = now.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  return { output, summary: `${clock}, ${timeZone}` };
}

// One line for the transcript: "🔧 get_local_time() → 14:02, Europe/Paris". Plain text (the
// caller sets it as textContent): name and arguments come from the model.
export function toolLine(name, args, summary) {
  let shown = String(args || '').trim();
  if (shown === '{}') shown = '';
  if (shown.length > MAX_ARGS_SHOWN) shown = `${shown.slice(0, MAX_ARGS_SHOWN - 1)}…`;
  return `🔧 ${name}(${shown}) → ${summary}`;
}

// Run a call the model made. Returns the function_call_output's `output` (a JSON string) and the
// transcript line. A function this page does not have still gets an answer, so the
// conversation goes on instead of waiting for one forever.
export function runClientTool(name, args, { now = new Date(), timeZone = browserTimeZone() } = {}) {
  const result = name === LOCAL_TIME_TOOL.name
    ? localTime(now, timeZone)
    : { output: { error: 'unknown function' }, summary: 'unknown function' };
  return { output: JSON.stringify(result.output), line: toolLine(name, args, result.summary) };
}
