"""The learning loop's addresses: the dashboard's pages under /projects/<id>/learning/ (``urlpatterns``,
included there by annotator.urls) and its JSON API under /api/ (``api_urlpatterns``)."""

from django.urls import path

from learning import api, views

urlpatterns = [
    path("", views.dashboard, name="learning-dashboard"),
    path("curve.png", views.curve_png, name="learning-curve"),
    path("effort.png", views.effort_png, name="learning-effort"),
    path("effort-simulated.png", views.effort_simulated_png, name="learning-effort-simulated"),
    path("retrain/", views.adaptation_start, name="learning-retrain"),
    path("intake/", views.intake_rule_set, name="learning-intake"),
    path("versions/<int:version_id>/promote/", views.version_promote, name="learning-version-promote"),
    path("versions/<int:version_id>/rollback/", views.version_rollback, name="learning-version-rollback"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="learning-job-cancel"),
]

api_urlpatterns = [
    path("projects/<int:project_id>/jobs/", api.ProjectJobListApi.as_view(), name="api-project-jobs"),
    path("jobs/<int:job_id>/", api.JobDetailApi.as_view(), name="api-job"),
]
