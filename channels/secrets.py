"""Provider secrets: from a systemd credential or an environment variable, never from
config.toml. config.toml names *where* the secret is (``token_env = "REMIND_SMS_TOKEN"`` or
``token_credential = "sms-token"``); this module reads it.

A systemd credential (``LoadCredential=sms-token:/etc/remind/secrets/sms-token`` in the
unit) appears as the file ``$CREDENTIALS_DIRECTORY/sms-token``; it wins over the
environment because it is the safer of the two (not visible in ``/proc/PID/environ``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from scheduler.errors import ConfigError

__all__ = ["read_secret"]


def read_secret(
    what: str,
    *,
    env: str | None = None,
    credential: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """The secret named by ``credential`` (a systemd credential) or ``env`` (a variable),
    stripped of surrounding whitespace. ``what`` names the secret in the error message.

    Raises ``ConfigError`` when neither source is configured or neither holds a value.
    """
    environ = os.environ if environ is None else environ
    if not env and not credential:
        raise ConfigError(f"{what}: set token_env or token_credential to say where the secret is")
    if credential:
        directory = environ.get("CREDENTIALS_DIRECTORY")
        if directory:
            path = Path(directory) / credential
            try:
                value = path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                value = ""
            except OSError as exc:
                raise ConfigError(f"{what}: cannot read credential {path}: {exc}") from exc
            if value:
                return value
    if env:
        value = environ.get(env, "").strip()
        if value:
            return value
    places = []
    if credential:
        places.append(f"systemd credential {credential!r} ($CREDENTIALS_DIRECTORY)")
    if env:
        places.append(f"environment variable ${env}")
    raise ConfigError(f"{what}: no secret found in {' or '.join(places)}")
