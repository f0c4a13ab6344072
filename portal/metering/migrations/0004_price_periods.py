"""Usage records per price period: an hour in which a price takes effect is recorded in a
record per period; every existing record is its hour's only period."""

import django.db.models.expressions
from django.db import migrations, models


def periods_are_hours(apps, schema_editor):
    UsageRecord = apps.get_model("metering", "UsageRecord")
    UsageRecord.objects.update(period_start=models.F("hour_start"))


class Migration(migrations.Migration):
    dependencies = [("metering", "0003_tenant_scoped_uniqueness")]

    operations = [
        migrations.AddField(
            model_name="usagerecord",
            name="period_start",
            field=models.DateTimeField(null=True),
        ),
        migrations.RunPython(periods_are_hours, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name="usagerecord",
            name="period_start",
            field=models.DateTimeField(
                help_text="When the price period of this record starts: the hour, or the moment "
                "within it a price took effect."
            ),
        ),
        migrations.RemoveConstraint(model_name="usagerecord", name="metering_record_one_per_hour"),
        migrations.AddConstraint(
            model_name="usagerecord",
            constraint=models.UniqueConstraint(
                fields=(
                    "organization",
                    "subject_type",
                    "subject_id",
                    "meter",
                    "hour_start",
                    "period_start",
                ),
                name="metering_record_one_per_period",
            ),
        ),
        migrations.AddConstraint(
            model_name="usagerecord",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("period_start__gte", django.db.models.expressions.F("hour_start"))
                ),
                name="metering_record_period_in_hour",
            ),
        ),
    ]
