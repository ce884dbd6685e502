from django.core.management.base import BaseCommand

from accounts.services import demo_users_ensure


class Command(BaseCommand):
    help = "Create the demo users admin, reviewer and annotator; prints passwords only when it creates them."

    def handle(self, *args, **options):
        created = demo_users_ensure()
        if not created:
            self.stdout.write("Demo users exist already (passwords were shown when they were created).")
            return
        self.stdout.write(self.style.SUCCESS("Demo users created; these passwords are shown only once:"))
        for username, role, password in created:
            self.stdout.write(f"  {role:<10} username={username:<10} password={password}")
