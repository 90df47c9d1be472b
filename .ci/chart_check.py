"""Renders, lints and validates the Helm chart in helm/label-studio-identity.

Run through .ci/chart.sh, which provides the virtualenv. With no values at all
(the embedded SQLite database), with only a Postgres URL, and with each file in
the chart's ci/ folder it renders the chart with Helm's own engine
(helm_python), runs `helm lint --strict`, validates every manifest against the
Kubernetes schemas in strict mode, and asserts what the chart promises (the
database mode, storage, probes, TLS, secrets, security context, sizing,
optional objects). Each
file in .ci/chart/ must instead fail to render, with the message its
`# expect:` line names, and fail `helm lint` too when it says `# lint: fails`
(lint runs templates in lint mode, where `fail` only logs). Ends with
`chart: N passed, M failed` and exits 1 on any failure.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import helm_python as helm
import kubernetes_validate
import yaml

CHART = Path("helm/label-studio-identity")
BROKEN_VALUES = Path(".ci/chart")
# The newest Kubernetes whose schemas kubernetes-validate ships.
KUBE_VERSION = "1.37.0"
RELEASE = "ci"
NAMESPACE = "identity"
FULLNAME = f"{RELEASE}-label-studio-identity"

SERVICE_DNS = f"{FULLNAME}.{NAMESPACE}.svc.cluster.local"

GRPC_PORT = 50051
METRICS_PORT = 9464
READY_SERVICE = "labelstudio.identity.v1.IdentityService"
LIVE_SERVICE = "liveness"
# Where the image (Dockerfile) puts the binary; exec probes run it.
BINARY = "/usr/local/bin/label-studio-identity"
DATA_DIR = "/var/lib/label-studio-identity"
TLS_DIR = "/etc/label-studio-identity/tls"
PG_TLS_DIR = "/etc/label-studio-identity/postgres-tls"

# Environment variable -> key of the `secretKeys` value naming it in the Secret.
SECRET_ENV = {
    "DATABASE_URL": "databaseUrl",
    "LABEL_STUDIO_USERNAME": "username",
    "LABEL_STUDIO_PASSWORD": "password",
    "LABEL_STUDIO_USER_TOKEN": "userToken",
}
OPTIONAL_SECRET_ENV = {"LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"}

SECURE_POD = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "fsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
SECURE_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}

# Fields of a ServiceMonitor this chart may set (monitoring.coreos.com/v1).
SERVICE_MONITOR_SPEC_FIELDS = {"selector", "endpoints", "namespaceSelector", "jobLabel"}
SERVICE_MONITOR_ENDPOINT_FIELDS = {"port", "path", "interval", "scrapeTimeout", "scheme"}

# Fields of a cert-manager Certificate this chart may set (cert-manager.io/v1).
CERTIFICATE_SPEC_FIELDS = {"secretName", "issuerRef", "dnsNames", "duration", "renewBefore", "privateKey", "usages"}
CERTIFICATE_USAGES = {"digital signature", "key encipherment", "server auth", "client auth"}

DURATION = re.compile(r"^[0-9]+(ms|s|m|h)$")


@dataclass
class Report:
    passed: int = 0
    failures: list[str] = field(default_factory=list)

    def check(self, case: str, what: str, ok: bool, detail: Any = "") -> bool:
        if ok:
            self.passed += 1
        else:
            message = f"FAIL {case}: {what}"
            if detail != "":
                message += f" ({detail})"
            self.failures.append(message)
            print(message)
        return ok


@dataclass
class Rendered:
    files: dict[str, str]
    objects: list[tuple[str, dict[str, Any]]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for _, obj in self.objects if obj.get("kind") == kind]

    def file(self, suffix: str) -> str:
        for name, text in self.files.items():
            if name.endswith(suffix):
                return text
        return ""


def parse(files: dict[str, str]) -> Rendered:
    objects = []
    for name, text in sorted(files.items()):
        if name.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document is not None:
                objects.append((name, document))
    return Rendered(files, objects)


def dig(obj: Any, *path: str | int, default: Any = None) -> Any:
    for key in path:
        if isinstance(obj, dict) and isinstance(key, str) and key in obj:
            obj = obj[key]
        elif isinstance(obj, list) and isinstance(key, int) and key < len(obj):
            obj = obj[key]
        else:
            return default
    return obj


@contextlib.contextmanager
def native_stderr_held_back() -> Iterator[None]:
    """Keeps the native library's own log lines (on fd 2, e.g. one for each
    `fail` a template calls in lint mode) out of the report. Helm's errors come
    back as exceptions anyway; anything else that goes wrong gets them replayed."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except helm.HelmError:
            raise
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            sys.stderr.flush()
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def lint_problems(values: dict[str, Any]) -> list[str]:
    with native_stderr_held_back():
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    problems = [m["error"].strip() for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    problems += [e.strip() for e in report.get("errors", []) if e.strip() not in problems]
    return problems


def render(chart: helm.Chart, values: dict[str, Any]) -> dict[str, str]:
    with native_stderr_held_back():
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def validate_schemas(report: Report, case: str, rendered: Rendered) -> None:
    for name, obj in rendered.objects:
        what = (
            f"{obj.get('kind')}/{dig(obj, 'metadata', 'name')} from {name} matches the Kubernetes {KUBE_VERSION} schema"
        )
        if obj.get("kind") in ("ServiceMonitor", "Certificate"):
            continue  # CRDs, not in the core schemas: checked by hand below
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            report.check(case, what, True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path)
            report.check(case, what, False, f"{path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            report.check(case, what, False, error.message)


def expected_memory_mi(values: dict[str, Any]) -> int:
    argon2 = values["argon2"]
    hashing = math.ceil(argon2["memoryKib"] * argon2["maxConcurrent"] / 1024)
    return hashing + values["sizing"]["memoryBaseMi"]


def secret_values(values: dict[str, Any]) -> list[str]:
    """What must appear in no manifest but the Secret. The bootstrap username
    (an email) is left out: it may well appear in NOTES' sample call."""
    candidates = [values["secret"]["databaseUrl"], values["bootstrap"]["password"], values["bootstrap"]["userToken"]]
    return [v for v in candidates if v]


def database_type(values: dict[str, Any]) -> str:
    """The backend the chart must pick, worked out independently of its templates."""
    if values["database"]["type"]:
        return values["database"]["type"]
    postgres = values["secret"]["databaseUrl"] or values["existingSecret"] or values["global"]["pgConfig"]["host"]
    return "postgresql" if postgres else "sqlite"


def uses_pg_config(values: dict[str, Any]) -> bool:
    """global.pgConfig names the database only when this chart's own values don't."""
    own = values["secret"]["databaseUrl"] or values["existingSecret"]
    return database_type(values) == "postgresql" and not own and bool(values["global"]["pgConfig"]["host"])


def pg_config_url(pg: dict[str, Any]) -> str:
    params = []
    ssl = pg["ssl"]
    if ssl["pgSslMode"]:
        params.append(f"sslmode={ssl['pgSslMode']}")
    for key, param in (
        ("pgSslRootCertSecretKey", "sslrootcert"),
        ("pgSslCertSecretKey", "sslcert"),
        ("pgSslKeySecretKey", "sslkey"),
    ):
        if ssl[key]:
            params.append(f"{param}={PG_TLS_DIR}/{ssl[key]}")
    url = f"postgres://{pg['userName']}@{pg['host']}:{pg['port']}/{pg['dbName']}"
    return url + ("?" + "&".join(params) if params else "")


def tls_secret_name(values: dict[str, Any]) -> str:
    return values["tls"]["secretName"] or f"{FULLNAME}-tls"


def probe_tls_args(values: dict[str, Any]) -> list[str]:
    tls = values["tls"]
    args = ["--tls-ca", f"{TLS_DIR}/ca.crt", "--tls-server-name", tls["serverName"] or SERVICE_DNS]
    if tls["clientAuth"]:
        args += ["--tls-cert", f"{TLS_DIR}/tls.crt", "--tls-key", f"{TLS_DIR}/tls.key"]
    return args


def pod_specs(rendered: Rendered) -> list[tuple[str, dict[str, Any]]]:
    """Every pod the chart makes: workloads' templates and bare Pods."""
    specs = []
    for _, obj in rendered.objects:
        if obj.get("kind") == "Pod":
            specs.append((f"Pod/{dig(obj, 'metadata', 'name')}", obj.get("spec", {})))
        elif dig(obj, "spec", "template", "spec") is not None:
            specs.append((f"{obj['kind']}/{dig(obj, 'metadata', 'name')}", obj["spec"]["template"]["spec"]))
    return specs


def check_release(report: Report, case: str, values: dict[str, Any], rendered: Rendered) -> None:
    check = lambda what, ok, detail="": report.check(case, what, ok, detail)

    deployments = rendered.of_kind("Deployment")
    if not check("exactly one Deployment", len(deployments) == 1, len(deployments)):
        return
    deployment = deployments[0]
    pod = deployment["spec"]["template"]["spec"]
    containers = pod["containers"]
    if not check("exactly one container", len(containers) == 1, len(containers)):
        return
    container = containers[0]
    env = container.get("env", [])
    env_by_name = {e["name"]: e for e in env}
    secret_name = values["existingSecret"] or FULLNAME
    sqlite = database_type(values) == "sqlite"
    pg = values["global"]["pgConfig"]
    tls = values["tls"]
    http_port = values["service"]["httpPort"]
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}

    # No service-link variables in any pod (issue 9: a Service named identity-...
    # would put IDENTITY_* variables into the configuration).
    for name, spec in pod_specs(rendered):
        check(f"{name} sets enableServiceLinks: false", spec.get("enableServiceLinks") is False)

    # Probes: native gRPC without TLS; with TLS, exec probes running the binary
    # with the TLS flags. Startup/readiness ask for the readiness service,
    # liveness for `liveness`.
    for probe, service in (
        ("startupProbe", READY_SERVICE),
        ("readinessProbe", READY_SERVICE),
        ("livenessProbe", LIVE_SERVICE),
    ):
        action = container.get(probe, {})
        kinds = set(action) & {"grpc", "httpGet", "tcpSocket", "exec"}
        if tls["enabled"]:
            check(f"{probe} is an exec probe (kubelet's gRPC probe speaks no TLS)", kinds == {"exec"}, action)
            timeout = str(values[probe].get("timeoutSeconds", 1))
            wanted = [BINARY, "probe", "--addr", f"127.0.0.1:{GRPC_PORT}", "--service", service, "--timeout", timeout]
            wanted += probe_tls_args(values)
            check(
                f"{probe} runs `probe` on {GRPC_PORT} for {service!r} with the TLS flags",
                dig(action, "exec", "command") == wanted,
                dig(action, "exec", "command"),
            )
        else:
            check(f"{probe} is a grpc probe", kinds == {"grpc"}, action)
            check(f"{probe} targets port {GRPC_PORT}", dig(action, "grpc", "port") == GRPC_PORT)
            check(f"{probe} asks for service {service!r}", dig(action, "grpc", "service") == service, dig(action, "grpc"))
    startup_budget = dig(container, "startupProbe", "periodSeconds", default=10) * dig(
        container, "startupProbe", "failureThreshold", default=3
    )
    check("startup probe allows about 2 minutes for migrations", startup_budget >= 110, f"{startup_budget}s")

    # The database: where DATABASE_URL comes from, if anywhere.
    def secret_ref(name: str, secret: str, key: str, optional: bool) -> None:
        matching = [e for e in env if e["name"] == name]
        if not check(f"{name} is set exactly once", len(matching) == 1, len(matching)):
            return
        ref = dig(matching[0], "valueFrom", "secretKeyRef")
        check(f"{name} comes from a secretKeyRef", ref is not None and "value" not in matching[0], matching[0])
        if ref is None:
            return
        check(f"{name} reads Secret {secret}", ref.get("name") == secret, ref)
        check(f"{name} reads key {key}", ref.get("key") == key, ref)
        check(f"{name} secretKeyRef optional is {optional}", ref.get("optional", False) is optional, ref)

    if sqlite:
        check("SQLite: no DATABASE_URL", "DATABASE_URL" not in env_by_name, env_by_name.get("DATABASE_URL"))
        check("SQLite: no PGPASSWORD", "PGPASSWORD" not in env_by_name)
    elif uses_pg_config(values):
        url = dig(env_by_name, "DATABASE_URL", "value")
        check("pgConfig: DATABASE_URL is built from global.pgConfig", url == pg_config_url(pg), url)
        check(
            "pgConfig: DATABASE_URL carries no password",
            url is not None and urlsplit(url).password is None and "valueFrom" not in env_by_name["DATABASE_URL"],
        )
        if pg["password"]["secretName"]:
            secret_ref("PGPASSWORD", pg["password"]["secretName"], pg["password"]["secretKey"], False)
        else:
            check("pgConfig: no PGPASSWORD without password.secretName", "PGPASSWORD" not in env_by_name)
    else:
        secret_ref("DATABASE_URL", secret_name, values["secretKeys"]["databaseUrl"], False)
        check("PGPASSWORD only with global.pgConfig", "PGPASSWORD" not in env_by_name)
    for name, key_value in SECRET_ENV.items():
        if name != "DATABASE_URL":
            secret_ref(name, secret_name, values["secretKeys"][key_value], True)
    for secret in secret_values(values):
        encoded = base64.b64encode(secret.encode()).decode()
        for name, text in rendered.files.items():
            if name.endswith("templates/secret.yaml"):
                continue
            check(f"no secret value in {name.split('/', 1)[-1]}", secret not in text and encoded not in text)
    deployment_text = rendered.file("templates/deployment.yaml")
    for secret in [*secret_values(values), values["bootstrap"]["username"]]:
        if secret:
            check("no Secret field's value in the Deployment", secret not in deployment_text)

    secrets = rendered.of_kind("Secret")
    if values["existingSecret"]:
        check("existingSecret: the chart creates no Secret", not secrets, [dig(s, "metadata", "name") for s in secrets])
    elif check("the chart creates exactly one Secret", len(secrets) == 1, len(secrets)):
        secret = secrets[0]
        check("the Secret is named as the Deployment reads it", dig(secret, "metadata", "name") == secret_name)
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        wanted = {}
        if values["secret"]["databaseUrl"]:
            wanted[values["secretKeys"]["databaseUrl"]] = values["secret"]["databaseUrl"]
        for field_name, value in values["bootstrap"].items():
            if value:
                wanted[values["secretKeys"][field_name]] = value
        check("the Secret holds the database URL and the bootstrap fields given", data == wanted, sorted(data))
        check("the Secret uses data, not stringData", "stringData" not in secret)

    # Plain settings.
    def env_value(name: str) -> Any:
        return dig(env_by_name, name, "value")

    shared = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in values["global"]["extraEnvironmentVars"].items()}
    plain = {
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": shared.get(
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK", "true" if values["disableSignupWithoutLink"] else "false"
        ),
        "IDENTITY_LOG__FORMAT": values["logFormat"],
        "IDENTITY_ARGON2__MEMORY_KIB": str(values["argon2"]["memoryKib"]),
        "IDENTITY_ARGON2__ITERATIONS": str(values["argon2"]["iterations"]),
        "IDENTITY_ARGON2__PARALLELISM": str(values["argon2"]["parallelism"]),
        "IDENTITY_ARGON2__MAX_CONCURRENT": str(values["argon2"]["maxConcurrent"]),
        "IDENTITY_SERVER__SHUTDOWN_GRACE_SECONDS": str(values["shutdownGraceSeconds"]),
        "IDENTITY_METRICS__PORT": str(METRICS_PORT),
        "IDENTITY_SERVER__HTTP_PORT": str(http_port),
    }
    if values["publicUrl"] or "LABEL_STUDIO_HOST" in shared:
        plain["LABEL_STUDIO_HOST"] = values["publicUrl"] or shared["LABEL_STUDIO_HOST"]
    if tls["enabled"]:
        plain["IDENTITY_SERVER__TLS__CERT"] = f"{TLS_DIR}/tls.crt"
        plain["IDENTITY_SERVER__TLS__KEY"] = f"{TLS_DIR}/tls.key"
        if tls["clientAuth"]:
            plain["IDENTITY_SERVER__TLS__CLIENT_CA"] = f"{TLS_DIR}/ca.crt"
    if sqlite:
        plain["LABEL_STUDIO_BASE_DATA_DIR"] = DATA_DIR
    for name, value in shared.items():
        plain.setdefault(name, value)
    for name, wanted in plain.items():
        check(f"{name}={wanted}", env_value(name) == wanted, env_value(name))
    names = [e["name"] for e in env]
    check("no variable is set twice", len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1))
    for optional_name, wanted in (
        ("LABEL_STUDIO_HOST", "LABEL_STUDIO_HOST" in plain),
        ("LABEL_STUDIO_BASE_DATA_DIR", sqlite),
        ("IDENTITY_SERVER__TLS__CERT", tls["enabled"]),
        ("IDENTITY_SERVER__TLS__KEY", tls["enabled"]),
        ("IDENTITY_SERVER__TLS__CLIENT_CA", tls["enabled"] and tls["clientAuth"]),
    ):
        check(f"{optional_name} {'set' if wanted else 'absent'}", (optional_name in env_by_name) == wanted)
    for extra in values["extraEnv"]:
        check(f"extraEnv {extra['name']} is passed on", extra in env, extra)
    check(
        "terminationGracePeriodSeconds > preStopSleepSeconds + shutdownGraceSeconds",
        pod["terminationGracePeriodSeconds"] > values["preStopSleepSeconds"] + values["shutdownGraceSeconds"],
    )
    pre_stop = dig(container, "lifecycle", "preStop", "sleep", "seconds")
    check(
        "preStop sleep only when preStopSleepSeconds > 0",
        pre_stop == (values["preStopSleepSeconds"] or None),
        dig(container, "lifecycle"),
    )

    # Security.
    pod_security = pod.get("securityContext", {})
    for key, wanted in SECURE_POD.items():
        check(f"pod securityContext.{key}={wanted}", pod_security.get(key) == wanted, pod_security.get(key))
    container_security = container.get("securityContext", {})
    for key, wanted in SECURE_CONTAINER.items():
        check(
            f"container securityContext.{key}={wanted}",
            container_security.get(key) == wanted,
            container_security.get(key),
        )
    check("pod automountServiceAccountToken is false", pod.get("automountServiceAccountToken") is False)
    tmp_mounts = [m for m in container.get("volumeMounts", []) if m.get("mountPath") == "/tmp"]
    tmp_volumes = {v["name"]: v for v in pod.get("volumes", [])}
    check(
        "/tmp is an emptyDir",
        len(tmp_mounts) == 1 and "emptyDir" in tmp_volumes.get(tmp_mounts[0]["name"], {}),
        pod.get("volumes"),
    )
    writable = {path for path, m in mounts.items() if not m.get("readOnly")}
    wanted_writable = {"/tmp", DATA_DIR} if sqlite else {"/tmp"}
    check(
        "a Postgres TLS mount only when global.pgConfig names the database",
        (PG_TLS_DIR in mounts) == (uses_pg_config(values) and bool(pg["ssl"]["pgSslSecretName"])),
    )
    check("the only writable mounts are /tmp and the data directory", writable == wanted_writable, sorted(writable))
    accounts = rendered.of_kind("ServiceAccount")
    if values["serviceAccount"]["create"]:
        if check("one ServiceAccount", len(accounts) == 1, len(accounts)):
            check(
                "ServiceAccount automountServiceAccountToken is false",
                accounts[0].get("automountServiceAccountToken") is False,
            )
            check(
                "the pod runs as that ServiceAccount",
                pod.get("serviceAccountName") == dig(accounts[0], "metadata", "name"),
            )
    else:
        check("no ServiceAccount when serviceAccount.create is false", not accounts)
        check(
            "the pod runs as the named ServiceAccount",
            pod.get("serviceAccountName") == values["serviceAccount"]["name"],
        )

    # Resources: computed from the argon2 settings unless given.
    resources = container.get("resources", {})
    if values["resources"]:
        check("resources are the ones given", resources == values["resources"], resources)
    else:
        memory = f"{expected_memory_mi(values)}Mi"
        check(f"memory limit is {memory}", dig(resources, "limits", "memory") == memory, resources)
        check(f"memory request is {memory}", dig(resources, "requests", "memory") == memory, resources)
        check(
            "cpu request is sizing.cpuRequest",
            dig(resources, "requests", "cpu") == values["sizing"]["cpuRequest"],
            resources,
        )
        check("no cpu limit", "cpu" not in resources.get("limits", {}), resources)

    # The database's storage, replicas and strategy.
    claims = rendered.of_kind("PersistentVolumeClaim")
    strategy = deployment["spec"].get("strategy", {})
    replicas = deployment["spec"].get("replicas")
    persistence = values["persistence"]
    if sqlite:
        check("SQLite: one replica", replicas == 1, replicas)
        check("SQLite: no HPA asked for", not values["autoscaling"]["enabled"])
        check("SQLite: Recreate strategy", strategy.get("type") == "Recreate", strategy)
        data_mount = mounts.get(DATA_DIR, {})
        check(f"SQLite: a volume is mounted at {DATA_DIR}", bool(data_mount), sorted(mounts))
        check("SQLite: the data mount is writable and whole", not data_mount.get("readOnly") and "subPath" not in data_mount)
        data_volume = volumes.get(data_mount.get("name"), {})
        if persistence["enabled"]:
            claim_name = persistence["existingClaim"] or f"{FULLNAME}-data"
            check(
                f"SQLite: the data volume is claim {claim_name}",
                dig(data_volume, "persistentVolumeClaim", "claimName") == claim_name,
                data_volume,
            )
            if persistence["existingClaim"]:
                check("existingClaim: the chart creates no PVC", not claims, len(claims))
            elif check("SQLite: the chart creates one PVC", len(claims) == 1, len(claims)):
                claim = claims[0]
                spec = claim["spec"]
                check("PVC is named as the pod mounts it", dig(claim, "metadata", "name") == claim_name)
                check("PVC access mode as given", spec.get("accessModes") == [persistence["accessMode"]], spec)
                check("PVC size as given", dig(spec, "resources", "requests", "storage") == persistence["size"], spec)
                klass = persistence["storageClass"]
                if klass:
                    check("PVC storage class as given", spec.get("storageClassName") == ("" if klass == "-" else klass))
                else:
                    check("PVC leaves the storage class to the cluster", "storageClassName" not in spec, spec)
                annotations = dig(claim, "metadata", "annotations", default={})
                policy = persistence["resourcePolicy"]
                check(
                    "PVC helm.sh/resource-policy as given",
                    annotations.get("helm.sh/resource-policy") == (policy or None),
                    annotations,
                )
                check("PVC carries persistence.annotations", persistence["annotations"].items() <= annotations.items())
        else:
            check("persistence off: the data volume is an emptyDir", "emptyDir" in data_volume, data_volume)
            check("persistence off: no PVC", not claims)
    else:
        check("Postgres: no PVC", not claims, len(claims))
        check("Postgres: no data directory mount", DATA_DIR not in mounts)
        wanted_replicas = values["replicaCount"] if values.get("replicaCount") is not None else 2
        if not values["autoscaling"]["enabled"]:
            check(f"Postgres: {wanted_replicas} replicas", replicas == wanted_replicas, replicas)
        if values["updateStrategy"]:
            check("updateStrategy as given", strategy == values["updateStrategy"], strategy)
        else:
            check(
                "Postgres: rolling update, surge 1, unavailable 0",
                strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
                strategy,
            )
    if uses_pg_config(values) and pg["ssl"]["pgSslSecretName"]:
        pg_mount = mounts.get(PG_TLS_DIR, {})
        check("pgConfig: the Postgres TLS Secret is mounted read-only", pg_mount.get("readOnly") is True, pg_mount)
        check(
            "pgConfig: the mount is Secret pgSslSecretName",
            dig(volumes, pg_mount.get("name", ""), "secret", "secretName") == pg["ssl"]["pgSslSecretName"],
        )

    # TLS: the Secret, mounted read-only as a whole directory (so rotations reach
    # the service), and the Certificate when cert-manager is asked for.
    tls_mount = mounts.get(TLS_DIR)
    certificates = rendered.of_kind("Certificate")
    if tls["enabled"]:
        if check(f"TLS: a volume is mounted at {TLS_DIR}", tls_mount is not None, sorted(mounts)):
            check("TLS: the mount is read-only", tls_mount.get("readOnly") is True, tls_mount)
            check("TLS: the mount has no subPath (updates would not reach it)", "subPath" not in tls_mount)
            tls_volume = volumes.get(tls_mount["name"], {})
            check(
                f"TLS: the volume is Secret {tls_secret_name(values)}",
                dig(tls_volume, "secret", "secretName") == tls_secret_name(values),
                tls_volume,
            )
            mode = dig(tls_volume, "secret", "defaultMode")
            check("TLS: the key is not world-readable", mode is not None and mode & 0o007 == 0, mode)
        issuer = tls["certManager"]["issuerRef"]
        wanted_count = 1 if issuer["name"] else 0
        check(
            f"Certificate {'present' if wanted_count else 'absent'}",
            len(certificates) == wanted_count,
            len(certificates),
        )
        if certificates:
            check_certificate(check, certificates[0], values)
    else:
        check("no TLS mount without TLS", tls_mount is None)
        check("no Certificate without TLS", not certificates)

    # Ports and the Service.
    ports = {p["name"]: p for p in container.get("ports", [])}
    check("container port grpc is 50051", dig(ports, "grpc", "containerPort") == GRPC_PORT)
    check("container port metrics is 9464", dig(ports, "metrics", "containerPort") == METRICS_PORT)
    check(f"container port http is {http_port}", dig(ports, "http", "containerPort") == http_port)
    services = rendered.of_kind("Service")
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    check("the pod carries the Deployment's selector labels", selector.items() <= pod_labels.items())
    if check("exactly one Service", len(services) == 1, len(services)):
        service = services[0]
        service_ports = {p["name"]: p for p in service["spec"]["ports"]}
        grpc = service_ports.get("grpc", {})
        check(
            f"Service port grpc: 50051, appProtocol {'https' if tls['enabled'] else 'grpc'}",
            grpc.get("port") == values["service"]["port"] == GRPC_PORT
            and grpc.get("appProtocol") == ("https" if tls["enabled"] else "grpc"),
            grpc,
        )
        http = service_ports.get("http", {})
        check(
            f"Service port http: {http_port} to the container's http port",
            http.get("port") == http_port and http.get("targetPort") == "http",
            http,
        )
        check(
            "Service port http speaks TLS exactly when tls.enabled",
            http.get("appProtocol") == ("https" if tls["enabled"] else "http"),
            http,
        )
        check(
            "Service port metrics: 9464",
            dig(service_ports, "metrics", "port") == METRICS_PORT,
            service_ports.get("metrics"),
        )
        check("Service selects the pods", service["spec"]["selector"] == selector, service["spec"]["selector"])

    # Optional objects exist exactly when enabled.
    hpa = rendered.of_kind("HorizontalPodAutoscaler")
    pdb = rendered.of_kind("PodDisruptionBudget")
    monitors = rendered.of_kind("ServiceMonitor")
    policies = rendered.of_kind("NetworkPolicy")
    enabled = values["autoscaling"]["enabled"]
    check(f"HPA {'present' if enabled else 'absent'}", len(hpa) == int(enabled), len(hpa))
    check("replicas left to the HPA" if enabled else "replicas set", ("replicas" in deployment["spec"]) != enabled)
    if hpa:
        check("HPA is autoscaling/v2", hpa[0]["apiVersion"] == "autoscaling/v2")
        check(
            "HPA scales the Deployment", dig(hpa[0], "spec", "scaleTargetRef", "name") == deployment["metadata"]["name"]
        )
        check(
            "HPA bounds",
            (hpa[0]["spec"]["minReplicas"], hpa[0]["spec"]["maxReplicas"])
            == (values["autoscaling"]["minReplicas"], values["autoscaling"]["maxReplicas"]),
        )
    enabled = values["podDisruptionBudget"]["enabled"] and not sqlite
    check(f"PodDisruptionBudget {'present' if enabled else 'absent'}", len(pdb) == int(enabled), len(pdb))
    if pdb:
        check("PDB is policy/v1", pdb[0]["apiVersion"] == "policy/v1")
        check("PDB selects the pods", dig(pdb[0], "spec", "selector", "matchLabels") == selector)
        spec = pdb[0]["spec"]
        check(
            "PDB sets one of minAvailable/maxUnavailable",
            len({"minAvailable", "maxUnavailable"} & set(spec)) == 1,
            spec,
        )
        if values["podDisruptionBudget"]["minAvailable"] != "":
            check(
                "PDB minAvailable as given", spec.get("minAvailable") == values["podDisruptionBudget"]["minAvailable"]
            )
    enabled = values["serviceMonitor"]["enabled"]
    check(f"ServiceMonitor {'present' if enabled else 'absent'}", len(monitors) == int(enabled), len(monitors))
    if monitors:
        check_service_monitor(check, monitors[0], values, services[0] if services else {})
    enabled = values["networkPolicy"]["enabled"]
    check(f"NetworkPolicy {'present' if enabled else 'absent'}", len(policies) == int(enabled), len(policies))
    if policies:
        policy = policies[0]["spec"]
        check("NetworkPolicy selects the pods", dig(policy, "podSelector", "matchLabels") == selector)
        rules = {p["port"]: rule for rule in policy.get("ingress", []) for p in rule.get("ports", [])}
        check(
            f"NetworkPolicy opens 50051, {http_port} and 9464",
            set(rules) == {GRPC_PORT, http_port, METRICS_PORT},
            sorted(rules),
        )
        check("every ingress rule names its sources", all(rule.get("from") for rule in policy.get("ingress", [])))
        http_from = values["networkPolicy"]["httpFrom"]
        check(
            "NetworkPolicy lets networkPolicy.httpFrom (or the namespace) reach the http port",
            rules.get(http_port, {}).get("from") == (http_from or [{"podSelector": {}}]),
            rules.get(http_port, {}).get("from"),
        )
        check(
            "Egress restricted exactly when egress rules are given",
            ("Egress" in policy["policyTypes"]) == bool(values["networkPolicy"]["egress"]),
        )

    # helm test pod.
    tests = [obj for name, obj in rendered.objects if name.endswith("templates/tests/test-probe.yaml")]
    if check("one helm test pod", len(tests) == 1, len(tests)):
        test = tests[0]
        test_container = test["spec"]["containers"][0]
        check(
            "test pod has the helm.sh/hook: test annotation",
            dig(test, "metadata", "annotations", "helm.sh/hook") == "test",
        )
        wanted_args = ["probe", "--addr", f"{FULLNAME}:{GRPC_PORT}", "--service", READY_SERVICE]
        if tls["enabled"]:
            wanted_args += probe_tls_args(values)
        check(
            "test pod probes the Service" + (" over TLS" if tls["enabled"] else ""),
            test_container.get("args") == wanted_args,
            test_container.get("args"),
        )
        test_mounts = {m["mountPath"]: m for m in test_container.get("volumeMounts", [])}
        test_volumes = {v["name"]: v for v in test["spec"].get("volumes", [])}
        if tls["enabled"]:
            test_tls = test_mounts.get(TLS_DIR, {})
            check("test pod mounts the TLS Secret read-only", test_tls.get("readOnly") is True, test_tls)
            check(
                "test pod's TLS volume is the release's TLS Secret",
                dig(test_volumes, test_tls.get("name", ""), "secret", "secretName") == tls_secret_name(values),
            )
        else:
            check("test pod mounts nothing without TLS", not test_mounts, sorted(test_mounts))
        check("test pod runs the release's image", test_container.get("image") == container.get("image"))
        check(
            "test pod is not selected by the Service",
            not selector.items() <= dig(test, "metadata", "labels", default={}).items(),
        )
        check("test pod restartPolicy Never", test["spec"].get("restartPolicy") == "Never")
        check(
            "test pod automountServiceAccountToken is false", test["spec"].get("automountServiceAccountToken") is False
        )
        for key, wanted in SECURE_POD.items():
            check(f"test pod securityContext.{key}", dig(test, "spec", "securityContext", key) == wanted)
        for key, wanted in SECURE_CONTAINER.items():
            check(f"test container securityContext.{key}", dig(test_container, "securityContext", key) == wanted)

    notes = rendered.file("NOTES.txt")
    check("NOTES shows the port-forward", f"port-forward svc/{FULLNAME} 50051:50051" in notes)
    if tls["enabled"]:
        flags = f"-cacert ca.crt -authority {tls['serverName'] or SERVICE_DNS}"
        if tls["clientAuth"]:
            flags += " -cert client.crt -key client.key"
        check("NOTES shows grpcurl list over TLS", f"grpcurl {flags} localhost:50051 list" in notes, notes)
        check("NOTES shows how to fetch ca.crt", f"get secret {tls_secret_name(values)}" in notes)
    else:
        check("NOTES shows grpcurl list", "grpcurl -plaintext localhost:50051 list" in notes)
    check(
        "NOTES shows an Authenticate call",
        '{"password":{"email":' in notes and f"{READY_SERVICE}/Authenticate" in notes,
    )
    scheme = "https" if tls["enabled"] else "http"
    check(
        "NOTES shows the ingress-nginx auth-url",
        f"auth-url: {scheme}://{SERVICE_DNS}:{http_port}/authz/auth-request" in notes,
        notes,
    )
    check("NOTES names the database", ("SQLite" in notes) == sqlite)
    check(
        "NOTES warns when the database is an emptyDir",
        ("WARNING: persistence.enabled is false" in notes) == (sqlite and not persistence["enabled"]),
    )


