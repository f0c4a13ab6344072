"""Settings for the GPU cloud portal.

Everything comes from environment variables with embedded defaults that need no server:
SQLite in ``var/``, a ``filesystem://`` Celery broker in ``var/``, the simulated provisioning
backend and the fake payment provider. The same code runs on PostgreSQL, Redis or RabbitMQ and
real Stripe when the variables say so (see the README).
"""

import os
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("PORTAL_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", False)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = "insecure-development-key-only-used-with-debug-on"  # nosec B105 # only with DEBUG on

# Real-name verification: the key (Fernet, urlsafe base64 of 32 bytes; several separated by
# commas to rotate, the first encrypts) that encrypts identity numbers at rest. Required when
# DEBUG is off; with DEBUG on a key derived from SECRET_KEY stands in.
IDENTITY_ENCRYPTION_KEY = os.environ.get("IDENTITY_ENCRYPTION_KEY", "")
if not IDENTITY_ENCRYPTION_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("IDENTITY_ENCRYPTION_KEY must be set when DEBUG is off.")
    import base64
    import hashlib

    IDENTITY_ENCRYPTION_KEY = base64.urlsafe_b64encode(
        hashlib.sha256(f"identity-encryption:{SECRET_KEY}".encode()).digest()
    ).decode()
# Keys the HMAC that finds an identity number without decrypting; blank: derived from the first
# encryption key (set it before rotating that key, so the stored hashes keep matching).
IDENTITY_HASH_KEY = os.environ.get("IDENTITY_HASH_KEY", "")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
SITE_URL = os.environ.get("SITE_URL", "http://127.0.0.1:8000").rstrip("/")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "django_countries",
    "portal.accounts",
    "portal.catalog",
    "portal.compute",
    "portal.provisioning",
    "portal.metering",
    "billing",
    "portal.web",
]

MIDDLEWARE = [
    "portal.observability.middleware.RequestObservabilityMiddleware",  # request id, metrics
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "portal.accounts.middleware.UserLanguageMiddleware",  # the signed-in user's language
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "portal.accounts.middleware.CurrentOrganizationMiddleware",
    "portal.observability.middleware.RequestContextMiddleware",  # organisation, user in logs
    "portal.middleware.PortalErrorMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"
ASGI_APPLICATION = "portal.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.accounts.context_processors.current_organization",
                "billing.context_processors.billing_banner",
            ],
            # Money filters for every app's templates, from the kernel (portal/money.py).
            "libraries": {"money": "portal.templatetags.money"},
        },
    },
]

# --- Database -------------------------------------------------------------------------------
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "0")),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server and the Celery worker use the file at the same time.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE"}
    )
# portal.sql's statements (a launch's reads and appends) are prepared on PostgreSQL once they
# have run a few times on a connection; off behind a pooler that cannot keep them.
DATABASE_PREPARED_STATEMENTS = os.environ.get("DATABASE_PREPARED_STATEMENTS", "1") == "1"
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and (
    DATABASE_PREPARED_STATEMENTS
):
    # psycopg prepares a statement after this many runs on a connection; only server-side
    # binding cursors (portal.sql's) prepare, the ORM's client-side ones never do.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("prepare_threshold", 5)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache (login throttling and API throttles use it) -------------------------------------
if os.environ.get("REDIS_CACHE_URL"):
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": os.environ["REDIS_CACHE_URL"],
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# --- Authentication -------------------------------------------------------------------------
AUTH_USER_MODEL = "accounts.User"
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "accounts:dashboard"
LOGOUT_REDIRECT_URL = "accounts:login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# How many reverse proxies in front of the portal append to X-Forwarded-For (0: none, use
# REMOTE_ADDR). Used for audit IPs and throttling.
TRUSTED_PROXY_COUNT = int(os.environ.get("TRUSTED_PROXY_COUNT", "0"))
LOGIN_THROTTLE_ATTEMPTS = int(os.environ.get("LOGIN_THROTTLE_ATTEMPTS", "5"))
LOGIN_THROTTLE_WINDOW_SECONDS = int(os.environ.get("LOGIN_THROTTLE_WINDOW_SECONDS", "900"))
INVITATION_TTL_DAYS = int(os.environ.get("INVITATION_TTL_DAYS", "7"))
EMAIL_VERIFICATION_MAX_AGE_SECONDS = 3 * 24 * 3600

