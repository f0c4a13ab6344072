"""The catalog page's filter form: it only parses the query string into a ``CatalogQuery``."""

from django import forms
from django.utils.translation import gettext_lazy as _

from portal.accounts.models import Currency
from portal.catalog.selectors import SORTS, CatalogQuery, catalog_filter_choices

GPU_COUNTS = [(1, "1"), (2, "2"), (4, "4"), (8, "8")]
MEMORY_STEPS = [
    (16, "16 GB+"),
    (24, "24 GB+"),
    (40, "40 GB+"),
    (80, "80 GB+"),
    (141, "141 GB+"),
    (320, "320 GB+"),
    (640, "640 GB+"),
]


class CatalogFilterForm(forms.Form):
    gpu_model = forms.ChoiceField(label="GPU", required=False)
    gpu_count = forms.TypedChoiceField(
        label="GPUs",
        required=False,
        coerce=int,
        empty_value=None,
        choices=[("", _("Any")), *GPU_COUNTS],
    )
    min_gpu_memory_gb = forms.TypedChoiceField(
        label=_("GPU memory"),
        required=False,
        coerce=int,
        empty_value=None,
        choices=[("", _("Any")), *MEMORY_STEPS],
    )
    region = forms.ChoiceField(label=_("Region"), required=False)
    max_price = forms.DecimalField(
        label=_("Max price / hour"),
        required=False,
        min_value=0,
        max_digits=12,
        decimal_places=2,
        widget=forms.NumberInput(
            attrs={"step": "0.01", "inputmode": "decimal", "placeholder": _("Any")}
        ),
    )
    available = forms.BooleanField(label=_("Available now"), required=False)
    sort = forms.ChoiceField(label=_("Sort by"), required=False, choices=list(SORTS.items()))
    currency = forms.ChoiceField(label=_("Currency"), required=False, choices=Currency.choices)

    def __init__(self, *args, choices: dict | None = None, **kwargs) -> None:
        """``choices``: ``selectors.catalog_filter_choices()`` (GPU models offered, regions),
        which the catalog page passes from its cache; looked up when not given."""
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        if choices is None:
            choices = catalog_filter_choices()
        self.fields["gpu_model"].choices = [("", _("Any GPU")), *choices["gpu_models"]]
        self.fields["region"].choices = [
            ("", _("Any region")),
            *(
                (code, f"{name} ({code})" if name != code else code)
                for code, name in choices["regions"]
            ),
        ]

    def to_query(self) -> CatalogQuery:
        data = self.cleaned_data if self.is_valid() else {}
        return CatalogQuery(
            gpu_model=data.get("gpu_model") or "",
            gpu_count=data.get("gpu_count"),
            min_gpu_memory_gb=data.get("min_gpu_memory_gb"),
            region=data.get("region") or "",
            max_price=data.get("max_price"),
            available=bool(data.get("available")),
            sort=data.get("sort") or "price",
        )