def check_certificate(check: Callable[..., bool], certificate: dict[str, Any], values: dict[str, Any]) -> None:
    """A cert-manager Certificate (a CRD, so not in the core schemas): checked by hand."""
    tls = values["tls"]
    manager = tls["certManager"]
    check("Certificate apiVersion cert-manager.io/v1", certificate.get("apiVersion") == "cert-manager.io/v1")
    check("Certificate is in the release namespace", dig(certificate, "metadata", "namespace") == NAMESPACE)
    spec = certificate.get("spec", {})
    check("Certificate spec fields are known", set(spec) <= CERTIFICATE_SPEC_FIELDS, sorted(spec))
    check(
        "Certificate writes the Secret the pod mounts",
        spec.get("secretName") == tls_secret_name(values),
        spec.get("secretName"),
    )
    check("Certificate uses the issuer given", spec.get("issuerRef") == manager["issuerRef"], spec.get("issuerRef"))
    dns_names = spec.get("dnsNames", [])
    wanted = {FULLNAME, f"{FULLNAME}.{NAMESPACE}", f"{FULLNAME}.{NAMESPACE}.svc", SERVICE_DNS}
    wanted |= set(manager["extraDnsNames"])
    if tls["serverName"]:
        wanted.add(tls["serverName"])
    check("Certificate covers the Service's names and the probes' server name", set(dns_names) == wanted, dns_names)
    usages = set(spec.get("usages", []))
    check("Certificate is for server auth", "server auth" in usages, usages)
    check(
        "Certificate is for client auth exactly with tls.clientAuth (the probes present it)",
        ("client auth" in usages) == tls["clientAuth"],
        usages,
    )
    check("Certificate usages are cert-manager's names", usages <= CERTIFICATE_USAGES, usages)
    check(
        "Certificate key is PKCS#8 and renewed with the certificate",
        dig(spec, "privateKey", "encoding") == "PKCS8" and dig(spec, "privateKey", "rotationPolicy") == "Always",
        spec.get("privateKey"),
    )
    for key in ("duration", "renewBefore"):
        check(f"Certificate {key} as given", spec.get(key) == (manager[key] or None), spec.get(key))


