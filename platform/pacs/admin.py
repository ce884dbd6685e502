from django import forms
from django.contrib import admin

from pacs.models import PacsSource


class PacsSourceForm(forms.ModelForm):
    base_url = forms.URLField(
        assume_scheme="https", help_text="DICOMweb root, e.g. https://pacs.example.org/dicom-web"
    )
    password = forms.CharField(
        widget=forms.PasswordInput(render_value=False),
        required=False,
        help_text="Never shown again once saved; leave blank to keep the stored password.",
    )

    class Meta:
        model = PacsSource
        fields = ["name", "base_url", "username", "password", "enabled", "poll_interval_s"]

    def clean_password(self) -> str:
        return self.cleaned_data["password"] or self.instance.password


@admin.register(PacsSource)
class PacsSourceAdmin(admin.ModelAdmin):
    form = PacsSourceForm
    list_display = ["name", "base_url", "enabled", "sync_status", "last_sync_finished_at"]
    readonly_fields = [
        "sync_status",
        "last_sync_started_at",
        "last_sync_finished_at",
        "last_error",
        "last_error_at",
    ]
