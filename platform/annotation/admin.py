"""Read-only admin views of annotation work, for admins to look things up (effort per version, who did
what). Writes go through annotation.services (the API and pages), never through the admin."""

from django.contrib import admin

from annotation.models import Adjudication, AuditEvent, Case, LabelClass, MaskVersion, Project, Review


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class LabelClassInline(admin.TabularInline):
    model = LabelClass
    fields = ("value", "name", "colour")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Project)
class ProjectAdmin(ReadOnlyAdmin):
    list_display = ("name", "modality", "interactive_model", "created_at")
    inlines = [LabelClassInline]


@admin.register(Case)
class CaseAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "project",
        "volume",
        "reading",
        "status",
        "split",
        "assignee",
        "score",
        "updated_at",
    )
    list_filter = ("project", "status", "split", "reading")
    list_select_related = ("project", "volume", "assignee")


@admin.register(MaskVersion)
class MaskVersionAdmin(ReadOnlyAdmin):
    list_display = (
        "case",
        "number",
        "source",
        "author",
        "seconds",
        "clicks",
        "strokes",
        "model_calls",
        "created_at",
    )
    list_filter = ("source", "case__project")
    list_select_related = ("case", "author")


@admin.register(Review)
class ReviewAdmin(ReadOnlyAdmin):
    list_display = ("case", "version", "reviewer", "decision", "export_status", "created_at")
    list_filter = ("decision", "export_status")


@admin.register(Adjudication)
class AdjudicationAdmin(ReadOnlyAdmin):
    list_display = ("first", "second", "decision", "mean_dice", "mean_hd95_mm", "reviewer", "created_at")
    list_filter = ("project", "decision")
    list_select_related = ("first", "second", "reviewer")


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("at", "actor", "action", "object_type", "object_id")
    list_filter = ("action", "object_type")
