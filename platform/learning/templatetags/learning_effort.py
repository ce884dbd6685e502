"""``{% load learning_effort %}``: ``{{ group|estimated_minutes }}``, the estimated annotator minutes per
case of an effort group, priced with ml_worker.effort's costs (see learning.effort)."""

from __future__ import annotations

from django import template

from learning.effort import group_estimated_minutes

register = template.Library()


@register.filter
def estimated_minutes(group) -> float | None:
    return group_estimated_minutes(group)
