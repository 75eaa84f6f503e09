#!/usr/bin/env python3
"""Checks of the deployment files that go beyond syntax; run by
scripts/validate-deploy (which installs the tools and passes the inputs).

    validate_deploy.py compose  RESOLVED_COMPOSE_JSON HELP_DIR
    validate_deploy.py k8s      K8S_DIR RENDERED_YAML|- CRD_DIR HELP_DIR K8S_VERSION...

RESOLVED_COMPOSE_JSON is `docker-compose config` output converted to JSON.
HELP_DIR holds `wa-ingest --help` as `main.txt` and `wa-ingest <cmd> --help` as
`<cmd>.txt`; an empty HELP_DIR skips the checks against the binary. RENDERED_YAML
is the kustomize output; "-" validates the files listed in kustomization.yaml
one by one instead. Prints one line per problem; exits 1 if there was any.
"""

import copy
import json
import os
import re
import sys

import jsonschema
import yaml
from kubernetes_validate import utils as kv

PROBLEMS = []


def problem(where, message):
    PROBLEMS.append(f"{where}: {message}")


# ---------------------------------------------------------------- the binary


class Binary:
    """Subcommands and the environment variables each one reads, from --help."""

    def __init__(self, help_dir):
        self.commands = {}
        self.defaults = {}  # command -> {env variable: default value}
        main = os.path.join(help_dir, "main.txt") if help_dir else ""
        if not main or not os.path.exists(main):
            self.known = False
            return
        self.known = True
        text = open(main).read()
        block = text.split("Commands:", 1)[1].split("\n\n", 1)[0]
        for line in block.splitlines():
            m = re.match(r"\s+([a-z][a-z0-9-]*)\s", line)
            if m and m.group(1) != "help":
                name = m.group(1)
                # <cmd>.txt holds the help of its own subcommands too
                # (`events tail`): what any of them reads counts.
                sub = open(os.path.join(help_dir, f"{name}.txt")).read()
                self.commands[name] = set(re.findall(r"\[env: ([A-Z0-9_]+)[=\]]", sub))
                self.defaults[name] = dict(
                    re.findall(r"\[env: ([A-Z0-9_]+)=?[^\]]*\]\s+\[default: ([^\]]+)\]", sub)
                )

    def check_command(self, where, args):
        if not self.known:
            return None
        if not args or args[0] not in self.commands:
            problem(where, f"runs {args!r}: not a wa-ingest subcommand {sorted(self.commands)}")
            return None
        return args[0]

    def check_env(self, where, command, names):
        if not self.known or command is None:
            return
        for name in sorted(set(names) - self.commands[command]):
            problem(where, f"`wa-ingest {command}` reads no environment variable {name}")

    def any_reads(self, name):
        return any(name in env for env in self.commands.values())

    def listen_port(self, role, env):
        """The port a long-running role serves /healthz, /readyz and /metrics
        on, given the environment it is started with."""
        var = ADDR_VAR[role]
        default = f"0.0.0.0:{DEFAULT_PORT[role]}"
        if self.known and role in self.commands:
            if var not in self.commands[role]:
                problem("scripts/validate_deploy.py", f"`wa-ingest {role}` reads no {var}")
            default = self.defaults[role].get(var, default)
        return port_of(env.get(var) or default)


def port_of(addr):
    return int(addr.rsplit(":", 1)[1])


# The roles that serve /healthz, /readyz and /metrics, the variable of their
# address, and its default (without the binary; with it, `--help` decides).
DEFAULT_PORT = {"receiver": 8080, "worker": 9090, "relay": 9091, "deliver": 9092}
ADDR_VAR = {
    "receiver": "LISTEN_ADDR",
    "worker": "METRICS_ADDR",
    "relay": "METRICS_ADDR",
    "deliver": "METRICS_ADDR",
}
# Replicated roles without published ports that need the migrated schema.
REPLICATED = ("worker", "relay", "deliver")
# Roles every deployment must run.
ROLES = ("migrate", "receiver", "worker", "relay", "deliver")


# --------------------------------------------------------------- compose


