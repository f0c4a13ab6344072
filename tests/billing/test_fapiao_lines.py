"""Fapiao lines from invoices: the tax classification of products, tax-inclusive amounts split
once per line, and totals that are exactly what the invoices cover."""

from decimal import Decimal

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from billing.fapiao.lines import allocate, fapiao_lines, split_gross
from portal.catalog.models import InstanceType
from portal.metering.models import Meter
from tests.factories import fapiao as factories

D = Decimal
pytestmark = pytest.mark.django_db


def test_allocate_adds_up_exactly_and_gives_leftover_cents_to_largest_remainders():
    assert allocate(D("1.00"), [D(1), D(1), D(1)]) == [D("0.34"), D("0.33"), D("0.33")]
    assert allocate(D("10.00"), [D("2"), D("1")]) == [D("6.67"), D("3.33")]
    assert sum(allocate(D("0.05"), [D("3.333"), D("1"), D("7")])) == D("0.05")


def test_split_gross_rounds_the_net_once_and_tax_is_the_rest():
    assert split_gross(D("250.00"), D("0.06")) == (D("235.85"), D("14.15"))
    assert split_gross(D("100.00"), D("0.13")) == (D("88.50"), D("11.50"))
    assert split_gross(D("100.00"), D("0")) == (D("100.00"), D("0.00"))


def test_tax_code_is_19_digits_in_the_form_and_the_database():
    world = factories.cny_world()
    instance_type = world.types["gpu_1x_h200"]
    instance_type.tax_code = "30402"
    with pytest.raises(ValidationError):
        instance_type.full_clean()
    with pytest.raises(IntegrityError), transaction.atomic():
        InstanceType.objects.filter(pk=instance_type.pk).update(tax_code="30402")
    with pytest.raises(IntegrityError), transaction.atomic():
        meter = Meter.objects.create(key="tokens.generated", name="Tokens", unit="token")
        Meter.objects.filter(pk=meter.pk).update(vat_rate=D("1.5"))


def test_lines_use_the_products_code_and_rate_and_fall_back_to_the_default(settings):
    settings.FAPIAO_DEFAULT_TAX_CODE = "3040200000000000000"
    settings.FAPIAO_DEFAULT_VAT_RATE = "0.06"
    world = factories.cny_world()
    invoice = factories.paid_october(world, hours=10)  # 10 h at 25.00 = 250.00 CNY
    assert (invoice.currency, invoice.total) == ("CNY", D("250.00"))
    [line] = fapiao_lines([(invoice, invoice.total)])
    assert (line.tax_code, line.vat_rate) == ("3040200000000000000", D("0.06"))
    assert (line.gross, line.net, line.tax) == (D("250.00"), D("235.85"), D("14.15"))
    assert "gpu_1x_h200" in line.name

    InstanceType.objects.filter(pk=world.types["gpu_1x_h200"].pk).update(
        tax_code="3040203000000000000", vat_rate=D("0.13")
    )
    [line] = fapiao_lines([(invoice, invoice.total)])
    assert (line.tax_code, line.vat_rate) == ("3040203000000000000", D("0.13"))
    assert (line.net, line.tax) == (D("221.24"), D("28.76"))


def test_an_invoice_with_tax_spreads_it_over_lines_and_a_part_is_spread_over_classes():
    world = factories.cny_world()
    invoice = factories.paid_october(world, hours=10, tax="0.06")  # 250.00 + 15.00 tax
    assert invoice.total == D("265.00")
    [line] = fapiao_lines([(invoice, invoice.total)])
    assert line.gross == D("265.00")
    assert line.net + line.tax == D("265.00")
    [part] = fapiao_lines([(invoice, D("100.00"))])
    assert (part.gross, part.net, part.tax) == (D("100.00"), D("94.34"), D("5.66"))
