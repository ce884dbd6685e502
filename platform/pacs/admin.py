from django import forms
from django.contrib import admin

from pacs.credentials import CredentialsKeyError, password_encrypt
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
        """A new password is encrypted here, so a missing key is a form error and nothing is saved."""
        password = self.cleaned_data["password"]
        if password:
            try:
                password_encrypt(password)
            except CredentialsKeyError as exc:
                raise forms.ValidationError(exc.message) from None
        return password

    def save(self, commit: bool = True) -> PacsSource:
        if self.cleaned_data.get("password"):
            self.instance.password = self.cleaned_data["password"]  # stored as a Fernet token
        return super().save(commit=commit)


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
