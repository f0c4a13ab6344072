from rest_framework.throttling import SimpleRateThrottle

from portal.accounts.models import ApiKey


class ClientRateThrottle(SimpleRateThrottle):
    """Per API key, or per signed-in user for session calls."""

    scope = "client"

    def get_cache_key(self, request, view):
        if isinstance(request.auth, ApiKey):
            ident = f"key-{request.auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user-{request.user.pk}"
        else:
            return None
        return self.cache_format % {"scope": self.scope, "ident": ident}
