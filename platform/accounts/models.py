from django.contrib.auth.models import AbstractUser


class User(AbstractUser):
    """The platform's user. Roles are the groups annotator, reviewer and admin (accounts.roles)."""

    class Meta(AbstractUser.Meta):
        permissions = [("view_overview", "Lands on the overview: projects, ingest and PACS sources")]
