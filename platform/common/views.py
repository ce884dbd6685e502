from collections.abc import Callable

from django.contrib.auth.decorators import login_required
from django.contrib.auth.decorators import permission_required as _permission_required


def permission_required(perm: str) -> Callable:
    """Anonymous -> login page; signed in without ``perm`` -> 403. Checked on every request."""

    def decorator(view: Callable) -> Callable:
        return login_required(_permission_required(perm, raise_exception=True)(view))

    return decorator
