"""The JSON API of annotation work (/api/...): one view per operation on common.api's base (session auth
with CSRF, a Django permission per view, granted per role in accounts.roles, checked on every request).

Errors come back as ``{"message": ..., "extra": {...}}`` (annotation.errors.api_exception_handler).
How label maps travel is in annotation.masks.

The model-assisted endpoint, ``CaseInteractiveApi``, sends ids through the Celery queue ``interactive``
to a warm worker (annotation.interactive) and waits for its answer file.
"""

from __future__ import annotations

import base64

import numpy as np
from django.conf import settings
from django.http import FileResponse, HttpResponseNotModified
from rest_framework import serializers, status
from rest_framework.response import Response

from annotation import selectors, services
from annotation.errors import HiddenReadingError, PayloadTooLargeError
from annotation.masks import delta_parse, labelmap_decode, volume_gzip_path
from annotation.models import Adjudication, Case, MaskVersion, Review
from annotation.readings import selectors as reading_selectors
from annotation.readings.selectors import masks_hidden
from annotation.readings.services import MERGE_SOURCES, project_double_reading_set, readings_adjudicate
from common.api import Api, get_or_404
from common.exceptions import ApplicationError
from common.media import media_path

# ---- serializers shared by several views -------------------------------------------------------------


class LabelSerializer(serializers.Serializer):
    value = serializers.IntegerField(min_value=1, max_value=255)
    name = serializers.CharField(max_length=64)
    colour = serializers.RegexField(r"^#[0-9a-fA-F]{6}$")


class ProjectSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    description = serializers.CharField()
    modality = serializers.CharField()
    interactive_model = serializers.CharField()
    double_reading_percent = serializers.IntegerField(help_text="Share of the cases read twice, in %")
    n_cases = serializers.IntegerField()
    labels = LabelSerializer(many=True)


class LockSerializer(serializers.Serializer):
    holder = serializers.CharField()
    expires_at = serializers.DateTimeField()


class VolumeSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    shape = serializers.ListField(child=serializers.IntegerField())
    spacing = serializers.ListField(child=serializers.FloatField())
    modality = serializers.CharField(source="series.modality")
    series_description = serializers.CharField(source="series.description")
    study_description = serializers.CharField(source="series.study.description")
    study_date = serializers.DateField(source="series.study.study_date")


class RejectionSerializer(serializers.Serializer):
    comment = serializers.CharField()
    reviewer = serializers.CharField()
    at = serializers.DateTimeField()
    version_number = serializers.IntegerField()


class CaseSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    project = serializers.IntegerField(source="project_id")
    status = serializers.CharField()
    reading = serializers.IntegerField(help_text="1, or 2 for a volume's second, independent reading")
    split = serializers.CharField()
    score = serializers.FloatField()
    score_reason = serializers.CharField()
    score_model = serializers.CharField()
    score_version = serializers.CharField()
    assignee = serializers.CharField(source="assignee.username", default=None)
    lock = serializers.SerializerMethodField()
    rejection = serializers.SerializerMethodField(help_text="The reviewer's open rejection, else null")
    volume = VolumeSerializer()
    updated_at = serializers.DateTimeField()

    def get_lock(self, case: Case) -> dict | None:
        held = selectors.active_lock_holder(case)
        return None if held is None else {"holder": held[0], "expires_at": held[1]}

    def get_rejection(self, case: Case) -> dict | None:
        rejection = selectors.case_rejection(case)
        return None if rejection is None else RejectionSerializer(rejection).data


class VersionSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    number = serializers.IntegerField(source="display_number", help_text="1 for a case's first version")
    parent = serializers.IntegerField(source="parent_id")
    author = serializers.CharField(source="author.username", default=None)
    source = serializers.CharField()
    model_version = serializers.CharField()
    sha256 = serializers.CharField()
    created_at = serializers.DateTimeField()
    seconds = serializers.FloatField()
    clicks = serializers.IntegerField()
    strokes = serializers.IntegerField()
    model_calls = serializers.IntegerField()


class ReviewSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    version = serializers.IntegerField(source="version_id")
    reviewer = serializers.CharField(source="reviewer.username")
    decision = serializers.CharField()
    comment = serializers.CharField()
    override_reason = serializers.CharField()
    created_at = serializers.DateTimeField()
    export_status = serializers.CharField()
    export_error = serializers.CharField()
    seg_series_instance_uid = serializers.CharField()
    seg_sop_instance_uid = serializers.CharField()


