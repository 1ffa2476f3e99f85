"""The command examples in docs/api.md run as written against `gatewayd demo`.

Examples are the fenced blocks with the info string `sh example`. They run in document order
as one shell script (so a device registered in one block is there in the next), against the
demo's real daemon, broker and simulated meter; the only change made to them is the API's
address, which the demo picks at start. Under each `curl` command, a comment `# NNN ...` is
the status the API must answer, and an `"error_code": "..."` in it must be in the reply.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from queue import Empty, Queue

import pytest

from tests.helpers import ROOT, daemon_env, gatewayd

API_DOC = ROOT / "docs" / "api.md"
DOC_ADDRESS = "http://127.0.0.1:8080"
BLOCK = re.compile(r"^```([^\n]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
EXPECT = re.compile(r"^# (\d{3})\b(.*)$")
ERROR_CODE = re.compile(r'"error_code": "([A-Z_]+)"')
MARK = "@@status "
# Each documented curl prints its reply, then the status on a line of its own.
CURL = f"curl() {{ command curl -sS -w '\\n{MARK}%{{http_code}}\\n' \"$@\"; }}\n"


@dataclass(frozen=True)
class Expected:
    command: str
    status: int
    error_code: str | None


def examples(text: str) -> list[str]:
    """The `sh example` blocks of a markdown text, in order."""
    return [body for info, body in BLOCK.findall(text) if info.split() == ["sh", "example"]]


def commands(block: str) -> tuple[str, list[Expected]]:
    """The block as a script, and what each of its curl commands must answer."""
    logical: list[str] = []
    for line in block.splitlines():
        if logical and logical[-1].endswith("\\"):
            logical[-1] = logical[-1][:-1].rstrip() + " " + line.strip()
        else:
            logical.append(line)
    expected: list[Expected] = []
    for i, line in enumerate(logical):
        if line.startswith("curl "):
            follow = EXPECT.match(logical[i + 1]) if i + 1 < len(logical) else None
            assert follow is not None, f"no `# STATUS` comment under: {line}"
            code = ERROR_CODE.search(follow.group(2))
            expected.append(Expected(line, int(follow.group(1)), code and code.group(1)))
    return block, expected


def test_every_curl_in_the_api_doc_is_a_checked_example():
    text = API_DOC.read_text()
    unchecked = [body for info, body in BLOCK.findall(text)
                 if "curl " in body and info.split() != ["sh", "example"]]  # fmt: skip
    assert unchecked == []
    assert len(examples(text)) >= 3


def test_the_parser_pairs_each_command_with_its_status():
    script, expected = commands(
        'token=x\ncurl -s \\\n  http://h/a\n# 201 {"a": 1}\ncurl -s http://h/b\n'
        '# 400 {"error_code": "UNKNOWN_PRODUCT"}\n'
    )
    assert expected == [
        Expected("curl -s http://h/a", 201, None),
        Expected("curl -s http://h/b", 400, "UNKNOWN_PRODUCT"),
    ]
    assert script.startswith("token=x")
    with pytest.raises(AssertionError, match="no `# STATUS` comment"):
        commands("curl -s http://h/a\n")


def _lines(stream, queue: Queue) -> None:
    for line in stream:
        queue.put(line)


def _demo_api(lines: Queue) -> str:
    seen = ""
    deadline = time.monotonic() + 30
    while "Modbus simulator:" not in seen:
        try:
            seen += lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except Empty:
            raise AssertionError(f"the demo did not start:\n{seen}") from None
    api = re.search(r"curl (http://127\.0\.0\.1:\d+)/healthz", seen)
    assert api, seen
    return api.group(1)


@pytest.mark.timeout(90)
def test_api_doc_examples_answer_as_documented_in_the_demo():
    blocks = [commands(block) for block in examples(API_DOC.read_text())]
    script = CURL + "".join(block for block, _ in blocks)
    expected = [e for _, block_expected in blocks for e in block_expected]
    proc = gatewayd("demo", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: Queue[str] = Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        api = _demo_api(lines)
        result = subprocess.run(
            ["bash", "-c", script.replace(DOC_ADDRESS, api)],
            capture_output=True, text=True, env=daemon_env(), timeout=60, check=False,
        )  # fmt: skip
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
        proc.stdout.close()
    assert result.returncode == 0, result.stderr
    # body MARK status \n body MARK status ... : each status ends the reply before it
    replies = result.stdout.split(MARK)
    statuses = [int(r.split("\n", 1)[0]) for r in replies[1:]]
    bodies = [replies[0]] + [r.split("\n", 1)[1] for r in replies[1:-1]]
    assert len(statuses) == len(expected), result.stdout
    for want, status, body in zip(expected, statuses, bodies, strict=True):
        assert status == want.status, f"{want.command}\n-> {status} {body}"
        if want.error_code is not None:
            assert json.loads(body)["error_code"] == want.error_code, body
