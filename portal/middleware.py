from collections.abc import Callable

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.translation import gettext as _

from portal.errors import NotFound, PermissionDenied, PortalError


class PortalErrorMiddleware:
    """A ``PortalError`` no page caught becomes the friendly page for its status."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception):
        if isinstance(exception, NotFound):
            raise Http404(exception.message) from exception
        if isinstance(exception, PermissionDenied):
            raise DjangoPermissionDenied(exception.message) from exception
        if isinstance(exception, PortalError):
            return render(
                request,
                "error.html",
                {
                    "status": exception.status,
                    "title": _("That did not work"),
                    "message": exception.message,
                },
                status=exception.status,
            )
        return None
