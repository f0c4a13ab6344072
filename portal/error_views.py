"""Friendly error pages. API paths get the API's error shape instead."""

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.utils.translation import gettext_lazy as _

from portal.api.errors import ApiErrorCode, error_body
from portal.errors import ErrorCode

_PAGES = {
    400: (ApiErrorCode.BAD_REQUEST, _("Bad request"), _("The request could not be understood.")),
    403: (
        ErrorCode.PERMISSION_DENIED,
        _("Not allowed"),
        _("Your role in this organisation does not allow this."),
    ),
    404: (
        ErrorCode.NOT_FOUND,
        _("Not found"),
        _("There is nothing here, or it belongs to another organisation."),
    ),
    500: (
        ApiErrorCode.SERVER_ERROR,
        _("Something went wrong"),
        _("The error was logged. Please try again shortly."),
    ),
}


def _respond(request: HttpRequest, status: int, exception: Exception | None = None) -> HttpResponse:
    code, title, message = _PAGES[status]
    if status == 403 and exception is not None and str(exception):
        message = str(exception)
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(code, str(message)), status=status)
    return render(
        request, "error.html", {"status": status, "title": title, "message": message}, status=status
    )


def bad_request(request, exception):
    return _respond(request, 400)


def permission_denied(request, exception):
    return _respond(request, 403, exception)


def page_not_found(request, exception):
    return _respond(request, 404)


def server_error(request):
    code, _title, message = _PAGES[500]
    if request.path.startswith("/api/"):
        return JsonResponse(error_body(code, str(message)), status=500)
    # No context processors here: the failure may be in them.
    from django.template import loader

    return HttpResponse(loader.get_template("500.html").render(), status=500)
