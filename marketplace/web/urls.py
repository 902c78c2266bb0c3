"""The dashboard's URLs (namespace `web`)."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import path

from marketplace.web import forms
from marketplace.web.views import accounts, jobs, network, nodes

app_name = "web"

urlpatterns = [
    path("", network.home, name="home"),
    path("network/", network.network, name="network"),
    path("accounts/signup/", accounts.signup, name="signup"),
    path(
        "accounts/login/",
        auth_views.LoginView.as_view(template_name="web/accounts/login.html", authentication_form=forms.LoginForm),
        name="login",
    ),
    path("accounts/logout/", auth_views.LogoutView.as_view(next_page="web:network"), name="logout"),
    path("accounts/profile/", accounts.profile, name="profile"),
    path("accounts/siwe/message/", accounts.siwe_message, name="siwe-message"),
    path("accounts/siwe/verify/", accounts.siwe_verify, name="siwe-verify"),
    path("accounts/siwe/login/message/", accounts.siwe_login_message, name="siwe-login-message"),
    path("accounts/siwe/login/", accounts.siwe_login, name="siwe-login"),
    path("jobs/", jobs.job_list, name="jobs"),
    path("jobs/new/<str:kind>/", jobs.job_new, name="job-new"),
    path("jobs/quote/<str:kind>/", jobs.job_quote, name="job-quote"),
    path("jobs/<uuid:job_id>/", jobs.job_detail, name="job"),
    path("jobs/<uuid:job_id>/live/", jobs.job_live, name="job-live"),
    path("jobs/<uuid:job_id>/fund-dev/", jobs.job_fund_dev, name="job-fund-dev"),
    path("jobs/<uuid:job_id>/cancel/", jobs.job_cancel, name="job-cancel"),
    path("nodes/", nodes.node_list, name="nodes"),
    path("nodes/<uuid:node_id>/withdraw/", nodes.node_withdraw, name="node-withdraw"),
]
