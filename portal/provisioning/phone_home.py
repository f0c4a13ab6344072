"""The URL a machine's cloud-init posts to when its first boot is done (``phone_home``).

Each machine gets one URL, signed with the portal's secret key (``django.core.signing``, its
own salt), so nobody can make up another machine's; it is single-use: the first post is kept as
a ``PhoneHome`` row and every later one is refused. cloud-init runs ``phone_home`` once per
instance id, at the end of its final stage, after the SSH keys are in place: with the libvirt
backend's ``readiness="phone_home"`` a machine is ready once it has phoned home and its SSH port
answers (later boots, which do not phone home again, wait for SSH alone).

``settings.PROVISIONING_PHONE_HOME_URL`` is the portal's address as the guests reach it
(``SITE_URL`` unless the machines see the portal under another name).
"""

from django.conf import settings
from django.core import signing
from django.db import IntegrityError, transaction
from django.urls import reverse

from portal.provisioning.models import PhoneHome

SALT = "portal.provisioning.phone_home"
# What cloud-init may post that is worth keeping (it posts these and the host keys).
KEPT_FIELDS = ("instance_id", "hostname", "fqdn")


def token_for(machine_id: str) -> str:
    return signing.Signer(salt=SALT).sign(machine_id)


def url_for(machine_id: str) -> str:
    """The machine's phone-home URL, absolute, as its guest reaches the portal."""
    path = reverse("compute:phone_home", args=[token_for(machine_id)])
    return f"{settings.PROVISIONING_PHONE_HOME_URL}{path}"


def machine_for(token: str) -> str | None:
    """The machine id a token was made for, or None if it was not made by this portal."""
    try:
        return signing.Signer(salt=SALT).unsign(token)
    except signing.BadSignature:
        return None


def record(machine_id: str, posted: dict) -> bool:
    """Keep the machine's report; False if it had phoned home already (the URL is used)."""
    detail = {key: str(posted[key])[:255] for key in KEPT_FIELDS if posted.get(key)}
    try:
        with transaction.atomic():
            PhoneHome.objects.create(machine_id=machine_id, detail=detail)
    except IntegrityError:
        return False
    return True


def received(machine_id: str) -> bool:
    return PhoneHome.objects.filter(machine_id=machine_id).exists()