class EffortSerializer(serializers.Serializer):
    seconds = serializers.FloatField(min_value=0, max_value=7 * 24 * 3600, default=0.0)
    clicks = serializers.IntegerField(min_value=0, default=0)
    strokes = serializers.IntegerField(min_value=0, default=0)
    model_calls = serializers.IntegerField(min_value=0, default=0)


def _case(case_id: int) -> Case:
    return get_or_404(selectors.case_get, case_id=case_id)


def _version(case: Case, version_id: int | None) -> MaskVersion | None:
    if version_id is None:
        return None
    version = selectors.version_get(version_id=version_id)
    if version is None or version.case_id != case.id:
        raise ApplicationError(f"Version {version_id} is not a version of case {case.id}.")
    return version


# ---- projects -----------------------------------------------------------------------------------------


class ProjectListApi(Api):
    permission = "annotation.view_project"
    action = "list"
    OutputSerializer = ProjectSerializer

    def get(self, request):
        return Response(ProjectSerializer(selectors.project_list(), many=True).data)


class ProjectDetailApi(Api):
    permission = "annotation.view_project"
    OutputSerializer = ProjectSerializer

    def get(self, request, project_id: int):
        return Response(ProjectSerializer(get_or_404(selectors.project_get, project_id=project_id)).data)


class ProjectCreateApi(Api):
    permission = "annotation.add_project"
    success_status = status.HTTP_201_CREATED
    OutputSerializer = ProjectSerializer

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=100)
        description = serializers.CharField(required=False, default="", allow_blank=True)
        modality = serializers.CharField(max_length=16, required=False, default="", allow_blank=True)
        interactive_model = serializers.CharField(max_length=64, required=False, default="", allow_blank=True)
        labels = LabelSerializer(many=True)

    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        labels = [services.LabelSpec(**label) for label in data.validated_data.pop("labels")]
        project = services.project_create(labels=labels, user=request.user, **data.validated_data)
        return Response(
            ProjectSerializer(selectors.project_get(project_id=project.id)).data,
            status=status.HTTP_201_CREATED,
        )


