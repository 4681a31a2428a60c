"""`fmesh new`: the files of a new function, per language, and its manifest entry.

Each function gets a folder under `functions/` with its code, a README line and a test
the user runs with pytest. The node and command functions serve the CloudEvents HTTP
binding themselves (binary mode, no packages needed), as the mesh runs them."""

from __future__ import annotations

from dataclasses import dataclass

LANGUAGES = ("python", "node", "command")
PLACEHOLDER = "__NAME__"


@dataclass(frozen=True)
class Scaffold:
    files: dict[str, str]      # file name in the function's folder → its text
    entry: list[str]           # the manifest entry's lines (fields of functions.<name>)


def scaffold(name: str, language: str, folder: str) -> Scaffold:
    """The files and manifest entry of function `name` in `language`, its folder being
    `folder` (relative to the manifest, with forward slashes)."""
    test = f"test_{name.replace('-', '_')}.py"
    on = f"on: [{{type: com.example.{name}}}]"
    if language == "python":
        files = {"handler.py": PYTHON_HANDLER, "README.md": PYTHON_README, test: PYTHON_TEST}
        entry = [f"handler: {folder}/handler.py:handle", on]
    elif language == "node":
        files = {"server.js": NODE_SERVER, "README.md": SERVER_README.replace("__LANG__", "Node.js"),
                 test: SERVER_TEST.replace("__COMMAND__", '["node", "server.js"]')}
        entry = ["command: [node, server.js]", f"workdir: {folder}", on]
    elif language == "command":
        readme = SERVER_README.replace("__LANG__", "any language (here Python)")
        files = {"server.py": COMMAND_SERVER, "README.md": readme,
                 test: SERVER_TEST.replace("__COMMAND__", '[sys.executable, "server.py"]')}
        entry = ["command: [python3, server.py]", f"workdir: {folder}", on]
    else:
        raise ValueError(f"--lang must be one of {', '.join(LANGUAGES)}, not {language!r}")
    return Scaffold({file: text.replace(PLACEHOLDER, name) for file, text in files.items()}, entry)


PYTHON_HANDLER = '''\
"""__NAME__: an fmesh function.

`handle` gets each event its `on:` in fmesh.yaml matches: attributes by item access
(event["type"], event["id"]), the decoded payload as event.data. What it returns is the
reply: data (sent back as an event of type <type>.reply), a CloudEvent, or None for none.
"""


def handle(event):
    data = event.data if isinstance(event.data, dict) else {}
    print(f"__NAME__ got {event['type']} {event['id']}")
    return {"greeting": f"Hello, {data.get('name', 'world')}!"}
'''

PYTHON_README = ("`__NAME__` replies `{\"greeting\": \"Hello, <name>!\"}` to each `com.example.__NAME__` event; "
                 "try it with `fmesh invoke __NAME__ --data '{\"name\": \"you\"}'`, test it with "
                 "`pytest functions/__NAME__`.\n")

PYTHON_TEST = '''\
"""The handler of __NAME__, called as the mesh calls it: run with `pytest functions/__NAME__`."""

import importlib.util
from pathlib import Path

from fmesh.events import new_event

_spec = importlib.util.spec_from_file_location("__NAME___handler", Path(__file__).with_name("handler.py"))
handler = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(handler)


def test_greets_by_name():
    reply = handler.handle(new_event("com.example.__NAME__", "/test", {"name": "Ada"}))
    assert reply == {"greeting": "Hello, Ada!"}


def test_greets_the_world_without_a_name():
    assert handler.handle(new_event("com.example.__NAME__", "/test", "just text")) == {"greeting": "Hello, world!"}
'''

SERVER_README = ("`__NAME__` is a function in __LANG__: a program serving the CloudEvents HTTP binding on `$PORT` "
                 "(binary mode) that replies `{\"greeting\": \"Hello, <name>!\"}` to each `com.example.__NAME__` "
                 "event; try it with `fmesh invoke __NAME__ --data '{\"name\": \"you\"}'`, test it with "
                 "`pytest functions/__NAME__`.\n")

