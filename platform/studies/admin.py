from django.contrib import admin

from studies.models import Series, Study, Volume


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ["description", "patient_id", "study_date", "source", "num_instances"]
    list_filter = ["source"]
    search_fields = ["description", "patient_id", "study_instance_uid"]


@admin.register(Series)
class SeriesAdmin(admin.ModelAdmin):
    list_display = ["description", "modality", "status", "error_kind", "num_instances", "study"]
    list_filter = ["status", "modality"]
    search_fields = ["description", "series_instance_uid"]
    raw_id_fields = ["study"]


@admin.register(Volume)
class VolumeAdmin(admin.ModelAdmin):
    list_display = ["series", "index", "shape", "spacing", "dtype"]
    raw_id_fields = ["series"]
