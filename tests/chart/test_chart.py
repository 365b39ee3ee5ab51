"""Tests of the Helm chart helm/pachyderm-backup.

Run:  python3 -m pytest tests/chart -q

Needs the PyPI packages helm-python-sdk (Helm's Go SDK as a library, imported as
helm_python), kubernetes-validate, pytest and PyYAML:

    pip install helm-python-sdk kubernetes-validate pytest pyyaml

and the program's list of variables, from the built binary
(`target/debug/pachyderm-backup variables --json`; another path with
PACHYDERM_BACKUP_BIN), or, for developing the chart while the binary is not built,
from a JSON file named by PACHYDERM_BACKUP_VARIABLES_JSON (same format). A missing
tool or binary FAILS the tests (never skips them), with a message saying how to get it.

What is checked:
  * helm lint --strict is clean, for the defaults and every values set below;
  * every values set renders, and every rendered object validates strictly against
    the Kubernetes 1.27 and 1.31 schemas. PrometheusRule (monitoring.coreos.com) is a
    CRD that kubernetes-validate has no schema for: it is skipped there and checked
    by hand (test_prometheus_rule_*);
  * bad values are rejected by values.schema.json (or by the templates' own checks)
    with a message naming the field;
  * the Role is exactly the program's calls (set comparison), without wildcards,
    Secrets (list only) and HELM_RELEASE only when captureHelmValues is on, ConfigMap
    writes only in pause mode pachyderm;
  * the *_WORKLOAD_IDENTITY switches: set (always to true) exactly when a bucket is
    declared, or found, to use the ServiceAccount's cloud identity;
  * every pod passes the restricted Pod Security Standard (plus a read-only root);
  * no drift between the chart's environment variables and the program's;
  * the chart's files/ are byte-identical to alerts/ and dashboards/.
"""

from __future__ import annotations

import copy
import filecmp
import functools
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "pachyderm-backup"
CHART_FILES = CHART / "files"
RELEASE = "prod"
NAMESPACE = "pachyderm"
KUBE_VERSIONS = ("1.27.0", "1.31.0")
INSTALL_HINT = "pip install -r tests/chart/requirements.txt  (helm-python-sdk kubernetes-validate pytest pyyaml)"


# --------------------------------------------------------------------------- tools


def _import(module: str, package: str):
    try:
        return __import__(module)
    except ImportError as e:  # fail, never skip
        pytest.fail(
            f"Python module {module!r} is missing ({e}). Install the chart test tools: "
            f"{INSTALL_HINT}  (package {package})",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def helm():
    return _import("helm_python", "helm-python-sdk")


@pytest.fixture(scope="session")
def kubernetes_validate():
    return _import("kubernetes_validate", "kubernetes-validate")


@pytest.fixture(scope="session")
def yaml():
    return _import("yaml", "pyyaml")


@pytest.fixture(scope="session")
def chart(helm):
    with helm.Chart.load(str(CHART)) as loaded:
        yield loaded


# ---------------------------------------------------------------------- values sets

TARGET = {"url": "s3://backups/pachyderm", "secretName": "backup-bucket"}
# age public keys (age1…): the first is age's own documentation example.
RECIPIENTS = [
    "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
    "age18x9xfmt8ghuya9q9q89707n5qz58ckcsj4fz7vh4qps628gduktqmt92zs",
]

VALUES_SETS: dict[str, dict] = {
    "defaults": {},
    "pause-scale": {
        "pause": {"mode": "scale"},
        "target": TARGET,
        "pushgateway": {"url": "http://prometheus-pushgateway.monitoring:9091"},
    },
    "pause-pachyderm": {"pause": {"mode": "pachyderm"}, "target": TARGET},
    "pause-none": {
        "pause": {"mode": "none"},
        "source": {"backend": "none", "url": "file:///data/pachyderm"},
        "target": {"url": "file:///backups"},
        "extraVolumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        "extraVolumeMounts": [{"name": "data", "mountPath": "/data"}],
    },
    "source-amazon": {
        "source": {"backend": "amazon"},
        "target": {"url": "s3://backups/pachyderm", "region": "eu-west-1"},
        "workloadIdentity": {"aws": {"roleArn": "arn:aws:iam::123456789012:role/pachyderm-backup"}},
    },
    "source-amazon-overrides": {
        "source": {
            "backend": "amazon",
            "url": "s3://pachyderm-data",
            "region": "us-west-2",
            "endpoint": "https://s3.example.internal",
            # Pachyderm itself uses IRSA: its Secret has no keys, the backup uses the role too.
            "secretKeys": {"amazon": {"SOURCE_AWS_ACCESS_KEY_ID": None, "SOURCE_AWS_SECRET_ACCESS_KEY": None}},
            "workloadIdentity": True,
        },
        "target": TARGET,
        "workloadIdentity": {"aws": {"roleArn": "arn:aws:iam::123456789012:role/pachyderm-backup"}},
    },
    "source-minio": {
        "source": {"backend": "minio", "endpoint": "http://minio.pachyderm.svc:9000"},
        "target": {
            "url": "s3://backups/pachyderm",
            "endpoint": "http://minio.backup.svc:9000",
            "secretName": "backup-minio",
        },
    },
    "source-google": {
        "source": {"backend": "google"},
        "target": {"url": "gs://backups/pachyderm"},
        "workloadIdentity": {"gcp": {"serviceAccount": "backup@project.iam.gserviceaccount.com"}},
    },
    "source-microsoft": {
        "source": {"backend": "microsoft"},
        "target": {"url": "az://backups/pachyderm", "secretName": "backup-azure"},
    },
    "workload-identity": {
        # Pachyderm itself uses IRSA: its Secret's keys are empty.
        "source": {"workloadIdentity": True},
        "target": {"url": "s3://backups/pachyderm"},
        "serviceAccount": {"annotations": {"example.com/owner": "platform"}},
        "workloadIdentity": {
            "aws": {"roleArn": "arn:aws:iam::123456789012:role/pachyderm-backup"},
            "gcp": {"serviceAccount": "backup@project.iam.gserviceaccount.com"},
            "azure": {"clientId": "00000000-1111-2222-3333-444444444444"},
        },
    },
    "workload-identity-all": {
        # GKE workload identity for every bucket, the drill's scratch bucket included.
        "source": {"backend": "google", "secretKeys": {"google": {"SOURCE_GOOGLE_SERVICE_ACCOUNT_KEY": None}}},
        "target": {"url": "gs://backups/pachyderm"},
        "workloadIdentity": {"allBuckets": True, "gcp": {"serviceAccount": "backup@project.iam.gserviceaccount.com"}},
        "drill": {
            "enabled": True,
            "restore": {
                "pghost": "postgres-scratch.backup.svc",
                "sslMode": "verify-full",
                "sslRootCert": "/etc/scratch-ca/ca.crt",
                "url": "gs://scratch/pachyderm",
            },
        },
        "extraVolumes": [{"name": "scratch-ca", "configMap": {"name": "scratch-ca"}}],
        "extraVolumeMounts": [{"name": "scratch-ca", "mountPath": "/etc/scratch-ca", "readOnly": True}],
    },
    "postgresql-client-certificates": {
        # Certificate authentication to both servers, Pachyderm's CA from its Secret.
        "target": TARGET,
        "postgresql": {
            "sslMode": "verify-full",
            "clientCertificate": {"secretName": "pachyderm-backup-postgres-tls", "caKey": "ca.crt"},
        },
        "drill": {
            "enabled": True,
            "restore": {
                "pghost": "postgres-scratch.backup.svc",
                "sslMode": "verify-full",
                "clientCertificate": {"secretName": "scratch-postgres-tls", "certKey": "client.crt", "keyKey": "client.key"},
            },
        },
    },
    "descriptor-and-time-zone": {
        # A descriptor and a time zone: spec.timeZone on every CronJob, SCHEDULE_TIMEZONE.
        "target": TARGET,
        "schedule": "@daily",
        "timeZone": "Europe/Paris",
        "resumeGuard": {"schedule": "@hourly"},
    },
    "existing-serviceaccount": {
        "target": TARGET,
        "serviceAccount": {"create": False, "name": "backup-operator"},
        "rbac": {"create": False},
    },
    "copy-shards": {
        "target": TARGET,
        "objects": {"copyShards": 8, "copyParallelism": 4, "precopyTimeout": "6h"},
        "cronjob": {"activeDeadlineSeconds": 36000},
    },
    "everything-off": {
        "target": TARGET,
        "resumeGuard": {"enabled": False},
        "drill": {"enabled": False},
        "prometheusRule": {"enabled": False},
        "dashboard": {"enabled": False},
        "networkPolicy": {"enabled": False},
        "captureHelmValues": False,
    },
    "everything-on": {
        "image": {"repository": "registry.example.com/pachyderm-backup", "tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "registry"}],
        "schedule": "30 1 * * MON-FRI",
        "timeZone": "America/New_York",
        "cronjob": {
            "suspend": True,
            "startingDeadlineSeconds": 600,
            "activeDeadlineSeconds": 36000,
            "terminationGracePeriodSeconds": 900,
            "ttlSecondsAfterFinished": 86400,
        },
        "pachyderm": {
            "namespace": NAMESPACE,
            "pachdDeployment": "pachd",
            "pachwDeployment": "pachw",
            "workerSelector": "suite=pachyderm,component=worker",
            "pachdConfigMap": "pachd-config",
            "helmRelease": "pachyderm-prod",
        },
        "pause": {"mode": "pachyderm", "timeout": "10m", "resumeTimeout": "15m", "maxDowntime": "1h30m"},
        "lease": {"name": "pachyderm-backup-prod", "duration": "90s"},
        "preflight": {"timeout": "2m"},
        "postgresql": {
            "host": "postgres.pachyderm.svc",
            "port": 5433,
            "user": "pachyderm",
            "sslMode": "verify-full",
            "sslRootCert": "/etc/postgres-ca/ca.crt",
            "clientCertificate": {"secretName": "pachyderm-backup-postgres-tls", "caKey": "ca.crt"},
            "databases": ["pachyderm", "dex", "extra"],
            "binDir": "/usr/lib/postgresql/17/bin",
            "dumpCompression": "zstd:3",
        },
        "encryption": {"recipients": RECIPIENTS},
        "source": {"backend": "minio", "endpoint": "https://minio.pachyderm.svc:9000", "region": "eu-central-1"},
        "target": {
            "url": "s3://backups/pachyderm",
            "region": "eu-central-1",
            "endpoint": "https://s3.eu-central-1.amazonaws.com",
            "secretName": "backup-bucket",
        },
        "objects": {"mode": "copy", "precopy": False, "copyConcurrency": 64},
        "retention": {
            "keepLast": 2,
            "keepHourly": 24,
            "keepDaily": 14,
            "keepWeekly": 8,
            "keepMonthly": 12,
            "keepYearly": 3,
            "keepWithin": "3d",
            "minKeep": 5,
            "gcGrace": "48h",
        },
        "pushgateway": {
            "url": "https://pushgateway.monitoring:9091",
            "timeout": "15s",
            "auth": {"secretName": "pushgateway-auth"},
        },
        "clusterName": "prod-eu",
        "logging": {"format": "text", "level": "info,pachyderm_backup=debug", "progressInterval": "1m"},
        "extraEnv": [{"name": "TARGET_AWS_CHECKSUM_ALGORITHM", "value": "SHA256"}],
        "extraVolumes": [{"name": "postgres-ca", "secret": {"secretName": "postgres-ca"}}],
        "extraVolumeMounts": [{"name": "postgres-ca", "mountPath": "/etc/postgres-ca", "readOnly": True}],
        "tmpSizeLimit": "2Gi",
        "serviceAccount": {"annotations": {"example.com/owner": "platform"}},
        "workloadIdentity": {"azure": {"clientId": "00000000-1111-2222-3333-444444444444"}},
        "captureHelmValues": True,
        "resumeGuard": {"enabled": True, "schedule": "*/5 * * * *", "activeDeadlineSeconds": 1800},
        "drill": {
            "enabled": True,
            "schedule": "0 6 * * 6",
            "restore": {
                "pghost": "postgres-scratch.backup.svc",
                "pgport": 5432,
                "pguser": "postgres",
                "sslMode": "verify-ca",
                "sslRootCert": "/etc/postgres-ca/ca.crt",
                "clientCertificate": {"secretName": "scratch-postgres-tls"},
                "password": {"secretName": "scratch-postgres", "secretKey": "password"},
                "url": "s3://scratch/pachyderm",
                "identity": {"secretName": "pachyderm-backup-age", "secretKey": "key.txt"},
                "region": "eu-central-1",
                "endpoint": "http://minio-scratch.backup.svc:9000",
                "secretName": "scratch-bucket",
            },
        },
        "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "dashboard": {
            "enabled": True,
            "labels": {"grafana_dashboard": "1"},
            "annotations": {"grafana_folder": "Backups"},
        },
        "networkPolicy": {
            "enabled": True,
            "apiServer": {"cidrs": ["10.0.0.1/32"], "ports": [6443]},
            "buckets": {"cidrs": ["0.0.0.0/0"], "ports": [443, 9000]},
            "extraEgress": [
                {
                    "to": [{"podSelector": {"matchLabels": {"app": "postgres-scratch"}}}],
                    "ports": [{"port": 5432, "protocol": "TCP"}],
                }
            ],
        },
        "podAnnotations": {"example.com/team": "data"},
        "podLabels": {"team": "data"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "backup", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                    ]
                }
            }
        },
        "priorityClassName": "system-cluster-critical",
    },
}

