import time

from django.core.management.base import BaseCommand, CommandError

from common.exceptions import ApplicationError
from learning.management.commands._shared import add_project_argument, dumps, project_get, user_get
from learning.models import Job
from learning.selectors import adaptation_plan
from learning.services import adaptation_start, sam_adaptation_start


class Command(BaseCommand):
    help = (
        "Start an adaptation round of a project's model (queue train), or join the one already queued or "
        "running; prints the job as JSON with the round's plan (what it trains, and whether its model can be "
        "judged on the validation split). With --wait, follows it to the end (exit 1 if it fails)."
    )

    def add_arguments(self, parser):
        add_project_argument(parser)
        parser.add_argument(
            "--model",
            default="native3d",
            choices=["native3d", "litemedsam"],
            help="the network to adapt (litemedsam: its mask decoder, judged against the LiteMedSAM that "
            "answers the project's boxes and clicks now)",
        )
        parser.add_argument("--method", default="", help="PEFT method (default: the project's)")
        parser.add_argument("--base-checkpoint", default="", help="start from this native 3D checkpoint")
        parser.add_argument("--wait", action="store_true", help="wait until the job has finished")

    def handle(self, *args, **options):
        project = project_get(options["project"])
        if options["model"] == "litemedsam":
            if options["method"] or options["base_checkpoint"]:
                raise CommandError(
                    "--method and --base-checkpoint are for the native net (LiteMedSAM: decoder)"
                )
            job, created = sam_adaptation_start(
                project=project, user=user_get(options["username"]), trigger="command"
            )
            return self._report(job, created, "adapts LiteMedSAM's mask decoder", options["wait"])
        try:
            plan = adaptation_plan(
                project=project, method=options["method"], base_checkpoint=options["base_checkpoint"]
            )
            job, created = adaptation_start(
                project=project,
                user=user_get(options["username"]),
                method=options["method"],
                base_checkpoint=options["base_checkpoint"],
                trigger="command",
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from None
        # what a round started now does, and whether it can be judged
        return self._report(job, created, plan.summary, options["wait"])

    def _report(self, job: Job, created: bool, plan: str, wait: bool) -> None:
        if wait:
            while not job.finished:
                time.sleep(2)
                job.refresh_from_db()
        self.stdout.write(
            dumps(
                {
                    "job": job.id,
                    "created": created,
                    "plan": plan,
                    "state": job.state,
                    "progress": job.progress,
                    "result": job.result,
                    "error": job.error,
                }
            )
        )
        if job.state == Job.State.FAILED:
            raise CommandError(f"job {job.id} failed: {job.error}")