def fixed_host_port(port):
    """The fixed host port a compose `ports` entry publishes, or None when it
    publishes none or a free one chosen per container ("127.0.0.1::9090")."""
    if isinstance(port, dict):
        published = str(port.get("published") or "")
    else:
        parts = str(port).split("/", 1)[0].rsplit(":", 2)
        published = parts[-2] if len(parts) >= 2 else ""
    return published if published not in ("", "0") else None



def check_compose(resolved_path, help_dir):
    binary = Binary(help_dir)
    config = json.load(open(resolved_path))
    services = config.get("services", {})
    ours = {
        name: svc
        for name, svc in services.items()
        if "build" in svc or svc.get("image", "").startswith("wa-ingest")
    }  # not rabbitmq, redis, postgres
    roles = {}
    for name, svc in ours.items():
        command = svc.get("command")
        if isinstance(command, str):
            command = command.split()
        roles[name] = binary.check_command(f"docker-compose.yml services.{name}", command)
    migrate = [n for n, r in roles.items() if r == "migrate"] or ["migrate"]
    for name, svc in ours.items():
        where = f"docker-compose.yml services.{name}"
        if svc.get("entrypoint"):
            problem(where, "overrides the image's ENTRYPOINT [wa-ingest]")
        role = roles[name]
        env = svc.get("environment") or {}
        # env_file is shared with the servers: only variables that look like
        # ours must be read by some subcommand.
        mine = [k for k in env if not k.startswith(("POSTGRES_", "RABBITMQ_"))]
        if binary.known:
            for key in mine:
                if not binary.any_reads(key):
                    problem(where, f"environment variable {key} is read by no wa-ingest subcommand")
        if role in DEFAULT_PORT:
            port = binary.listen_port(role, env)
            test = " ".join((svc.get("healthcheck") or {}).get("test", []))
            if f":{port}/readyz" not in test:
                problem(where, f"health check must probe /readyz on port {port}: {test!r}")
        if role in REPLICATED:
            for port in svc.get("ports") or []:
                if fixed_host_port(port):
                    problem(
                        where,
                        f"{role}s must not publish a fixed host port (replicas would clash): {port!r}",
                    )
            if (svc.get("deploy") or {}).get("replicas", 1) < 2:
                problem(where, f"expected several {role} replicas (deploy.replicas)")
            deps = svc.get("depends_on") or {}
            if not any(
                (deps.get(m) or {}).get("condition") == "service_completed_successfully"
                for m in migrate
            ):
                problem(where, "must wait for the migrate service to complete successfully")
            if "container_name" in svc:
                problem(where, "container_name prevents replicas")
    for role in ROLES:
        if binary.known and role in binary.commands and role not in roles.values():
            problem("docker-compose.yml", f"no service runs `wa-ingest {role}`")


# --------------------------------------------------------------- kubernetes


