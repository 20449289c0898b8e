"""A tiny scriptable stand-in for `codex app-server`, for RPC unit tests and fault injection.

Reads JSON lines on stdin and answers a few methods:
initialize, echo, slow{ms}, never, notify_me{n}, ask_me, crash, garbage,
big{size}, bad_error{shape}, bad_id, thread/loaded/list, and a minimal v2
turn life cycle (thread/start, turn/start, turn/interrupt,
thread/unsubscribe) whose turns stay running until interrupted or
unsubscribed. Options: --stderr-flood N (write N stderr lines first, every
tenth carrying a fake credential), --crash-after-init (exit 3 right after
answering initialize), --no-init (never answer initialize), --hang-health
(never answer thread/loaded/list or thread/start), --max-threads K (answer
thread/start with the app-server's overload error -32001 while K threads
are open), --ignore-term (survive SIGTERM and stdin EOF), --turn-start-ms
MS (send turn/started at once but answer turn/start only after MS). The
method fake/turns lists the turns started and the threads interrupted.
Stdlib only, so it starts fast.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time

out_lock = threading.Lock()
# Printed on stderr by --stderr-flood; must never reach a log line.
FAKE_SECRET = "sk-fakesecret0123456789abcdef"
# Malformed JSON-RPC error objects, by name (`bad_error{shape}`).
BAD_ERRORS: dict[str, object] = {
    "string_code": {"code": "oops", "message": "string code"},
    "float_code": {"code": 1.5, "message": "float code"},
    "bool_code": {"code": True, "message": "bool code"},
    "no_message": {"code": -32000},
    "list_message": {"code": -32000, "message": ["not", "a", "string"]},
    "not_an_object": "just a string",
    "empty": {},
}


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
    parser.add_argument("--no-init", action="store_true")
    parser.add_argument("--max-threads", type=int, default=-1)
    parser.add_argument("--turn-start-ms", type=int, default=0)
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for i in range(args.stderr_flood):
        secret = f" Authorization: Bearer {FAKE_SECRET}" if i % 10 == 0 else ""
        sys.stderr.write(f"stderr line {i}{secret} " + "x" * 100 + "\n")
    sys.stderr.flush()
    open_threads: set[str] = set()
    started_turns: list[str] = []
    interrupted: list[str] = []
    thread_ids = iter(range(1, 1 << 30))

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
            if args.no_init:
                continue
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
                send({"id": mid, "result": {"data": sorted(open_threads)}})
        elif method == "thread/start":
            if args.hang_health:
                continue
            if 0 <= args.max_threads <= len(open_threads):
                send(
                    {
                        "id": mid,
                        "error": {"code": -32001, "message": "Server overloaded; retry later."},
                    }
                )
                continue
            thread_id = f"thr_{next(thread_ids)}"
            open_threads.add(thread_id)
            send({"id": mid, "result": {"thread": {"id": thread_id}}})
        elif method == "turn/start":
            thread_id = str(params.get("threadId"))
            answer = {"id": mid, "result": {"turn": {"id": f"turn_{thread_id}"}}}
            started_turns.append(f"turn_{thread_id}")
            if args.turn_start_ms:
                turn = {"id": f"turn_{thread_id}", "status": "inProgress"}
                send({"method": "turn/started", "params": {"threadId": thread_id, "turn": turn}})
                threading.Timer(args.turn_start_ms / 1000, send, args=(answer,)).start()
            else:
                send(answer)
        elif method == "fake/turns":
            send({"id": mid, "result": {"started": started_turns, "interrupted": interrupted}})
        elif method == "turn/interrupt":
            thread_id = str(params.get("threadId"))
            interrupted.append(thread_id)
            turn = {"id": f"turn_{thread_id}", "status": "interrupted", "error": None}
            send({"method": "turn/completed", "params": {"threadId": thread_id, "turn": turn}})
            send({"id": mid, "result": {}})
        elif method == "thread/unsubscribe":
            open_threads.discard(str(params.get("threadId")))
            send({"id": mid, "result": {"status": "unsubscribed"}})
        elif method == "bad_error":
            send({"id": mid, "error": BAD_ERRORS[str(params.get("shape"))]})
        elif method == "bad_id":
            raw(json.dumps({"id": [mid], "result": "unhashable id"}))
            raw(json.dumps({"id": {"x": 1}, "error": {"code": 1, "message": "dict id"}}))
            send({"id": mid, "result": "after bad ids"})
        else:
            send({"id": mid, "error": {"code": -32600, "message": f"unknown method {method}"}})
    if args.ignore_term:
        time.sleep(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