# --- Email ----------------------------------------------------------------------------------
_email_backend = os.environ.get("EMAIL_BACKEND", "portal.mailers.ConsoleEmailBackend")
MAILERS = {
    "default": {
        "BACKEND": _email_backend,
        "OPTIONS": (
            {
                "host": os.environ.get("EMAIL_HOST", "localhost"),
                "port": int(os.environ.get("EMAIL_PORT", "25")),
                "username": os.environ.get("EMAIL_HOST_USER", ""),
                "password": os.environ.get("EMAIL_HOST_PASSWORD", ""),
                "use_tls": env_bool("EMAIL_USE_TLS", False),
            }
            if _email_backend.endswith("smtp.EmailBackend")
            else {}
        ),
    }
}
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "GPU Cloud <noreply@gpucloud.example>")

# --- Internationalisation -------------------------------------------------------------------
# English and Simplified Chinese. The language comes from the signed-in user's choice
# (``User.language``, set by the header's switcher), else the language cookie, else the
# browser's Accept-Language; API clients choose with Accept-Language. Error codes never change
# with the language, only their messages. Dates follow portal/formats/<language>/formats.py.
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
FORMAT_MODULE_PATH = ["portal.formats"]
LANGUAGE_COOKIE_NAME = "portal_language"
LANGUAGE_COOKIE_AGE = 365 * 24 * 3600
LANGUAGE_COOKIE_SECURE = not DEBUG
LANGUAGE_COOKIE_SAMESITE = "Lax"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files ---------------------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "django.contrib.staticfiles.storage.StaticFilesStorage"
            if DEBUG
            else "whitenoise.storage.CompressedManifestStaticFilesStorage"
        )
    },
}
WHITENOISE_USE_FINDERS = DEBUG

# --- Security (production defaults when DEBUG is off) ---------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SECURE_REDIRECT_EXEMPT = [r"^(healthz|readyz|metrics)$"]  # probes and scrapers speak plain HTTP
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "0" if DEBUG else "31536000"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = not DEBUG
SECURE_HSTS_PRELOAD = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy on every response: the portal's pages load only their own scripts,
# stylesheets, images and fonts; no inline script, no inline style, no eval, no plugins; no other
# site may frame them. Forms post only to the portal itself, except that with Stripe the top-up
# and add-card forms are answered with a redirect to Stripe Checkout (the browser checks the
# redirect against form-action too).
_CSP_FORM_ACTION = ["'self'"]
if os.environ.get("PAYMENT_PROVIDER", "fake") == "stripe":
    _CSP_FORM_ACTION.append("https://checkout.stripe.com")
SECURE_CSP = {
    "default-src": ["'self'"],
    "script-src": ["'self'"],
    "style-src": ["'self'"],
    "img-src": ["'self'", "data:"],
    "font-src": ["'self'"],
    "connect-src": ["'self'"],
    "object-src": ["'none'"],
    "base-uri": ["'self'"],
    "frame-ancestors": ["'none'"],
    "form-action": _CSP_FORM_ACTION,
}
# Request bodies other than file uploads are refused above 2.5 MiB (Django's default, stated
# here). Larger uploads go to a temporary file, not memory; each upload form has its own limit
# (a host report at most 2 MiB) checked on the file's size before anything parses it.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.accounts.api.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["portal.accounts.api.permissions.HasOrganizationRole"],
    "DEFAULT_PAGINATION_CLASS": "portal.api.pagination.StandardPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api.errors.exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "portal.api.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "portal.api.throttling.ClientRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": os.environ.get("API_THROTTLE_ANON", "60/min"),
        "client": os.environ.get("API_THROTTLE_CLIENT", "1200/min"),
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "GPU Cloud Portal API",
    "DESCRIPTION": (
        "Self-service GPU cloud. Authenticate with `Authorization: Bearer <api key>`. "
        'Errors have the shape `{"error": {"code", "message", "details"}}`.'
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # no badge from validator.swagger.io: the page only loads the portal's own files (CSP)
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "APPEND_COMPONENTS": {
        "securitySchemes": {"ApiKeyAuth": {"type": "http", "scheme": "bearer"}},
    },
    "SECURITY": [{"ApiKeyAuth": []}],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "portal.api.schema.document_error_codes",
    ],
    # Fields named "kind" in the billing API have three different choice sets.
    "ENUM_NAME_OVERRIDES": {
        "LedgerEntryKindEnum": "billing.models.EntryKind",
        "InvoiceKindEnum": "billing.models.InvoiceKind",
        "FapiaoKindEnum": "billing.models.FapiaoKind",
        "FapiaoStatusEnum": "billing.models.FapiaoStatus",
        "InvoiceLineKindEnum": "billing.models.LineKind",
        "InvoiceStatusEnum": "billing.models.InvoiceStatus",
        "CreditRequestStatusEnum": "billing.models.CreditRequestStatus",
        "SpendLimitModeEnum": "billing.models.SpendLimitMode",
        "VerificationKindEnum": "portal.accounts.models.VerificationKind",
    },
}

