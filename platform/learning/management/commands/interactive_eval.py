"""``manage.py interactive_eval --project P -- <interactive-eval options>``: the simulated annotator of
``python -m ml_worker interactive-eval`` on what the platform routes the project's boxes and clicks to
(its active model version, or LiteMedSAM before one): the "--model active" of the issue."""

from __future__ import annotations

import argparse

from django.core.management.base import BaseCommand, CommandError

from common.media import media_path
from learning.management.commands._shared import project_get
from learning.selectors import interactive_route


class Command(BaseCommand):
    help = (
        "Dice per click, NoC and latencies of the model the platform routes a project's clicks to (its "
        "active version, else LiteMedSAM); the other options go to `python -m ml_worker interactive-eval`."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="project id or exact name")
        parser.add_argument("rest", nargs=argparse.REMAINDER, help="interactive-eval options (--images ...)")

    def handle(self, *args, **options):
        from ml_worker.cli import main

        project = project_get(options["project"])
        rest = [a for a in options["rest"] if a != "--"]
        if any(a in ("--model", "--checkpoint") for a in rest):
            raise CommandError("--model and --checkpoint come from the project's routing: leave them out")
        route = interactive_route(project=project)
        if route is None:
            self.stderr.write(f"'{project.name}' has no active model: LiteMedSAM answers its clicks")
            argv = ["interactive-eval", "--model", "litemedsam", *rest]
        elif route.model != "native3d":
            raise CommandError(
                f"'{project.name}' routes clicks to its LiteMedSAM v{route.number}: interactive-eval scores "
                "the bundled LiteMedSAM only; its validation curve is on the version's page (gate)"
            )
        else:
            self.stderr.write(f"'{project.name}' routes clicks to its model v{route.number}")
            argv = ["interactive-eval", "--model", "native3d", "--checkpoint", str(media_path(route.weights))]
            argv += ["--modality", route.modality, *rest]
        code = main(argv)
        if code:
            raise CommandError(f"interactive-eval failed (exit {code})")
