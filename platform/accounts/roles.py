"""The three roles and what each may do, as Django permissions granted to a group of that name.

Views check permissions, never group names, so an admin can craft other groups in Django admin.
"""

from enum import StrEnum


class Role(StrEnum):
    ANNOTATOR = "annotator"
    REVIEWER = "reviewer"
    ADMIN = "admin"


_READ_STUDIES = ["studies.view_study", "studies.view_series", "studies.view_volume"]
_READ_ANNOTATION = ["annotation.view_project", "annotation.view_case", "annotation.view_maskversion"]

ROLE_PERMISSIONS: dict[Role, list[str]] = {
    Role.ANNOTATOR: _READ_STUDIES + _READ_ANNOTATION + ["annotation.annotate_case"],
    Role.REVIEWER: _READ_STUDIES + _READ_ANNOTATION + ["annotation.review_case"],
    Role.ADMIN: _READ_STUDIES
    + _READ_ANNOTATION
    + [
        "annotation.annotate_case",
        "annotation.review_case",
        "annotation.approve_own_work",
        "annotation.release_any_lock",
        "annotation.view_effort",
        "annotation.view_auditevent",
        "annotation.add_project",
        "annotation.add_case",
        "pacs.view_pacssource",
        "pacs.add_pacssource",
        "pacs.change_pacssource",
        "pacs.delete_pacssource",
        "pacs.sync_pacssource",
        "accounts.view_overview",
        "accounts.view_user",
        "accounts.add_user",
        "accounts.change_user",
        "learning.view_modelversion",
        "learning.view_job",
        "learning.manage_models",
        "learning.view_learningpolicy",
        "learning.change_learningpolicy",
    ],
}
