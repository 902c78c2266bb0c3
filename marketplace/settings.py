"""Django settings, built from the validated environment (marketplace.config)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dj_database_url

from marketplace import config as _config
from marketplace.core import embedded_redis
from marketplace.core.queues import CELERY_BEAT_SCHEDULE, CELERY_TASK_QUEUES, CELERY_TASK_ROUTES, Queue

BASE_DIR = Path(__file__).resolve().parent.parent

try:
    CONFIG = _config.load(os.environ, BASE_DIR)
except _config.ConfigError as exc:
    # A bad value stops every process at start-up with a message that names the variable.
    sys.stderr.write(f"Hashwork cannot start. {exc}\n")
    raise SystemExit(2) from None

VAR_DIR = CONFIG.var_dir
VAR_DIR.mkdir(parents=True, exist_ok=True)
DEBUG = CONFIG.debug
SECRET_KEY = CONFIG.secret_key
ALLOWED_HOSTS = list(CONFIG.allowed_hosts)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "marketplace.core",
    "marketplace.nodes",
    "marketplace.jobs",
    "marketplace.payments",
    "marketplace.federated",
    "marketplace.web",
]

LOGIN_URL = "web:login"
LOGIN_REDIRECT_URL = "web:jobs"

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "marketplace.urls"
WSGI_APPLICATION = "marketplace.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": dj_database_url.parse(CONFIG.database_url, conn_max_age=60, conn_health_checks=True)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web server and the workers read while one of them writes.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=10000;",
        "transaction_mode": "IMMEDIATE",
    }
    # A file, not Django's shared-cache in-memory default, so worker threads in tests can write concurrently.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# Serve straight from the apps' static folders, so a fresh install needs no collectstatic.
WHITENOISE_USE_FINDERS = True
MEDIA_URL = "media/"
MEDIA_ROOT = CONFIG.media_root
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
if CONFIG.s3 is not None:
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": CONFIG.s3.bucket,
            "endpoint_url": CONFIG.s3.endpoint_url,
            "region_name": CONFIG.s3.region,
            "custom_domain": CONFIG.s3.custom_domain,
            "default_acl": None,
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }

# Request bodies. Form fields (multipart included) and Django's request.body: at most 1 MiB; files: streamed under
# each endpoint's own cap by marketplace.core.uploads (the first handler), in memory up to 2.5 MiB, on disk beyond.
# No endpoint takes more than one file or a few dozen fields; the admin's bulk actions post one field per row.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2**20
DATA_UPLOAD_MAX_NUMBER_FIELDS = 500
DATA_UPLOAD_MAX_NUMBER_FILES = 4
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_HANDLERS = [
    "marketplace.core.uploads.CappedUploadHandler",
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "django.core.files.uploadhandler.TemporaryFileUploadHandler",
]

REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header makes an anonymous request a 401, not a 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON and form bodies are read up to HASHWORK["JSON_MAX_BYTES"]; multipart bodies stream under upload caps.
    "DEFAULT_PARSER_CLASSES": [
        "marketplace.api.parsers.CappedJSONParser",
        "marketplace.api.parsers.CappedFormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "marketplace.api.pagination.Pagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "marketplace.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Hashwork marketplace API",
    "DESCRIPTION": "Post and follow compute jobs (posters); enrol, heartbeat and submit results (node agents).",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "JobStateEnum": "marketplace.jobs.models.JobState",
        "TaskStateEnum": "marketplace.jobs.models.TaskState",
        "AssignmentStateEnum": "marketplace.jobs.models.AssignmentState",
    },
}

# Redis: the configured server, else the embedded one of this var/ directory if it runs.
REDIS_URL = CONFIG.redis_url or embedded_redis.url_if_running(VAR_DIR) or ""
REDIS_IS_EMBEDDED = CONFIG.redis_url is None
REDIS_PREFIX = CONFIG.redis_prefix

# Celery reads CELERY_* settings; the broker URL says what to do when no Redis is there at all.
CELERY_BROKER_URL = REDIS_URL or "redis://set-REDIS_URL-or-start-the-embedded-redis.invalid:6379/0"
CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": REDIS_PREFIX, "visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = Queue.DEFAULT.value
CELERY_TASK_QUEUES = CELERY_TASK_QUEUES
CELERY_TASK_ROUTES = CELERY_TASK_ROUTES
CELERY_BEAT_SCHEDULE = CELERY_BEAT_SCHEDULE
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Ethereum: ETH_RPC_URL names a chain; unset means an Anvil started by the project (contracts.devchain).
ETH_RPC_URL = CONFIG.eth_rpc_url
CHAIN_DIR = VAR_DIR / "chain"
CHAIN_DEPLOYMENTS_FILE = CHAIN_DIR / "deployments.json"
# The key that sends release() and close() (PAYOUT_ROLE): OPERATOR_KEY or OPERATOR_KEY_FILE; on a local chain
# it defaults to the dev account that deployed the contracts. Only the settlement worker uses it.
OPERATOR_KEY = CONFIG.operator_key
CHAIN_CONFIRMATIONS = CONFIG.chain_confirmations
# The settlement worker's transactions: re-sent with fees raised 12.5 % (EIP-1559 replacement) when one has no
# receipt after TX_BUMP_SECONDS, at most TX_MAX_BUMPS times. Chain logs are read LOG_BLOCK_RANGE blocks at a time
# (providers cap eth_getLogs ranges, often at 2 000 or 10 000 blocks; a refused range is halved).
TX_BUMP_SECONDS = CONFIG.tx_bump_seconds
TX_MAX_BUMPS = CONFIG.tx_max_bumps
LOG_BLOCK_RANGE = CONFIG.log_block_range

HASHWORK = {
    "NODE_ONLINE_SECONDS": CONFIG.node_online_seconds,
    # A heartbeat that reports nothing new writes the node's row only when the stored one is this old (seconds):
    # steady nodes cost a read per heartbeat, not a write. A third of NODE_ONLINE_SECONDS at most, so a node that
    # heartbeats is never seen offline.
    "HEARTBEAT_WRITE_SECONDS": min(15.0, CONFIG.node_online_seconds / 3),
    "JOB_DEFAULT_DEADLINE_HOURS": CONFIG.job_default_deadline_hours,
    "JOB_MAX_DEADLINE_HOURS": 24 * 90,
    "DEV_FUNDING": CONFIG.dev_funding,
    # Where node agents reach Redis (no credentials); defaults to REDIS_URL's host, port and database.
    "NODE_BROKER_URL": CONFIG.node_broker_url,
    # Overrides of every kind's lease and start window (tests and demos shorten them).
    "LEASE_SECONDS": CONFIG.lease_seconds,
    "START_WINDOW_SECONDS": CONFIG.start_window_seconds,
    "ARTIFACT_LIMITS": CONFIG.artifact_limits,
    # Request bodies: a JSON or form body (marketplace.api.parsers), and the files of a request to an endpoint
    # that sets no cap of its own (marketplace.core.uploads; result and asset uploads have their kind's caps).
    "JSON_MAX_BYTES": 2**20,
    "UPLOAD_DEFAULT_MAX_BYTES": 2**20,
    # Leasing: failures (expired, failed) that block a node from a job.
    "JOB_NODE_MAX_FAILURES": 2,
    # Lost or failed attempts count once per operator: a task fails once nodes of this many distinct operators
    # have lost it (or at its job's deadline), so one operator's throwaway nodes cannot fail a job.
    "TASK_FAIL_OPERATORS": 3,
    # Replicas of one task go to distinct operators and, unless this is off, distinct networks: the /24 of a node's
    # IPv4 address, the /48 of its IPv6 one. Loopback and private addresses count as one network only when
    # PRIVATE_NETWORKS_ARE_ONE (a local stack runs every node on 127.0.0.1); otherwise they group no nodes.
    "REPLICA_DISTINCT_NETWORKS": True,
    "PRIVATE_NETWORKS_ARE_ONE": False,
    # Reverse proxies (addresses or networks) whose X-Forwarded-For is believed for a node's address; none by default.
    "TRUSTED_PROXIES": CONFIG.trusted_proxies,
    # A node is on probation until it has this many accepted results: it holds at most PROBATION_MAX_LIVE open
    # (leased or running) assignments, so a throwaway node cannot hoard work.
    "PROBATION_VALID_RESULTS": 1,
    "PROBATION_MAX_LIVE": 1,
    # Nodes an operator may enrol per hour (removed ones count too); beyond it enrolment answers 429.
    "ENROLMENTS_PER_HOUR": 10,
    # A tie between replicas asks for more, up to replication + this many.
    "MAX_EXTRA_REPLICAS": 3,
    # Adaptive replication (marketplace.jobs.reputation): a node whose reputation for a kind is at least
    # TRUSTED_AFTER gets that kind's work replicated only with probability REPLICATION_P (and spot-checked
    # otherwise), for kinds that can be spot-checked. Reputation counts accepted results on jobs of other posters,
    # with replication >= 2, at no less than the median price of the kind's last REPUTATION_PRICE_JOBS funded jobs
    # (each poster counted once, at its latest price); it halves every REPUTATION_HALF_LIFE_DAYS and a wrong result
    # resets it to 0. (marketplace.federated.trust still reads TRUSTED_AFTER as a streak of accepted results.)
    "TRUSTED_AFTER": 10,
    "REPUTATION_HALF_LIFE_DAYS": 14.0,
    "REPUTATION_PRICE_JOBS": 200,
    "REPLICATION_P": CONFIG.replication_p,
    # Train rounds: a round closes once this share of its participants has submitted a well-formed update (or at
    # its deadline); this share of the updates is replayed by the marketplace (proof-of-learning spot check);
    # updates with a norm above NORM_FACTOR × the round's median, or that raise held-out loss by more than
    # LOSS_TOLERANCE (absolute, applied alone at their share of the aggregate), are rejected. Honest norms vary
    # by 20× and more between shards late in training (measured: tests/marketplace/federated), hence 20.
    "TRAIN_QUORUM": CONFIG.train_quorum,
    "TRAIN_REPLAY_SHARE": CONFIG.train_replay_share,
    "TRAIN_NORM_FACTOR": 20.0,
    # An update above this × the median norm is always replayed.
    "TRAIN_SUSPICIOUS_FACTOR": 3.0,
    "TRAIN_LOSS_TOLERANCE": 0.5,
    # Lazy training (marketplace.federated.trust, training.verify; figures: docs/benchmarks.md, "Training
    # verification"). Replay probability: 1 for a node with no accepted streak, falling linearly to
    # TRAIN_REPLAY_SHARE over TRUSTED_AFTER × (1 + invalid_count) consecutive accepted results, never below
    # TRAIN_REPLAY_FLOOR. TRAIN_REPLAY_SEED (an int) makes the draws reproducible (tests); None: system random.
    "TRAIN_REPLAY_FLOOR": 0.1,
    "TRAIN_REPLAY_SEED": None,
    # No measurable progress: a norm below this × the round's median (honest: ≥ 0.43 measured here, ≥ 1/140 in
    # the marketplace tests' easy data), or, where the loss of the round's weights on a sample of the node's own
    # shard is ≥ TRAIN_PROGRESS_MIN_LOSS, a fall of that loss below TRAIN_MIN_SHARD_PROGRESS (honest: ≥ 26 %; an
    # update × 1e-3: ≤ 0.4 %). A caught node is blocked from the job.
    "TRAIN_MIN_NORM_FRACTION": 0.001,
    "TRAIN_MIN_SHARD_PROGRESS": 0.05,
    "TRAIN_PROGRESS_MIN_LOSS": 0.1,
    # The JSON-RPC URL node agents and wallets are told to use (withdrawals); defaults to ETH_RPC_URL.
    "PUBLIC_ETH_RPC_URL": CONFIG.public_eth_rpc_url,
    # A deposit starts its job only if its on-chain deadline is at least this long after the job's own deadline:
    # the poster cannot refund (the deadline passed) before the last payouts have settled.
    "ESCROW_SETTLEMENT_MARGIN_HOURS": CONFIG.escrow_margin_hours,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "INFO"},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

if not DEBUG:
    SESSION_COOKIE_HTTPONLY = True
    CSRF_COOKIE_HTTPONLY = True
    X_FRAME_OPTIONS = "DENY"
    SECURE_CONTENT_TYPE_NOSNIFF = True
