from django.core.management.base import BaseCommand

from annotation.services import demo_project_ensure


class Command(BaseCommand):
    help = "Create the demo project over the hippocampus volumes loaded by demo_load (idempotent)."

    def handle(self, *args, **options):
        project, added = demo_project_ensure()
        total = project.cases.count()
        self.stdout.write(f"Project '{project.name}': {added} volume(s) added, {total} in all.")