# --- Celery ---------------------------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_DATA_DIR = Path(os.environ.get("CELERY_BROKER_DATA_DIR", VAR_DIR / "celery-broker"))
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or None
if CELERY_BROKER_URL.startswith("filesystem://"):
    # The embedded default broker keeps its messages in a project folder (made by portal.celery).
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_DATA_DIR / "queue"),
        "data_folder_out": str(CELERY_BROKER_DATA_DIR / "queue"),
        "processed_folder": str(CELERY_BROKER_DATA_DIR / "processed"),
        "control_folder": str(CELERY_BROKER_DATA_DIR / "control"),
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {}  # filled from portal/scheduled.py

# --- Pluggable backends (filled in by the instances and billing work) -----------------------
PROVISIONING_BACKEND = os.environ.get("PROVISIONING_BACKEND", "simulated")
PROVISIONING_BACKENDS = {
    "simulated": {
        "BACKEND": "portal.provisioning.simulated.SimulatedBackend",
        "OPTIONS": {
            # seconds a machine takes to boot, stop and reboot (a real GPU VM: a minute or two)
            "boot_seconds": float(os.environ.get("SIMULATED_BOOT_SECONDS", "8")),
            "stop_seconds": float(os.environ.get("SIMULATED_STOP_SECONDS", "3")),
            "ip_network": os.environ.get("SIMULATED_IP_NETWORK", "10.64.0.0/16"),
        },
    },
    "libvirt": {
        "BACKEND": "portal.provisioning.libvirt.LibvirtBackend",
        "OPTIONS": {
            # one connection URI per host; {host} is the host's name
            "uri_template": os.environ.get("LIBVIRT_URI_TEMPLATE", "qemu+ssh://root@{host}/system"),
            "shutdown_timeout_seconds": float(os.environ.get("LIBVIRT_SHUTDOWN_TIMEOUT", "60")),
            "image_dir": os.environ.get("LIBVIRT_IMAGE_DIR", "/var/lib/libvirt/images"),
            # "ssh": running (and billed) once the guest's SSH port answers; "phone_home":
            # once cloud-init has posted to the machine's phone-home URL and SSH answers;
            # "libvirt": once the domain runs
            "readiness": os.environ.get("LIBVIRT_READINESS", "ssh"),
            # "qemu" emulates in software where the host has no usable KVM
            "domain_type": os.environ.get("LIBVIRT_DOMAIN_TYPE", "kvm"),
            "cpu_model": os.environ.get("LIBVIRT_CPU_MODEL", ""),  # empty: host-passthrough
            "ssh_user": os.environ.get("LIBVIRT_SSH_USER", "ubuntu"),
        },
    },
    "slurm": {
        "BACKEND": "portal.provisioning.slurm.SlurmBackend",
        "OPTIONS": {
            # slurmrestd on a unix socket (rest_auth/local), or at a URL with a JWT
            "socket": ""
            if os.environ.get("SLURM_RESTD_URL")
            else os.environ.get("SLURM_RESTD_SOCKET", "/run/slurmrestd/slurmrestd.socket"),
            "url": os.environ.get("SLURM_RESTD_URL", ""),
            "user": os.environ.get("SLURM_RESTD_USER", ""),
            "token": os.environ.get("SLURM_JWT", ""),
            "api_version": os.environ.get("SLURM_RESTD_API_VERSION", "v0.0.38"),
            "partition": os.environ.get("SLURM_PARTITION", "gpu"),
            # the portal region the cluster's nodes are hosts of (portal.catalog.slurm_sync)
            "region": os.environ.get("SLURM_REGION", "slurm"),
            # Slurm GRES type = portal GPU model code, comma separated
            "gpu_types": dict(
                pair.split("=", 1)
                for pair in os.environ.get("SLURM_GPU_TYPES", "h200=h200-sxm-141gb").split(",")
                if "=" in pair
            ),
            "host_prefix": os.environ.get("SLURM_HOST_PREFIX", ""),
        },
    },
}
# Slurm backends whose nodes the catalog mirrors into hosts every minute (comma separated
# aliases, e.g. "slurm"; portal.catalog.slurm_sync)
SLURM_SYNC_BACKENDS = [a for a in os.environ.get("SLURM_SYNC_BACKENDS", "").split(",") if a]
# Where the machines' cloud-init posts when its first boot is done (the portal as the guests
# reach it; portal.provisioning.phone_home).
PROVISIONING_PHONE_HOME_URL = os.environ.get("PROVISIONING_PHONE_HOME_URL", SITE_URL).rstrip("/")
# Instances
DEFAULT_GPU_QUOTA = int(os.environ.get("DEFAULT_GPU_QUOTA", "16"))  # GPUs an organisation may hold
COMPUTE_BOOT_DISK_GB = int(os.environ.get("COMPUTE_BOOT_DISK_GB", "100"))
COMPUTE_POLL_SECONDS = float(os.environ.get("COMPUTE_POLL_SECONDS", "2"))
COMPUTE_REDISPATCH_SECONDS = int(os.environ.get("COMPUTE_REDISPATCH_SECONDS", "60"))
COMPUTE_LAUNCH_TIMEOUT_SECONDS = int(os.environ.get("COMPUTE_LAUNCH_TIMEOUT_SECONDS", "900"))
# A stopped instance keeps its boot disk (billed as storage) and is released (terminated; its
# volumes are always kept) once it has been stopped this long. Its organisation is told
# COMPUTE_RELEASE_NOTICES before (each a time before the release); see
# portal.compute.services.release.
COMPUTE_RELEASE_STOPPED_AFTER = timedelta(
    days=float(os.environ.get("COMPUTE_RELEASE_STOPPED_DAYS", "15"))
)
COMPUTE_RELEASE_NOTICES: tuple[timedelta, ...] = (timedelta(days=7), timedelta(days=1))
# No-GPU mode (a stopped instance started without its GPUs, to copy data or set up): the CPU
# shape it gets, at most the type's own vCPUs and RAM. Billed on instance.cpu_only_seconds at
# the no-GPU price operators set per region and currency (metering's meter prices).
COMPUTE_NO_GPU_VCPUS = int(os.environ.get("COMPUTE_NO_GPU_VCPUS", "4"))
COMPUTE_NO_GPU_RAM_GIB = int(os.environ.get("COMPUTE_NO_GPU_RAM_GIB", "16"))
# Dotted path of a callable(region_id, currency) -> the no-GPU price per hour now, or None where
# no-GPU mode is not offered (metering's hook: the meter price of instance.cpu_only_seconds).
COMPUTE_NO_GPU_PRICE = "portal.metering.rating.no_gpu_hourly_price"
# Dotted paths of callables(organization, instance_type, region, actor) that may refuse a launch
# by raising a PortalError (billing adds "can the organisation pay for it?").
COMPUTE_LAUNCH_CHECKS: list[str] = [
    "portal.accounts.verification.launch_check",
    "billing.spend.services.launch_check",
]
# What other apps add to an instance's page (compute's hook).
COMPUTE_INSTANCE_PAGE_PANELS: list[str] = ["portal.metering.telemetry.instance_page_panel"]
# Idle stop (portal.compute.services.idle): who reads the GPUs' telemetry for it (metering), and
# the longest stretch without a sample the window may have before it counts as missing data
# (never idle). The hosts' agent samples every 5 s by default.
COMPUTE_GPU_WINDOW_READER = "portal.metering.telemetry.gpu_windows"
COMPUTE_IDLE_SAMPLE_GAP_SECONDS = int(os.environ.get("COMPUTE_IDLE_SAMPLE_GAP_SECONDS", "120"))
# What an organisation still holds elsewhere, refusing its deletion (accounts' hook).
ACCOUNTS_ORGANIZATION_DELETE_CHECKS: list[str] = ["portal.compute.selectors.organization_holdings"]
# What fixes an organisation's currency once it exists (accounts' hook): counts by kind.
ACCOUNTS_CURRENCY_LOCKS: list[str] = [
    "portal.compute.selectors.organization_resources_ever",
    "billing.ledger.selectors.organization_money_records",
]
# Callables(organization, instance, gpus, hourly_price) that may refuse starting a stopped
# instance (gpus=False: without GPUs, at the no-GPU price hourly_price).
COMPUTE_START_CHECKS: list[str] = [
    "portal.accounts.verification.start_check",
    "billing.spend.services.start_check",
]
# Callables(organization, region, size_gb) that may refuse creating a volume.
COMPUTE_VOLUME_CHECKS: list[str] = ["billing.spend.services.volume_check"]
# Callables(change: FootprintChange) told, in the same transaction, that what an organisation is
# billed for by the hour changed (billing keeps its burn figure with it).
COMPUTE_FOOTPRINT_HOOKS: list[str] = ["billing.ledger.burn.burn_footprint_changed"]