# (values, the field the error message must name). The field is given as the JSON
# pointer Helm's validator prints ("at '/pause/mode'") or, for the templates' own
# checks, the dotted value name.
BAD_VALUES: dict[str, tuple[dict, str]] = {
    "schedule-words": ({"schedule": "every night"}, "/schedule"),
    "copy-shards-zero": ({"objects": {"copyShards": 0}}, "/objects/copyShards"),
    "restore-jobs-zero": ({"drill": {"restore": {"jobs": 0}}}, "/drill/restore/jobs"),
    "scratch-limit-decimal-unit": ({"drill": {"restore": {"scratchLimit": "1GB"}}}, "/drill/restore/scratchLimit"),
    "copy-shards-above-256": ({"objects": {"copyShards": 257}}, "/objects/copyShards"),
    "copy-parallelism-negative": ({"objects": {"copyParallelism": -1}}, "/objects/copyParallelism"),
    "precopy-timeout-words": ({"objects": {"precopyTimeout": "six hours"}}, "/objects/precopyTimeout"),
    "schedule-six-fields": ({"schedule": "0 0 2 * * *"}, "/schedule"),
    # Kubernetes counts the days of the week 0-6 from Sunday and refuses 7.
    "schedule-sunday-as-seven": ({"schedule": "0 2 * * 7"}, "/schedule"),
    "schedule-seven-in-range": ({"schedule": "0 2 * * 5-7"}, "/schedule"),
    "drill-schedule-sunday-as-seven": ({"drill": {"schedule": "0 5 * * 7"}}, "/drill/schedule"),
    # Refused by the API server since 1.27: timeZone instead.
    "schedule-tz-prefix": ({"schedule": "CRON_TZ=Europe/Paris 0 2 * * *"}, "/schedule"),
    "schedule-descriptor-case": ({"schedule": "@DAILY"}, "/schedule"),
    "schedule-reboot": ({"schedule": "@reboot"}, "/schedule"),
    "time-zone-offset": ({"timeZone": "+01:00"}, "/timeZone"),
    "time-zone-space": ({"timeZone": "Europe/Paris "}, "/timeZone"),
    "guard-schedule": ({"resumeGuard": {"schedule": "10m"}}, "/resumeGuard/schedule"),
    "duration-words": ({"pause": {"timeout": "5 minutes"}}, "/pause/timeout"),
    "duration-no-unit": ({"pause": {"maxDowntime": "7200"}}, "/pause/maxDowntime"),
    "duration-gc-grace": ({"retention": {"gcGrace": "1 day"}}, "/retention/gcGrace"),
    "duration-preflight-timeout": ({"preflight": {"timeout": "1 minute"}}, "/preflight/timeout"),
    "negative-retention": ({"retention": {"keepDaily": -1}}, "/retention/keepDaily"),
    "negative-min-keep": ({"retention": {"minKeep": -3}}, "/retention/minKeep"),
    "retention-not-number": ({"retention": {"keepWeekly": "four"}}, "/retention/keepWeekly"),
    "target-url-scheme": ({"target": {"url": "http://backups/pachyderm"}}, "/target/url"),
    "source-url-scheme": ({"source": {"url": "ftp://pachyderm"}}, "/source/url"),
    "file-url-relative": ({"target": {"url": "file://backups"}}, "/target/url"),
    "pushgateway-url": ({"pushgateway": {"url": "pushgateway:9091"}}, "/pushgateway/url"),
    "pause-mode": ({"pause": {"mode": "freeze"}}, "/pause/mode"),
    "objects-mode": ({"objects": {"mode": "all"}}, "/objects/mode"),
    "source-backend": ({"source": {"backend": "ceph"}}, "/source/backend"),
    "log-format": ({"logging": {"format": "xml"}}, "/logging/format"),
    "minio-without-endpoint": ({"source": {"backend": "minio"}}, "/source/endpoint"),
    "minio-endpoint-no-scheme": (
        {"source": {"backend": "minio", "endpoint": "minio:9000"}},
        "/source/endpoint",
    ),
    "source-none-without-url": ({"source": {"backend": "none"}}, "/source/url"),
    "copy-concurrency-zero": ({"objects": {"copyConcurrency": 0}}, "/objects/copyConcurrency"),
    "port-out-of-range": ({"postgresql": {"port": 70000}}, "/postgresql/port"),
    "typo-top-level": ({"schedul": "0 2 * * *"}, "schedul"),
    "typo-nested": ({"pause": {"maxDowntim": "2h"}}, "maxDowntim"),
    "extra-env-name": ({"extraEnv": [{"name": "NOT-A-NAME", "value": "x"}]}, "/extraEnv/0/name"),
    "target-secret-key-family": (
        {"target": {"secretKeys": {"SOURCE_AWS_ACCESS_KEY_ID": "x"}}},
        "/target/secretKeys",
    ),
    "drill-without-server": ({"drill": {"enabled": True}}, "/drill/restore/pghost"),
    "helm-release-name": ({"pachyderm": {"helmRelease": "Pachyderm_Prod"}}, "/pachyderm/helmRelease"),
    "helm-release-empty": ({"pachyderm": {"helmRelease": ""}}, "/pachyderm/helmRelease"),
    "target-workload-identity-string": (
        {"target": {"workloadIdentity": "yes"}},
        "/target/workloadIdentity",
    ),
    "source-workload-identity-string": ({"source": {"workloadIdentity": "true"}}, "/source/workloadIdentity"),
    "recipient-not-a-public-key": (
        {"encryption": {"recipients": ["AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"]}},
        "/encryption/recipients/0",
    ),
    "recipients-not-a-list": ({"encryption": {"recipients": RECIPIENTS[0]}}, "/encryption/recipients"),
}

