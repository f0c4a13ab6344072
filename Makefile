# The two commands: `make run` serves the portal; `make test` runs the whole suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PORT ?= 8000
export UV_PYTHON_DOWNLOADS := never

.PHONY: help bootstrap run test lint format migrations messages

help:
	@echo "make run    install, migrate, load demo data, serve on http://127.0.0.1:$(PORT) with a Celery worker and beat"
	@echo "make test   install, start throwaway PostgreSQL and Redis, run ruff and the whole test suite"

bootstrap:
	@scripts/bootstrap.sh

run: bootstrap
	@DEBUG=$${DEBUG:-1} PORT=$(PORT) scripts/run.sh

test: bootstrap
	@scripts/test.sh

lint: bootstrap
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

format: bootstrap
	.venv/bin/ruff check --fix . && .venv/bin/ruff format .

migrations: bootstrap
	DEBUG=1 .venv/bin/python manage.py makemigrations

# Finds every string marked for translation and updates the Chinese catalogue
# (locale/zh_Hans/LC_MESSAGES/django.po); translate the new entries, then `make bootstrap`
# compiles it. tests/test_i18n.py fails while the catalogue is behind the code.
messages: bootstrap
	DEBUG=1 .venv/bin/python manage.py makemessages $$(.venv/bin/python -m portal.i18n_sources)
	.venv/bin/python scripts/compile_messages.py
