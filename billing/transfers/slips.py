"""Remittance slips: checked by their first bytes (not their name), stored outside any served
path (``settings.BANK_TRANSFER_SLIP_DIR``) under a random name, read back only by views that
check the organisation."""

import uuid
from dataclasses import dataclass
from pathlib import PurePath

from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.utils.translation import gettext as _

from billing.errors import BillingErrorCode
from portal.errors import InvalidInput

# content type: (magic bytes, the file name endings that may carry it, stored suffix)
SLIP_TYPES = {
    "application/pdf": (b"%PDF-", (".pdf",), ".pdf"),
    "image/png": (b"\x89PNG\r\n\x1a\n", (".png",), ".png"),
    "image/jpeg": (b"\xff\xd8\xff", (".jpg", ".jpeg"), ".jpg"),
}
HEAD_BYTES = 16


@dataclass(frozen=True)
class CheckedSlip:
    name: str
    content_type: str
    size: int


def storage() -> FileSystemStorage:
    """Private: no base URL, so nothing can link to a slip except the download views."""
    return FileSystemStorage(location=settings.BANK_TRANSFER_SLIP_DIR, base_url=None)


def sniff(head: bytes) -> str | None:
    for content_type, (magic, _names, _suffix) in SLIP_TYPES.items():
        if head.startswith(magic):
            return content_type
    return None


def slip_check(upload) -> CheckedSlip:
    """Refuse a slip that is missing, too large, or not really a PDF, PNG or JPEG (the first
    bytes decide; a name ending in another type's suffix is refused too)."""
    if upload is None:
        message = _("Attach the remittance slip (PDF, PNG or JPEG).")
        raise InvalidInput(
            message, code=BillingErrorCode.SLIP_TYPE_INVALID, details={"slip": message}
        )
    limit = settings.BANK_TRANSFER_SLIP_MAX_BYTES
    if upload.size > limit:
        message = _("The slip is larger than %(size)s MB.") % {"size": f"{limit / (1024 * 1024):g}"}
        raise InvalidInput(message, code=BillingErrorCode.SLIP_TOO_LARGE, details={"slip": message})
    upload.seek(0)
    head = upload.read(HEAD_BYTES)
    upload.seek(0)
    content_type = sniff(head)
    name = PurePath(upload.name or "slip").name[:200]
    suffix = PurePath(name).suffix.lower()
    if content_type is None or suffix not in SLIP_TYPES[content_type][1]:
        message = _("The slip must be a PDF, PNG or JPEG file, named as what it is.")
        raise InvalidInput(
            message, code=BillingErrorCode.SLIP_TYPE_INVALID, details={"slip": message}
        )
    return CheckedSlip(name=name, content_type=content_type, size=upload.size)


def slip_store(upload, checked: CheckedSlip, *, organization_id: int) -> str:
    """Save the slip under a random name; returns its path inside the private storage."""
    path = f"{organization_id}/{uuid.uuid4().hex}{SLIP_TYPES[checked.content_type][2]}"
    upload.seek(0)
    return storage().save(path, upload)


def slip_open(path: str):
    return storage().open(path, "rb")


def slip_delete(path: str) -> None:
    storage().delete(path)
