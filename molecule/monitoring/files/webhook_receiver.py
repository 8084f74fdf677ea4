#!/usr/bin/env python3
"""Test only (molecule/monitoring): a webhook receiver standing in for a chat relay or a
pager. Each POST body (Alertmanager's JSON) is appended, as one line, to a file the tests
read; anything but JSON is refused with 400, as a real receiver would."""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=9095)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                document = json.loads(body)
            except ValueError:
                self.send_error(400, "not JSON")
                return
            with open(args.output, "a", encoding="utf-8") as log:
                log.write(json.dumps({"path": self.path, "body": document}) + "\n")
            self.send_response(200)
            self.end_headers()

    ThreadingHTTPServer((args.listen, args.port), Receiver).serve_forever()


if __name__ == "__main__":
    main()
