"""ML core of the annotation platform: models, inference, uncertainty, adaptation and imaging I/O.

Plain Python on torch/MONAI/pydicom; it never imports Django, so Celery workers, CLIs and
tests call the same functions with arrays and file paths.
"""
