"""Request body parsers of the API."""

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JsonTooDeep(ParseError):
    """A JSON body nested deeper than Python's parser can follow (400 ``invalid_json``)."""

    default_detail = "The JSON body is nested too deeply."


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, answering a body nested thousands of levels deep with 400
    ``invalid_json`` instead of letting ``RecursionError`` become a 500."""

    def parse(self, stream, media_type=None, parser_context=None):
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise JsonTooDeep() from None
