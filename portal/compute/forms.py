"""Forms for the instance and volume pages. They parse and label input; the services decide
what is allowed (names, capacity, quota, which type is sold where)."""

from decimal import Decimal

from django import forms
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from portal.accounts.forms import PortalForm
from portal.catalog.selectors import offer_price
from portal.catalog.types import Offer
from portal.compute.models import IDLE_MINUTES, IDLE_THRESHOLD_PCT
from portal.compute.services import NAME_PATTERN
from portal.money import format_amount

HOURS_PER_MONTH = 730
TIMES = "\N{MULTIPLICATION SIGN}"
NAME_HELP = _("Lowercase letters, digits and hyphens, e.g. train-llama-01.")
NAME_INVALID = _(
    "Use 1 to 63 lowercase letters, digits and hyphens, starting and ending with a letter or digit."
)


def clean_resource_name(value: str) -> str:
    """The services' naming rule, checked early so it shows with the form's other errors."""
    name = (value or "").strip().lower()
    if not NAME_PATTERN.match(name):
        raise forms.ValidationError(NAME_INVALID)
    return name


class NamedForm(PortalForm):
    def clean_name(self) -> str:
        return clean_resource_name(self.cleaned_data["name"])


# The automatic stop settings (launch form and instance page), as the services name them.
STOP_FIELDS = (
    "idle_stop_enabled",
    "idle_stop_threshold_pct",
    "idle_stop_minutes",
    "scheduled_stop_at",
)

# Keys of ``InvalidInput.details`` from ``instance_launch`` -> the launch form's field.
LAUNCH_ERROR_FIELDS = {
    "name": "name",
    "instance_type": "instance_type",
    "region": "region",
    "image": "image",
    "ssh_key_ids": "ssh_key_ids",
    "volume_ids": "volume_id",
    "new_volume_gb": "new_volume_gb",
    "user_data": "user_data",
    **{name: name for name in STOP_FIELDS},
}


def _money(amount: Decimal, currency: str) -> str:
    return f"{format_amount(amount, currency)} {currency}"


def type_label(offer: Offer) -> str:
    gpus = (
        _("MIG %(profile)s of %(gpus)s")
        % {"profile": offer.mig_profile, "gpus": f"1{TIMES} {offer.gpu_model}"}
        if offer.mig_profile
        else f"{offer.gpu_count}{TIMES} {offer.gpu_model}"
    )
    price = _money(offer_price(offer), offer.currency)
    if len(offer.prices) > 1:
        price = _("from %(price)s/h") % {"price": price}
    else:
        price = _("%(price)s/h") % {"price": price}
    available = _("available now") if not offer.sold_out else _("sold out")
    return f"{offer.name} — {gpus} — {price} — {available}"


def region_label(offer: Offer, region: str) -> str:
    price = offer_price(offer, region)
    free = offer.available.get(region, 0)
    available = _("%(free)s available now") % {"free": free} if free else _("sold out")
    per_hour = _("%(price)s/h") % {"price": _money(price, offer.currency)}
    return f"{region} — {per_hour} — {available}"


IDLE_HELP = _(
    "It never stops on missing data: without GPU readings covering the whole time, it keeps "
    "running. A MIG slice is judged by the readings of its whole GPU, which it shares with "
    "other slices."
)


def stop_fields() -> dict[str, forms.Field]:
    """The automatic stop fields, shared by the launch form and the instance page's form."""
    low_pct, default_pct, high_pct = IDLE_THRESHOLD_PCT
    low_min, default_min, high_min = IDLE_MINUTES
    return {
        "idle_stop_enabled": forms.BooleanField(
            label=_("Stop it when its GPUs are idle"), required=False, help_text=IDLE_HELP
        ),
        "idle_stop_threshold_pct": forms.IntegerField(
            label=_("Idle below, percent GPU utilisation"),
            required=False,  # empty: the default
            min_value=low_pct,
            max_value=high_pct,
            initial=default_pct,
        ),
        "idle_stop_minutes": forms.IntegerField(
            label=_("For, minutes"),
            required=False,
            min_value=low_min,
            max_value=high_min,
            initial=default_min,
        ),
        "scheduled_stop_at": forms.DateTimeField(
            label=_("Scheduled stop (optional, UTC)"),
            required=False,
            input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"],
            widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"),
            help_text=_("Stops it once at this time; leave empty for none."),
        ),
    }


class StopFieldsMixin:
    """The automatic stop fields; an empty threshold or idle time is the default."""

    def clean_idle_stop_threshold_pct(self) -> int:
        value = self.cleaned_data.get("idle_stop_threshold_pct")
        return IDLE_THRESHOLD_PCT[1] if value is None else value

    def clean_idle_stop_minutes(self) -> int:
        value = self.cleaned_data.get("idle_stop_minutes")
        return IDLE_MINUTES[1] if value is None else value


