"""Loopback HTTP servers that speak the Anthropic Messages API, OpenAI chat completions and the Responses API.

Each test scripts the replies it wants (tool calls, text, 429/529/500 errors) and reads back the
requests the real SDKs and CLIs sent; a chat-completions request with "stream": true is answered
as server-sent events, as litellm (inside aider) asks. Token usage, unless a reply fixes it, is counted the way the APIs
bill: about four characters a token, with prompt-cache reads and writes at the breakpoints.
Also here: a tiny real lab (a git repo with nanochat/train.py and program.md) for agent tests.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from autoresearch_nb.agents.base import Context

_ids = itertools.count(1)


# ----------------------------------------------------------------------------- scripted replies

class Reply:
    """A raw HTTP reply: status, JSON body, extra headers."""

    def __init__(self, status: int, body: dict, headers: dict | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


def anthropic_error(status: int, kind: str, message: str = "", headers=None) -> Reply:
    return Reply(status, {"type": "error", "error": {"type": kind, "message": message or kind}},
                 headers)


def openai_error(status: int, message: str = "error", headers=None) -> Reply:
    return Reply(status, {"error": {"message": message, "type": "server_error", "code": None}},
                 headers)


def text(words: str) -> dict:
    return {"type": "text", "text": words}


def tool_use(name: str, tool_input) -> dict:
    return {"type": "tool_use", "id": f"toolu_{next(_ids):04d}", "name": name, "input": tool_input}


def editor(**tool_input) -> dict:
    return tool_use("str_replace_based_edit_tool", tool_input)


def submit(description: str, rationale: str = "because") -> dict:
    return tool_use("submit_experiment", {"description": description, "rationale": rationale})


def message(*blocks, stop_reason: str | None = None, usage: dict | None = None) -> dict:
    """An Anthropic Messages reply; usage is counted by the server when not given."""
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    reply = {"type": "message", "role": "assistant", "content": list(blocks),
             "stop_reason": stop_reason, "stop_sequence": None}
    if usage is not None:
        reply["usage"] = usage
    return reply


def function_call(name: str, arguments) -> dict:
    """An OpenAI tool call; `arguments` may be a dict or a raw (even malformed) JSON string."""
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {"id": f"call_{next(_ids):04d}", "type": "function",
            "function": {"name": name, "arguments": raw}}


def chat_reply(*tool_calls, content: str | None = None, usage: dict | None = None) -> dict:
    """An OpenAI chat completion with one choice."""
    reply = {"object": "chat.completion", "choices": [{
        "index": 0, "finish_reason": "tool_calls" if tool_calls else "stop",
        "message": {"role": "assistant", "content": content,
                    "tool_calls": list(tool_calls) or None}}]}
    if usage is not None:
        reply["usage"] = usage
    return reply


# ----------------------------------------------------------------------------- token counting

def tokens_of(part) -> int:
    return (len(json.dumps(part, sort_keys=True)) + 3) // 4


def _strip_cache(part):
    if isinstance(part, dict):
        return {k: _strip_cache(v) for k, v in part.items() if k != "cache_control"}
    if isinstance(part, list):
        return [_strip_cache(v) for v in part]
    return part


class PromptCache:
    """Anthropic-style prompt caching: prefixes up to a cache_control breakpoint are reusable."""

    def __init__(self):
        self.prefixes: dict[str, int] = {}

    def count(self, request: dict) -> dict:
        pieces = list(request.get("tools", []))
        system = request.get("system", [])
        pieces += [text(system)] if isinstance(system, str) else list(system)
        for msg in request.get("messages", []):
            content = msg["content"]
            blocks = [text(content)] if isinstance(content, str) else content
            pieces += [dict(block, role=msg["role"]) for block in blocks]
        total, digest = 0, hashlib.sha256()
        prefixes = []                 # (prefix hash, tokens up to and including each piece)
        breakpoints = []              # indexes of the pieces that carry cache_control
        for index, piece in enumerate(pieces):
            clean = _strip_cache(piece)
            total += tokens_of(clean)
            digest.update(json.dumps(clean, sort_keys=True).encode())
            prefixes.append((digest.copy().hexdigest(), total))
            if isinstance(piece, dict) and "cache_control" in piece:
                breakpoints.append(index)
        # Like the API: a breakpoint also hits a prefix cached up to 20 blocks before it.
        read = max((prefixes[j][1] for i in breakpoints for j in range(max(0, i - 20), i + 1)
                    if prefixes[j][0] in self.prefixes), default=0)
        written = max((prefixes[i][1] for i in breakpoints), default=0)
        write = max(0, written - read)
        for i in breakpoints:
            self.prefixes[prefixes[i][0]] = prefixes[i][1]
        return {"input_tokens": total - read - write, "cache_read_input_tokens": read,
                "cache_creation_input_tokens": write}


# ----------------------------------------------------------------------------- the servers

class ScriptedServer:
    """A loopback server that answers each POST with the next scripted step and records it.

    A step is a reply dict (200), a Reply (any status), or a callable(request_body) returning
    either. When the script runs out, `default` answers (a 400 saying so, if None).
    """

    api = "anthropic"

    def __init__(self, script=(), default=None):
        self.script = list(script)
        self.default = default
        self.requests: list[dict] = []      # {"path", "headers", "body"}
        self.replies: list[dict] = []       # the JSON bodies sent back, errors included
        self.cache = PromptCache()
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]

    def _next_step(self, body: dict):
        with self._lock:
            step = self.script.pop(0) if self.script else self.default
        if callable(step):
            step = step(body)
        if step is None:
            return Reply(400, {"type": "error", "error": {
                "type": "invalid_request_error", "message": "test script exhausted"}})
        return step

    def respond(self, path: str, body: dict) -> Reply:
        step = self._next_step(body)
        if isinstance(step, Reply):
            return step
        return Reply(200, self.complete(body, json.loads(json.dumps(step))))

    def complete(self, request: dict, reply: dict) -> dict:
        """Fill in the ids, model and usage of an Anthropic Messages reply."""
        reply.setdefault("id", f"msg_{next(_ids):06d}")
        reply.setdefault("model", request.get("model", "claude-test"))
        if "usage" not in reply:
            usage = self.cache.count(request)
            usage["output_tokens"] = tokens_of(reply["content"])
            reply["usage"] = usage
        return reply

    def stream_events(self, request: dict, reply: dict) -> list[dict]:
        raise NotImplementedError(f"{type(self).__name__} does not stream")

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with server._lock:
                    server.requests.append({"path": self.path, "headers": dict(self.headers),
                                            "body": body})
                reply = server.respond(self.path, body)
                with server._lock:
                    server.replies.append(reply.body)
                if body.get("stream") and reply.status == 200:
                    return self._stream(server.stream_events(body, reply.body))
                data = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # no listing endpoints: a client that probes gets a plain 404
                data = json.dumps({"error": {"message": f"no such path {self.path}"}}).encode()
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, events: list[dict]):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for event in events:  # the Messages and Responses APIs name each event; chat completions do not
                    named = b"event: " + event["type"].encode() + b"\n" if server.api != "openai" else b""
                    self.wfile.write(named + b"data: " + json.dumps(event).encode() + b"\n\n")
                if server.api == "openai":
                    self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):  # keep test output quiet
                pass

        return Handler


class AnthropicServer(ScriptedServer):
    """Speaks POST /v1/messages, streamed or not. Point the SDK at it with base_url=server.url, a CLI
    with ANTHROPIC_BASE_URL=server.url."""

    def stream_events(self, request: dict, reply: dict) -> list[dict]:
        """A message as the API streams it: start, each block opened, filled in one delta and closed,
        then the stop reason and the output tokens."""
        usage = dict(reply["usage"])
        output = usage.pop("output_tokens", 0)
        head = {k: reply[k] for k in ("id", "type", "role", "model")}
        events = [{"type": "message_start", "message": {**head, "content": [], "stop_reason": None,
                                                         "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}}]
        for index, block in enumerate(reply["content"]):
            if block["type"] == "tool_use":
                opened, delta = {**block, "input": {}}, {"type": "input_json_delta",
                                                         "partial_json": json.dumps(block["input"])}
            else:
                opened, delta = {"type": "text", "text": ""}, {"type": "text_delta", "text": block["text"]}
            events += [{"type": "content_block_start", "index": index, "content_block": opened},
                       {"type": "content_block_delta", "index": index, "delta": delta},
                       {"type": "content_block_stop", "index": index}]
        events += [{"type": "message_delta", "delta": {"stop_reason": reply["stop_reason"], "stop_sequence": None},
                    "usage": {"output_tokens": output}},
                   {"type": "message_stop"}]
        return events


class OpenAIServer(ScriptedServer):
    """Speaks POST /v1/chat/completions. Point the SDK at it with base_url=server.url + '/v1'."""

    api = "openai"

    def __init__(self, script=(), default=None):
        super().__init__(script, default)
        self.seen_prefixes: dict[str, int] = {}

    def complete(self, request: dict, reply: dict) -> dict:
        reply.setdefault("id", f"chatcmpl-{next(_ids):06d}")
        reply.setdefault("created", 1_700_000_000)
        reply.setdefault("model", request.get("model", "test-model"))
        if "usage" not in reply:
            prompt, cached = self._count_prompt(request)
            completion = tokens_of(reply["choices"][0]["message"])
            reply["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion,
                              "prompt_tokens_details": {"cached_tokens": cached}}
        return reply

    def stream_events(self, request: dict, reply: dict) -> list[dict]:
        """A completion as chunks: the whole message in one delta, then the finish (and usage)."""
        choice = reply["choices"][0]
        head = {k: reply[k] for k in ("id", "created", "model")}
        delta = {k: v for k, v in choice["message"].items() if v is not None}
        for index, call in enumerate(delta.get("tool_calls", [])):
            call["index"] = index
        events = [{**head, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": None}]},
                  {**head, "object": "chat.completion.chunk",
                   "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]}]
        if (request.get("stream_options") or {}).get("include_usage"):
            events.append({**head, "object": "chat.completion.chunk", "choices": [],
                           "usage": reply["usage"]})
        return events

    def _count_prompt(self, request: dict) -> tuple[int, int]:
        """Automatic prefix caching, message by message, as OpenAI-style servers do it."""
        total, cached, digest = tokens_of(request.get("tools", [])), 0, hashlib.sha256()
        digest.update(json.dumps(request.get("tools", []), sort_keys=True).encode())
        for msg in request.get("messages", []):
            total += tokens_of(msg)
            digest.update(json.dumps(msg, sort_keys=True).encode())
            key = digest.hexdigest()
            if key in self.seen_prefixes:
                cached = total
            self.seen_prefixes[key] = total
        return total, cached


class ResponsesServer(ScriptedServer):
    """Speaks POST /v1/responses, streamed as the Responses API streams it (what Codex asks for). Point
    Codex at it with a custom provider: base_url=server.url + '/v1', wire_api="responses"."""

    api = "responses"

    def complete(self, request: dict, reply: dict) -> dict:
        reply.setdefault("id", f"resp_{next(_ids):06d}")
        reply.setdefault("model", request.get("model", "test-model"))
        if "usage" not in reply:
            prompt = tokens_of(request.get("input", [])) + tokens_of(request.get("tools", []))
            output = tokens_of(reply["output"])
            reply["usage"] = {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0},
                              "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
                              "total_tokens": prompt + output}
        return reply

    def stream_events(self, request: dict, reply: dict) -> list[dict]:
        """Created, each output item added and done, then completed with the usage."""
        head = {"id": reply["id"], "object": "response", "model": reply["model"]}
        events = [{"type": "response.created", "response": {**head, "status": "in_progress", "output": []}}]
        for index, item in enumerate(reply["output"]):
            events += [{"type": "response.output_item.added", "output_index": index,
                        "item": {**item, "status": "in_progress"}},
                       {"type": "response.output_item.done", "output_index": index, "item": item}]
        events.append({"type": "response.completed", "response": {**head, "status": "completed",
                                                                   "output": reply["output"], "usage": reply["usage"]}})
        return events


def responses_reply(*items) -> dict:
    return {"object": "response", "status": "completed", "output": list(items)}


def shell_call(command: str) -> dict:
    """Codex's exec_command tool, as the Responses API returns a function call."""
    call = f"call_{next(_ids):04d}"
    return {"type": "function_call", "id": f"fc_{call}", "call_id": call, "name": "exec_command",
            "arguments": json.dumps({"cmd": command}), "status": "completed"}


