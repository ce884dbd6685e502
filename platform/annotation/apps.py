from django.apps import AppConfig


class AnnotationConfig(AppConfig):
    name = "annotation"

    def ready(self) -> None:
        from annotation import tasks  # noqa: F401  connects the tasks to annotation.dispatch