# Values that pass the schema but that the templates refuse (checks JSON schema
# cannot express): (values, the value name the message must contain).
BAD_TEMPLATE_VALUES: dict[str, tuple[dict, str]] = {
    "deadline-below-downtime": (
        {"cronjob": {"activeDeadlineSeconds": 3600}},
        "cronjob.activeDeadlineSeconds",
    ),
    "grace-below-resume-timeout": (
        {"cronjob": {"terminationGracePeriodSeconds": 30}},
        "cronjob.terminationGracePeriodSeconds",
    ),
    "gc-grace-below-floor": (
        {"retention": {"gcGrace": "3h"}},
        "retention.gcGrace",
    ),
    "guard-deadline-below-resume-timeout": (
        {"resumeGuard": {"activeDeadlineSeconds": 60}},
        "resumeGuard.activeDeadlineSeconds",
    ),
    "source-bucket-key-removed": (
        {"source": {"secretKeys": {"amazon": {"SOURCE_AWS_BUCKET": None}}}},
        "source.url",
    ),
    "shards-without-precopy": (
        {"objects": {"copyShards": 4, "precopy": False}},
        "objects.copyShards",
    ),
    "deadline-below-precopy-timeout": (
        {"objects": {"precopyTimeout": "10h"}},
        "objects.precopyTimeout",
    ),
    "drill-of-encrypted-dumps-without-identity": (
        {"encryption": {"recipients": RECIPIENTS}, "drill": {"enabled": True, "restore": {"pghost": "scratch"}}},
        "drill.restore.identity.secretName",
    ),
}


# -------------------------------------------------------------------------- helpers


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


@pytest.fixture(scope="session")
def render(chart, yaml):
    """render(name) -> list of rendered objects of VALUES_SETS[name] (cached)."""

    @functools.lru_cache(maxsize=None)
    def _render(name: str) -> tuple:
        out = chart.render(copy.deepcopy(VALUES_SETS[name]), name=RELEASE, namespace=NAMESPACE)
        docs = []
        for path, text in sorted(out.items()):
            if path.endswith("NOTES.txt"):
                continue
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc.setdefault("_source", path)
                    docs.append(doc)
        return tuple(docs)

    return lambda name: [copy.deepcopy(d) for d in _render(name)]


def strip_source(doc: dict) -> dict:
    doc = dict(doc)
    doc.pop("_source", None)
    return doc