class StopSettingsForm(StopFieldsMixin, PortalForm):
    """Idle stop and a scheduled shutdown, on the instance page."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields.update(stop_fields())


class LaunchForm(StopFieldsMixin, NamedForm):
    """Choices come from the catalog in the organisation's currency (``catalog_offers``)."""

    instance_type = forms.ChoiceField(label=_("Instance type"))
    region = forms.ChoiceField(label=_("Region"))
    image = forms.ChoiceField(label=_("Image"))
    ssh_key_ids = forms.TypedMultipleChoiceField(
        label=_("SSH keys"),
        coerce=int,
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": _("Choose at least one SSH key to log in with.")},
    )
    name = forms.CharField(
        label=_("Name"),
        max_length=63,
        help_text=NAME_HELP,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    volume_id = forms.TypedChoiceField(
        label=_("Attach an existing volume (optional)"),
        coerce=int,
        empty_value=None,
        required=False,
    )
    new_volume_gb = forms.IntegerField(
        label=_("Or create a new volume, GB (optional)"),
        required=False,
        min_value=1,
        max_value=65536,
        help_text=_("Kept when the instance is terminated; billed while it exists."),
    )
    user_data = forms.CharField(
        label=_("User data (optional)"),
        required=False,
        strip=False,
        max_length=16384,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false"}),
        help_text=_("A cloud-init script or #cloud-config run at first boot (up to 16 KiB)."),
    )

    def __init__(self, *args, offers, images, ssh_keys, volumes, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields.update(stop_fields())
        self.offers = {offer.name: offer for offer in offers}
        self.fields["instance_type"].choices = [(offer.name, type_label(offer)) for offer in offers]
        self.fields["image"].choices = [
            (image.name, f"{image.name} ({image.os})" if image.os else image.name)
            for image in images
        ]
        self.fields["ssh_key_ids"].choices = [(key.pk, key.name) for key in ssh_keys]
        self.fields["volume_id"].choices = [
            ("", _("No existing volume")),
            *(
                (
                    v.pk,
                    _("%(name)s — %(size)s GB in %(region)s")
                    % {"name": v.name, "size": v.size_gb, "region": v.region.code},
                )
                for v in volumes
            ),
        ]
        self.set_regions(self.data.get("instance_type") or self.initial.get("instance_type"))

    def set_regions(self, type_name: str | None) -> None:
        """Regions where the chosen type has a price, most free capacity first."""
        offer = self.offers.get(type_name or "")
        if offer is None:
            self.fields["region"].choices = []
            return
        regions = sorted(
            (quote.region for quote in offer.prices),
            key=lambda code: (-offer.available.get(code, 0), code),
        )
        self.fields["region"].choices = [(code, region_label(offer, code)) for code in regions]

    @property
    def has_ssh_keys(self) -> bool:
        return bool(self.fields["ssh_key_ids"].choices)

    def clean(self):
        data = super().clean()
        if data.get("volume_id") and data.get("new_volume_gb"):
            self.add_error(
                "new_volume_gb", _("Attach an existing volume or create a new one, not both.")
            )
        return data


class RenameForm(NamedForm):
    name = forms.CharField(
        label=_("New name"),
        max_length=63,
        help_text=NAME_HELP,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )


class TerminateForm(PortalForm):
    confirm_name = forms.CharField(
        label=_("Type the instance's name to terminate it"),
        max_length=63,
        help_text=_(
            "Terminating deletes the machine and its boot disk; attached volumes are "
            "detached and kept. It cannot be undone."
        ),
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )

    def __init__(self, *args, instance_name: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.instance_name = instance_name

    def clean_confirm_name(self) -> str:
        typed = self.cleaned_data["confirm_name"].strip()
        if typed != self.instance_name:
            raise forms.ValidationError(
                _("That is not the name; type %(name)s to confirm.") % {"name": self.instance_name}
            )
        return typed


class VolumeForm(NamedForm):
    name = forms.CharField(
        label=_("Name"),
        max_length=63,
        help_text=NAME_HELP,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    region = forms.ChoiceField(label=_("Region"))
    size_gb = forms.IntegerField(label=_("Size, GB"), min_value=1, max_value=65536, initial=100)

    def __init__(self, *args, regions, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["region"].choices = [(r.code, f"{r.code} — {r.name}") for r in regions]


STATE_FILTERS = {
    "all": _("All"),
    "live": _("Live"),
    "terminated": _("Terminated or failed"),
}


class InstanceFilterForm(PortalForm):
    state = forms.ChoiceField(
        label=_("Show"), choices=list(STATE_FILTERS.items()), required=False, initial="all"
    )

    def value(self) -> str:
        if self.is_valid():
            return self.cleaned_data["state"] or "all"
        return "all"

    def state_select(self) -> SafeString:
        """The state ``<select>`` as its widget writes it (the choice given, or the initial one,
        selected; one that is not a choice marked invalid for assistive technology), without
        the widget's templates, which cost more than the rest of the filter bar."""
        bound = self["state"]
        attrs = bound.build_widget_attrs({})  # never required nor disabled: every value a string
        attrs.setdefault("id", bound.auto_id)
        current = bound.value()
        options = (
            (value, " selected" if value == current else "", label)
            for value, label in self.fields["state"].choices
        )
        return format_html(
            '<select name="{}"{}>\n{}</select>',
            bound.html_name,
            format_html_join("", ' {}="{}"', attrs.items()),
            format_html_join("", '  <option value="{}"{}>{}</option>\n\n', options),
        )
