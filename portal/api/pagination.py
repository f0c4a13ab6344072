from django.utils.translation import gettext as _
from rest_framework.pagination import PageNumberPagination

from portal.errors import InvalidInput


def _whole_number(request, name: str) -> int | None:
    """The query parameter ``name`` as a whole number from 1, None when absent; anything else
    (``0``, ``-1``, ``abc``, ``1.5``) is a 400 that names the parameter."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if raw.isascii() and raw.isdigit() and int(raw) >= 1:
        return int(raw)
    raise InvalidInput(
        _("Some of the input is not valid; see details."),
        details={name: [_("A whole number from 1.")]},
    )


class StandardPagination(PageNumberPagination):
    """``?page=N&page_size=M``: M from 1 to 200 (larger values give 200). A page number or size
    that is not a whole number from 1 is a 400 ``invalid``; a page past the last is a 404."""

    page_size_query_param = "page_size"
    max_page_size = 200

    def get_page_size(self, request):
        size = _whole_number(request, self.page_size_query_param)
        return self.page_size if size is None else min(size, self.max_page_size)

    def get_page_number(self, request, paginator):
        if request.query_params.get(self.page_query_param) in self.last_page_strings:
            return paginator.num_pages
        return _whole_number(request, self.page_query_param) or 1

    def expected_slice(self, request) -> slice | None:
        """The rows the request's page number and size ask for, for a list that reads its page
        and its count together; None for ``page=last`` or a number ``get_page_number`` refuses."""
        if request.query_params.get(self.page_query_param) in self.last_page_strings:
            return None
        try:
            number = _whole_number(request, self.page_query_param) or 1
            size = self.get_page_size(request)
        except InvalidInput:
            return None
        return slice((number - 1) * size, number * size)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1
            if parameter["name"] == self.page_size_query_param:
                parameter["description"] = (
                    f"Results per page, from 1 to {self.max_page_size} (larger values give "
                    f"{self.max_page_size}); {self.page_size} by default."
                )
            else:
                parameter["description"] = "A page number from 1; past the last page is a 404."
        return parameters