def check_service_monitor(
    check: Callable[..., bool], monitor: dict[str, Any], values: dict[str, Any], service: dict[str, Any]
) -> None:
    check("ServiceMonitor apiVersion monitoring.coreos.com/v1", monitor.get("apiVersion") == "monitoring.coreos.com/v1")
    check(
        "ServiceMonitor has only apiVersion, kind, metadata, spec",
        set(monitor) == {"apiVersion", "kind", "metadata", "spec"},
        sorted(monitor),
    )
    check("ServiceMonitor is in the release namespace", dig(monitor, "metadata", "namespace") == NAMESPACE)
    labels = dig(monitor, "metadata", "labels", default={})
    check(
        "ServiceMonitor carries serviceMonitor.labels",
        values["serviceMonitor"]["labels"].items() <= labels.items(),
        labels,
    )
    spec = monitor.get("spec", {})
    check("ServiceMonitor spec fields are known", set(spec) <= SERVICE_MONITOR_SPEC_FIELDS, sorted(spec))
    match = dig(spec, "selector", "matchLabels", default={})
    service_labels = dig(service, "metadata", "labels", default={})
    check("ServiceMonitor selects the Service", bool(match) and match.items() <= service_labels.items(), match)
    endpoints = spec.get("endpoints", [])
    if check("ServiceMonitor has one endpoint", len(endpoints) == 1, endpoints):
        endpoint = endpoints[0]
        check(
            "ServiceMonitor endpoint fields are known",
            set(endpoint) <= SERVICE_MONITOR_ENDPOINT_FIELDS,
            sorted(endpoint),
        )
        check("ServiceMonitor scrapes port metrics", endpoint.get("port") == "metrics")
        check("ServiceMonitor scrapes /metrics", endpoint.get("path") == "/metrics")
        for key in ("interval", "scrapeTimeout"):
            check(
                f"ServiceMonitor {key} is a duration",
                bool(DURATION.match(str(endpoint.get(key, "")))),
                endpoint.get(key),
            )
            check(f"ServiceMonitor {key} as given", endpoint.get(key) == values["serviceMonitor"][key])


