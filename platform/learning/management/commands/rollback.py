from django.core.management.base import BaseCommand, CommandError

from common.exceptions import ApplicationError
from learning.management.commands._shared import (
    add_project_argument,
    dumps,
    project_get,
    user_get,
    version_get,
)
from learning.services import model_rollback


class Command(BaseCommand):
    help = "Make an earlier model version of a project active again (the current one retires)."

    def add_arguments(self, parser):
        add_project_argument(parser)
        parser.add_argument("--model", type=int, required=True, help="the model version number (v<N>)")

    def handle(self, *args, **options):
        project = project_get(options["project"])
        try:
            version = model_rollback(
                version=version_get(project, options["model"]), user=user_get(options["username"])
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(dumps({"active": version.number, "validation_dice": version.validation_dice}))