def of_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind, name=None):
    found = [d for d in of_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(docs):
    """(owner name, pod spec) of every rendered workload."""
    for d in docs:
        if d["kind"] == "CronJob":
            yield d["metadata"]["name"], d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif d["kind"] in ("Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"):
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "Pod":
            yield d["metadata"]["name"], d["spec"]


def containers(spec):
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def env_of(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def cronjob(docs, suffix=""):
    return one(docs, "CronJob", f"{RELEASE}-pachyderm-backup{suffix}")


def backup_container(docs, suffix=""):
    spec = cronjob(docs, suffix)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    return c


def seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    parts = re.findall(r"(\d+)([smhdw])", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def merged_values(chart, name):
    return chart.merge_values(copy.deepcopy(VALUES_SETS[name]))


def render_values(chart, yaml, values) -> list:
    """The objects rendered from ad-hoc values (not a named set)."""
    out = chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    return [
        d
        for path, text in sorted(out.items())
        if not path.endswith("NOTES.txt")
        for d in yaml.safe_load_all(text)
        if d
    ]


# ---------------------------------------------------------- the program's variables


def _load_program_variables() -> list[dict]:
    override = os.environ.get("PACHYDERM_BACKUP_VARIABLES_JSON")
    if override:
        path = Path(override)
        if not path.is_file():
            pytest.fail(f"PACHYDERM_BACKUP_VARIABLES_JSON={override} is not a file", pytrace=False)
        raw, origin = path.read_text(), str(path)
    else:
        binary = Path(os.environ.get("PACHYDERM_BACKUP_BIN", REPO / "target" / "debug" / "pachyderm-backup"))
        if not binary.is_absolute():
            binary = REPO / binary
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            pytest.fail(
                f"the program binary {binary} is missing: build it first (`cargo build`), or set "
                "PACHYDERM_BACKUP_BIN to a built pachyderm-backup (the chart's drift tests read "
                "`pachyderm-backup variables --json`)",
                pytrace=False,
            )
        proc = subprocess.run([str(binary), "variables", "--json"], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            pytest.fail(
                f"`{binary} variables --json` exited {proc.returncode}: {proc.stderr.strip()}", pytrace=False
            )
        raw, origin = proc.stdout, f"{binary} variables --json"
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        pytest.fail(f"{origin} is not JSON: {e}", pytrace=False)
    if isinstance(data, dict):  # tolerate {"variables": [...]}
        data = data.get("variables", data)
    assert isinstance(data, list) and data, f"{origin}: expected a JSON array of variables"
    out = []
    for item in data:
        assert isinstance(item, dict) and "name" in item, f"{origin}: entry without a name: {item!r}"
        # One entry may name several variables ("PUSHGATEWAY_USERNAME / PUSHGATEWAY_PASSWORD").
        for name in re.split(r"[\s/,]+", item["name"].strip()):
            if name:
                out.append({**item, "name": name})
    return out


@pytest.fixture(scope="session")
def program_variables():
    return _load_program_variables()


@pytest.fixture(scope="session")
def program_names(program_variables):
    """(exact names, prefixes of the families such as SOURCE_AWS_*)."""
    exact = {v["name"] for v in program_variables if not v["name"].endswith("*")}
    families = {v["name"][:-1] for v in program_variables if v["name"].endswith("*")}
    return exact, families


def is_program_variable(name, program_names) -> bool:
    exact, families = program_names
    return name in exact or any(name.startswith(p) and len(name) > len(p) for p in families)


# Program variables the chart deliberately does not set through a first-class value.
# Empty today: every plain variable of `pachyderm-backup variables` has a value (RUST_LOG is
# logging.level, PGSSLROOTCERT is postgresql.sslRootCert, the RESTORE_* variables
# are drill.restore.*, set on the drill CronJob only, HELM_RELEASE is
# pachyderm.helmRelease with captureHelmValues, the *_WORKLOAD_IDENTITY switches are
# source/target/drill.restore.workloadIdentity and workloadIdentity.allBuckets). Add
# a variable here only with the reason, and document it in docs/CHART.md (it stays
# settable through extraEnv).
NOT_FIRST_CLASS: dict[str, str] = {}

# Chart values whose default must equal the program's default (the chart sets them
# explicitly, so a changed default in the program would otherwise be masked).
DEFAULTS_MIRRORED = [
    "PACHD_DEPLOYMENT", "PACHW_DEPLOYMENT", "WORKER_SELECTOR", "PACHD_CONFIGMAP",
    "PAUSE_MODE", "PAUSE_TIMEOUT", "RESUME_TIMEOUT", "MAX_DOWNTIME", "LEASE_NAME",
    "LEASE_DURATION", "PREFLIGHT_TIMEOUT", "DATABASES", "OBJECTS", "PRECOPY", "COPY_CONCURRENCY", "COPY_MODE", "COPY_SHARDS",
    "KEEP_LAST", "KEEP_HOURLY", "KEEP_DAILY", "KEEP_WEEKLY", "KEEP_MONTHLY",
    "KEEP_YEARLY", "MIN_KEEP", "GC_GRACE", "PUSHGATEWAY_TIMEOUT", "PROGRESS_INTERVAL",
    # LOG_FORMAT: not mirrored, the program's default depends on a terminal (json in a pod, as the chart sets).
]


# ============================================================================ tests


def test_lint_strict_clean(helm):
    for name, values in VALUES_SETS.items():
        report = helm.lint(str(CHART), copy.deepcopy(values), strict=True, namespace=NAMESPACE)
        problems = [m for m in report["messages"] if m["severity"] >= 2] + list(report.get("errors") or [])
        assert not problems, f"helm lint --strict with values set {name!r}: {problems}"


@pytest.mark.parametrize("name", sorted(VALUES_SETS))
def test_values_set_passes_schema(chart, name):
    chart.validate_schema(merged_values(chart, name))


@pytest.mark.parametrize("name", sorted(VALUES_SETS))
def test_renders_and_validates_against_kubernetes(render, kubernetes_validate, name):
    docs = render(name)
    kinds = {d["kind"] for d in docs}
    assert {"CronJob"} <= kinds, f"{name}: no CronJob rendered"
    for doc in docs:
        assert doc["metadata"].get("name"), f"{name}: {doc['_source']}: object without a name"
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # A CRD: kubernetes-validate ships no schema for it. Checked by hand in
            # test_prometheus_rule_structure.
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(strip_source(doc), version, strict=True)
            except Exception as e:  # ValidationError, SchemaNotFoundError
                path = ".".join(str(p) for p in getattr(e, "path", []))
                msg = getattr(e, "message", str(e))
                pytest.fail(
                    f"{name}: {doc['_source']} {doc['kind']}/{doc['metadata']['name']} is invalid "
                    f"for Kubernetes {version}: {path}: {msg}"
                )


def test_values_sets_cover_the_features(render):
    """The sets really exercise what their names say."""
    kinds = lambda n: [d["kind"] for d in render(n)]  # noqa: E731
    on = kinds("everything-on")
    for kind in ("CronJob", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "NetworkPolicy", "PrometheusRule"):
        assert kind in on, f"everything-on renders no {kind}"
    assert on.count("CronJob") == 3
    off = kinds("everything-off")
    assert off.count("CronJob") == 1
    for kind in ("ConfigMap", "NetworkPolicy", "PrometheusRule"):
        assert kind not in off, f"everything-off still renders {kind}"
    defaults = kinds("defaults")
    assert defaults.count("CronJob") == 2, "defaults: backup and resume guard"
    assert "NetworkPolicy" not in defaults and "PrometheusRule" not in defaults
    assert "Secret" not in defaults


# ------------------------------------------------------------------- bad values


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects_bad_values(chart, helm, case):
    values, field = BAD_VALUES[case]
    with pytest.raises(helm.HelmValuesError) as err:
        chart.validate_schema(chart.merge_values(copy.deepcopy(values)))
    assert field in str(err.value), f"{case}: message does not name {field!r}: {err.value}"
    # and an install (render) is refused the same way
    with pytest.raises(helm.HelmError) as err:
        chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    assert field in str(err.value), f"{case}: render message does not name {field!r}: {err.value}"


@pytest.mark.parametrize("case", sorted(BAD_TEMPLATE_VALUES))
def test_templates_reject_inconsistent_values(chart, helm, case):
    values, field = BAD_TEMPLATE_VALUES[case]
    with pytest.raises(helm.HelmError) as err:
        chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
    assert field in str(err.value), f"{case}: message does not name {field!r}: {err.value}"


# -------------------------------------------------------------------------- CronJobs


@pytest.mark.parametrize("name", sorted(VALUES_SETS))
def test_backup_cronjob_contract(render, chart, name):
    docs = render(name)
    values = merged_values(chart, name)
    cj = cronjob(docs)
    spec = cj["spec"]
    job = spec["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (c,) = pod["containers"]
    assert spec["schedule"] == values["schedule"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["startingDeadlineSeconds"] > 0
    assert "successfulJobsHistoryLimit" in spec and "failedJobsHistoryLimit" in spec
    assert job["backoffLimit"] == 0
    assert pod["restartPolicy"] == "Never"
    assert c["args"] == ["run"]
    env = env_of(c)
    assert env["SCHEDULE"]["value"] == spec["schedule"], "SCHEDULE must be the CronJob's schedule"
    pause = values["pause"]
    floor = seconds(pause["timeout"]) + seconds(pause["maxDowntime"]) + seconds(pause["resumeTimeout"])
    assert job["activeDeadlineSeconds"] > floor
    assert job["activeDeadlineSeconds"] > seconds(pause["maxDowntime"])
    assert pod["terminationGracePeriodSeconds"] >= seconds(pause["resumeTimeout"])
    if values["cronjob"].get("terminationGracePeriodSeconds") is None:
        assert pod["terminationGracePeriodSeconds"] == seconds(pause["resumeTimeout"]) + 60
    assert pod["automountServiceAccountToken"] is True


def test_default_grace_period_is_660(render):
    pod = cronjob(render("defaults"))["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 660


@pytest.mark.parametrize("name", sorted(VALUES_SETS))
def test_resume_guard_and_drill(render, chart, name):
    docs = render(name)
    values = merged_values(chart, name)
    names = {d["metadata"]["name"] for d in of_kind(docs, "CronJob")}
    guard_name = f"{RELEASE}-pachyderm-backup-resume-guard"
    drill_name = f"{RELEASE}-pachyderm-backup-drill"
    assert (guard_name in names) == values["resumeGuard"]["enabled"]
    assert (drill_name in names) == values["drill"]["enabled"]
    backup_pod = cronjob(docs)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    for suffix, args in (("-resume-guard", ["resume", "--if-stale"]), ("-drill", ["verify", "--drill"])):
        if f"{RELEASE}-pachyderm-backup{suffix}" not in names:
            continue
        cj = cronjob(docs, suffix)
        assert cj["spec"]["concurrencyPolicy"] == "Forbid"
        pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        assert cj["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
        assert pod["serviceAccountName"] == backup_pod["serviceAccountName"]
        assert pod["securityContext"] == backup_pod["securityContext"]
        (c,) = pod["containers"]
        assert c["args"] == args
        assert c["securityContext"] == backup_pod["containers"][0]["securityContext"]
        env = env_of(c)
        restore = {n for n in env if n.startswith("RESTORE_")}
        if suffix == "-drill":
            assert {"RESTORE_PGHOST", "RESTORE_PGPORT", "RESTORE_PGUSER"} <= restore
        else:
            assert not restore
    if values["resumeGuard"]["enabled"]:
        assert cronjob(docs, "-resume-guard")["spec"]["schedule"] == values["resumeGuard"]["schedule"]
    # RESTORE_* never reach the backup itself
    assert not [n for n in env_of(backup_container(docs)) if n.startswith("RESTORE_")]


def test_encryption_keys_reach_only_where_they_are_needed(render):
    """The recipients go to every CronJob (only the backup uses them); the identity is
    mounted into the drill's pod only, where RESTORE_IDENTITY_FILE names it."""
    docs = render("everything-on")
    for suffix in ("", "-resume-guard", "-drill"):
        env = env_of(backup_container(docs, suffix))
        assert env["DUMP_RECIPIENTS"]["value"] == ",".join(RECIPIENTS)
        pod = cronjob(docs, suffix)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        secrets = [v["secret"] for v in pod["volumes"] if "secret" in v]
        mounts = {m["name"]: m for m in backup_container(docs, suffix).get("volumeMounts", [])}
        if suffix != "-drill":
            assert "RESTORE_IDENTITY_FILE" not in env and "age-identity" not in mounts
            assert not [s for s in secrets if s["secretName"] == "pachyderm-backup-age"], f"{suffix or 'backup'} mounts the identity"
            continue
        (volume,) = [v for v in pod["volumes"] if v["name"] == "age-identity"]
        assert volume["secret"] == {
            "secretName": "pachyderm-backup-age",
            "defaultMode": 0o440,
            "items": [{"key": "key.txt", "path": "identity.txt"}],
        }
        mount = mounts["age-identity"]
        assert mount["readOnly"] is True
        assert env["RESTORE_IDENTITY_FILE"]["value"] == mount["mountPath"] + "/identity.txt"
    # Unencrypted by default: no variable, no volume, and the release notes warn.
    defaults = render("defaults")
    assert "DUMP_RECIPIENTS" not in env_of(backup_container(defaults))


def test_postgresql_client_certificates(render):
    """postgresql.clientCertificate (every pod) and drill.restore.clientCertificate (the
    drill's only): the Secret mounted read-only with mode 0440 (root-owned, readable
    through fsGroup: libpq accepts a root-owned key up to 0640), PGSSLCERT / PGSSLKEY
    naming its files, PGSSLROOTCERT its CA unless sslRootCert is given."""
    base, restore_base = "/etc/pachyderm-backup/postgresql", "/etc/pachyderm-backup/restore-postgresql"
    docs = render("postgresql-client-certificates")
    owners = []
    for owner, spec in pod_specs(docs):
        owners.append(owner)
        (c,) = spec["containers"]
        env = env_of(c)
        mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert {n: env[n]["value"] for n in ("PGSSLCERT", "PGSSLKEY", "PGSSLROOTCERT")} == {
            "PGSSLCERT": f"{base}/tls.crt",
            "PGSSLKEY": f"{base}/tls.key",
            "PGSSLROOTCERT": f"{base}/ca.crt",
        }, owner
        assert mounts["postgresql-client-certificate"] == {"name": "postgresql-client-certificate", "mountPath": base, "readOnly": True}, owner
        assert volumes["postgresql-client-certificate"]["secret"] == {
            "secretName": "pachyderm-backup-postgres-tls",
            "defaultMode": 0o440,
            "items": [{"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}, {"key": "ca.crt", "path": "ca.crt"}],
        }, owner
        drill = owner.endswith("-drill")
        assert ("restore-postgresql-client-certificate" in volumes) == drill, owner
        assert ("RESTORE_PGSSLCERT" in env) == drill, owner
        if drill:
            assert env["RESTORE_PGSSLCERT"]["value"] == f"{restore_base}/tls.crt"
            assert env["RESTORE_PGSSLKEY"]["value"] == f"{restore_base}/tls.key"
            assert "RESTORE_PGSSLROOTCERT" not in env, "no caKey, no sslRootCert"
            assert mounts["restore-postgresql-client-certificate"]["mountPath"] == restore_base
            assert volumes["restore-postgresql-client-certificate"]["secret"]["items"] == [
                {"key": "client.crt", "path": "tls.crt"},
                {"key": "client.key", "path": "tls.key"},
            ]
    assert any(o.endswith("-drill") for o in owners) and any(o.endswith("-check") for o in owners), owners
    # A sslRootCert given wins over the Secret's CA.
    env = env_of(backup_container(render("everything-on")))
    assert env["PGSSLROOTCERT"]["value"] == "/etc/postgres-ca/ca.crt"
    assert env["PGSSLCERT"]["value"] == f"{base}/tls.crt"
    # No Secret: no variable, no volume.
    docs = render("defaults")
    assert not {"PGSSLCERT", "PGSSLKEY", "PGSSLROOTCERT"} & set(env_of(backup_container(docs)))
    assert "postgresql-client-certificate" not in {v["name"] for _, spec in pod_specs(docs) for v in spec["volumes"]}


def test_notes_warn_about_unencrypted_dumps(chart):
    notes = lambda values: next(  # noqa: E731
        text for path, text in chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE).items() if path.endswith("NOTES.txt")
    )
    assert "UNENCRYPTED" in notes(VALUES_SETS["defaults"])
    assert "UNENCRYPTED" not in notes(VALUES_SETS["everything-on"])


def test_resume_guard_default_schedule(render):
    assert cronjob(render("defaults"), "-resume-guard")["spec"]["schedule"] == "*/10 * * * *"


# What Kubernetes accepts in spec.schedule (robfig/cron's ParseStandard, as the
# program's src/schedule.rs reads it): the schema must not refuse any of them.
KUBERNETES_SCHEDULES = [
    "@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly",
    "@every 6h", "@every 1h30m", "@every 1.5h",
    "0 2 * * *", "0 2 * * 0", "0 2 * * 6", "0 2 * * SUN", "0 2 * * sun", "0 2 * * Sat",
    "0 2 * * MON-FRI", "0 2 * * mon-fri", "0 2 * * 1-5", "0 2 * * */2", "0 2 * * 0,6",
    "0 2 * * 1-5/2", "0 2 * * 00", "0 2 1 * 1", "30 1 ? * ?", "*/15 0-6 1,15 JAN-jun *",
]


@pytest.mark.parametrize("schedule", KUBERNETES_SCHEDULES)
def test_schema_accepts_what_kubernetes_accepts(chart, schedule):
    for values in ({"schedule": schedule}, {"resumeGuard": {"schedule": schedule}}, {"drill": {"schedule": schedule}}):
        chart.validate_schema(chart.merge_values(copy.deepcopy(values)))


@pytest.mark.parametrize("name", sorted(VALUES_SETS))
def test_time_zone_reaches_every_cronjob_and_the_program(render, chart, name):
    """timeZone is every CronJob's spec.timeZone and SCHEDULE_TIMEZONE; empty, neither
    is set (the kube-controller-manager's zone, and the program's default)."""
    docs = render(name)
    zone = merged_values(chart, name).get("timeZone") or None
    for cj in of_kind(docs, "CronJob"):
        assert cj["spec"].get("timeZone") == zone, f"{name}: {cj['metadata']['name']}"
        (c,) = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        assert env_of(c).get("SCHEDULE_TIMEZONE", {}).get("value") == zone, f"{name}: {cj['metadata']['name']}"


@pytest.mark.parametrize("name", sorted(VALUES_SETS))
def test_helm_test_runs_the_preflight_like_the_backup_pod(render, chart, name):
    """`helm test`: a Pod with the test hook, running `check` with the backup pod's
    ServiceAccount, environment and volumes, so it finds what tonight's run finds."""
    docs = render(name)
    values = merged_values(chart, name)
    pods = of_kind(docs, "Pod")
    if not values["helmTest"]["enabled"]:
        assert not pods
        return
    (pod,) = pods
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["name"] == f"{RELEASE}-pachyderm-backup-check"
    (c,) = pod["spec"]["containers"]
    assert c["args"] == ["check"]
    backup = cronjob(docs)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (b,) = backup["containers"]
    assert c["env"] == b["env"] and c["image"] == b["image"] and c.get("volumeMounts") == b.get("volumeMounts")
    assert pod["spec"]["serviceAccountName"] == backup["serviceAccountName"]
    assert pod["spec"]["restartPolicy"] == "Never"


def test_descriptor_and_time_zone_render(render):
    docs = render("descriptor-and-time-zone")
    spec = cronjob(docs)["spec"]
    assert (spec["schedule"], spec["timeZone"]) == ("@daily", "Europe/Paris")
    env = env_of(backup_container(docs))
    assert (env["SCHEDULE"]["value"], env["SCHEDULE_TIMEZONE"]["value"]) == ("@daily", "Europe/Paris")
    guard = cronjob(docs, "-resume-guard")["spec"]
    assert (guard["schedule"], guard["timeZone"]) == ("@hourly", "Europe/Paris")
    assert "timeZone" not in cronjob(render("defaults"))["spec"]


# ------------------------------------------------------------------------------ RBAC


def expected_rules(values) -> set[tuple]:
    """The program's Kubernetes calls (docs/CHART.md), as
    (apiGroup, resource, verb, resourceName or None)."""
    p = values["pachyderm"]
    rules = set()
    for dep in (p["pachdDeployment"], p["pachwDeployment"]):
        for verb in ("get", "patch"):
            rules.add(("apps", "deployments", verb, dep))
    rules.add(("apps", "deployments", "list", None))
    rules.add(("", "replicationcontrollers", "list", None))
    rules.add(("", "replicationcontrollers", "patch", None))
    rules.add(("", "pods", "list", None))
    rules.add(("", "services", "list", None))
    rules.add(("", "configmaps", "list", None))
    if values["pause"]["mode"] == "pachyderm":
        rules.add(("", "configmaps", "get", p["pachdConfigMap"]))
        rules.add(("", "configmaps", "patch", p["pachdConfigMap"]))
    rules.add(("events.k8s.io", "events", "create", None))
    rules.add(("events.k8s.io", "events", "patch", None))
    rules.add(("coordination.k8s.io", "leases", "create", None))
    rules.add(("coordination.k8s.io", "leases", "get", values["lease"]["name"]))
    rules.add(("coordination.k8s.io", "leases", "update", values["lease"]["name"]))
    if values["captureHelmValues"]:
        # HELM_RELEASE: one list by label selector (owner=helm,name=<release>); no get.
        rules.add(("", "secrets", "list", None))
    return rules


def flatten_rules(role) -> set[tuple]:
    out = set()
    for rule in role["rules"]:
        assert not rule.get("nonResourceURLs"), "no nonResourceURLs in a Role"
        names = rule.get("resourceNames") or [None]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    for rn in names:
                        out.add((group, resource, verb, rn))
    return out


def walk_strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from walk_strings(k)
            yield from walk_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk_strings(v)
    elif isinstance(obj, str):
        yield obj


@pytest.mark.parametrize("name", sorted(VALUES_SETS))
def test_role_is_exactly_the_programs_calls(render, chart, name):
    docs = render(name)
    values = merged_values(chart, name)
    roles = of_kind(docs, "Role")
    assert not of_kind(docs, "ClusterRole") and not of_kind(docs, "ClusterRoleBinding"), "namespaced RBAC only"
    if not values["rbac"]["create"]:
        assert not roles and not of_kind(docs, "RoleBinding")
        return
    fullname = f"{RELEASE}-pachyderm-backup"
    shards = values["objects"]["copyShards"] > 1
    assert sorted(r["metadata"]["name"] for r in roles) == sorted([fullname] + ([f"{fullname}-copy-shards"] if shards else []))
    (role,) = [r for r in roles if r["metadata"]["name"] == fullname]
    assert role["metadata"]["namespace"] == (values["pachyderm"]["namespace"] or NAMESPACE)
    assert "*" not in set(walk_strings(role["rules"])), "wildcard in the Role"
    got = flatten_rules(role)
    want = expected_rules(values)
    assert got == want, f"extra: {sorted(got - want, key=str)}; missing: {sorted(want - got, key=str)}"
    # resourceNames wherever Kubernetes honours them: every get/patch/update names its objects
    # (except replicationcontrollers and events, whose names are generated)
    for group, resource, verb, rn in got:
        if verb in ("get", "patch", "update") and resource not in ("replicationcontrollers", "events"):
            assert rn is not None, f"{resource} {verb} without resourceNames"
        if verb in ("list", "create"):
            assert rn is None, f"resourceNames are ignored for {verb}"
    secrets = {r for r in got if r[1] == "secrets"}
    assert secrets == ({("", "secrets", "list", None)} if values["captureHelmValues"] else set())
    writes = {r for r in got if r[1] == "configmaps" and r[2] != "list"}
    assert bool(writes) == (values["pause"]["mode"] == "pachyderm")
    (binding,) = [b for b in of_kind(docs, "RoleBinding") if b["metadata"]["name"] == fullname]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    sa = cronjob(docs)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]


# The copy Job's calls (src/cluster/copy_job.rs `permissions`), in the release namespace.
# tests/integration/shards.rs pins the same set against what the run asks in its SSAR
# preflight and what it then calls.
COPY_SHARDS_RULES = {
    ("", "pods", "get", None),
    ("batch", "jobs", "create", None),
    ("batch", "jobs", "get", None),
    ("batch", "jobs", "list", None),
    ("batch", "jobs", "delete", None),
}


def test_copy_shards_role_is_exactly_the_copy_jobs_calls(render):
    docs = render("copy-shards")
    fullname = f"{RELEASE}-pachyderm-backup"
    (role,) = [r for r in of_kind(docs, "Role") if r["metadata"]["name"] == f"{fullname}-copy-shards"]
    assert role["metadata"]["namespace"] == NAMESPACE, "the Job runs beside the backup pod, in the release namespace"
    assert "*" not in set(walk_strings(role["rules"])), "wildcard in the Role"
    assert flatten_rules(role) == COPY_SHARDS_RULES
    (binding,) = [b for b in of_kind(docs, "RoleBinding") if b["metadata"]["name"] == f"{fullname}-copy-shards"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"] and binding["metadata"]["namespace"] == NAMESPACE
    sa = cronjob(docs)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    env = env_of(backup_container(docs))
    assert env["COPY_SHARDS"]["value"] == "8" and env["COPY_PARALLELISM"]["value"] == "4"
    assert env["PRECOPY_TIMEOUT"]["value"] == "6h"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # Off by default: no Job rights, no pod identity.
    defaults = render("defaults")
    assert not [r for r in of_kind(defaults, "Role") if r["metadata"]["name"].endswith("-copy-shards")]
    assert "POD_NAME" not in env_of(backup_container(defaults))


def test_role_by_pause_mode(chart, yaml):
    for mode in ("scale", "pachyderm", "none"):
        for capture in (False, True):
            values = {"pause": {"mode": mode}, "captureHelmValues": capture}
            out = chart.render(values, name=RELEASE, namespace=NAMESPACE)
            (role,) = [d for d in yaml.safe_load_all(out["pachyderm-backup/templates/rbac.yaml"]) if d["kind"] == "Role"]
            assert flatten_rules(role) == expected_rules(chart.merge_values(values)), (mode, capture)


# ------------------------------------------------------------------- pod security


@pytest.mark.parametrize("name", sorted(VALUES_SETS))
def test_pods_meet_restricted_pod_security_standard(render, name):
    """The checks of the restricted Pod Security Standard (Kubernetes 1.27+), written
    out, plus our own: read-only root filesystem, the image's fixed UID, resources."""
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                       "persistentVolumeClaim", "projected", "secret"}
    for owner, spec in pod_specs(render(name)):
        where = f"{name}: {owner}"
        # baseline
        for host in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(host), f"{where}: {host}"
        for vol in spec.get("volumes", []):
            kinds = set(vol) - {"name"}
            assert "hostPath" not in kinds, f"{where}: hostPath volume {vol['name']}"
            assert kinds <= allowed_volumes, f"{where}: volume type {kinds} not allowed"
        assert not (spec.get("securityContext") or {}).get("sysctls"), f"{where}: sysctls"
        pod_sc = spec.get("securityContext") or {}
        assert pod_sc.get("runAsUser", 65532) != 0
        assert (pod_sc.get("seccompProfile") or {}).get("type") in (None, "RuntimeDefault", "Localhost")
        assert pod_sc.get("runAsUser") == 65532 and pod_sc.get("runAsGroup") == 65532
        assert pod_sc.get("fsGroup") == 65532
        for c in containers(spec):
            sc = c.get("securityContext") or {}
            cw = f"{where}/{c['name']}"
            assert not sc.get("privileged"), f"{cw}: privileged"
            assert sc.get("procMount", "Default") == "Default"
            assert not any(p.get("hostPort") for p in c.get("ports", [])), f"{cw}: hostPort"
            # restricted
            assert sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation"
            caps = sc.get("capabilities") or {}
            assert "ALL" in (caps.get("drop") or []), f"{cw}: capabilities must drop ALL"
            assert set(caps.get("add") or []) <= {"NET_BIND_SERVICE"}, f"{cw}: capabilities added"
            non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
            assert non_root is True, f"{cw}: runAsNonRoot"
            assert sc.get("runAsUser", pod_sc.get("runAsUser")) not in (0, None), f"{cw}: runAsUser"
            seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
            assert seccomp == "RuntimeDefault", f"{cw}: seccompProfile must be RuntimeDefault"
            # ours
            assert sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem"
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{cw}: /tmp must be a writable emptyDir"
            res = c.get("resources") or {}
            assert res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory"), f"{cw}: requests"
            assert res.get("limits", {}).get("memory"), f"{cw}: memory limit"
        tmp = [v for v in spec["volumes"] if v["name"] == "tmp"]
        assert tmp and "emptyDir" in tmp[0]
        assert spec.get("automountServiceAccountToken") is True, f"{where}: the program needs its token"


def test_default_resources(render):
    res = backup_container(render("defaults"))["resources"]
    assert res == {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}


# ------------------------------------------------------------ environment and drift


@pytest.fixture(scope="session")
def chart_env_names(render):
    """name -> set of values sets where some container of the chart sets it."""
    names: dict[str, set] = {}
    for set_name in VALUES_SETS:
        for _, spec in pod_specs(render(set_name)):
            for c in containers(spec):
                for e in c.get("env", []):
                    names.setdefault(e["name"], set()).add(set_name)
                assert not c.get("envFrom"), "envFrom would hide variable names from the drift check"
    return names


def test_chart_sets_only_program_variables(chart_env_names, program_names):
    unknown = {n: sorted(s) for n, s in chart_env_names.items() if not is_program_variable(n, program_names)}
    assert not unknown, (
        f"the chart sets variables the program does not read (per `variables --json`): {unknown}"
    )


def test_every_program_variable_is_settable(chart_env_names, program_names):
    exact, _ = program_names
    missing = sorted(n for n in exact if n not in chart_env_names and n not in NOT_FIRST_CLASS)
    assert not missing, (
        f"program variables no values set makes the chart set: {missing}. Give each a value in "
        "helm/pachyderm-backup/values.yaml (+ schema, docs/CHART.md) and use it in a values set "
        "of tests/chart/test_chart.py, or list it in NOT_FIRST_CLASS with the reason"
    )


def test_program_defaults_are_mirrored(render, program_variables):
    """Where the chart states a default explicitly, it is the program's default."""
    program = {v["name"]: v for v in program_variables}
    env = env_of(backup_container(render("defaults")))
    mismatched = {}
    for name in DEFAULTS_MIRRORED:
        if name not in program or name not in env:
            continue
        default = program[name].get("default")
        if default in (None, ""):
            continue
        if str(default).strip().lower() != env[name]["value"].strip().lower():
            mismatched[name] = {"program": default, "chart": env[name]["value"]}
    assert not mismatched, f"values.yaml defaults differ from the program's: {mismatched}"


@pytest.mark.parametrize("name", sorted(VALUES_SETS))
def test_env_is_well_formed(render, name):
    for owner, spec in pod_specs(render(name)):
        for c in containers(spec):
            seen = []
            for e in c.get("env", []):
                assert e["name"] not in seen, f"{name}: {owner}: {e['name']} set twice"
                # $(VAR) references must name a variable defined earlier (Kubernetes semantics)
                for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", e.get("value", "")):
                    assert ref in seen, f"{name}: {owner}: {e['name']} refers to $({ref}) before it is set"
                seen.append(e["name"])


# ---------------------------------------------------------- zero new secrets, buckets


def secret_ref(env, name):
    ref = env[name]["valueFrom"]["secretKeyRef"]
    return ref["name"], ref["key"]


def test_zero_new_secrets_by_default(render):
    docs = render("defaults")
    assert not of_kind(docs, "Secret"), "the chart creates no Secret"
    env = env_of(backup_container(docs))
    assert env["PGHOST"]["value"] == "postgres"
    assert env["PGPORT"]["value"] == "5432"
    assert env["PGUSER"]["value"] == "pachyderm"
    assert env["DATABASES"]["value"] == "pachyderm,dex"
    assert secret_ref(env, "PGPASSWORD") == ("postgres", "postgresql-password")
    assert env["SOURCE_URL"]["value"] == "s3://$(SOURCE_AWS_BUCKET)"
    assert "TARGET_URL" not in env  # required: the program reports it (exit 2)


SOURCE_MAPPINGS = {
    "amazon": {
        "SOURCE_AWS_BUCKET": "AMAZON_BUCKET",
        "SOURCE_AWS_ACCESS_KEY_ID": "AMAZON_ID",
        "SOURCE_AWS_SECRET_ACCESS_KEY": "AMAZON_SECRET",
        "SOURCE_AWS_REGION": "AMAZON_REGION",
        "SOURCE_AWS_SESSION_TOKEN": "AMAZON_TOKEN",
        "SOURCE_AWS_ENDPOINT": "CUSTOM_ENDPOINT",
    },
    "minio": {
        "SOURCE_AWS_BUCKET": "MINIO_BUCKET",
        "SOURCE_AWS_ACCESS_KEY_ID": "MINIO_ID",
        "SOURCE_AWS_SECRET_ACCESS_KEY": "MINIO_SECRET",
    },
    "google": {
        "SOURCE_GOOGLE_BUCKET": "GOOGLE_BUCKET",
        "SOURCE_GOOGLE_SERVICE_ACCOUNT_KEY": "GOOGLE_CRED",
    },
    "microsoft": {
        "SOURCE_AZURE_CONTAINER_NAME": "MICROSOFT_CONTAINER",
        "SOURCE_AZURE_STORAGE_ACCOUNT_NAME": "MICROSOFT_ID",
        "SOURCE_AZURE_STORAGE_ACCOUNT_KEY": "MICROSOFT_SECRET",
    },
}
SOURCE_URLS = {
    "amazon": "s3://$(SOURCE_AWS_BUCKET)",
    "minio": "s3://$(SOURCE_AWS_BUCKET)",
    "google": "gs://$(SOURCE_GOOGLE_BUCKET)",
    "microsoft": "az://$(SOURCE_AZURE_CONTAINER_NAME)",
}


@pytest.mark.parametrize("backend", sorted(SOURCE_MAPPINGS))
def test_source_credentials_from_pachyderm_secret(render, backend):
    env = env_of(backup_container(render(f"source-{backend}")))
    from_secret = {
        n: secret_ref(env, n)
        for n in env
        if n.startswith("SOURCE_") and "valueFrom" in env[n]
    }
    assert from_secret == {
        n: ("pachyderm-storage-secret", k) for n, k in SOURCE_MAPPINGS[backend].items()
    }
    assert env["SOURCE_URL"]["value"] == SOURCE_URLS[backend]
    optional = {n for n in env if env[n].get("valueFrom", {}).get("secretKeyRef", {}).get("optional")}
    assert optional & set(SOURCE_MAPPINGS[backend]) == {
        n for n, k in SOURCE_MAPPINGS[backend].items() if k in ("AMAZON_TOKEN", "CUSTOM_ENDPOINT", "GOOGLE_CRED")
    }


def test_minio_endpoint_is_a_url(render):
    env = env_of(backup_container(render("source-minio")))
    assert env["SOURCE_AWS_ENDPOINT"] == {"name": "SOURCE_AWS_ENDPOINT", "value": "http://minio.pachyderm.svc:9000"}
    assert env["SOURCE_AWS_ALLOW_HTTP"]["value"] == "true"
    assert env["SOURCE_AWS_REGION"]["value"] == "us-east-1"
    assert "MINIO_ENDPOINT" not in {
        e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") for e in env.values()
    }
    assert env["TARGET_AWS_ENDPOINT"]["value"] == "http://minio.backup.svc:9000"
    assert env["TARGET_AWS_ALLOW_HTTP"]["value"] == "true"
    # https endpoints do not allow http
    env = env_of(backup_container(render("everything-on")))
    assert "SOURCE_AWS_ALLOW_HTTP" not in env and "TARGET_AWS_ALLOW_HTTP" not in env


def test_plain_values_override_secret_keys(render):
    env = env_of(backup_container(render("source-amazon-overrides")))
    assert env["SOURCE_URL"]["value"] == "s3://pachyderm-data"
    assert env["SOURCE_AWS_REGION"]["value"] == "us-west-2"
    assert env["SOURCE_AWS_ENDPOINT"]["value"] == "https://s3.example.internal"
    for gone in ("SOURCE_AWS_BUCKET", "SOURCE_AWS_ACCESS_KEY_ID", "SOURCE_AWS_SECRET_ACCESS_KEY"):
        assert gone not in env


def test_target_credentials_from_existing_secret(render):
    env = env_of(backup_container(render("pause-scale")))
    assert env["TARGET_URL"]["value"] == "s3://backups/pachyderm"
    targets = {n: env[n]["valueFrom"]["secretKeyRef"] for n in env if n.startswith("TARGET_") and "valueFrom" in env[n]}
    assert set(targets) == {
        "TARGET_AWS_ACCESS_KEY_ID", "TARGET_AWS_SECRET_ACCESS_KEY", "TARGET_AWS_SESSION_TOKEN",
        "TARGET_GOOGLE_SERVICE_ACCOUNT_KEY", "TARGET_AZURE_STORAGE_ACCOUNT_NAME",
        "TARGET_AZURE_STORAGE_ACCOUNT_KEY",
    }
    assert all(r["name"] == "backup-bucket" and r["optional"] is True for r in targets.values())
    # no Secret named: no credential variables (workload identity)
    env = env_of(backup_container(render("workload-identity")))
    assert not [n for n in env if n.startswith("TARGET_") and "valueFrom" in env[n]]


def test_workload_identity(render):
    docs = render("workload-identity")
    sa = one(docs, "ServiceAccount")
    assert sa["metadata"]["annotations"] == {
        "example.com/owner": "platform",
        "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/pachyderm-backup",
        "iam.gke.io/gcp-service-account": "backup@project.iam.gserviceaccount.com",
        "azure.workload.identity/client-id": "00000000-1111-2222-3333-444444444444",
    }
    assert sa["automountServiceAccountToken"] is True
    for owner, spec in pod_specs(docs):
        assert spec["serviceAccountName"] == sa["metadata"]["name"]
    for cj in of_kind(docs, "CronJob"):
        labels = cj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        assert labels["azure.workload.identity/use"] == "true"
    # without azure, no label
    for cj in of_kind(render("source-google"), "CronJob"):
        assert "azure.workload.identity/use" not in cj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]


WI_VARS = ("WORKLOAD_IDENTITY", "SOURCE_WORKLOAD_IDENTITY", "TARGET_WORKLOAD_IDENTITY", "RESTORE_WORKLOAD_IDENTITY")


def wi_env(container) -> dict:
    env = env_of(container)
    return {n: env[n]["value"] for n in WI_VARS if n in env}


@pytest.mark.parametrize("name", sorted(VALUES_SETS))
def test_workload_identity_variables_are_only_ever_true(render, name):
    """The chart sets a *_WORKLOAD_IDENTITY switch to true or not at all: a "false"
    would override WORKLOAD_IDENTITY, the program's default for each bucket."""
    for owner, spec in pod_specs(render(name)):
        for c in containers(spec):
            for n, value in wi_env(c).items():
                assert value == "true", f"{name}: {owner}: {n}={value!r}"


def test_workload_identity_switches(render):
    backup = lambda n: wi_env(backup_container(render(n)))  # noqa: E731
    assert backup("defaults") == {}
    assert backup("pause-scale") == {}, "target Secret: keys, no identity"
    assert backup("pause-none") == {}, "file:// buckets need no credentials"
    assert backup("source-microsoft") == {}, "target Secret: keys, no identity"
    # identity for the source only: the target keeps its Secret
    assert backup("source-amazon-overrides") == {"SOURCE_WORKLOAD_IDENTITY": "true"}
    # no target Secret and a cloud identity on the ServiceAccount: automatic
    assert backup("source-amazon") == {"TARGET_WORKLOAD_IDENTITY": "true"}
    assert backup("source-google") == {"TARGET_WORKLOAD_IDENTITY": "true"}
    assert backup("workload-identity") == {"SOURCE_WORKLOAD_IDENTITY": "true", "TARGET_WORKLOAD_IDENTITY": "true"}
    docs = render("workload-identity-all")
    assert backup("workload-identity-all") == {"WORKLOAD_IDENTITY": "true", "TARGET_WORKLOAD_IDENTITY": "true"}
    drill = backup_container(docs, "-drill")
    assert wi_env(drill) == {
        "WORKLOAD_IDENTITY": "true", "TARGET_WORKLOAD_IDENTITY": "true", "RESTORE_WORKLOAD_IDENTITY": "true",
    }
    assert env_of(drill)["RESTORE_PGSSLROOTCERT"]["value"] == "/etc/scratch-ca/ca.crt"
    assert "SOURCE_GOOGLE_SERVICE_ACCOUNT_KEY" not in env_of(drill)
    # Secrets for the target and the scratch bucket: nothing automatic
    docs = render("everything-on")
    assert wi_env(backup_container(docs)) == {} and wi_env(backup_container(docs, "-drill")) == {}
    assert env_of(backup_container(docs, "-drill"))["RESTORE_PGSSLROOTCERT"]["value"] == "/etc/postgres-ca/ca.crt"


WI_CASES = {
    # (values, the backup container's switches)
    "annotation-only": (
        {"target": {"url": "az://backups/pachyderm"},
         "serviceAccount": {"annotations": {"azure.workload.identity/client-id": "00000000-1111-2222-3333-444444444444"}}},
        {"TARGET_WORKLOAD_IDENTITY": "true"},
    ),
    "explicit-false-disables-automatic": (
        {"target": {"url": "gs://backups/pachyderm", "workloadIdentity": False},
         "workloadIdentity": {"gcp": {"serviceAccount": "backup@project.iam.gserviceaccount.com"}}},
        {},
    ),
    "explicit-true-with-secret": (
        # an Azure Secret holding only the storage account name
        {"target": {"url": "az://backups/pachyderm", "secretName": "backup-account", "workloadIdentity": True}},
        {"TARGET_WORKLOAD_IDENTITY": "true"},
    ),
    "no-identity-no-secret": (
        # the program reports the missing credentials (exit 2, nothing touched)
        {"target": {"url": "s3://backups/pachyderm"}},
        {},
    ),
    "existing-serviceaccount-needs-explicit": (
        {"target": {"url": "gs://backups/pachyderm"}, "serviceAccount": {"create": False, "name": "backup"}},
        {},
    ),
    "all-buckets": (
        {"target": {"url": "gs://backups/pachyderm"}, "workloadIdentity": {"allBuckets": True}},
        {"WORKLOAD_IDENTITY": "true"},
    ),
}


@pytest.mark.parametrize("case", sorted(WI_CASES))
def test_workload_identity_cases(chart, yaml, case):
    values, want = WI_CASES[case]
    assert wi_env(backup_container(render_values(chart, yaml, values))) == want


def test_restore_workload_identity_explicit(chart, yaml):
    drill = {"enabled": True, "restore": {"pghost": "scratch", "url": "s3://scratch/p", "secretName": "scratch-bucket"}}
    docs = render_values(chart, yaml, {"target": TARGET, "drill": drill})
    assert wi_env(backup_container(docs, "-drill")) == {}
    drill["restore"]["workloadIdentity"] = True
    docs = render_values(chart, yaml, {"target": TARGET, "drill": drill})
    assert wi_env(backup_container(docs, "-drill")) == {"RESTORE_WORKLOAD_IDENTITY": "true"}
    assert wi_env(backup_container(docs)) == {}, "RESTORE_* never reach the backup"


@pytest.mark.parametrize("name", sorted(VALUES_SETS))
def test_helm_release_only_with_capture(render, chart, name):
    values = merged_values(chart, name)
    for owner, spec in pod_specs(render(name)):
        for c in containers(spec):
            env = env_of(c)
            if values["captureHelmValues"]:
                assert env["HELM_RELEASE"]["value"] == values["pachyderm"]["helmRelease"], owner
            else:
                assert "HELM_RELEASE" not in env, f"{name}: {owner}: HELM_RELEASE without captureHelmValues"


def test_helm_release_default(chart, yaml):
    env = env_of(backup_container(render_values(chart, yaml, {"captureHelmValues": True})))
    assert env["HELM_RELEASE"] == {"name": "HELM_RELEASE", "value": "pachyderm"}


def test_existing_service_account(render):
    docs = render("existing-serviceaccount")
    assert not of_kind(docs, "ServiceAccount")
    for _, spec in pod_specs(docs):
        assert spec["serviceAccountName"] == "backup-operator"


# ------------------------------------------------------- NetworkPolicy, rule, dashboard


def test_network_policy(render):
    np = one(render("everything-on"), "NetworkPolicy")
    spec = np["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["ingress"] == []
    sel = spec["podSelector"]["matchLabels"]
    for cj in of_kind(render("everything-on"), "CronJob"):
        labels = cj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        assert sel.items() <= labels.items(), "the policy selects every pod of the chart"
    ports = [{(p.get("protocol", "TCP"), p["port"]) for p in rule["ports"]} for rule in spec["egress"]]
    assert {("UDP", 53), ("TCP", 53)} in ports  # DNS
    assert {("TCP", 6443)} in ports  # API server
    assert {("TCP", 5433)} in ports  # PostgreSQL (postgresql.port)
    assert {("TCP", 443), ("TCP", 9000)} in ports  # buckets
    assert {("TCP", 9091)} in ports  # Pushgateway
    api = spec["egress"][1]
    assert api["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}]
    assert spec["egress"][-1]["to"] == [{"podSelector": {"matchLabels": {"app": "postgres-scratch"}}}]


def rules_source(yaml):
    files = sorted((REPO / "alerts").glob("*.rules.yaml"))
    assert files, "alerts/*.rules.yaml is missing"
    return yaml.safe_load((CHART_FILES / "pachyderm-backup.rules.yaml").read_text())


def test_prometheus_rule_structure(render, yaml):
    """PrometheusRule is a CRD (monitoring.coreos.com/v1) kubernetes-validate has no
    schema for: its structure is checked here instead."""
    rule = one(render("everything-on"), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule) - {"_source"} == {"apiVersion", "kind", "metadata", "spec"}
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert set(rule["spec"]) == {"groups"}
    groups = rule["spec"]["groups"]
    assert isinstance(groups, list) and groups
    group_keys = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset", "labels"}
    rule_keys = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
    for g in groups:
        assert isinstance(g.get("name"), str) and g["name"]
        assert set(g) <= group_keys, f"unknown group fields {set(g) - group_keys}"
        assert isinstance(g["rules"], list) and g["rules"]
        for r in g["rules"]:
            assert set(r) <= rule_keys, f"unknown rule fields {set(r) - rule_keys}"
            assert ("alert" in r) != ("record" in r), f"a rule is an alert or a record: {r}"
            assert isinstance(r["expr"], (str, int, float)) and str(r["expr"]).strip()
            for k in ("labels", "annotations"):
                assert all(isinstance(v, str) for v in (r.get(k) or {}).values()), f"{k} must be strings"
            if "for" in r:
                assert re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", r["for"]), r["for"]
    # the groups are the rule file's, with Prometheus' own {{ $labels }} templates intact
    assert groups == rules_source(yaml)["groups"]


def test_prometheus_rule_keeps_alert_templates_literal(render):
    text = "\n".join(
        str(v)
        for g in one(render("everything-on"), "PrometheusRule")["spec"]["groups"]
        for r in g["rules"]
        for v in (r.get("annotations") or {}).values()
    )
    source = (CHART_FILES / "pachyderm-backup.rules.yaml").read_text()
    if "{{" in source:
        assert "{{" in text and "$labels" in text, "Helm must not have evaluated the alerts' templates"


def test_dashboard_configmap(render):
    cms = [d for d in of_kind(render("everything-on"), "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    (cm,) = cms
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Backups"}
    (key,) = cm["data"]
    source = json.loads((CHART_FILES / "pachyderm-backup.json").read_text())
    assert json.loads(cm["data"][key]) == source


def test_rules_and_dashboard_read_the_pushed_label(render):
    """The PrometheusRule and the dashboard the chart installs read the label the program
    pushes, pachyderm_cluster, never `cluster` (the external label of multi-cluster
    Prometheus setups, and the grouping key of earlier versions)."""
    docs = render("everything-on")
    rule = one(docs, "PrometheusRule")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert "PachydermBackupNotVerified" in {r["alert"] for r in rules}
    for r in rules:
        for m in re.finditer(r"\bpachyderm_backup_\w+(\{[^}]*\})?", r["expr"]):
            assert m.group(1) and 'pachyderm_cluster!=""' in m.group(1), (r["alert"], m.group(0))
        assert not re.search(r"\b(on|ignoring)\s*\([^)]*\bcluster\b", r["expr"]), r["alert"]
        for text in r["annotations"].values():
            assert "$labels.cluster " not in text and "$labels.cluster}" not in text, r["alert"]
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    dashboard = json.loads(next(iter(cm["data"].values())))

    def exprs(panels):
        for p in panels:
            yield from (t["expr"] for t in p.get("targets", []))
            yield from exprs(p.get("panels", []))

    found = list(exprs(dashboard["panels"]))
    assert found
    for e in found:
        assert 'pachyderm_cluster="$cluster"' in e and not re.search(r"[{,]\s*cluster\s*[=!]", e), e
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "cluster"]
    assert variable["query"].endswith(", pachyderm_cluster)")


def test_notes_say_when_nothing_verifies(chart):
    def notes(values):
        rendered = chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)
        return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))

    pushing = {"pushgateway": {"url": "http://prometheus-pushgateway.monitoring:9091"}}
    assert "PachydermBackupNotVerified" in notes(pushing)
    assert "PachydermBackupNotVerified" not in notes(VALUES_SETS["everything-on"]), "the drill verifies"
    assert "PachydermBackupNotVerified" not in notes(VALUES_SETS["defaults"]), "no metrics, no alert"


def test_dashboard_label_is_configurable(chart, yaml):
    out = chart.render(
        {"dashboard": {"labels": {"grafana_dashboard": None, "dashboards": "pachyderm"}}},
        name=RELEASE,
        namespace=NAMESPACE,
    )
    cm = yaml.safe_load(out["pachyderm-backup/templates/dashboard-configmap.yaml"])
    assert cm["metadata"]["labels"]["dashboards"] == "pachyderm"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]


# --------------------------------------------------------------------- synced files


def test_chart_files_are_synced():
    sources = sorted((REPO / "alerts").glob("*.rules.yaml")) + sorted((REPO / "dashboards").glob("*.json"))
    hint = "run scripts/sync-chart-files.sh"
    assert sources, f"no alerts/*.rules.yaml or dashboards/*.json found ({hint})"
    problems = []
    for src in sources:
        copy_ = CHART_FILES / src.name
        if not copy_.is_file():
            problems.append(f"{copy_.relative_to(REPO)} is missing")
        elif not filecmp.cmp(src, copy_, shallow=False):
            problems.append(f"{copy_.relative_to(REPO)} differs from {src.relative_to(REPO)}")
    names = {s.name for s in sources}
    for extra in sorted(CHART_FILES.glob("*")):
        if extra.name not in names:
            problems.append(f"{extra.relative_to(REPO)} has no source in alerts/ or dashboards/")
    for wanted in ("pachyderm-backup.rules.yaml", "pachyderm-backup.json"):
        if wanted not in names:
            problems.append(f"the chart's templates read files/{wanted}, which has no source")
    assert not problems, "; ".join(problems) + f": {hint}"


def test_sync_script_check_mode():
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "sync-chart-files.sh"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------------- docs


def test_docs_cover_every_value(yaml):
    """docs/CHART.md names every value of values.yaml (as `a.b.c`)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    doc = (REPO / "docs" / "CHART.md").read_text()
    free_form = {"secretKeys", "resources", "labels", "annotations", "podSecurityContext",
                 "securityContext", "podAnnotations", "podLabels", "nodeSelector", "affinity"}
    paths = []

    def walk(node, prefix):
        for key, value in node.items():
            path = prefix + [key]
            if isinstance(value, dict) and value and key not in free_form:
                walk(value, path)
            else:
                paths.append(".".join(path))

    walk(values, [])
    missing = [p for p in paths if f"`{p}`" not in doc]
    assert not missing, f"docs/CHART.md does not document: {missing}"


def test_the_packaged_chart_points_at_what_exists():
    """values.yaml and the chart's README name only files that exist (10.9), and the
    chart's README carries the values table (scripts/sync-chart-files.sh)."""
    import re

    chart_dir = REPO / "helm" / "pachyderm-backup"
    for text_file in (chart_dir / "values.yaml", chart_dir / "README.md"):
        text = text_file.read_text()
        for path in set(re.findall(r"\b((?:docs|scripts|alerts|dashboards)/[\w.*-]+)", text)):
            if "*" in path:
                assert list(REPO.glob(path)), f"{text_file.name} names {path}: nothing matches"
            else:
                assert (REPO / path).exists(), f"{text_file.name} names {path}, which does not exist"
    assert "| `target.url` |" in (chart_dir / "README.md").read_text(), "the chart's README has no values table"
