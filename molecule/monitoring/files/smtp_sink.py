#!/usr/bin/env python3
"""Test only (molecule/monitoring): a smart host standing in for the mail relay. It takes
mail only after SMTP AUTH with the user and password it is given (so a message proves
Alertmanager read its password file) and appends each message, as one JSON line, to a file
the tests read. Plain text on loopback, as a local relay without TLS would be."""

import argparse
import asyncio
import email
import email.policy
import json
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    with open(args.password_file, "rb") as secret:
        password = secret.read().strip()

    def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
        accepted = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == args.user.encode()
            and auth_data.password == password
        )
        return AuthResult(success=accepted)

    def append(line: str) -> None:
        with open(args.output, "a", encoding="utf-8") as log:
            log.write(line)

    class Sink:
        async def handle_DATA(self, server, session, envelope) -> str:
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            record = {
                "authenticated": session.authenticated,
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "subject": str(message["Subject"]),
            }
            await asyncio.to_thread(append, json.dumps(record) + "\n")
            return "250 Message accepted"

    controller = Controller(
        Sink(),
        hostname=args.listen,
        port=args.port,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=False,
        # aiosmtpd's LOGIN challenge is "User Name", which Alertmanager's LOGIN client does
        # not take (it wants "Username:", as Postfix and Dovecot send): PLAIN only.
        auth_exclude_mechanism=["LOGIN"],
    )
    controller.start()
    threading.Event().wait()


if __name__ == "__main__":
    main()