def strict(schema):
    """Rejects unknown fields the way the API server's strict field validation
    does (kubeconform's openapi2jsonschema does the same for CRDs)."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def load_crds(crd_dir):
    schemas = {}
    for name in sorted(os.listdir(crd_dir)):
        if not name.endswith((".yaml", ".yml")):
            continue
        for crd in yaml.safe_load_all(open(os.path.join(crd_dir, name))):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def validate_object(where, obj, crds, versions):
    if not isinstance(obj, dict) or "kind" not in obj or "apiVersion" not in obj:
        problem(where, "not a Kubernetes object (kind and apiVersion missing)")
        return
    name = f"{obj['kind']}/{(obj.get('metadata') or {}).get('name')}"
    key = (obj["apiVersion"], obj["kind"])
    if key in crds:
        validator = jsonschema.Draft7Validator(crds[key])
        for error in sorted(validator.iter_errors(obj), key=lambda e: list(e.path)):
            path = ".".join(str(p) for p in error.path)
            problem(where, f"{name} ({obj['apiVersion']}): {path}: {error.message}")
        return
    for version in versions:
        try:
            kv.validate(obj, version, strict=True)
        except kv.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            problem(where, f"{name} against Kubernetes {version}: {path}: {error.message}")
        except kv.SchemaNotFoundError as error:
            problem(where, f"{name}: {error.message} (and no CRD schema in deploy/schemas)")
        except kv.VersionNotSupportedError as error:
            problem(where, error.message)


def listed_resources(k8s_dir):
    kustomization = yaml.safe_load(open(os.path.join(k8s_dir, "kustomization.yaml")))
    resources = kustomization.get("resources") or []
    files = sorted(
        f
        for f in os.listdir(k8s_dir)
        if f.endswith((".yaml", ".yml"))
        and f != "kustomization.yaml"
        and not f.endswith((".example.yaml", ".example.yml"))
    )
    for f in resources:
        if not os.path.isfile(os.path.join(k8s_dir, f)):
            problem("deploy/k8s/kustomization.yaml", f"lists {f}, which does not exist")
    for f in files:
        if f not in resources:
            problem("deploy/k8s/kustomization.yaml", f"does not list {f}")
    return resources, kustomization


# What the API server checks beyond the OpenAPI schemas (which only say
# "string" or "integer" for these).
QUANTITY = re.compile(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def check_formats(where, obj):
    name = (obj.get("metadata") or {}).get("name", "")
    if not DNS_LABEL.match(str(name)):
        problem(where, f"{obj['kind']}: name {name!r} is not a DNS-1123 label")
    spec, _ = pod_spec(obj)
    for container in (spec or {}).get("initContainers", []) + (spec or {}).get("containers", []):
        resources = container.get("resources") or {}
        for section in ("requests", "limits"):
            for resource, value in (resources.get(section) or {}).items():
                if not QUANTITY.match(str(value)):
                    problem(
                        where,
                        f"{obj['kind']}/{name} container {container.get('name')}: "
                        f"{section}.{resource} {value!r} is not a quantity",
                    )
        for port in container.get("ports") or []:
            if not 0 < int(port.get("containerPort", 0)) < 65536:
                problem(
                    where,
                    f"{obj['kind']}/{name}: containerPort {port.get('containerPort')} out of range",
                )


def pod_spec(obj):
    spec = obj.get("spec") or {}
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return (spec.get("template") or {}).get("spec") or {}, (
            (spec.get("template") or {}).get("metadata") or {}
        ).get("labels") or {}
    return None, None


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_references(objects, secret_keys, binary):
    by_kind = {}
    for _, obj in objects:
        by_kind.setdefault(obj["kind"], {})[obj["metadata"]["name"]] = obj
    configmaps = by_kind.get("ConfigMap", {})
    config_env = {}
    for cm in configmaps.values():
        config_env.update(cm.get("data") or {})
    templates = []
    deployments = []  # (name, pod labels)
    role_kinds = {}  # wa-ingest subcommand -> kinds of the objects that run it
    for where, obj in objects:
        spec, labels = pod_spec(obj)
        if spec is None:
            continue
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        templates.append(labels)
        if obj["kind"] == "Deployment":
            deployments.append((name, labels))
        annotations = ((obj["spec"].get("template") or {}).get("metadata") or {}).get(
            "annotations"
        ) or {}
        if obj["kind"] == "Deployment":
            selector = ((obj["spec"].get("selector") or {}).get("matchLabels")) or {}
            if not matches(selector, labels):
                problem(where, f"{name}: selector does not match the pod template's labels")
        pod_sc = spec.get("securityContext") or {}
        sa = spec.get("serviceAccountName")
        if sa and sa not in by_kind.get("ServiceAccount", {}):
            problem(where, f"{name}: service account {sa} is not in the kustomization")
        for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            cwhere = f"{name} container {container['name']}"
            sc = container.get("securityContext") or {}
            if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))):
                problem(where, f"{cwhere}: runAsNonRoot is not set")
            if not sc.get("readOnlyRootFilesystem"):
                problem(where, f"{cwhere}: readOnlyRootFilesystem is not set")
            limits = (container.get("resources") or {}).get("limits") or {}
            requests = (container.get("resources") or {}).get("requests") or {}
            if "memory" not in limits or "memory" not in requests:
                problem(where, f"{cwhere}: memory request and limit are required")
            if container.get("command"):
                problem(where, f"{cwhere}: overrides the image's ENTRYPOINT [wa-ingest]")
            role = binary.check_command(f"{where} {cwhere}", container.get("args"))
            env_names = []
            for ref in container.get("envFrom") or []:
                cm = (ref.get("configMapRef") or {}).get("name")
                if cm and cm not in configmaps:
                    problem(where, f"{cwhere}: ConfigMap {cm} is not in the kustomization")
                if (ref.get("secretRef") or {}).get("name"):
                    problem(where, f"{cwhere}: envFrom a Secret gives every key to every role")
            env = {}
            for var in container.get("env") or []:
                env_names.append(var["name"])
                env[var["name"]] = var.get("value")
                key_ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if key_ref and key_ref.get("key") not in secret_keys.get(
                    key_ref.get("name"), set()
                ):
                    problem(
                        where,
                        f"{cwhere}: {var['name']} reads key {key_ref.get('key')} of Secret "
                        f"{key_ref.get('name')}, which secret.example.yaml does not define",
                    )
            binary.check_env(f"{where} {cwhere}", role, env_names)
            if role:
                role_kinds.setdefault(role, set()).add(obj["kind"])
            if (container.get("args") or [None])[0] == "migrate" and obj["kind"] != "Job":
                problem(
                    where,
                    f"{cwhere}: runs `wa-ingest migrate` in a {obj['kind']}: only the migrate "
                    "Job changes the schema (workers wait for it; they need no DDL rights)",
                )
            shards = env.get("WA_EVENT_SHARDS")
            if shards is not None and shards != config_env.get("WA_EVENT_SHARDS", shards):
                problem(
                    where,
                    f"{cwhere}: WA_EVENT_SHARDS {shards!r} differs from the ConfigMap's "
                    f"{config_env['WA_EVENT_SHARDS']!r} (relay and consumers must agree)",
                )
            ports = {p.get("name"): p["containerPort"] for p in container.get("ports") or []}
            if role in DEFAULT_PORT:
                port = binary.listen_port(role, {**config_env, **env})
                if port not in ports.values():
                    problem(where, f"{cwhere}: listens on {port}, which no containerPort names")
                scrape = annotations.get("prometheus.io/port")
                if scrape is not None and str(scrape) != str(port):
                    problem(where, f"{name}: prometheus.io/port is {scrape}, /metrics is on {port}")
                for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                    get = ((container.get(probe) or {}).get("httpGet")) or {}
                    target = get.get("port")
                    target = ports.get(target, target)
                    if get.get("path") != path or target != port:
                        problem(where, f"{cwhere}: {probe} must GET {path} on port {port}")
    if binary.known:
        for key in config_env:
            if not binary.any_reads(key):
                problem("ConfigMap", f"{key} is read by no wa-ingest subcommand")
        for role in ROLES:
            if role in binary.commands and role not in role_kinds:
                problem("deploy/k8s", f"nothing runs `wa-ingest {role}`")
        if "Job" not in role_kinds.get("migrate", {"Job"}):
            problem("deploy/k8s", "`wa-ingest migrate` must run as a Job")
    for kind in ("Service", "PodDisruptionBudget"):
        for name, obj in by_kind.get(kind, {}).items():
            selector = obj["spec"].get("selector") or {}
            selector = selector.get("matchLabels", selector) if kind != "Service" else selector
            if not any(matches(selector, labels) for labels in templates):
                problem(kind, f"{name}: selector matches no pod template")
    pdb_selectors = [
        (obj["spec"].get("selector") or {}).get("matchLabels") or {}
        for obj in by_kind.get("PodDisruptionBudget", {}).values()
    ]
    for name, labels in deployments:
        if not any(matches(selector, labels) for selector in pdb_selectors):
            problem("deploy/k8s", f"{name}: no PodDisruptionBudget selects its pods")
    for name, obj in by_kind.get("ScaledObject", {}).items():
        target = obj["spec"]["scaleTargetRef"]
        if target.get("kind", "Deployment") != "Deployment" or target["name"] not in by_kind.get(
            "Deployment", {}
        ):
            problem("ScaledObject", f"{name}: scales {target}, which is not in the kustomization")
        elif (by_kind["Deployment"][target["name"]]["spec"]).get("replicas") is not None:
            problem("ScaledObject", f"{name}: the scaled Deployment must not set spec.replicas")
        for trigger in obj["spec"]["triggers"]:
            auth = (trigger.get("authenticationRef") or {}).get("name")
            if auth and auth not in by_kind.get("TriggerAuthentication", {}):
                problem("ScaledObject", f"{name}: TriggerAuthentication {auth} is missing")
            if trigger["type"] == "rabbitmq":
                queue = trigger["metadata"].get("queueName")
                expected = f"{config_env.get('WA_NAMESPACE', 'wa')}.inbound"
                if queue != expected:
                    problem("ScaledObject", f"{name}: queueName {queue!r}, expected {expected!r}")
    for name, obj in by_kind.get("TriggerAuthentication", {}).items():
        for ref in obj["spec"].get("secretTargetRef") or []:
            if ref["key"] not in secret_keys.get(ref["name"], set()):
                problem(
                    "TriggerAuthentication",
                    f"{name}: key {ref['key']} of Secret {ref['name']} "
                    "is not in secret.example.yaml",
                )


def check_k8s(k8s_dir, rendered, crd_dir, help_dir, versions):
    binary = Binary(help_dir)
    crds = load_crds(crd_dir)
    resources, _ = listed_resources(k8s_dir)
    objects = []
    if rendered == "-":
        sources = [(f, os.path.join(k8s_dir, f)) for f in resources]
    else:
        sources = [("kustomize output", rendered)]
    for where, path in sources:
        if not os.path.isfile(path):
            continue
        try:
            docs = [d for d in yaml.safe_load_all(open(path)) if d is not None]
        except yaml.YAMLError as error:
            problem(where, f"invalid YAML: {error}")
            continue
        for doc in docs:
            before = len(PROBLEMS)
            validate_object(where, doc, crds, versions)
            if len(PROBLEMS) == before:
                check_formats(where, doc)
            if isinstance(doc, dict) and "kind" in doc and "metadata" in doc:
                objects.append((where, doc))
    # The Secret example: a valid Secret, never part of the base.
    secret_keys = {}
    for f in sorted(os.listdir(k8s_dir)):
        if f.endswith((".example.yaml", ".example.yml")):
            for doc in yaml.safe_load_all(open(os.path.join(k8s_dir, f))):
                if not doc:
                    continue
                validate_object(f, doc, crds, versions)
                if doc.get("kind") == "Secret":
                    keys = set(doc.get("stringData") or {}) | set(doc.get("data") or {})
                    secret_keys[doc["metadata"]["name"]] = keys
    if any(o["kind"] == "Secret" for _, o in objects):
        problem("deploy/k8s", "the base must not carry a Secret (see secret.example.yaml)")
    for kind in (
        "Deployment",
        "Job",
        "ScaledObject",
        "TriggerAuthentication",
        "PodDisruptionBudget",
    ):
        if not any(o["kind"] == kind for _, o in objects):
            problem("deploy/k8s", f"no {kind} in the kustomization")
    if PROBLEMS:
        return  # cross-checks on invalid objects would only add noise
    check_references(objects, secret_keys, binary)
    if not PROBLEMS:
        print(
            f"{len(objects)} objects valid against Kubernetes {', '.join(versions)} "
            f"and the KEDA CRDs in {crd_dir}"
        )


def main(argv):
    if argv[1:2] == ["compose"] and len(argv) == 4:
        check_compose(argv[2], argv[3])
    elif argv[1:2] == ["k8s"] and len(argv) >= 7:
        check_k8s(argv[2], argv[3], argv[4], argv[5], argv[6:])
    else:
        sys.exit(__doc__)
    for line in PROBLEMS:
        print(f"error: {line}", file=sys.stderr)
    return 1 if PROBLEMS else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
