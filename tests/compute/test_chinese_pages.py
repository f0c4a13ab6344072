"""The instance pages in Simplified Chinese: the rows written in Python (presenters), the
state labels, the buttons and their confirmations, and the catalog's cached body per language."""

import pytest
from django.test import Client

from tests.factories import settle

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("fast_simulated_backend")]
ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-CN,zh;q=0.9"}


@pytest.fixture
def owner_client(owner):
    client = Client()
    client.force_login(owner)
    return client


def test_the_instances_table_rows_speak_chinese(owner_client, launch):
    instance = settle(launch("alpha"))
    page = owner_client.get("/instances/", **ZH).content.decode()
    row = page.split(f'id="instance-row-{instance.pk}"', 1)[1].split("</tr>", 1)[0]
    assert "运行中" in row  # the state label
    assert ">复制</button>" in row and 'aria-label="复制 alpha 的 SSH 命令"' in row
    assert "Running" not in row and "Copy" not in row
    english = owner_client.get("/instances/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    assert ">Copy</button>" in english and "Running" in english


def test_the_instance_page_buttons_and_confirmations_speak_chinese(owner_client, launch):
    instance = settle(launch("alpha"))
    page = owner_client.get(f"/instances/{instance.pk}/", **ZH).content.decode()
    assert ">停止</button>" in page and 'hx-confirm="停止 alpha？' in page  # noqa: RUF001
    assert "输入 <code>alpha</code> 以释放实例" in page
    assert "按秒计费" in page
    assert "pending: 已请求创建" in page.replace("</span>", "")  # the event, stored in English


def test_the_catalog_is_cached_per_language(compute_catalog):
    english = Client().get("/catalog/", HTTP_ACCEPT_LANGUAGE="en").content.decode()
    chinese = Client().get("/catalog/", **ZH).content.decode()
    assert "GPU instances" in english and "按需价格按小时以 USD 计" not in english
    assert "按需价格按小时以 USD 计" in chinese and "On-demand prices per hour" not in chinese


def test_an_action_asked_for_in_chinese_is_recorded_in_english_and_shown_in_chinese(
    owner_client, launch
):
    instance = settle(launch("alpha"))
    response = owner_client.post(f"/instances/{instance.pk}/stop/", **ZH)
    assert response.status_code == 302
    assert instance.events.order_by("pk").last().reason == "Stop requested"
    page = owner_client.get(f"/instances/{instance.pk}/", **ZH).content.decode()
    assert "已请求停止" in page
    english = owner_client.get(f"/instances/{instance.pk}/", HTTP_ACCEPT_LANGUAGE="en")
    assert "Stop requested" in english.content.decode()
