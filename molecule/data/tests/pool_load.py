"""300 concurrent clients through PgBouncer (runs on the client host, Debian's python3-psycopg2).

Every client connects, waits until all of them are connected at the same time, then runs
a few short transactions, then waits for all the others again before disconnecting.
Prints a JSON report; the exit code is 0 when it ran to the end.
"""

import json
import os
import threading

import psycopg2

CLIENTS = int(os.environ.get("POOL_CLIENTS", "300"))
TRANSACTIONS = 10
all_connected = threading.Barrier(CLIENTS, timeout=120)
all_done = threading.Barrier(CLIENTS, timeout=120)
lock = threading.Lock()
errors = []
done = []


def client():
    conn = None
    try:
        conn = psycopg2.connect(
            host=os.environ["POOL_HOST"],
            port=int(os.environ["POOL_PORT"]),
            dbname=os.environ["POOL_DB"],
            user=os.environ["POOL_USER"],
            password=os.environ["POOL_PASSWORD"],
            connect_timeout=60,
        )
        conn.autocommit = True
        all_connected.wait()
        with conn.cursor() as cur:
            for _ in range(TRANSACTIONS):
                cur.execute("SELECT pg_sleep(0.02)")
                with lock:
                    done.append(1)
        all_done.wait()
    except Exception as exc:
        with lock:
            errors.append(repr(exc))
        all_connected.abort()
        all_done.abort()
    finally:
        if conn is not None:
            conn.close()


threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()

print(
    json.dumps(
        {
            "concurrent_clients": CLIENTS if not errors else 0,
            "transactions_per_client": TRANSACTIONS,
            "transactions": len(done),
            "errors": errors,
        }
    )
)
