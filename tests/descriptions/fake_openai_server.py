"""A fake OpenAI-compatible chat server on 127.0.0.1 (real HTTP, `http.server` in a thread), for tests and benchmarks.

    with FakeLLM(script={"catch": ["429", "ok"]}, reject_json_schema=True) as llm:
        ...  # descriptions.base_url = llm.url
        llm.log  # one entry per request: action, behaviour, response_format type, seed, status

Each class (found as the first quoted string of the last user message: earlier ones are worked
examples) follows its script, one behaviour per request, then answers well ("ok"). Behaviours:
    ok           a valid answer {"sub_actions": [S distinct sentences]} (S from the schema, else `num_sub_actions`)
    slow         sleeps `slow_s` before a valid answer (the client times out first)
    429 / 500    HTTP errors (429 with Retry-After: 0)
    malformed    HTTP 200 whose message content is truncated JSON
    wrong_count  S + 1 sentences
    refusal      "I'm sorry, but as an AI language model I can't help with that."
    class_name   the class name repeated S times
    garbage      HTTP 200 with a body that is not JSON
    copy         the prompt's last worked example (assistant message) repeated as the answer
    seeded       a valid answer whose last sentence depends on the seed (0 vs any other): candidates differ
`reject_json_schema=True` answers response_format json_schema with HTTP 500 like llama.cpp's server.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FakeLLM", "good_sentences"]

_QUOTED = re.compile(r'"([^"]+)"')
LLAMA_CPP_REJECTION = {
    "error": {
        "message": "1 validation error:\n  {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
        "'msg': \"Input should be 'text' or 'json_object'\", 'input': 'json_schema'}",
        "type": "internal_server_error",
    }
}


def good_sentences(action: str, s: int) -> list[str]:
    return [f"Step {k + 1} of {s}: the person carries on with {action.lower()}, part {k + 1}." for k in range(s)]


class FakeLLM:
    def __init__(
        self,
        *,
        script: dict[str, list[str]] | None = None,
        latency: float = 0.0,
        slow_s: float = 2.0,
        reject_json_schema: bool = False,
        num_sub_actions: int = 3,
        models: tuple[str, ...] = ("fake-model",),
    ):
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.latency, self.slow_s = latency, slow_s
        self.reject_json_schema = reject_json_schema
        self.num_sub_actions = num_sub_actions
        self.models = models
        self.port = 0  # 0: any free port
        self.log: list[dict[str, Any]] = []
        self.in_flight = self.max_in_flight = 0
        self._seen: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ life
    @property
    def url(self) -> str:
        assert self._httpd is not None, "start() first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> "FakeLLM":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in fake.models]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with fake._lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    status, payload, headers = fake.answer(body)
                    self._send(status, payload, headers)
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, name="fake-llm", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FakeLLM":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --------------------------------------------------------------- answers
    def calls(self, action: str | None = None, behaviour: str | None = None) -> int:
        """Chat requests received (for one class, answered with one behaviour)."""
        return sum(1 for e in self.log if (action is None or e["action"] == action) and (behaviour is None or e["behaviour"] == behaviour))

    def answer(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        user = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "user"), "")
        found = _QUOTED.search(user)
        action = found.group(1) if found else user
        rf = body.get("response_format") or {}
        rf_type = rf.get("type", "text")
        entry = {"action": action, "response_format": rf_type, "seed": body.get("seed"), "model": body.get("model")}
        if self.reject_json_schema and rf_type == "json_schema":
            entry.update(behaviour="reject_json_schema", status=500)
            self._record(entry)
            return 500, LLAMA_CPP_REJECTION, {}
        with self._lock:
            n = self._seen[action]
            self._seen[action] += 1
        plan = self.script.get(action, [])
        behaviour = plan[n] if n < len(plan) else "ok"
        schema = rf.get("schema") or rf.get("json_schema", {}).get("schema") or {}
        s = schema.get("properties", {}).get("sub_actions", {}).get("minItems", self.num_sub_actions)
        if self.latency:
            time.sleep(self.latency)
        status, content, headers = 200, None, {}
        if behaviour == "slow":
            time.sleep(self.slow_s)
            content = json.dumps({"sub_actions": good_sentences(action, s)})
        elif behaviour == "429":
            status, headers = 429, {"retry-after": "0"}
        elif behaviour == "500":
            status = 500
        elif behaviour == "garbage":
            entry.update(behaviour=behaviour, status=200)
            self._record(entry)
            return 200, b"<html>this is not json", {}
        elif behaviour == "malformed":
            content = '{"sub_actions": ["The person reaches out", "and then'
        elif behaviour == "wrong_count":
            content = json.dumps({"sub_actions": good_sentences(action, s + 1)})
        elif behaviour == "refusal":
            content = "I'm sorry, but as an AI language model I can't help with that."
        elif behaviour == "class_name":
            content = json.dumps({"sub_actions": [action] * s})
        elif behaviour == "copy":
            content = next((m["content"] for m in reversed(body.get("messages", [])) if m.get("role") == "assistant"), "")
        elif behaviour == "seeded":
            sentences = good_sentences(action, s)
            sentences[-1] = f"It ends in manner {min(int(body.get('seed') or 0), 1)} for {action.lower()}."
            content = json.dumps({"sub_actions": sentences})
        else:
            content = json.dumps({"sub_actions": good_sentences(action, s)})
        entry.update(behaviour=behaviour, status=status)
        self._record(entry)
        if status != 200:
            return status, {"error": {"message": f"fake {status}", "type": "server_error"}}, headers
        return 200, {
            "id": f"chatcmpl-{len(self.log)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70},
        }, headers

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.log.append(entry)


def main(argv: list[str] | None = None) -> None:
    """A stand-in server process (tests replace llama.cpp's with it): `python fake_openai_server.py --port P`."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args, _ = ap.parse_known_args(argv)
    fake = FakeLLM(latency=args.latency)
    fake.port = args.port
    fake.start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
