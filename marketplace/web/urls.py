"""The dashboard's URLs (namespace `web`)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from marketplace.web import forms, views

app_name = "web"

urlpatterns = [
    path("", views.home, name="home"),
    path("network/", views.network, name="network"),
    path("accounts/signup/", views.signup, name="signup"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(template_name="web/accounts/login.html", authentication_form=forms.LoginForm),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="web:network"), name="logout"),
    path("accounts/profile/", views.profile, name="profile"),
    path("accounts/siwe/message/", views.siwe_message, name="siwe-message"),
    path("accounts/siwe/verify/", views.siwe_verify, name="siwe-verify"),
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/new/<str:kind>/", views.job_new, name="job-new"),
    path("jobs/quote/<str:kind>/", views.job_quote, name="job-quote"),
    path("jobs/<uuid:job_id>/", views.job_detail, name="job"),
    path("jobs/<uuid:job_id>/live/", views.job_live, name="job-live"),
    path("jobs/<uuid:job_id>/fund-dev/", views.job_fund_dev, name="job-fund-dev"),
    path("jobs/<uuid:job_id>/cancel/", views.job_cancel, name="job-cancel"),
    path("nodes/", views.nodes, name="nodes"),
    path("nodes/<uuid:node_id>/withdraw/", views.node_withdraw, name="node-withdraw"),
]
