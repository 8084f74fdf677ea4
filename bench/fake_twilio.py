"""A provider that takes DELAY seconds per call: answers Twilio's Messages.json like Twilio
(201 with a sid) after sleeping, on 127.0.0.1:PORT. asyncio, so hundreds of calls can wait
at once without a thread each. Run: python bench/fake_twilio.py PORT DELAY [--hang SECONDS]
[--listen ADDRESS]

``--listen ADDRESS`` serves on ADDRESS instead of the loopback, for app servers on other hosts
(molecule/ha-edge runs it on its database host, so both app servers text through it).

``--hang SECONDS`` plays a provider that accepts and then hangs: each send is recorded (the
message exists, it is in the Messages list) at once, and its answer comes SECONDS later,
past the client's timeout (the fault of molecule/default/tests/faults/test_8). Standard
library only, so it runs with any python3 (the stack's containers have no pip).

Like Twilio, every POST it accepts is a new message: it does not drop a repeat that carries
the same I-Twilio-Idempotency-Token. It counts every call, per token (the delivery), and
answers ``GET /calls`` with the totals: calls, deliveries called, calls beyond a delivery's
first (``repeated``: each one a second text to someone), and the seconds spent answering
POSTs (``callSeconds``). ``GET .../Messages.json?To=`` lists what it accepted for that
number, like Twilio's Messages list. ``GET /calls?per=delivery`` adds the calls per token
(``perDelivery``)."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import time
from collections import Counter
from email.utils import formatdate
from urllib.parse import parse_qs, urlsplit

counter = itertools.count(1)
calls_per_token: Counter[str] = Counter()
# Seconds the POSTs spent here, each from its request read to its answer written: over a run,
# divided by the calls it is the provider's real latency (the nominal delay plus this
# process's own waits for a core), divided by the run's span the calls in flight on average.
call_seconds = 0.0
accepted_by_number: dict[str, list[dict]] = {}


def _answer(method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[str, dict]:
    url = urlsplit(target)
    if method == "GET" and url.path == "/calls":
        totals = {
            "calls": sum(calls_per_token.values()),
            "deliveries": len(calls_per_token),
            "repeated": sum(n - 1 for n in calls_per_token.values()),
            "callSeconds": round(call_seconds, 3),
        }
        if parse_qs(url.query).get("per") == ["delivery"]:
            totals["perDelivery"] = dict(calls_per_token)
        return "200 OK", totals
    if method == "GET" and url.path.endswith("/Messages.json"):
        to = parse_qs(url.query).get("To", [""])[0]
        return "200 OK", {"messages": list(reversed(accepted_by_number.get(to, [])))}
    form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
    calls_per_token[headers.get("i-twilio-idempotency-token", "")] += 1
    message = {
        "sid": f"SM{next(counter):032d}",
        "status": "queued",
        "to": form.get("To", ""),
        "body": form.get("Body", ""),
        "date_created": formatdate(time.time(), usegmt=True),
    }
    accepted_by_number.setdefault(message["to"], []).append(message)
    return "201 Created", message


async def handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, hang: float
) -> None:
    global call_seconds
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:] if line)
            }
            length = int(headers.get("content-length") or 0)
            body = await reader.readexactly(length) if length else b""
            started = time.monotonic()
            if method == "POST":
                await asyncio.sleep(delay)
            status, answer = _answer(method, target, headers, body)
            if method == "POST" and hang:
                await asyncio.sleep(hang)  # accepted; the answer comes too late
            payload = json.dumps(answer).encode()
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n".encode()
                + b"Content-Length: "
                + str(len(payload)).encode()
                + b"\r\n\r\n"
                + payload
            )
            await writer.drain()
            if method == "POST":
                call_seconds += time.monotonic() - started
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def main(port: int, delay: float, hang: float = 0.0, listen: str = "127.0.0.1") -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, delay, hang), listen, port, backlog=1024
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("delay", type=float, help="seconds before a send is accepted")
    parser.add_argument(
        "--hang", type=float, default=0.0, help="seconds between accepting a send and answering"
    )
    parser.add_argument(
        "--listen", default="127.0.0.1", help="address to serve on (default: the loopback)"
    )
    args = parser.parse_args()
    asyncio.run(main(args.port, args.delay, args.hang, args.listen))