NODE_SERVER = '''\
// __NAME__: an fmesh function in Node.js, no packages needed. fmesh starts it with $PORT set
// and POSTs each event to it in the CloudEvents HTTP binding, binary mode: the attributes in
// ce-* headers, the data as the body. A 2xx with ce-* headers is the reply event; a 204, none.
const http = require("http");
const crypto = require("crypto");

function handle(event) {
  const name = (event.data && event.data.name) || "world";
  return { greeting: `Hello, ${name}!` };
}

function readEvent(headers, body) {
  const event = {};
  for (const [key, value] of Object.entries(headers)) {
    if (key.startsWith("ce-")) event[key.slice(3)] = decodeURIComponent(value);
  }
  const json = (headers["content-type"] || "").includes("json");
  event.data = json && body.length ? JSON.parse(body.toString()) : body.toString();
  return event;
}

const server = http.createServer((req, res) => {
  if (req.method !== "POST") {
    res.writeHead(200).end("ok"); // GET /healthz: fmesh asks while the program starts
    return;
  }
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    let event;
    try {
      event = readEvent(req.headers, Buffer.concat(chunks));
    } catch (err) {
      res.writeHead(400).end(`not a CloudEvent: ${err.message}`); // 4xx: not retried
      return;
    }
    console.log(`__NAME__ got ${event.type} ${event.id}`);
    const data = handle(event);
    if (data === undefined || data === null) {
      res.writeHead(204).end();
      return;
    }
    res.writeHead(200, {
      "ce-specversion": "1.0", "ce-id": crypto.randomUUID(), "ce-source": "/functions/__NAME__",
      "ce-type": `${event.type}.reply`, "content-type": "application/json",
    });
    res.end(JSON.stringify(data));
  });
});

server.listen(Number(process.env.PORT || 8080), "127.0.0.1");
process.on("SIGTERM", () => server.close(() => process.exit(0)));
'''

COMMAND_SERVER = '''\
"""__NAME__: an fmesh function as a program of its own (any language would do; this one
uses only Python's standard library). fmesh starts it with $PORT set and POSTs each event
to it in the CloudEvents HTTP binding, binary mode: the attributes in ce-* headers, the
data as the body. A 2xx with ce-* headers is the reply event; a 204, none."""

import json
import os
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote


def handle(event, data):
    name = data.get("name", "world") if isinstance(data, dict) else "world"
    return {"greeting": f"Hello, {name}!"}


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # /healthz: fmesh asks while the program starts
        self._answer(200, {}, b"ok")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        event = {k.lower()[3:]: unquote(v) for k, v in self.headers.items() if k.lower().startswith("ce-")}
        try:
            data = json.loads(body) if "json" in self.headers.get("content-type", "") and body else body
        except ValueError as exc:
            self._answer(400, {}, f"not JSON: {exc}".encode())  # 4xx: not retried
            return
        print(f"__NAME__ got {event.get('type')} {event.get('id')}", flush=True)
        reply = handle(event, data)
        if reply is None:
            self._answer(204, {}, b"")
            return
        headers = {"ce-specversion": "1.0", "ce-id": str(uuid.uuid4()), "ce-source": "/functions/__NAME__",
                   "ce-type": f"{event.get('type')}.reply", "content-type": "application/json"}
        self._answer(200, headers, json.dumps(reply).encode())

    def _answer(self, status, headers, body):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
'''

SERVER_TEST = '''\
"""__NAME__ as the mesh runs it: started with $PORT set, sent an event in binary mode.
Run with `pytest functions/__NAME__`."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

COMMAND = __COMMAND__


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def url():
    if shutil.which(COMMAND[0]) is None:
        pytest.skip(f"{COMMAND[0]} is not installed")
    port = free_port()
    program = subprocess.Popen(COMMAND, cwd=Path(__file__).parent, env={**os.environ, "PORT": str(port)})
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(url + "healthz", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or program.poll() is not None:
                program.kill()
                pytest.fail("the program did not serve on $PORT within 10 s")
            time.sleep(0.05)
    yield url
    program.terminate()
    program.wait(10)


def test_replies_with_a_greeting(url):
    request = urllib.request.Request(url, data=json.dumps({"name": "Ada"}).encode(), method="POST", headers={
        "ce-specversion": "1.0", "ce-id": "1", "ce-source": "/test", "ce-type": "com.example.__NAME__",
        "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["ce-type"] == "com.example.__NAME__.reply"
        assert json.loads(answer.read()) == {"greeting": "Hello, Ada!"}
'''
