from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self) -> None:
        # Each app's permissions appear in its own post_migrate; the roles span apps, so they are
        # set after every app's (idempotent, a few queries).
        post_migrate.connect(_roles_ensure, dispatch_uid="accounts.roles_ensure")


def _roles_ensure(**kwargs) -> None:
    from accounts.services import roles_ensure

    roles_ensure()
