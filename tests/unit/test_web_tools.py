"""The demo page's client-side tool (web/tools.js), run in node: what the page declares in its
session.update, and what it answers a call with. The page's wiring of it (app.js) is covered by
the browser tests."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

TOOLS_JS = Path(__file__).resolve().parents[2] / "web" / "tools.js"

SCRIPT = """
const t = await import(process.argv[1]);
const at = { now: new Date('2024-03-01T13:02:00Z'), timeZone: 'Europe/Paris' };
console.log(JSON.stringify({
  tools: t.CLIENT_TOOLS,
  time: t.runClientTool('get_local_time', '{}', at),
  defaults: t.runClientTool('get_local_time', ''),
  unknown: t.runClientTool('open_door', '{"door":"front"}', at),
  long: t.toolLine('f', JSON.stringify({ text: 'x'.repeat(200) }), 'ok'),
}));
"""


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    done = subprocess.run([node, "--input-type=module", "-e", SCRIPT, TOOLS_JS.as_uri()], capture_output=True,
                          text=True, timeout=30, check=True)
    value: dict[str, Any] = json.loads(done.stdout)
    return value


def test_the_page_declares_get_local_time(results: dict[str, Any]) -> None:
    assert results["tools"] == [{
        "type": "function", "name": "get_local_time",
        "description": "The user's current local date, time and time zone, from their browser",
        "parameters": {"type": "object", "properties": {}},
    }]


def test_get_local_time_answers_with_the_browsers_clock_and_zone(results: dict[str, Any]) -> None:
    output = json.loads(results["time"]["output"])
    assert set(output) == {"local_time", "time_zone", "iso"}
    assert output["time_zone"] == "Europe/Paris" and output["iso"] == "2024-03-01T13:02:00.000Z"
    assert output["local_time"]
    line = results["time"]["line"]
    assert line.startswith("🔧 get_local_time() → ") and line.endswith(", Europe/Paris"), line
    default = json.loads(results["defaults"]["output"])
    assert default["time_zone"] and default["iso"].endswith("Z"), "the real clock and zone by default"


def test_an_unknown_function_still_gets_an_answer(results: dict[str, Any]) -> None:
    assert json.loads(results["unknown"]["output"]) == {"error": "unknown function"}
    assert results["unknown"]["line"] == '🔧 open_door({"door":"front"}) → unknown function'
    assert len(results["long"]) < 80 and results["long"].endswith("…) → ok")
