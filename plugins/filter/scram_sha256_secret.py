# Copyright: Koinonia platform team
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SCRAM-SHA-256 password secrets, as PostgreSQL stores them in pg_authid.rolpassword.

The salt is derived from a deployment secret (the *salt seed*) and the role name, so the
same inputs always give the same secret: a second run changes nothing, and the secret
the postgresql role stores on the server is byte-for-byte the one the pgbouncer role
writes to userlist.txt. Identical secrets are what PgBouncer's SCRAM pass-through needs
to log in to PostgreSQL with the client's proof: no plaintext password on either host.
The salt does not depend on the password, so it gives no shortcut to a password guess.
"""

import base64
import hashlib
import hmac
import stringprep
import unicodedata

from ansible.errors import AnsibleFilterError
from ansible.module_utils.common.text.converters import to_bytes, to_text

DOCUMENTATION = r"""
name: scram_sha256_secret
short_description: Compute a PostgreSQL SCRAM-SHA-256 secret from a password
description:
  - Returns C(SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>), the format of
    PostgreSQL's C(pg_authid.rolpassword) and of a PgBouncer C(userlist.txt) SCRAM entry.
  - The 16-byte salt is HMAC-SHA-256(salt_seed, "koinonia-scram-salt" NUL username), so the
    result is deterministic (idempotent) yet differs per role and per deployment.
options:
  _input:
    description: The plaintext password.
    type: string
    required: true
  username:
    description: The role (user) name the secret is for.
    type: string
    required: true
  salt_seed:
    description: A per-deployment secret (keep it in ansible-vault); changing it changes every salt.
    type: string
    required: true
  iterations:
    description: PBKDF2 iteration count (PostgreSQL's default is 4096).
    type: int
    default: 4096
"""

EXAMPLES = r"""
- name: Show the secret PostgreSQL would store (never do this with a real password)
  ansible.builtin.debug:
    msg: >-
      {{ 'app-password' | koinonia.platform.scram_sha256_secret('koinonia', vault_salt_seed) }}
"""

RETURN = r"""
_value:
  description: The SCRAM-SHA-256 secret.
  type: string
"""

SALT_LABEL = b"koinonia-scram-salt\x00"


def _saslprep(password):
    """RFC 4013 SASLprep as PostgreSQL applies it; like PostgreSQL, fall back to the raw bytes."""
    if all(0x20 <= ord(ch) < 0x7F for ch in password):
        return to_bytes(password)
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch
        for ch in password
        if not stringprep.in_table_b1(ch)
    )
    normalized = unicodedata.normalize("NFKC", mapped)
    prohibited = (
        stringprep.in_table_c12,
        stringprep.in_table_c21_c22,
        stringprep.in_table_c3,
        stringprep.in_table_c4,
        stringprep.in_table_c5,
        stringprep.in_table_c6,
        stringprep.in_table_c7,
        stringprep.in_table_c8,
        stringprep.in_table_c9,
        stringprep.in_table_a1,
    )
    if not normalized or any(check(ch) for ch in normalized for check in prohibited):
        return to_bytes(password)
    return to_bytes(normalized)


def scram_sha256_secret(password, username, salt_seed, iterations=4096):
    if password is None or to_text(password) == "":
        raise AnsibleFilterError("scram_sha256_secret: the password is empty")
    if not username:
        raise AnsibleFilterError("scram_sha256_secret: a username is required")
    if salt_seed is None:
        raise AnsibleFilterError("scram_sha256_secret: a salt_seed is required")
    try:
        iterations = int(iterations)
    except (TypeError, ValueError) as err:
        raise AnsibleFilterError("scram_sha256_secret: iterations must be an integer") from err
    if iterations < 4096:
        raise AnsibleFilterError("scram_sha256_secret: iterations must be at least 4096")

    label = SALT_LABEL + to_bytes(username)
    salt = hmac.new(to_bytes(salt_seed), label, hashlib.sha256).digest()[:16]
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(to_text(password)), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw):
        return to_text(base64.b64encode(raw))

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class FilterModule:
    """Koinonia password filters."""

    def filters(self):
        return {"scram_sha256_secret": scram_sha256_secret}