# Storage (kept boot disks of stopped instances, volumes): price per GB-month (730 hours).
STORAGE_PRICE_PER_GB_MONTH = {
    "USD": os.environ.get("STORAGE_PRICE_PER_GB_MONTH_USD", "0.10"),
    "CNY": os.environ.get("STORAGE_PRICE_PER_GB_MONTH_CNY", "0.72"),
}

# --- Real-name verification (实名认证) --------------------------------------------------------
# Which actions need which verification where: an action names the verification kinds that
# satisfy it and the region countries it applies in (None: everywhere, whatever the region).
VERIFICATION_POLICY: dict[str, dict] = {
    "instance.launch": {"kinds": ["individual", "enterprise"], "countries": ["CN"]},
    "instance.start": {"kinds": ["individual", "enterprise"], "countries": ["CN"]},
    "fapiao_special": {"kinds": ["enterprise"], "countries": None},
}
# Business licences and authorisation letters: kept outside every served folder, served only
# by a view that checks who asks.
VERIFICATION_DOCUMENT_DIR = Path(
    os.environ.get("VERIFICATION_DOCUMENT_DIR", VAR_DIR / "private" / "verification")
)
VERIFICATION_DOCUMENT_MAX_BYTES = int(
    float(os.environ.get("VERIFICATION_DOCUMENT_MAX_MB", "10")) * 1024 * 1024
)