def value_paths(values: Any, prefix: str = "") -> set[str]:
    """Dotted paths of values.yaml's leaves; an empty map or a list is a leaf."""
    if isinstance(values, dict) and values:
        paths = set()
        for key, value in values.items():
            paths |= value_paths(value, f"{prefix}{key}.")
        return paths
    return {prefix.rstrip(".")}


def documented_paths(readme: str) -> set[str]:
    """Keys in the first column of the README's values table. `a.b` / `.c`
    stands for a.b and a.c; `a.*` and an object's own path cover what is under it."""
    section = readme.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    paths = set()
    for line in section.splitlines():
        cells = line.split("|")
        if len(cells) < 3 or not cells[1].strip().startswith("`"):
            continue
        base = ""
        for key in re.findall(r"`([^`]+)`", cells[1]):
            if key.startswith(".") and base:
                key = base.rsplit(".", 1)[0] + key
            paths.add(key.removesuffix(".*"))
            base = key
    return paths


def check_values_table(report: Report) -> None:
    case = "README values table"
    # values.yaml as written: Helm drops keys whose default is null (replicaCount).
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = documented_paths((CHART / "README.md").read_text())
    leaves = value_paths(defaults)
    for path in sorted(leaves):
        covered = any(path == d or path.startswith(d + ".") for d in documented)
        report.check(case, f"documents {path}", covered)
    for path in sorted(documented):
        exists = any(leaf == path or leaf.startswith(path + ".") for leaf in leaves)
        report.check(case, f"{path} is a value of the chart", exists)
    print(f"ok   {case}" if all(case not in f for f in report.failures) else f"FAIL {case}")


