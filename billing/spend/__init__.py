"""Spend controls (``services``): the launch checks, low-balance and spend-limit notices
(``notices``), stopping instances when prepaid credit is used up."""
