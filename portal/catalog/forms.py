"""Admin forms for the catalog.

They parse input only; the admin views hand the cleaned data to one service
(``host_register``, ``price_set``) and show a ``PortalError`` next to the field it is about.
"""

from datetime import timedelta

from django import forms
from django.contrib.admin.widgets import AdminSplitDateTime
from django.utils import timezone
from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

from portal.accounts.models import Currency
from portal.catalog.models import Host, Image, InstanceType, Region
from portal.catalog.reports import MAX_REPORT_BYTES, parse_mig_tables
from portal.errors import PortalError

# A start time picked with the widget's "Now" button is a few seconds old when it arrives.
PRICE_BACKDATE_TOLERANCE = timedelta(minutes=5)
MAX_MIG_TABLES_BYTES = 256 * 1024


def _mib(n: int) -> str:
    return f"{n / 1024 / 1024:g} MiB"


def _uploaded_bytes(upload, limit: int, what: str) -> bytes:
    if upload.size > limit:
        raise forms.ValidationError(
            _("The %(what)s is %(size)s; at most %(limit)s is accepted.")
            % {"what": what, "size": _mib(upload.size), "limit": _mib(limit)}
        )
    data = upload.read()
    if not data.strip():
        raise forms.ValidationError(_("The %(what)s is empty.") % {"what": what})
    return data


class ServiceErrorsMixin:
    """Put a ``PortalError`` on the form: on the field its code (or ``details["field"]``)
    is about, else above the form."""

    error_fields: dict[str, str] = {}

    def add_portal_error(self, exc: PortalError) -> None:
        details = exc.details if isinstance(exc.details, dict) else {}
        field = details.get("field")
        if field not in self.fields:
            field = self.error_fields.get(exc.code)
        self.add_error(field if field in self.fields else None, exc.message)


class HostRegisterForm(ServiceErrorsMixin, forms.Form):
    error_fields = {
        "host_exists": "name",
        "report_invalid": "report",
        "gpu_unknown": "report",
        "gpu_duplicate": "report",
    }

    name = forms.SlugField(
        max_length=Host._meta.get_field("name").max_length,
        help_text=_("Letters, digits, hyphens and underscores, e.g. h200-node-01."),
    )
    region = forms.ModelChoiceField(queryset=Region.objects.order_by("code"))
    vcpus = forms.IntegerField(label="vCPUs", min_value=1, help_text=_("vCPUs the host sells."))
    ram_gib = forms.IntegerField(
        label=_("RAM (GiB)"), min_value=1, help_text=_("RAM the host sells.")
    )
    disk_gb = forms.IntegerField(label=_("Local disk (GB)"), min_value=0, initial=0, required=False)
    report = forms.FileField(
        label=_("nvidia-smi report"),
        help_text=format_lazy(
            _("The output of <code>nvidia-smi -q -x</code> (XML, at most {size})."),
            size=_mib(MAX_REPORT_BYTES),
        ),
    )
    mig_tables = forms.FileField(
        label=_("MIG tables"),
        required=False,
        help_text=_(
            "Optional, for MIG-capable GPUs: a text file with the output of "
            "<code>nvidia-smi mig -lgip</code> and <code>nvidia-smi mig -lgipp</code>."
        ),
    )

    def clean_report(self) -> bytes:
        return _uploaded_bytes(self.cleaned_data["report"], MAX_REPORT_BYTES, _("report"))

    def clean_mig_tables(self) -> str | None:
        upload = self.cleaned_data.get("mig_tables")
        if not upload:
            return None
        data = _uploaded_bytes(upload, MAX_MIG_TABLES_BYTES, _("MIG tables file"))
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise forms.ValidationError(_("The MIG tables file is not UTF-8 text.")) from None
        try:  # parsed again by host_register; here only so a bad file is named as such
            parse_mig_tables(text)
        except PortalError as exc:
            raise forms.ValidationError(exc.message) from None
        return text

    def clean_disk_gb(self) -> int:
        return self.cleaned_data.get("disk_gb") or 0


class PriceAddForm(ServiceErrorsMixin, forms.Form):
    """A new price row. Amounts are not range-checked here: ``price_set`` decides."""

    instance_type = forms.ModelChoiceField(
        queryset=InstanceType.objects.select_related("gpu_model").order_by("name")
    )
    region = forms.ModelChoiceField(queryset=Region.objects.order_by("code"))
    currency = forms.ChoiceField(choices=Currency.choices)
    on_demand_per_hour = forms.DecimalField(label=_("On-demand per hour"))
    spot_per_hour = forms.DecimalField(label=_("Spot per hour"), required=False)
    effective_from = forms.SplitDateTimeField(
        label=_("In force from"),
        required=False,
        widget=AdminSplitDateTime,
        help_text=_(
            "Leave empty for now; a future time schedules the change. Prices cannot "
            "start in the past: usage already rated would change."
        ),
    )

    def clean_effective_from(self):
        value = self.cleaned_data.get("effective_from")
        if value is not None and value < timezone.now() - PRICE_BACKDATE_TOLERANCE:
            raise forms.ValidationError(
                _(
                    "A price cannot start in the past. Leave this empty for now, or pick a future time."
                )
            )
        return value


class InstanceTypeForm(forms.ModelForm):
    """Checks the MIG rules ``instance_type_upsert`` applies, with a sentence per field."""

    class Meta:
        model = InstanceType
        fields = [
            "name",
            "description",
            "gpu_model",
            "gpu_count",
            "mig_profile",
            "vcpus",
            "ram_gib",
            "local_nvme_gb",
            "interconnect",
            "spot_allowed",
            "is_active",
            "provider",
            "provider_name",
            "tax_code",
            "vat_rate",
        ]

    def clean(self):
        cleaned = super().clean()
        model, profile = cleaned.get("gpu_model"), cleaned.get("mig_profile")
        if profile is not None and model is not None:
            if profile.gpu_model_id != model.pk:
                self.add_error("mig_profile", f"{profile} is not a MIG profile of {model}.")
            if cleaned.get("gpu_count") != 1:
                self.add_error("gpu_count", "A MIG slice type has exactly 1 GPU.")
        return cleaned


class ImageForm(forms.ModelForm):
    class Meta:
        model = Image
        fields = [
            "name",
            "description",
            "os",
            "cuda_version",
            "driver_version",
            "frameworks",
            "instance_types",
            "is_default",
            "is_active",
        ]

    def clean_is_default(self) -> bool:
        is_default = self.cleaned_data.get("is_default")
        if is_default:
            other = Image.objects.filter(is_default=True).exclude(pk=self.instance.pk).first()
            if other is not None:
                raise forms.ValidationError(
                    _("%(image)s is the default image; untick it there first.") % {"image": other}
                )
        return is_default
