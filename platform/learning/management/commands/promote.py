from learning.management.commands._shared import VersionCommand
from learning.services import model_promote


class Command(VersionCommand):
    help = "Make a candidate model the project's active one (only if it passed the validation gate)."
    action = staticmethod(model_promote)
