from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from accounts import views as accounts_views
from annotation import views as annotation_views
from annotation.readings import views as reading_views
from common.health import healthz
from learning import urls as learning_urls
from pacs import views as pacs_views
from studies import views as studies_views

urlpatterns = [
    path("", accounts_views.home, name="home"),
    path("overview/", accounts_views.overview, name="overview"),
    path("healthz", healthz, name="healthz"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("worklist/", studies_views.worklist, name="worklist"),
    path("projects/", annotation_views.project_list, name="annotation-projects"),
    path("projects/<int:project_id>/", annotation_views.worklist, name="annotation-worklist"),
    path("projects/<int:project_id>/learning/", include(learning_urls.urlpatterns)),
    path(
        "projects/<int:project_id>/double-reading/",
        reading_views.double_reading_set,
        name="annotation-double-reading",
    ),
    path("cases/<int:case_id>/", annotation_views.case_page, name="annotation-case"),
    path("cases/<int:case_id>/compare/", reading_views.compare, name="annotation-compare"),
    path("cases/<int:case_id>/compare.png", reading_views.compare_png, name="annotation-compare-png"),
    path("pacs/sources/", pacs_views.source_list, name="pacs-sources"),
    path("pacs/sources/<int:source_id>/", pacs_views.source_detail, name="pacs-source"),
    path("pacs/sources/<int:source_id>/sync", pacs_views.source_sync, name="pacs-source-sync"),
    path("api/", include("annotation.urls")),
    path("api/", include(learning_urls.api_urlpatterns)),
    path("admin/", admin.site.urls),
]
