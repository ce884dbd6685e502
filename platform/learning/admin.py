"""Admins edit a project's learning policy here (checked by the model's clean()); model versions and
jobs are read-only (their writes go through learning.services: the dashboard and the commands)."""

from django.contrib import admin

from annotation.admin import ReadOnlyAdmin
from learning.models import Job, LearningPolicy, ModelVersion


@admin.register(LearningPolicy)
class LearningPolicyAdmin(admin.ModelAdmin):
    list_display = ("project", "adapt_every", "method", "strategy", "manual_promotion", "margin", "alpha")

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ModelVersion)
class ModelVersionAdmin(ReadOnlyAdmin):
    list_display = ("project", "number", "state", "method", "validation_dice", "created_at", "activated_at")
    list_filter = ("project", "state")


@admin.register(Job)
class JobAdmin(ReadOnlyAdmin):
    list_display = ("id", "project", "kind", "state", "progress", "attempts", "created_at", "finished_at")
    list_filter = ("project", "kind", "state")
