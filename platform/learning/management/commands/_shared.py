"""What the learning commands share: finding the project and the version, turning a user's error into a
CommandError, and the admin account actions are recorded under."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError

from accounts.models import User
from annotation.models import Project
from common.exceptions import ApplicationError
from learning.models import ModelVersion


def add_project_argument(parser) -> None:
    parser.add_argument("--project", required=True, help="project id or exact name")
    parser.add_argument(
        "--as", dest="username", default="", help="the admin account recorded in the audit log"
    )


def project_get(value: str) -> Project:
    project = (
        Project.objects.filter(pk=int(value)).first() if value.isdigit() else None
    ) or Project.objects.filter(name=value).first()
    if project is None:
        names = ", ".join(Project.objects.values_list("name", flat=True)[:10]) or "none"
        raise CommandError(f"No project {value!r} (projects: {names}).")
    return project


def version_get(project: Project, number: int) -> ModelVersion:
    version = ModelVersion.objects.filter(project=project, number=number).first()
    if version is None:
        numbers = list(ModelVersion.objects.filter(project=project).values_list("number", flat=True))
        raise CommandError(f"Project '{project.name}' has no model v{number} (it has {numbers or 'none'}).")
    return version


def user_get(username: str) -> User | None:
    if not username:
        return None
    user = User.objects.filter(username=username).first()
    if user is None or not user.has_perm("learning.manage_models"):
        raise CommandError(f"{username!r} is not an account allowed to manage models.")
    return user


def dumps(payload: dict) -> str:
    return json.dumps(payload, indent=2, default=str)


class VersionCommand(BaseCommand):
    """A command that applies a registry action (``action``: promote, roll back) to one model version."""

    action = None  # a learning.services function taking version= and user=

    def add_arguments(self, parser):
        add_project_argument(parser)
        parser.add_argument("--model", type=int, required=True, help="the model version number (v<N>)")

    def handle(self, *args, **options):
        project = project_get(options["project"])
        version = version_get(project, options["model"])
        try:
            version = type(self).action(version=version, user=user_get(options["username"]))
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(dumps({"active": version.number, "validation_dice": version.validation_dice}))
