from django.apps import AppConfig


class WebConfig(AppConfig):
    """Pages and commands that bring several apps together (the overview, the demo data).

    The one layer allowed to import every app; no app imports it (the URL confs aside, which
    only route to it)."""

    name = "portal.web"
    label = "web"
    verbose_name = "Web"
