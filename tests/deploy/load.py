#!/usr/bin/env python3
"""A steady, bounded HTTP/1.1 load on 127.0.0.1 for the swap checks: CONNS kept-alive
connections, each sending GET / on a fixed schedule (RATE requests per second in all) for
DURATION seconds, and classifying every answer by its body. Prints `warm` once every connection
has had a good answer and WARM seconds have passed (the steady state the swap interrupts), then,
at the end, one JSON summary line.

A request fails when the connection is refused, reset or closed under it, times out (2 s), or
answers something other than 200 with a body the --kind options name; the connection is then
made again at the next tick. Nothing is retried: each failure is one request a client lost.

    load.py --port P --conns 8 --rate 800 --duration 8 --warm 2 --kind v1='Hello from effe' --kind v2='"method"'

Python 3.11 stdlib.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from collections import Counter


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--rate", type=float, default=800, help="requests per second, all connections")
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--warm", type=float, default=2, help="seconds of load before `warm`")
    ap.add_argument("--kind", action="append", default=[], help="NAME=TEXT: a 200 whose body has TEXT")
    args = ap.parse_args()
    kinds = [tuple(k.split("=", 1)) for k in args.kind]
    interval = args.conns / args.rate
    start = time.monotonic()
    end = start + args.duration
    lock = threading.Lock()
    outcomes: list[tuple[float, str]] = []   # (seconds from start, kind or failure)
    late = Counter()
    warm = set()
    said_warm = False

    def classify(status: int, body: bytes) -> str:
        if status == 200:
            for name, text in kinds:
                if text.encode() in body:
                    return name
        return f"fail:status {status}"

    def worker(i: int) -> None:
        nonlocal said_warm
        conn = None
        tick = start + i * interval / args.conns
        while tick < end:
            now = time.monotonic()
            if now < tick:
                time.sleep(tick - now)
            elif now - tick > interval:
                skipped = int((now - tick) / interval)
                late[i] += skipped
                tick += skipped * interval
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=2)
                conn.request("GET", "/")
                resp = conn.getresponse()
                kind = classify(resp.status, resp.read())
                if resp.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                kind = f"fail:{type(e).__name__}"
                if conn is not None:
                    conn.close()
                conn = None
            with lock:
                outcomes.append((time.monotonic() - start, kind))
                if not kind.startswith("fail"):
                    warm.add(i)
                if not said_warm and len(warm) == args.conns and outcomes[-1][0] >= args.warm:
                    said_warm = True
                    print("warm", flush=True)
            tick += interval
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=args.duration + 10)
    outcomes.sort()
    counts = Counter(kind for _, kind in outcomes)
    failed = [t for t, kind in outcomes if kind.startswith("fail")]
    names = [name for name, _ in kinds]
    first = {n: next((t for t, k in outcomes if k == n), None) for n in names}
    last = {n: next((t for t, k in reversed(outcomes) if k == n), None) for n in names}
    summary = {
        "requests": len(outcomes),
        "failed": len(failed),
        "counts": dict(counts),
        "failure_window_s": [round(failed[0], 3), round(failed[-1], 3)] if failed else None,
        "first_s": first,
        "last_s": last,
        "ticks_skipped": sum(late.values()),
        "load": f"{args.conns} keep-alive HTTP/1.1 connections, {args.rate:g} req/s in all, {args.duration:g} s",
        "all_threads_ended": not any(t.is_alive() for t in threads),
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