def output_text(words: str) -> dict:
    return {"type": "message", "id": f"msg_{next(_ids):04d}", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": words, "annotations": []}]}


# ----------------------------------------------------------------------------- a tiny real lab

TRAIN_PY = '''"""A tiny training script standing in for nanochat/train.py."""
DEPTH = 4
LEARNING_RATE = 0.02
WARMUP_STEPS = 10


def schedule(step):
    return LEARNING_RATE * min(1.0, (step + 1) / WARMUP_STEPS)


if __name__ == "__main__":
    print("val_bpb:", 1.0 + 0.1 * DEPTH - LEARNING_RATE)
'''
PREPARE_PY = '"""Fixed evaluation code (locked)."""\nEVAL_TOKENS = 1000\n'
CHARTER = "# Goal\n\nLower val_bpb within the budget. Prefer simple changes.\n"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True,
                          text=True).stdout


def make_lab(root: Path, history: list[dict] | None = None) -> Context:
    """A committed git repo with program.md and nanochat/{train,prepare}.py; its Context."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "nanochat").mkdir(exist_ok=True)
    (root / "nanochat" / "train.py").write_text(TRAIN_PY)
    (root / "nanochat" / "prepare.py").write_text(PREPARE_PY)
    (root / "program.md").write_text(CHARTER)
    (root / ".gitignore").write_text(".autoresearch/\nresults.tsv\n__pycache__/\n")
    git(root, "init", "-q", "-b", "autoresearch/test")
    git(root, "config", "user.email", "lab@example.invalid")
    git(root, "config", "user.name", "lab")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "baseline")
    history = history or []
    return Context(index=len(history), charter=CHARTER, files={"nanochat/train.py": TRAIN_PY},
                   allowed=["nanochat/train.py"], locked=["nanochat/prepare.py"],
                   history=history, best=None, baseline=None, lab_dir=str(root), budget=5.0)
