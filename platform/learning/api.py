"""The JSON API of the learning loop's jobs (/api/projects/<id>/jobs/, /api/jobs/<id>/): what the
dashboard's live updates (static/learning/dashboard.js) and scripts poll. One view per operation on
common.api's base: session auth, a Django permission checked on every request."""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.response import Response

from annotation.selectors import project_get
from common.api import Api, get_or_404
from learning import selectors

JOBS_LISTED = 20


class JobSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    project = serializers.IntegerField(source="project_id")
    kind = serializers.CharField()
    state = serializers.CharField()
    finished = serializers.BooleanField()
    progress = serializers.FloatField(help_text="0-100")
    log = serializers.CharField(help_text="The last lines of the job's log")
    error = serializers.CharField()
    cancel_requested = serializers.BooleanField()
    attempts = serializers.IntegerField()
    params = serializers.JSONField()
    result = serializers.JSONField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class ProjectJobListApi(Api):
    """The project's latest jobs, newest first."""

    permission = "learning.view_job"

    class OutputSerializer(serializers.Serializer):
        results = JobSerializer(many=True)

    def get(self, request, project_id: int):
        project = get_or_404(project_get, project_id=project_id)
        jobs = selectors.jobs_recent(project=project, limit=JOBS_LISTED)
        return Response(self.OutputSerializer({"results": jobs}).data)


class JobDetailApi(Api):
    permission = "learning.view_job"
    OutputSerializer = JobSerializer

    def get(self, request, job_id: int):
        job = get_or_404(selectors.job_get, job_id=job_id)
        return Response(JobSerializer(job).data)
