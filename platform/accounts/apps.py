from django.apps import AppConfig
from django.db.models.signals import post_migrate


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self) -> None:
        # Permissions exist only after migrate has run; the roles need them.
        post_migrate.connect(_roles_ensure, sender=self)


def _roles_ensure(**kwargs) -> None:
    from accounts.services import roles_ensure

    roles_ensure()