def run_good_case(report: Report, chart: helm.Chart, case: str, values: dict[str, Any]) -> None:
    failures_before = len(report.failures)
    try:
        rendered = parse(render(chart, values))
    except helm.HelmError as error:
        report.check(case, "renders", False, str(error).strip())
        return
    report.check(case, "renders", True)
    problems = lint_problems(values)
    report.check(case, "helm lint --strict is clean", not problems, "; ".join(problems))
    validate_schemas(report, case, rendered)
    check_release(report, case, chart.merge_values(values), rendered)
    status = "ok  " if len(report.failures) == failures_before else "FAIL"
    kinds = ", ".join(sorted({obj["kind"] for _, obj in rendered.objects}))
    print(f"{status} {case}: {kinds}")


def run_broken_case(report: Report, chart: helm.Chart, path: Path) -> None:
    case = str(path)
    text = path.read_text()
    expectation = re.search(r"^# expect: (.+)$", text, re.MULTILINE)
    if not report.check(case, "names the error it expects (# expect: ...)", expectation is not None):
        return
    expected = expectation.group(1).strip()
    values = helm.values_from_yaml(text)
    try:
        render(chart, values)
        report.check(case, "fails to render", False, "it rendered")
    except helm.HelmError as error:
        message = str(error)
        report.check(case, f"fails to render with {expected!r}", expected in message, message.strip())
    if re.search(r"^# lint: fails$", text, re.MULTILINE):
        problems = lint_problems(values)
        report.check(case, f"helm lint reports {expected!r}", any(expected in p for p in problems), "; ".join(problems))
    print(f"ok   {case}: refused" if all(case not in f for f in report.failures) else f"FAIL {case}")


def main() -> int:
    report = Report()
    print(f"helm SDK {helm.helm_sdk_version()}, Kubernetes schemas {KUBE_VERSION}")
    with helm.Chart.load(CHART) as chart:
        # `helm install ident helm/label-studio-identity`: the embedded SQLite database.
        run_good_case(report, chart, "no values (SQLite)", {})
        # The equivalent of `--set secret.databaseUrl=...` on the command line: Postgres.
        postgres = helm.parse_set_string(
            "secret.databaseUrl=postgres://identity:ci-only-db-password@postgres:5432/identity"
        )
        run_good_case(report, chart, "secret.databaseUrl only (Postgres)", postgres)
        for path in sorted((CHART / "ci").glob("*.yaml")):
            run_good_case(report, chart, str(path), helm.values_from_yaml(path.read_text()))
        check_values_table(report)
        broken = sorted(BROKEN_VALUES.glob("*.yaml"))
        report.check("broken values", "there are broken values files to try", bool(broken))
        for path in broken:
            run_broken_case(report, chart, path)
    print(f"chart: {report.passed} passed, {len(report.failures)} failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
