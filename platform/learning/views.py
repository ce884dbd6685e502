"""The admin dashboard of a project's learning loop (/projects/<id>/learning/): model versions with
promotion and rollback, "retrain now", jobs with live progress (static/learning/dashboard.js polls
learning.api), the learning curve, and operations (queues, workers, annotation effort over time).

Thin: pages read through learning.selectors; each form posts to one service, whose ApplicationError
comes back as a message on the page after the redirect."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from annotation.models import Project
from annotation.readings.selectors import reader_agreement
from annotation.selectors import project_get
from annotation.services import project_intake_rule_set
from common.exceptions import ApplicationError
from common.views import permission_required
from learning import effort, plots, selectors, services
from learning.models import Job

PERMISSION = "learning.manage_models"
JOBS_SHOWN = 20


def _project(project_id: int) -> Project:
    project = project_get(project_id=project_id)
    if project is None:
        raise Http404
    return project


@permission_required(PERMISSION)
@require_GET
def dashboard(request, project_id: int):
    project = _project(project_id)
    policy = selectors.policy_of(project=project)
    jobs = list(selectors.jobs_recent(project=project, limit=JOBS_SHOWN))
    approved = selectors.approved_case_effort(project=project)
    activations = selectors.model_activations(project=project)
    return render(
        request,
        "learning/dashboard.html",
        {
            "project": project,
            "policy": policy,
            "versions": selectors.model_version_rows(project=project),
            "jobs": jobs,
            "methods": selectors.peft_methods(),
            "approved_now": len(approved),
            "plan": selectors.adaptation_plan(project=project),
            "broker": selectors.broker_status(),
            "effort_weeks": selectors.effort_by_week(approved, activations),
            "effort_models": selectors.effort_by_model(approved, project=project),
            **_effort_in_simulation_units(approved),
            "reader_agreement": reader_agreement(project=project),
            "page_data": {
                "jobsUrl": reverse("api-project-jobs", args=[project.id]),
                "pollSeconds": 2,
                "unfinished": [job.id for job in jobs if not job.finished],
            },
        },
    )


def _effort_in_simulation_units(approved: list[selectors.ApprovedCase]) -> dict:
    """The estimated annotator minutes per case (ml_worker.effort's costs) and, with a simulation
    results file set, each simulated setting's mean over as many cases as this project has approved."""
    estimated = [effort.case_estimated_seconds(c) / 60 for c in approved]
    simulated = effort.simulated_effort()
    n = len(approved)
    return {
        "effort_costs": effort.costs_shown(),
        "estimated_minutes": sum(estimated) / n if n else None,
        "real_clicks": sum(c.clicks for c in approved) / n if n else None,
        "real_strokes": sum(c.strokes for c in approved) / n if n else None,
        "simulated": simulated,
        "simulated_rows": [
            (curve, curve.mean_of_first(min(n, len(curve.mean))) if n else None, min(n, len(curve.mean)))
            for curve in (simulated.curves if simulated else ())
        ],
    }


def _png(data: bytes) -> HttpResponse:
    response = HttpResponse(data, content_type="image/png")
    response["Cache-Control"] = "no-cache"
    return response


@permission_required(PERMISSION)
@require_GET
def curve_png(request, project_id: int):
    return _png(plots.learning_curve_png(selectors.learning_curve(project=_project(project_id))))


@permission_required(PERMISSION)
@require_GET
def effort_png(request, project_id: int):
    project = _project(project_id)
    return _png(
        plots.effort_png(
            selectors.approved_case_effort(project=project), selectors.model_activations(project=project)
        )
    )


@permission_required(PERMISSION)
@require_GET
def effort_simulated_png(request, project_id: int):
    project = _project(project_id)
    simulated = effort.simulated_effort()
    if simulated is None:
        raise Http404("no simulation results are set (EFFORT_SIMULATION_RESULTS)")
    return _png(effort.comparison_png(selectors.approved_case_effort(project=project), simulated))


def _act(request, project: Project, action: Callable[[], str]):
    """Run one service; its message (or its error) is shown on the dashboard after the redirect."""
    try:
        messages.success(request, action())
    except ApplicationError as exc:
        messages.error(request, exc.message)
    return redirect("learning-dashboard", project_id=project.id)


def _version(project: Project, version_id: int):
    version = selectors.model_version_get(project=project, version_id=version_id)
    if version is None:
        raise Http404
    return version


@permission_required(PERMISSION)
@require_POST
def adaptation_start(request, project_id: int):
    """Retrain now. A round whose model could not be judged (too few approved validation cases) starts
    only once the admin confirms it on a page that says so; one that cannot run at all does not start."""
    project = _project(project_id)
    method = request.POST.get("method", "").strip()
    try:
        plan = selectors.adaptation_plan(project=project, method=method)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("learning-dashboard", project_id=project.id)
    joining = selectors.adaptation_unfinished(project=project)
    if joining is None and plan.problem:
        messages.error(request, plan.problem)
        return redirect("learning-dashboard", project_id=project.id)
    if joining is None and not plan.judged and request.POST.get("confirm") != "1":
        return render(request, "learning/retrain_confirm.html", {"project": project, "plan": plan})

    def start() -> str:
        job, created = services.adaptation_start(
            project=project, user=request.user, method=method, trigger="admin"
        )
        if created:
            return f"Adaptation round queued as job {job.id}. {plan.summary}"
        trains = job.params.get("trains") or job.params.get("method", "")
        return (
            f"An adaptation round is {job.state} already (job {job.id}, trains {trains}): "
            "your request joined it."
        )

    return _act(request, project, start)


@permission_required(PERMISSION)
@require_POST
def intake_rule_set(request, project_id: int):
    project = _project(project_id)

    def change() -> str:
        rule = request.POST.get("series_description", "")
        added = project_intake_rule_set(project=project, series_description=rule, user=request.user)
        if not project.intake_series_description:
            return "No intake rule: new volumes join the project only when added by hand."
        return (
            f"New volumes whose series description contains '{project.intake_series_description}' join the "
            f"project; {added} ready volume{'' if added == 1 else 's'} joined now."
        )

    return _act(request, project, change)


@permission_required(PERMISSION)
@require_POST
def version_promote(request, project_id: int, version_id: int):
    project = _project(project_id)
    version = _version(project, version_id)

    def promote() -> str:
        services.model_promote(version=version, user=request.user)
        return f"Model v{version.number} is the active model now; the pool is re-scored with it."

    return _act(request, project, promote)


@permission_required(PERMISSION)
@require_POST
def version_rollback(request, project_id: int, version_id: int):
    project = _project(project_id)
    version = _version(project, version_id)

    def rollback() -> str:
        services.model_rollback(version=version, user=request.user)
        return f"Rolled back: model v{version.number} is the active model again; the pool is re-scored."

    return _act(request, project, rollback)


@permission_required(PERMISSION)
@require_POST
def job_cancel(request, project_id: int, job_id: int):
    project = _project(project_id)
    job = selectors.project_job_get(project=project, job_id=job_id)
    if job is None:
        raise Http404

    def cancel() -> str:
        job_now = services.job_cancel(job=job, user=request.user)
        if job_now.state == Job.State.CANCELLED:
            return f"Job {job.id} is cancelled."
        return f"Job {job.id} is asked to stop; it stops at its next progress report."

    return _act(request, project, cancel)
