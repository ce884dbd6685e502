"""/api/...: the JSON API (annotation.api) and its OpenAPI schema at /api/schema/."""

from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONOpenAPIRenderer
from rest_framework.schemas import get_schema_view

from annotation import api

urlpatterns = [
    path("projects/", api.ProjectListApi.as_view(), name="api-projects"),
    path("projects/create/", api.ProjectCreateApi.as_view(), name="api-project-create"),
    path("projects/<int:project_id>/", api.ProjectDetailApi.as_view(), name="api-project"),
    path(
        "projects/<int:project_id>/volumes/add/",
        api.ProjectVolumesAddApi.as_view(),
        name="api-project-volumes-add",
    ),
    path(
        "projects/<int:project_id>/double-reading/",
        api.ProjectDoubleReadingApi.as_view(),
        name="api-project-double-reading",
    ),
    path("projects/<int:project_id>/worklist/", api.WorklistApi.as_view(), name="api-worklist"),
    path("projects/<int:project_id>/next/", api.NextCaseApi.as_view(), name="api-next-case"),
    path("projects/<int:project_id>/effort/", api.EffortSummaryApi.as_view(), name="api-effort"),
    path("cases/<int:case_id>/", api.CaseDetailApi.as_view(), name="api-case"),
    path("cases/<int:case_id>/take/", api.CaseTakeApi.as_view(), name="api-case-take"),
    path("cases/<int:case_id>/heartbeat/", api.CaseHeartbeatApi.as_view(), name="api-case-heartbeat"),
    path("cases/<int:case_id>/release/", api.CaseReleaseApi.as_view(), name="api-case-release"),
    path("cases/<int:case_id>/image/", api.CaseImageApi.as_view(), name="api-case-image"),
    path("cases/<int:case_id>/versions/", api.VersionListApi.as_view(), name="api-versions"),
    path("cases/<int:case_id>/versions/create/", api.VersionCreateApi.as_view(), name="api-version-create"),
    path("cases/<int:case_id>/interactive/", api.CaseInteractiveApi.as_view(), name="api-case-interactive"),
    path("cases/<int:case_id>/submit/", api.CaseSubmitApi.as_view(), name="api-case-submit"),
    path("cases/<int:case_id>/review/", api.CaseReviewApi.as_view(), name="api-case-review"),
    path("cases/<int:case_id>/readings/", api.CaseReadingsApi.as_view(), name="api-case-readings"),
    path("cases/<int:case_id>/adjudicate/", api.CaseAdjudicateApi.as_view(), name="api-case-adjudicate"),
    path("versions/<int:version_id>/mask/", api.VersionMaskApi.as_view(), name="api-version-mask"),
    path("audit/", api.AuditListApi.as_view(), name="api-audit"),
    path(
        "schema/",
        get_schema_view(
            title="Annotator API",
            version="1",
            public=True,
            permission_classes=[AllowAny],
            renderer_classes=[JSONOpenAPIRenderer],
        ),
        name="api-schema",
    ),
]
