from django.apps import AppConfig


class LearningConfig(AppConfig):
    name = "learning"
    verbose_name = "Learning loop: model versions and jobs"

    def ready(self) -> None:
        from learning import tasks  # noqa: F401  connects the tasks to learning.dispatch
