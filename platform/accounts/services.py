import secrets

from django.contrib.auth.models import Group, Permission
from django.db import transaction

from accounts.models import User
from accounts.roles import ROLE_PERMISSIONS, Role


@transaction.atomic
def roles_ensure() -> None:
    """Create the role groups and set exactly their permissions (idempotent; runs after migrate)."""
    for role, names in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role.value)
        perms = []
        for name in names:
            app_label, codename = name.split(".")
            perm = Permission.objects.filter(content_type__app_label=app_label, codename=codename).first()
            if perm is not None:  # an app's permissions appear once its own migrations ran
                perms.append(perm)
        group.permissions.set(perms)


@transaction.atomic
def user_create(
    *, username: str, role: Role, password: str | None = None, email: str = ""
) -> tuple[User, str]:
    """Create a user in ``role``; returns the user and the password (generated when not given).

    An admin is also Django staff (the admin site); only the admin role is a superuser.
    """
    password = password or secrets.token_urlsafe(12)
    user = User.objects.create_user(username=username, password=password, email=email)
    user.groups.add(Group.objects.get(name=role.value))
    if role is Role.ADMIN:
        user.is_staff = True
        user.is_superuser = True
        user.save(update_fields=["is_staff", "is_superuser"])
    return user, password


def demo_users_ensure() -> list[tuple[str, str, str]]:
    """One user per role named after it; returns (username, role, password) for the ones created now.

    Existing users keep their passwords, so the credentials are shown only when they are made.
    """
    created = []
    for role in Role:
        if not User.objects.filter(username=role.value).exists():
            _, password = user_create(username=role.value, role=role)
            created.append((role.value, role.value, password))
    return created