# --- Billing --------------------------------------------------------------------------------
# "fake" (a local checkout page; test cards decide the outcome) or "stripe".
PAYMENT_PROVIDER = os.environ.get("PAYMENT_PROVIDER", "fake")
STRIPE_API_KEY = os.environ.get("STRIPE_API_KEY", "")
STRIPE_WEBHOOK_SECRET = os.environ.get("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = os.environ.get("STRIPE_API_BASE", "")  # e.g. a Stripe-compatible test server
# The fake provider signs its events like Stripe does, with this secret.
FAKE_PAYMENTS_WEBHOOK_SECRET = os.environ.get(
    "FAKE_PAYMENTS_WEBHOOK_SECRET", "whsec_fake_" + SECRET_KEY[:24]
)
WEBHOOK_TOLERANCE_SECONDS = 300


def env_pem(name: str) -> str:
    """A PEM key from ``NAME`` (newlines may be written ``\\n``) or from the file ``NAME_FILE``."""
    path = os.environ.get(f"{name}_FILE", "")
    if path:
        return Path(path).read_text()
    return os.environ.get(name, "").replace("\\n", "\n")


# Wallet top-ups (one-off payments; no saved method, no auto-recharge). Each wallet is offered for
# its currencies once its ids and keys are set; unset, it is off. The gateway URLs can point at a
# local test server; notifications come to NOTIFY_URL_BASE + /webhooks/<wallet>/.
ALIPAY_APP_ID = os.environ.get("ALIPAY_APP_ID", "")
ALIPAY_PRIVATE_KEY = env_pem("ALIPAY_PRIVATE_KEY")  # the app's RSA2 private key (PEM)
ALIPAY_PUBLIC_KEY = env_pem("ALIPAY_PUBLIC_KEY")  # Alipay's public key (PEM), checks its answers
ALIPAY_GATEWAY = os.environ.get("ALIPAY_GATEWAY", "https://openapi.alipay.com/gateway.do")
ALIPAY_CURRENCIES = env_list("ALIPAY_CURRENCIES", "CNY")
ALIPAY_NOTIFY_URL_BASE = os.environ.get("ALIPAY_NOTIFY_URL_BASE", SITE_URL).rstrip("/")
WECHATPAY_MCH_ID = os.environ.get("WECHATPAY_MCH_ID", "")
WECHATPAY_APP_ID = os.environ.get("WECHATPAY_APP_ID", "")
WECHATPAY_PRIVATE_KEY = env_pem("WECHATPAY_PRIVATE_KEY")  # the merchant API private key (PEM)
WECHATPAY_CERT_SERIAL_NO = os.environ.get("WECHATPAY_CERT_SERIAL_NO", "")  # of the merchant cert
WECHATPAY_APIV3_KEY = os.environ.get("WECHATPAY_APIV3_KEY", "")  # 32 bytes, decrypts notices
WECHATPAY_PUBLIC_KEY = env_pem("WECHATPAY_PUBLIC_KEY")  # WeChat Pay's platform public key (PEM)
WECHATPAY_PUBLIC_KEY_ID = os.environ.get("WECHATPAY_PUBLIC_KEY_ID", "")  # PUB_KEY_ID_...
WECHATPAY_GATEWAY = os.environ.get("WECHATPAY_GATEWAY", "https://api.mch.weixin.qq.com")
WECHATPAY_CURRENCIES = env_list("WECHATPAY_CURRENCIES", "CNY")
WECHATPAY_NOTIFY_URL_BASE = os.environ.get("WECHATPAY_NOTIFY_URL_BASE", SITE_URL).rstrip("/")
# A wallet QR code works this long; pending wallet payments older than the reconcile age are
# asked of the wallet (a lost notification), and the payment page asks after the query age.
WALLET_PAYMENT_EXPIRE_MINUTES = int(os.environ.get("WALLET_PAYMENT_EXPIRE_MINUTES", "30"))
WALLET_RECONCILE_AFTER_SECONDS = int(os.environ.get("WALLET_RECONCILE_AFTER_SECONDS", "180"))
WALLET_QUERY_AFTER_SECONDS = int(os.environ.get("WALLET_QUERY_AFTER_SECONDS", "20"))
# Top-ups a customer may ask for, in major units of the organisation's currency.
BILLING_TOP_UP_MIN = Decimal(os.environ.get("BILLING_TOP_UP_MIN", "5"))
BILLING_TOP_UP_MAX = Decimal(os.environ.get("BILLING_TOP_UP_MAX", "50000"))
# Prepaid spend controls: warnings at these hours of burn left; stop running instances this
# long after the balance reached zero (never terminate them).
BILLING_LOW_BALANCE_HOURS = (24, 1)
# Prepaid credit reserved for what an organisation holds: launches, starts and new volumes need
# the balance to cover everything held plus the new resource for this many hours.
BILLING_CREDIT_RESERVE_HOURS = Decimal(os.environ.get("BILLING_CREDIT_RESERVE_HOURS", "1"))
# The launch's credit check reads a maintained burn figure (billing.ledger.burn); it is
# recomputed in full at least this often (and whenever prices change or usage events arrive).
BILLING_BURN_RECONCILE_SECONDS = int(os.environ.get("BILLING_BURN_RECONCILE_SECONDS", "3600"))
# Running instances are stopped once the balance covers less than this much of the burn.
BILLING_STOP_THRESHOLD_SECONDS = int(os.environ.get("BILLING_STOP_THRESHOLD_SECONDS", "300"))
BILLING_PAYMENT_TERMS_DAYS = 30
# Month close runs at this time on the 1st (UTC); see portal/scheduled.py.
BILLING_MONTH_CLOSE_AT = {"hour": 0, "minute": 5}
# The seller on every invoice and credit note.
BILLING_SELLER = {
    "name": os.environ.get("SELLER_NAME", "GPU Cloud Computing Centre GmbH"),
    "address": os.environ.get("SELLER_ADDRESS", "Rechenzentrumstrasse 1\n60314 Frankfurt am Main"),
    "country": os.environ.get("SELLER_COUNTRY", "DE"),
    "tax_id": os.environ.get("SELLER_TAX_ID", "DE123456789"),
    "email": os.environ.get("SELLER_EMAIL", "billing@gpucloud.example"),
    "bank": os.environ.get("SELLER_BANK", "IBAN DE89 3704 0044 0532 0130 00, BIC COBADEFFXXX"),
    # what PEPPOL BIS 3 and XRechnung 3 e-invoices state too: the seller's contact [BG-6] and
    # its electronic address [BT-34] with its scheme (EAS code; 9930 is a German VAT number)
    "contact_name": os.environ.get("SELLER_CONTACT_NAME", "Accounts Receivable"),
    "phone": os.environ.get("SELLER_PHONE", "+49 69 1234 5678"),
    "endpoint": os.environ.get("SELLER_ENDPOINT_ID", "DE123456789"),
    "endpoint_scheme": os.environ.get("SELLER_ENDPOINT_SCHEME", "9930"),
}

# Bank transfers (对公转账): the centre's account shown to customers with their payment
# reference, and the remittance slips they upload (kept outside static and media, served only
# through a view that checks the organisation).
BANK_TRANSFER_ACCOUNT = {
    "payee": os.environ.get("BANK_TRANSFER_PAYEE", "GPU Cloud Computing Centre Co., Ltd."),
    "bank": os.environ.get("BANK_TRANSFER_BANK", "Industrial and Commercial Bank of China"),
    "branch": os.environ.get("BANK_TRANSFER_BRANCH", "Beijing Haidian Branch"),
    "account": os.environ.get("BANK_TRANSFER_ACCOUNT_NUMBER", "0200 0045 0900 1234 567"),
}
BANK_TRANSFER_SLIP_DIR = Path(
    os.environ.get("BANK_TRANSFER_SLIP_DIR", VAR_DIR / "private" / "bank-slips")
)
BANK_TRANSFER_SLIP_MAX_BYTES = int(
    os.environ.get("BANK_TRANSFER_SLIP_MAX_BYTES", str(10 * 1024 * 1024))
)

# Fapiao (发票): the tax classification code and VAT rate of a fapiao line whose product has
# none of its own (信息技术服务, 6 %), the smallest amount one request may cover (CNY), and
# where the issued files (PDF, OFD or XML) are kept (private, served by checking views).
FAPIAO_DEFAULT_TAX_CODE = os.environ.get("FAPIAO_DEFAULT_TAX_CODE", "3040200000000000000")
FAPIAO_DEFAULT_VAT_RATE = os.environ.get("FAPIAO_DEFAULT_VAT_RATE", "0.06")
FAPIAO_MIN_AMOUNT = os.environ.get("FAPIAO_MIN_AMOUNT", "100.00")
FAPIAO_FILE_DIR = Path(os.environ.get("FAPIAO_FILE_DIR", VAR_DIR / "private" / "fapiao"))
FAPIAO_FILE_MAX_BYTES = int(os.environ.get("FAPIAO_FILE_MAX_BYTES", str(10 * 1024 * 1024)))

# --- Logging --------------------------------------------------------------------------------
# One JSON object a line (LOG_FORMAT=json, the default with DEBUG off) or a human line
# (LOG_FORMAT=plain, the default with DEBUG on); both carry the request id, organisation, user,
# task and instance the line is about (portal/observability/logging.py). Celery workers log
# through this too.
LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain" if DEBUG else "json").strip().lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured("LOG_FORMAT must be 'plain' or 'json'.")
# One "request finished" line per request (method, route, status, duration_ms).
LOG_REQUESTS = env_bool("LOG_REQUESTS", not DEBUG)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "portal.observability.logging.ContextFilter"}},
    "formatters": {
        "plain": {"()": "portal.observability.logging.PlainFormatter"},
        "json": {"()": "portal.observability.logging.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}
# GET /metrics: with a token, callers send "Authorization: Bearer <token>"; without one, only
# direct (unproxied) loopback connections are answered. PROMETHEUS_MULTIPROC_DIR (read by
# prometheus_client itself) adds up the samples of every gunicorn and Celery process.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
