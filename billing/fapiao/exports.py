"""The tax platform's batch-issuance spreadsheet (批量开票): one XLSX row per fapiao line, the
rows of one request sharing its serial number (发票流水号). The columns are documented in
README.md ("Fapiao"); amounts are written as numbers with two decimals, the VAT rate as a
fraction (0.06), text cells as text (a code of 19 digits must not become a float)."""

import io

from django.utils.formats import date_format
from openpyxl import Workbook
from openpyxl.styles import Font

from billing.models import FapiaoKind, FapiaoRequest

SHEET_TITLE = "发票基础信息"
# (header, width): the order of the platform's template
COLUMNS = [
    ("发票流水号", 14),
    ("发票类型", 26),
    ("购买方名称", 32),
    ("购买方纳税人识别号", 22),
    ("购买方地址", 32),
    ("购买方电话", 16),
    ("购买方开户银行", 28),
    ("购买方银行账号", 24),
    ("备注", 40),
    ("项目名称", 32),
    ("商品和服务税收分类编码", 22),
    ("金额", 12),
    ("税率", 8),
    ("税额", 12),
    ("价税合计", 12),
    ("是否含税", 8),
]
KIND_NAMES = {
    FapiaoKind.SPECIAL: "数电票-增值税专用发票",
    FapiaoKind.ORDINARY: "数电票-普通发票",
}
TEXT_FORMAT = "@"
MONEY_FORMAT = "0.00"


def serial(request: FapiaoRequest) -> str:
    """The request's serial number in the spreadsheet (and what finance finds it by)."""
    return request.serial


def remark(request: FapiaoRequest) -> str:
    covers = list(request.covers.all())
    parts = [
        f"{cover.invoice.number} {date_format(cover.invoice.period_start, 'Y-m')}"
        for cover in covers
    ]
    return "账单 " + "、".join(parts) if parts else ""


def batch_rows(requests: list[FapiaoRequest]) -> list[list]:
    rows = []
    for request in requests:
        for line in request.lines.all():
            rows.append(
                [
                    serial(request),
                    KIND_NAMES[request.kind],
                    request.buyer_title,
                    request.buyer_tax_id,
                    request.buyer_address,
                    request.buyer_phone,
                    request.buyer_bank,
                    request.buyer_account,
                    remark(request),
                    line.name,
                    line.tax_code,
                    line.net,
                    line.vat_rate,
                    line.tax,
                    line.gross,
                    "否",
                ]
            )
    return rows


def batch_xlsx(requests: list[FapiaoRequest]) -> bytes:
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = SHEET_TITLE
    sheet.append([header for header, _width in COLUMNS])
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for index, (_header, width) in enumerate(COLUMNS, start=1):
        sheet.column_dimensions[sheet.cell(row=1, column=index).column_letter].width = width
    money_columns = {12, 14, 15}
    for row in batch_rows(requests):
        sheet.append(row)
        for index, cell in enumerate(sheet[sheet.max_row], start=1):
            if index in money_columns:
                cell.number_format = MONEY_FORMAT
            elif index == 13:
                cell.number_format = "0.00"
            else:
                cell.number_format = TEXT_FORMAT
    sheet.freeze_panes = "A2"
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()
