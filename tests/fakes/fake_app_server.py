"""A tiny scriptable stand-in for `codex app-server`, for RPC unit tests and fault injection.

Reads JSON lines on stdin and answers a few methods:
initialize, echo, slow{ms}, never, notify_me{n}, ask_me, crash, garbage,
big{size}, thread/loaded/list. Options: --stderr-flood N (write N stderr
lines first), --crash-after-init (exit 3 right after answering initialize),
--hang-health (never answer thread/loaded/list), --ignore-term (survive
SIGTERM and stdin EOF). Stdlib only, so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

out_lock = threading.Lock()


def send(message: dict) -> None:
    with out_lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()


def raw(line: str) -> None:
    with out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stderr-flood", type=int, default=0)
    parser.add_argument("--crash-after-init", action="store_true")
    parser.add_argument("--hang-health", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for i in range(args.stderr_flood):
        sys.stderr.write(f"stderr line {i} " + "x" * 100 + "\n")
    sys.stderr.flush()

    answers: dict[int, object] = {}
    answered = threading.Condition()

    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if "method" not in message:
            with answered:
                answers[message.get("id")] = message.get("result", message.get("error"))
                answered.notify_all()
            continue
        method, mid, params = message["method"], message.get("id"), message.get("params") or {}
        if mid is None:
            continue
        if method == "initialize":
            send({"id": mid, "result": {"userAgent": "fake/0.0.0"}})
            if args.crash_after_init:
                sys.stdout.flush()
                return 3
        elif method == "echo":
            send({"id": mid, "result": params})
        elif method == "slow":
            ms = int(params.get("ms", 100))
            threading.Timer(ms / 1000, send, args=({"id": mid, "result": "late"},)).start()
        elif method == "never":
            pass
        elif method == "notify_me":
            for k in range(int(params.get("n", 3))):
                send({"method": "note", "params": {"i": k}})
            send({"id": mid, "result": "done"})
        elif method == "ask_me":
            send({"id": 0, "method": "item/commandExecution/requestApproval", "params": {"x": 1}})

            def wait_and_answer(request_id: int = mid) -> None:
                with answered:
                    answered.wait_for(lambda: 0 in answers, timeout=10)
                    send({"id": request_id, "result": answers.get(0)})

            threading.Thread(target=wait_and_answer, daemon=True).start()
        elif method == "crash":
            return 3
        elif method == "garbage":
            raw("this is not json")
            raw("[1, 2, 3]")
            send({"id": mid, "result": "after garbage"})
        elif method == "big":
            send({"id": mid, "result": "x" * int(params.get("size", 1000))})
        elif method == "thread/loaded/list":
            if not args.hang_health:
                send({"id": mid, "result": {"data": []}})
        else:
            send({"id": mid, "error": {"code": -32600, "message": f"unknown method {method}"}})
    if args.ignore_term:
        time.sleep(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
