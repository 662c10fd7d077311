"""A small OpenAI-compatible chat completions server for tests, on 127.0.0.1, in a thread:
the standard library's http.server, canned verdicts (or any reply a test chooses), and a log
of every request it answered.

    with JudgeStub(reply=verdicts_for_every_step) as stub:
        EndpointJudge(stub.url, "stub").complete(messages, 100)
        stub.requests   # the decoded request bodies, in order
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

Reply = Callable[[dict[str, Any]], "str | int"]  # request body -> content, or an HTTP status


def n_steps(body: dict[str, Any]) -> int:
    """The number of "Step k:" lines in the request's first user message."""
    return len(re.findall(r"^Step \d+:", body["messages"][0]["content"], re.MULTILINE))


def verdicts_for_every_step(body: dict[str, Any]) -> str:
    """Valid verdicts: a step is wrong when its text has an odd length; the path is wrong from
    the first wrong step on."""
    lines = re.findall(r"^Step \d+: (.*)$", body["messages"][0]["content"], re.MULTILINE)
    verdicts, path = [], False
    for k, text in enumerate(lines, start=1):
        wrong = len(text) % 2 == 1
        path = path or wrong
        verdicts.append({"step": k, "wrong": wrong, "wrong_path": path})
    return json.dumps({"steps": verdicts})


class JudgeStub:
    def __init__(self, reply: Reply = verdicts_for_every_step) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []  # names in lower case
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append(body)
                stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                answer = stub.reply(body) if self.path.endswith("/chat/completions") else 404
                if isinstance(answer, int):
                    data = json.dumps({"error": {"message": f"status {answer}"}}).encode()
                    self.send_response(answer)
                else:
                    data = json.dumps({
                        "id": f"c{len(stub.requests)}", "object": "chat.completion",
                        "created": 0, "model": body.get("model", "stub"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": answer}}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                  "total_tokens": 2}}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> JudgeStub:
        self.thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
