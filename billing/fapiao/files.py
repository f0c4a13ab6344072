"""Issued fapiao files: checked by their content, not their name, and kept privately
(``settings.FAPIAO_FILE_DIR``, no URL) under a random name; only views that check the
organisation (or finance staff) read them back.

- PDF: starts with ``%PDF-``;
- OFD (GB/T 33190, the national format): a ZIP archive holding ``OFD.xml``;
- XML (the fully digital e-invoice, 数电票): parses as XML (with defusedxml: no entities, no
  external references).
"""

import io
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import PurePath

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException
from django.conf import settings
from django.core.files.storage import FileSystemStorage
from django.utils.translation import gettext as _

from billing.errors import BillingErrorCode
from portal.errors import InvalidInput

# content type: (file name endings, stored suffix)
FILE_TYPES = {
    "application/pdf": (".pdf",),
    "application/ofd": (".ofd",),
    "application/xml": (".xml",),
}


@dataclass(frozen=True)
class CheckedFile:
    name: str
    content_type: str
    size: int


def storage() -> FileSystemStorage:
    return FileSystemStorage(location=settings.FAPIAO_FILE_DIR, base_url=None)


def sniff(content: bytes) -> str | None:
    if content.startswith(b"%PDF-"):
        return "application/pdf"
    if content.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(content)) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return None
        return "application/ofd" if "OFD.xml" in names else None
    try:
        ElementTree.fromstring(content)
    except (ElementTree.ParseError, DefusedXmlException, ValueError):
        return None
    return "application/xml"


def _refuse(message: str):
    raise InvalidInput(
        message, code=BillingErrorCode.FAPIAO_FILE_INVALID, details={"file": message}
    )


def file_check(upload) -> tuple[CheckedFile, bytes]:
    """Refuse a file that is missing, too large, or not really a PDF, OFD or XML named as what
    it is."""
    if upload is None:
        _refuse(_("Attach the fapiao file (PDF, OFD or XML)."))
    limit = settings.FAPIAO_FILE_MAX_BYTES
    if upload.size > limit:
        _refuse(_("The file is larger than %(size)s MB.") % {"size": f"{limit / (1024 * 1024):g}"})
    upload.seek(0)
    content = upload.read()
    upload.seek(0)
    content_type = sniff(content)
    name = PurePath(upload.name or "fapiao").name[:200]
    if content_type is None or PurePath(name).suffix.lower() not in FILE_TYPES[content_type]:
        _refuse(_("The fapiao file must be a PDF, OFD or XML file, named as what it is."))
    return CheckedFile(name=name, content_type=content_type, size=len(content)), content


def file_store(content: bytes, checked: CheckedFile, *, organization_id: int) -> str:
    from django.core.files.base import ContentFile

    path = f"{organization_id}/{uuid.uuid4().hex}{FILE_TYPES[checked.content_type][0]}"
    return storage().save(path, ContentFile(content))


def file_open(path: str):
    return storage().open(path, "rb")


def file_delete(path: str) -> None:
    storage().delete(path)
