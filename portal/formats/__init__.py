"""Date and number formats per language (``FORMAT_MODULE_PATH``), on top of Django's own.

Templates write dates with the named formats (``|date`` for ``DATE_FORMAT``,
``|date:"DATETIME_FORMAT"``, ``|date:"YEAR_MONTH_FORMAT"``), never a hand-written pattern,
so a page reads ``4 Dec 2026`` in English and ``2026年12月4日`` in Chinese. ISO stamps
(``Y-m-d H:i``) stay as they are in both: they are what exports and logs print.
"""