class ProjectDoubleReadingApi(Api):
    """Read ``percent`` % of the project's cases twice, by independent readers (annotation.readings)."""

    permission = "annotation.add_project"

    class InputSerializer(serializers.Serializer):
        percent = serializers.IntegerField(min_value=0, max_value=100)

    class OutputSerializer(serializers.Serializer):
        added = serializers.IntegerField(help_text="second readings added")
        removed = serializers.IntegerField(help_text="untouched second readings removed")

    def post(self, request, project_id: int):
        project = get_or_404(selectors.project_get, project_id=project_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        added, removed = project_double_reading_set(
            project=project, percent=data.validated_data["percent"], user=request.user
        )
        return Response({"added": added, "removed": removed})


class ProjectVolumesAddApi(Api):
    permission = "annotation.add_case"

    class InputSerializer(serializers.Serializer):
        volume_ids = serializers.ListField(child=serializers.IntegerField(), max_length=100_000)

    class OutputSerializer(serializers.Serializer):
        added = serializers.IntegerField()

    def post(self, request, project_id: int):
        project = get_or_404(selectors.project_get, project_id=project_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        ids = set(data.validated_data["volume_ids"])
        volumes = selectors.volumes_by_id(volume_ids=ids)
        missing = sorted(ids - set(volumes))
        if missing:
            raise ApplicationError(f"No volumes with ids {missing[:20]}.", extra={"missing": missing})
        added = services.project_volumes_add(project=project, volumes=volumes.values(), user=request.user)
        return Response({"added": added})


class WorklistApi(Api):
    permission = "annotation.view_case"

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Case.Status.values, required=False, default="")
        modality = serializers.CharField(required=False, default="")
        assignee = serializers.CharField(required=False, default="", help_text="me, none or a username")
        cursor = serializers.CharField(required=False, default="")
        limit = serializers.IntegerField(min_value=1, max_value=200, required=False, default=50)

    class OutputSerializer(serializers.Serializer):
        results = CaseSerializer(many=True)
        next_cursor = serializers.CharField(allow_null=True)

    def get(self, request, project_id: int):
        project = get_or_404(selectors.project_get, project_id=project_id)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        page = selectors.worklist(project=project, user=request.user, **filters.validated_data)
        return Response(self.OutputSerializer({"results": page.cases, "next_cursor": page.next_cursor}).data)


class NextCaseApi(Api):
    """Take the highest-scored free case; 204 when none is left."""

    permission = "annotation.annotate_case"
    OutputSerializer = CaseSerializer

    def post(self, request, project_id: int):
        project = get_or_404(selectors.project_get, project_id=project_id)
        case = services.next_case_take(project=project, user=request.user)
        if case is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(CaseSerializer(selectors.case_detail(case_id=case.id)).data)


class EffortSummaryApi(Api):
    permission = "annotation.view_effort"

    class FilterSerializer(serializers.Serializer):
        after = serializers.IntegerField(min_value=0, required=False, default=0)

    def get(self, request, project_id: int):
        project = get_or_404(selectors.project_get, project_id=project_id)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return Response(selectors.effort_summary(project=project, after_id=filters.validated_data["after"]))


# ---- cases ----------------------------------------------------------------------------------------------


class CaseDetailApi(Api):
    permission = "annotation.view_case"

    class OutputSerializer(CaseSerializer):
        versions = VersionSerializer(many=True)
        reviews = ReviewSerializer(many=True)

    def get(self, request, case_id: int):
        return Response(self.OutputSerializer(get_or_404(selectors.case_detail, case_id=case_id)).data)


class _LockApi(Api):
    permission = "annotation.annotate_case"
    OutputSerializer = LockSerializer

    def _lock(self, lock) -> Response:
        return Response({"holder": lock.user.username, "expires_at": lock.expires_at})


class CaseTakeApi(_LockApi):
    def post(self, request, case_id: int):
        return self._lock(services.case_take(case=_case(case_id), user=request.user))


class CaseHeartbeatApi(_LockApi):
    def post(self, request, case_id: int):
        return self._lock(services.case_heartbeat(case=_case(case_id), user=request.user))


class CaseReleaseApi(Api):
    """The holder releases; an admin may release anyone's lock."""

    permission = "annotation.annotate_case"
    success_status = status.HTTP_204_NO_CONTENT

    def post(self, request, case_id: int):
        services.case_release(case=_case(case_id), user=request.user)
        return Response(status=self.success_status)


def _file(path, *, etag: str, filename: str, cache_control: str, request):
    etag = f'"{etag}"'
    if etag in [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]:
        response = HttpResponseNotModified()
    else:
        response = FileResponse(open(path, "rb"), content_type="application/gzip", filename=filename)
    response["ETag"] = etag
    response["Cache-Control"] = cache_control
    return response


class CaseImageApi(Api):
    """The case's volume as gzipped NIfTI-1 (what NiiVue loads), revalidated by ETag (its SHA-256)."""

    permission = "annotation.view_case"

    def get(self, request, case_id: int):
        volume = _case(case_id).volume
        return _file(
            volume_gzip_path(volume.path),
            etag=volume.sha256,
            filename=f"case-{case_id}.nii.gz",
            cache_control="private, no-cache",
            request=request,
        )


class CaseSubmitApi(Api):
    permission = "annotation.annotate_case"
    OutputSerializer = CaseSerializer

    class InputSerializer(serializers.Serializer):
        version = serializers.IntegerField()

    def post(self, request, case_id: int):
        case = _case(case_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        version = _version(case, data.validated_data["version"])
        services.case_submit(case=case, user=request.user, version=version)
        return Response(CaseSerializer(selectors.case_detail(case_id=case.id)).data)


class CaseReviewApi(Api):
    permission = "annotation.review_case"
    success_status = status.HTTP_201_CREATED
    OutputSerializer = ReviewSerializer

    class InputSerializer(serializers.Serializer):
        version = serializers.IntegerField()
        decision = serializers.ChoiceField(choices=Review.Decision.values)
        comment = serializers.CharField(required=False, default="", allow_blank=True)
        override_reason = serializers.CharField(
            required=False,
            default="",
            allow_blank=True,
            help_text="An admin approving their own work says why (audited); else 403",
        )

    def post(self, request, case_id: int):
        case = _case(case_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        review = services.case_review(
            case=case,
            user=request.user,
            version=_version(case, data.validated_data["version"]),
            decision=data.validated_data["decision"],
            comment=data.validated_data["comment"],
            override_reason=data.validated_data["override_reason"],
        )
        return Response(ReviewSerializer(review).data, status=self.success_status)


class _AgreementSerializer(serializers.Serializer):
    label = serializers.IntegerField(source="label.value")
    name = serializers.CharField(source="label.name")
    dice = serializers.FloatField(source="agreement.dice")
    hd95_mm = serializers.FloatField(source="agreement.hd95_mm", allow_null=True)
    assd_mm = serializers.FloatField(source="agreement.assd_mm", allow_null=True)


class CaseReadingsApi(Api):
    """The two readings of a volume read twice and how their heads agree, class by class (Dice, HD95 and
    mean surface distance in mm); ``comparison`` is null while a reading has no version."""

    permission = "annotation.review_case"

    class OutputSerializer(serializers.Serializer):
        class ComparisonSerializer(serializers.Serializer):
            first_head = VersionSerializer()
            second_head = VersionSerializer()
            classes = _AgreementSerializer(many=True, source="rows")
            mean_dice = serializers.FloatField()
            mean_hd95_mm = serializers.FloatField(allow_null=True)

        first = CaseSerializer()
        second = CaseSerializer()
        comparison = ComparisonSerializer(allow_null=True)

    def get(self, request, case_id: int):
        pair = reading_selectors.reading_pair(case=_case(case_id))
        if pair is None:
            raise ApplicationError(f"Case {case_id} is read once: there is nothing to compare.")
        if any(masks_hidden(case=c, user=request.user) for c in pair):
            raise HiddenReadingError("You read this volume: another reviewer compares its two readings.")
        first, second = pair
        comparison = reading_selectors.readings_compare(first=first, second=second)
        return Response(
            self.OutputSerializer({"first": first, "second": second, "comparison": comparison}).data
        )


class CaseAdjudicateApi(Api):
    """Decide a volume read twice: keep reading 1 or 2, or merge them class by class; the kept mask is
    approved. 409 when a reading is not submitted or changed since ``first_head``/``second_head``."""

    permission = "annotation.review_case"
    success_status = status.HTTP_201_CREATED

    class InputSerializer(serializers.Serializer):
        decision = serializers.ChoiceField(choices=Adjudication.Decision.values)
        first_head = serializers.IntegerField(help_text="the version of reading 1 you compared")
        second_head = serializers.IntegerField(help_text="the version of reading 2 you compared")
        sources = serializers.DictField(
            child=serializers.ChoiceField(choices=MERGE_SOURCES),
            required=False,
            default=dict,
            help_text="a merge: class value -> first, second, union or both",
        )
        comment = serializers.CharField(required=False, default="", allow_blank=True)
        override_reason = serializers.CharField(required=False, default="", allow_blank=True)

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        decision = serializers.CharField()
        kept_case = serializers.SerializerMethodField()
        result = VersionSerializer()
        mean_dice = serializers.FloatField()
        mean_hd95_mm = serializers.FloatField(allow_null=True)
        final_dice = serializers.DictField(child=serializers.FloatField())

        def get_kept_case(self, adjudication: Adjudication) -> int:
            return adjudication.result.case_id

    def post(self, request, case_id: int):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        body = data.validated_data
        adjudication = readings_adjudicate(
            case=_case(case_id),
            user=request.user,
            decision=body["decision"],
            first_head_id=body["first_head"],
            second_head_id=body["second_head"],
            sources={int(k): v for k, v in body["sources"].items() if str(k).isdigit()},
            comment=body["comment"],
            override_reason=body["override_reason"],
        )
        return Response(self.OutputSerializer(adjudication).data, status=self.success_status)


# ---- versions -------------------------------------------------------------------------------------------


class VersionListApi(Api):
    permission = "annotation.view_maskversion"
    action = "list"
    OutputSerializer = VersionSerializer

    def get(self, request, case_id: int):
        return Response(VersionSerializer(selectors.version_list(case=_case(case_id)), many=True).data)


class VersionCreateApi(Api):
    """Save a version on top of ``parent`` (the head you loaded; null for the first). 409 with the head
    when it is not the head any more; 413 when the body is over ANNOTATION_MAX_UPLOAD_BYTES."""

    permission = "annotation.annotate_case"
    success_status = status.HTTP_201_CREATED
    OutputSerializer = VersionSerializer

    class InputSerializer(serializers.Serializer):
        parent = serializers.IntegerField(allow_null=True)
        labelmap = serializers.CharField(required=False, help_text="base64(gzip(uint8 voxels, NIfTI order))")
        delta = serializers.JSONField(required=False, help_text="[[start, length, value], ...] on the parent")
        effort = EffortSerializer(required=False)

    def post(self, request, case_id: int):
        length = int(request.headers.get("Content-Length") or 0)
        if length > settings.ANNOTATION_MAX_UPLOAD_BYTES:
            raise PayloadTooLargeError(
                f"The upload is {length} bytes; at most {settings.ANNOTATION_MAX_UPLOAD_BYTES} are accepted. "
                "Send a delta, or compress the label map."
            )
        case = _case(case_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        body = data.validated_data
        if ("labelmap" in body) == ("delta" in body):
            raise ApplicationError("Send either 'labelmap' or 'delta'.")
        shape = tuple(case.volume.shape)
        mask = labelmap_decode(body["labelmap"], shape=shape) if "labelmap" in body else None
        delta = delta_parse(body["delta"], size=int(np.prod(shape))) if "delta" in body else None
        version = services.mask_version_create(
            case=case,
            user=request.user,
            parent=_version(case, body["parent"]),
            mask=mask,
            delta=delta,
            effort=services.Effort(**body.get("effort", {})),
        )
        return Response(VersionSerializer(version).data, status=self.success_status)


class CaseInteractiveApi(Api):
    """One model call on a case you hold: the box and every click so far for one class; answers that
    class's mask (base64 of gzip of 0/1 voxels in NIfTI order), which replaces the class in the viewer.
    On a volume still being encoded the answer covers the slices encoded so far (the prompted one
    first): ``pending`` says the mask will grow, and the same request sent again returns more of it
    (``slices_ready`` of ``slices_total`` of the structure's slab). 504 when no model worker answers."""

    permission = "annotation.annotate_case"

    class InputSerializer(serializers.Serializer):
        class BoxSerializer(serializers.Serializer):
            lo = serializers.ListField(child=serializers.IntegerField(), min_length=3, max_length=3)
            hi = serializers.ListField(child=serializers.IntegerField(), min_length=3, max_length=3)

        class ClickSerializer(serializers.Serializer):
            ijk = serializers.ListField(child=serializers.IntegerField(), min_length=3, max_length=3)
            positive = serializers.BooleanField(default=True)

        label = serializers.IntegerField(min_value=1, max_value=255)
        box = BoxSerializer()
        clicks = ClickSerializer(many=True, required=False, default=list)

    class OutputSerializer(serializers.Serializer):
        label = serializers.IntegerField()
        mask = serializers.CharField(help_text="base64(gzip(uint8 0/1 voxels, NIfTI order))")
        seconds = serializers.FloatField(help_text="model time in the worker")
        incremental = serializers.BooleanField(help_text="only the new click was decoded")
        model = serializers.CharField()
        model_version = serializers.IntegerField(
            allow_null=True, help_text="the project's model version that answered; null: LiteMedSAM"
        )
        slices_ready = serializers.IntegerField(help_text="slices of the structure's slab encoded so far")
        slices_total = serializers.IntegerField(help_text="slices of the structure's slab (the box's extent)")
        pending = serializers.BooleanField(help_text="the mask grows as more slices are encoded: ask again")

    def post(self, request, case_id: int):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        answer = services.case_interact(case=_case(case_id), user=request.user, request=data.validated_data)
        body = {
            "label": answer.label,
            "mask": base64.b64encode(answer.mask_gzip).decode(),
            "seconds": answer.seconds,
            "incremental": answer.incremental,
            "model": answer.model,
            "model_version": answer.model_version,
            "slices_ready": answer.slices_ready,
            "slices_total": answer.slices_total,
            "pending": answer.pending,
        }
        return Response(self.OutputSerializer(body).data)


class VersionMaskApi(Api):
    """A version's label map as gzipped NIfTI-1 uint8; immutable, so cached for good."""

    permission = "annotation.view_maskversion"

    def get(self, request, version_id: int):
        version = get_or_404(selectors.version_get, version_id=version_id)
        if masks_hidden(case=version.case, user=request.user):
            raise HiddenReadingError(
                "This is another reader's mask of a volume read twice: readings stay apart until a reviewer "
                "compares them."
            )
        return _file(
            media_path(version.path),
            etag=version.sha256,
            filename=f"case-{version.case_id}-v{version.display_number}.nii.gz",
            cache_control="private, max-age=31536000, immutable",
            request=request,
        )


# ---- audit ----------------------------------------------------------------------------------------------


class AuditListApi(Api):
    permission = "annotation.view_auditevent"
    action = "list"

    class FilterSerializer(serializers.Serializer):
        object_type = serializers.CharField(required=False, default="", help_text="e.g. annotation.case")
        object_id = serializers.CharField(required=False, default="")
        before_id = serializers.IntegerField(required=False, default=None, allow_null=True)
        limit = serializers.IntegerField(min_value=1, max_value=500, required=False, default=100)

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        at = serializers.DateTimeField()
        actor = serializers.CharField(source="actor.username", default=None)
        action = serializers.CharField()
        object_type = serializers.CharField()
        object_id = serializers.CharField()
        details = serializers.JSONField()

    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        return Response(self.OutputSerializer(selectors.audit_list(**filters.validated_data), many=True).data)
