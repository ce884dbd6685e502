"""PACS passwords at rest: Fernet tokens (AES-128-CBC + HMAC-SHA256, from `cryptography`).

The keys come from the settings (``PACS_CREDENTIALS_KEYS``): the secrets file that deploy/run.sh
writes, the environment, or a file a secrets backend renders (Docker/Kubernetes secrets, a Vault
agent: ``PACS_CREDENTIALS_KEY_FILE``). The first key encrypts; every key decrypts, so a key is
rotated by putting the new one first and running ``manage.py pacs_credentials_rotate``.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

from common.exceptions import ApplicationError

HOW_TO_MAKE_A_KEY = (
    "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
)


class CredentialsKeyError(ApplicationError):
    """No usable key, or a stored password that none of the keys opens."""


def _fernet() -> MultiFernet:
    keys = list(getattr(settings, "PACS_CREDENTIALS_KEYS", []) or [])
    if not keys:
        raise CredentialsKeyError(
            "PACS passwords are stored encrypted, and no key is set: put PACS_CREDENTIALS_KEY in "
            f"var/secrets.env (deploy/run.sh adds one) or the environment; make one with {HOW_TO_MAKE_A_KEY}"
        )
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError as exc:
        raise CredentialsKeyError(
            f"PACS_CREDENTIALS_KEY holds a value that is not a Fernet key ({exc}); make one with "
            f"{HOW_TO_MAKE_A_KEY}"
        ) from None


def password_encrypt(password: str) -> str:
    """The token stored for ``password``; an empty password stays empty (no key needed)."""
    return _fernet().encrypt(password.encode()).decode() if password else ""


def password_decrypt(token: str, *, source_name: str = "") -> str:
    """The password a stored token holds. Raises CredentialsKeyError when no configured key opens it."""
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise _unreadable(source_name) from None


def token_rotate(token: str, *, source_name: str = "") -> str:
    """The token re-encrypted with the first key (it may have been made with an older one)."""
    if not token:
        return ""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise _unreadable(source_name) from None


def _unreadable(source_name: str) -> CredentialsKeyError:
    return CredentialsKeyError(
        f"The stored password of PACS source '{source_name}' cannot be decrypted with the configured "
        "PACS_CREDENTIALS_KEY: restore the key it was saved with (keep the old key after the new one "
        "while rotating), or enter the password again in the admin."
    )
