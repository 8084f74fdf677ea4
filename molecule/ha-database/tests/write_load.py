"""A bounded write load through HAProxy's write port (runs on the client host, Debian's psycopg2).

One client, like an app worker: a connection kept open, one INSERT per attempt (autocommit),
reconnecting after any error. Runs for LOAD_SECONDS at most, an attempt every LOAD_INTERVAL
seconds. Writes a JSON report to LOAD_REPORT: every attempt's start and end times, whether
it was acknowledged, and the sequence numbers acknowledged (to look for lost writes).
"""

import json
import os
import time

import psycopg2

SECONDS = float(os.environ.get("LOAD_SECONDS", "30"))
INTERVAL = float(os.environ.get("LOAD_INTERVAL", "0.1"))
REPORT = os.environ["LOAD_REPORT"]
RUN = os.environ["LOAD_RUN"]

attempts = []
acknowledged = []
conn = None
deadline = time.time() + SECONDS
seq = 0
while time.time() < deadline:
    seq += 1
    started = time.time()
    try:
        if conn is None:
            conn = psycopg2.connect(
                host="127.0.0.1",
                port=int(os.environ.get("LOAD_PORT", "5000")),
                dbname=os.environ["LOAD_DB"],
                user=os.environ["LOAD_USER"],
                password=os.environ["LOAD_PASSWORD"],
                connect_timeout=2,
            )
            conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("INSERT INTO ha_writes (run, seq) VALUES (%s, %s)", (RUN, seq))
        acknowledged.append(seq)
        attempts.append([started, time.time(), True])
    except psycopg2.Error as exc:
        attempts.append([started, time.time(), False, str(exc).strip()[:200]])
        if conn is not None:
            conn.close()
            conn = None
    time.sleep(INTERVAL)

with open(REPORT + ".tmp", "w") as report:
    json.dump({"attempts": attempts, "acknowledged": acknowledged}, report)
os.rename(REPORT + ".tmp", REPORT)
