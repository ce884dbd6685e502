from learning.management.commands._shared import VersionCommand
from learning.services import model_rollback


class Command(VersionCommand):
    help = "Make an earlier model version of a project active again (the current one retires)."
    action = staticmethod(model_rollback)
