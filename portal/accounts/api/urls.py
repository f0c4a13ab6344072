from django.urls import path

from portal.accounts.api import views

urlpatterns = [
    path("organization", views.OrganizationView.as_view(), name="api-organization"),
    path("members", views.MemberListView.as_view(), name="api-members"),
    path("ssh-keys", views.SshKeyListView.as_view(), name="api-ssh-keys"),
    path("ssh-keys/<int:pk>", views.SshKeyDetailView.as_view(), name="api-ssh-key"),
    path("verification", views.VerificationView.as_view(), name="api-verification"),
    path("audit-events", views.AuditEventListView.as_view(), name="api-audit-events"),
]
