"""The dashboard's effort chart spans the time its points take (not years for one point), and the
admin names the learning policies in good English."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import Client
from matplotlib.dates import num2date

from learning.plots import effort_figure, effort_png, time_window
from learning.selectors import Activation, ApprovedCase

T0 = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def approved(at: datetime) -> ApprovedCase:
    return ApprovedCase(
        case_id=1, approved_at=at, seconds=300.0, clicks=4, strokes=2, model_calls=1, presegmented_by=""
    )


def x_span(cases, activations=()) -> timedelta:
    fig = effort_figure(cases, list(activations))
    lo, hi = (num2date(x) for x in fig.axes[-1].get_xlim())
    return hi - lo


@pytest.mark.parametrize(
    ("times", "least", "most"),
    [
        ([T0], timedelta(minutes=59), timedelta(minutes=61)),  # one point: an hour around it
        ([T0, T0 + timedelta(minutes=5)], timedelta(minutes=59), timedelta(minutes=61)),
        ([T0, T0 + timedelta(days=10)], timedelta(days=10), timedelta(days=11.1)),  # 5 % room either side
    ],
)
def test_the_effort_chart_spans_its_points(times, least, most):
    assert least <= x_span([approved(t) for t in times]) <= most
    lo, hi = time_window(times)
    assert lo < min(times) and hi > max(times)


def test_a_model_activation_is_inside_the_chart():
    span = x_span([approved(T0)], [Activation(at=T0 - timedelta(hours=3), number=1, action="promoted")])
    assert timedelta(hours=3) < span < timedelta(hours=4)
    assert effort_png([approved(T0)], []).startswith(b"\x89PNG")


@pytest.mark.django_db
def test_the_admin_says_learning_policies(users):
    client = Client()
    client.force_login(users["admin"])
    html = client.get("/admin/").content.decode()
    assert "Learning policies" in html and "policys" not in html
