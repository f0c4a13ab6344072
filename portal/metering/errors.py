"""Error codes of metering: usage events and GPU telemetry."""

from enum import StrEnum

from portal.errors import error_codes


@error_codes
class MeteringErrorCode(StrEnum):
    BATCH_INVALID = "batch_invalid"
    BATCH_TOO_LARGE = "batch_too_large"
    EVENT_INVALID = "event_invalid"
    FILE = "file"
    GPU_UNKNOWN = "gpu_unknown"
    READING = "reading"
    TIME = "time"


@error_codes
class EventRefusal(StrEnum):
    """Why one usage event of a batch was refused (``rejected[].code`` in the answer)."""

    NOT_AN_OBJECT = "not_an_object"
    SPECVERSION = "specversion"
    ID = "id"
    SOURCE = "source"
    TIME = "time"
    UNKNOWN_METER = "unknown_meter"
    SUBJECT = "subject"
    DATA = "data"
    TIME_CLOSED = "time_closed"
