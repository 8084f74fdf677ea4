"""Bounded HTTPS load on the virtual address (runs on the client container, Python's stdlib).

LOAD_THREADS threads each send GET /api/ha-balancer/<n> one after the other, a new
connection each (so every failure is one request, and a request is "in flight" on exactly
one balancer), a pause of LOAD_INTERVAL seconds between two; each request may take
LOAD_TIMEOUT seconds. Beside them a probe asks every PROBE_INTERVAL seconds with a short
timeout, to time when the address answers again. Everything stops after LOAD_SECONDS.
Writes a JSON report to LOAD_REPORT: every request's [start, end, ok, error, thread] and every
probe's [start, end, ok].
"""

import http.client
import json
import os
import ssl
import threading
import time

ADDRESS = os.environ["LOAD_ADDRESS"]
SERVER_NAME = os.environ["LOAD_SERVER_NAME"]
SECONDS = float(os.environ.get("LOAD_SECONDS", "20"))
THREADS = int(os.environ.get("LOAD_THREADS", "3"))
INTERVAL = float(os.environ.get("LOAD_INTERVAL", "0.1"))
TIMEOUT = float(os.environ.get("LOAD_TIMEOUT", "10"))
PROBE_INTERVAL = float(os.environ.get("PROBE_INTERVAL", "0.1"))
PROBE_TIMEOUT = float(os.environ.get("PROBE_TIMEOUT", "0.3"))
REPORT = os.environ["LOAD_REPORT"]

# The balancers' certificate is self-signed (nginx_tls_mode: selfsigned) and NGINX's TLS
# server is the default one: the test is about who answers, not about the chain or SNI.
TLS = ssl.create_default_context()
TLS.check_hostname = False
TLS.verify_mode = ssl.CERT_NONE

deadline = time.time() + SECONDS
requests, probes = [], []
lock = threading.Lock()


def get(path, timeout):
    conn = http.client.HTTPSConnection(ADDRESS, 443, timeout=timeout, context=TLS)
    try:
        conn.request("GET", path, headers={"Host": SERVER_NAME, "Connection": "close"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def load(worker):
    n = 0
    while time.time() < deadline:
        n += 1
        started = time.time()
        try:
            status = get(f"/api/ha-balancer/{worker}-{n}", TIMEOUT)
            record = [started, time.time(), 200 <= status < 300, f"HTTP {status}", worker]
        except (OSError, http.client.HTTPException) as exc:
            record = [started, time.time(), False, f"{type(exc).__name__}: {exc}"[:200], worker]
        with lock:
            requests.append(record)
        time.sleep(INTERVAL)


def probe():
    while time.time() < deadline:
        started = time.time()
        try:
            ok = 200 <= get("/api/ha-balancer/probe", PROBE_TIMEOUT) < 300
        except (OSError, http.client.HTTPException):
            ok = False
        with lock:
            probes.append([started, time.time(), ok])
        time.sleep(PROBE_INTERVAL)


workers = [threading.Thread(target=load, args=(i,)) for i in range(THREADS)]
workers.append(threading.Thread(target=probe))
for worker in workers:
    worker.start()
for worker in workers:
    worker.join()
with open(REPORT + ".tmp", "w") as report:
    json.dump({"threads": THREADS, "requests": requests, "probes": probes}, report)
os.rename(REPORT + ".tmp", REPORT)
