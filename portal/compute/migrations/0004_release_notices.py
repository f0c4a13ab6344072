"""Stopped instances are released after a while (``portal.compute.services.release``): when
each stopped, when it is released, and the notices sent about it.

Instances already stopped get the moment they stopped after their last run (from their events)
and a release moment no sooner than the first notice's lead from now, so none is released
without its notices."""

from datetime import timedelta

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def backfill(apps, schema_editor):
    Instance = apps.get_model("compute", "Instance")
    InstanceEvent = apps.get_model("compute", "InstanceEvent")
    now = django.utils.timezone.now()
    earliest = now + max(settings.COMPUTE_RELEASE_NOTICES, default=timedelta(0))
    for instance in Instance.objects.filter(state="stopped").iterator():
        stopped = (
            InstanceEvent.objects.filter(instance_id=instance.pk, to_state="stopped")
            .exclude(from_state="starting")  # a start the host refused does not reset the clock
            .order_by("-created_at", "-id")
            .values_list("created_at", flat=True)
            .first()
        ) or instance.state_changed_at
        instance.stopped_since = stopped
        instance.release_at = max(stopped + settings.COMPUTE_RELEASE_STOPPED_AFTER, earliest)
        instance.save(update_fields=["stopped_since", "release_at"])


class Migration(migrations.Migration):
    dependencies = [
        ("compute", "0003_idle_stop"),
    ]

    operations = [
        migrations.AddField(
            model_name="instance",
            name="stopped_since",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="instance",
            name="release_at",
            field=models.DateTimeField(
                blank=True,
                help_text="When a stopped instance is released; starting it keeps it.",
                null=True,
            ),
        ),
        migrations.AddIndex(
            model_name="instance",
            index=models.Index(
                condition=models.Q(("state", "stopped")),
                fields=["release_at"],
                name="compute_instance_release_at",
            ),
        ),
        migrations.CreateModel(
            name="ReleaseNotice",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("stopped_since", models.DateTimeField()),
                (
                    "lead",
                    models.DurationField(help_text="How long before the release it was due."),
                ),
                (
                    "release_at",
                    models.DateTimeField(help_text="The release moment the notice gave."),
                ),
                ("recipients", models.JSONField(blank=True, default=list)),
                ("sent_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "instance",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="compute.instance",
                    ),
                ),
            ],
            options={
                "ordering": ["sent_at", "id"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("instance", "stopped_since", "lead"),
                        name="compute_release_notice_once",
                    )
                ],
            },
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
