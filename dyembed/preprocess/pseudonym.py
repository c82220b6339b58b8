"""Keyed pseudonyms for user ids (`dyembed preprocess --hash-user-ids SALT`).

Every raw user id is replaced at read time, before anything is written, by

    pseudonym(id) = "u_" + hex(HMAC-SHA256(key = salt, msg = trimmed id as UTF-8))[:20]

i.e. 80 bits of a keyed hash. Without the salt the mapping can be neither recomputed nor inverted
(beyond guessing the salt), with it the same raw id always gives the same pseudonym, so appended
logs keep their users. Two distinct ids collide with probability ≈ n² / 2^81 for n users
(birthday bound): 1e6 users → 4e-13, 1e7 → 4e-11, 1e9 → 4e-7. A collision would merge two users.

The salt itself is never written. The manifest keeps only a slow keyed fingerprint of it
(`salt_check`: PBKDF2-HMAC-SHA256, 200,000 iterations, a fixed label) so a later `--append` /
`dyembed update` can tell whether it was given the same salt; being slow, it does not make
guessing the salt from the manifest cheaper than guessing it from users.parquet.

Caveat (documented in data/README.md): ids that are easy to enumerate (numbers, e-mails) are only
as private as the salt is secret — anyone holding the salt can hash candidates and match them.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from dyembed.errors import ConfigError

SALT_ENV = "DYEMBED_USER_ID_SALT"
PREFIX = "u_"
HEX_CHARS = 20  # 80 bits
MIN_SALT_CHARS = 16
SCHEME = "hmac-sha256, 'u_' + first 20 hex chars"
CHECK_LABEL = "dyembed user-id salt check v1"
CHECK_ITERATIONS = 200_000
HOW = "pass the same salt with --hash-user-ids SALT or the environment variable " + SALT_ENV


def salt_from(flag: str | None, environ: Mapping[str, str]) -> str | None:
    """The salt to use: the `--hash-user-ids` value, else $DYEMBED_USER_ID_SALT, else None.

    An empty value is an error rather than "no hashing": a cron line whose `$(cat saltfile)`
    failed must not silently write raw ids.
    """
    if flag is not None:
        where, salt = "--hash-user-ids", flag
    elif SALT_ENV in environ:
        where, salt = SALT_ENV, environ[SALT_ENV]
    else:
        return None
    if not salt:
        raise ConfigError(f"{where} is empty; give a secret salt of at least {MIN_SALT_CHARS} characters "
                          "(e.g. the output of `openssl rand -hex 32`)")
    if len(salt) < MIN_SALT_CHARS:
        raise ConfigError(f"{where} is too short ({len(salt)} characters): a salt needs at least {MIN_SALT_CHARS} "
                          "to resist guessing (e.g. the output of `openssl rand -hex 32`)")
    return salt


class Pseudonymiser:
    """Maps raw user ids to keyed pseudonyms; `array` does a whole chunk touching each distinct id once."""

    def __init__(self, salt: str):
        self._base = hmac.new(salt.encode("utf-8"), digestmod=hashlib.sha256)

    def _hash(self, trimmed_id: str) -> str:
        h = self._base.copy()  # the keyed inner/outer state is computed once, not per id
        h.update(trimmed_id.encode("utf-8"))
        return PREFIX + h.hexdigest()[:HEX_CHARS]

    def one(self, user_id: str) -> str:
        """The pseudonym of one raw id (trimmed as preprocess trims it)."""
        return self.array(pa.array([user_id], pa.string()))[0].as_py()

    def array(self, arr: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Trimmed, hashed string array; nulls and empty (or blank) ids stay null / "" (→ missing_user)."""
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        trimmed = pc.utf8_trim_whitespace(pc.cast(arr, pa.string()))
        enc = pc.dictionary_encode(trimmed)
        hashed = [self._hash(v) if v else v for v in enc.dictionary.to_pylist()]
        return pc.take(pa.array(hashed, pa.string()), enc.indices)

    def table(self, table: pa.Table, column: str = "user") -> pa.Table:
        if column not in table.column_names:
            return table
        i = table.column_names.index(column)
        return table.set_column(i, pa.field(column, pa.string()), self.array(table.column(i)))


def salt_check(salt: str, *, iterations: int = CHECK_ITERATIONS, label: str = CHECK_LABEL) -> dict[str, Any]:
    """A slow keyed fingerprint of the salt (safe to store; the salt is not)."""
    digest = hashlib.pbkdf2_hmac("sha256", salt.encode("utf-8"), label.encode("utf-8"), iterations)
    return {"kdf": "pbkdf2_hmac_sha256", "iterations": iterations, "label": label, "digest": digest.hex()}


def manifest_record(salt: str | None) -> dict[str, Any]:
    """The manifest's `user_ids` entry of a full run."""
    if salt is None:
        return {"hashed": False}
    return {"hashed": True, "scheme": SCHEME, "salt_check": salt_check(salt)}


def verify_salt(record: Mapping[str, Any] | None, salt: str | None, workdir: str | Path, *,
                salt_required: bool = True) -> bool:
    """Check `salt` against a work dir's manifest `user_ids` record; return whether ids are hashed.

    ConfigError (exit 2): hashed work dir without a salt (unless not `salt_required`: readers such
    as recommend), a different salt, or a salt for a work dir whose ids are not hashed (mixing raw
    and hashed ids would split every user in two).
    """
    hashed = bool(record and record.get("hashed"))
    if not hashed:
        if salt is not None:
            raise ConfigError(f"{workdir} was preprocessed without --hash-user-ids (its user ids are raw), so a salt "
                              f"cannot be applied: drop --hash-user-ids / unset {SALT_ENV}, or preprocess from scratch with it")
        return False
    if salt is None:
        if not salt_required:
            return True
        raise ConfigError(f"{workdir} has hashed user ids: {HOW}")
    check = record.get("salt_check") or {}
    try:
        expected = salt_check(salt, iterations=int(check["iterations"]), label=str(check["label"]))["digest"]
        stored = str(check["digest"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{workdir}/manifest.json has no usable user_ids.salt_check; preprocess from scratch") from None
    if not hmac.compare_digest(expected, stored):
        raise ConfigError(f"the user-id salt does not match the one {workdir} was preprocessed with ({HOW})")
    return True


def workdir_record(workdir: str | Path) -> dict[str, Any] | None:
    """The `user_ids` record of a work dir's manifest.json (None: no manifest or an older one)."""
    from dyembed.artefacts import read_json

    path = Path(workdir) / "manifest.json"
    if not path.is_file():
        return None
    manifest = read_json(path, "manifest")
    record = manifest.get("user_ids") if isinstance(manifest, dict) else None
    return record if isinstance(record, dict) else None


def check_workdir_salt(workdir: str | Path, salt: str | None, *, salt_required: bool = True) -> bool:
    """verify_salt against `workdir`'s manifest; True when its user ids are hashed."""
    return verify_salt(workdir_record(workdir), salt, workdir, salt_required=salt_required)


def lookup_ids(requested: Iterable[str], known: Mapping[str, int], pseudonymiser: Pseudonymiser | None) -> list[str]:
    """Ids as the work dir stores them: with a pseudonymiser (salt given), an id that is not already
    a stored pseudonym is taken to be a raw id and hashed; without one, ids are used as given."""
    if pseudonymiser is None:
        return list(requested)
    return [uid if uid in known else pseudonymiser.one(uid) for uid in requested]
