"""The cloud-init NoCloud seed a machine boots with: its SSH keys, hostname, instance id and the
customer's own user data, on an ISO 9660 volume labelled ``cidata`` (written with pycdlib, no
binary needed).

cloud-init runs its per-instance modules (keys, user data) once per ``instance-id``: the seed of
a machine keeps the same id across stop and start, so nothing runs twice. Customer user data is
a ``#cloud-config`` document (a YAML mapping) or a script (``#!``), at most
``MAX_USER_DATA_BYTES``; with it, the seed's user data is a MIME multi-part of the portal's
cloud-config and the customer's part, which cloud-init merges.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

from django.utils.translation import gettext as _

MAX_USER_DATA_BYTES = 16 * 1024
_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class UserDataInvalid(ValueError):
    """Customer user data cloud-init would not run; the message says why."""


def validate_user_data(text: str) -> str:
    """``text`` if cloud-init can run it: empty, a ``#cloud-config`` YAML mapping or a ``#!``
    script, UTF-8, at most ``MAX_USER_DATA_BYTES``. Line endings become ``\\n``."""
    import yaml

    text = (text or "").replace("\r\n", "\n")
    if not text.strip():
        return ""
    size = len(text.encode("utf-8"))
    if size > MAX_USER_DATA_BYTES:
        raise UserDataInvalid(
            _("User data is %(size)s bytes; at most %(limit)s bytes are allowed.")
            % {"size": size, "limit": MAX_USER_DATA_BYTES}
        )
    if text.startswith("#!"):
        return text
    if not text.startswith("#cloud-config"):
        raise UserDataInvalid(
            _("User data must start with #cloud-config (a cloud-config document) or #! (a script).")
        )
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UserDataInvalid(
            _("The cloud-config is not valid YAML (line %(line)s).") % {"line": mark.line + 1}
            if mark is not None
            else _("The cloud-config is not valid YAML.")
        ) from None
    if document is not None and not isinstance(document, dict):
        raise UserDataInvalid(_("The cloud-config must be a mapping of keys to values."))
    return text


def hostname_for(name: str, fallback: str) -> str:
    """A valid hostname from an instance name: lower case, letters, digits and hyphens."""
    candidate = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return candidate if _HOSTNAME_RE.match(candidate) else fallback


@dataclass(frozen=True)
class Seed:
    instance_id: str
    hostname: str
    ssh_public_keys: tuple[str, ...]
    user_data: str = ""
    phone_home_url: str = ""  # cloud-init posts here once, when its first boot is done

    def meta_data(self) -> bytes:
        return f"instance-id: {self.instance_id}\nlocal-hostname: {self.hostname}\n".encode()

    def portal_cloud_config(self) -> str:
        import yaml

        document = {
            "hostname": self.hostname,
            "ssh_authorized_keys": list(self.ssh_public_keys),
        }
        if self.phone_home_url:
            document["phone_home"] = {
                "url": self.phone_home_url,
                "post": ["instance_id", "hostname", "fqdn"],
                "tries": 10,
            }
        return "#cloud-config\n" + yaml.safe_dump(document, default_flow_style=False, width=4096)

    def user_data_bytes(self) -> bytes:
        portal = self.portal_cloud_config()
        if not self.user_data:
            return portal.encode()
        parts = MIMEMultipart(boundary="==portal-seed==")
        parts.attach(MIMEText(portal, "cloud-config", "us-ascii"))  # 7bit: readable as is
        customer_type = "x-shellscript" if self.user_data.startswith("#!") else "cloud-config"
        parts.attach(MIMEText(self.user_data, customer_type, "utf-8"))
        return parts.as_bytes()

    def iso(self) -> bytes:
        """The seed volume: ``meta-data`` and ``user-data`` on ISO 9660 (Joliet and Rock Ridge
        names, as cloud-init's NoCloud reads them), volume label ``cidata``."""
        import pycdlib

        iso = pycdlib.PyCdlib()
        iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
        for iso_name, name, body in (
            ("/METADATA.;1", "meta-data", self.meta_data()),
            ("/USERDATA.;1", "user-data", self.user_data_bytes()),
        ):
            iso.add_fp(io.BytesIO(body), len(body), iso_name, rr_name=name, joliet_path=f"/{name}")
        out = io.BytesIO()
        iso.write_fp(out)
        iso.close()
        return out.getvalue()
