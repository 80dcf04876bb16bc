"""Static checks of deploy/: Dockerfile, compose file and Kubernetes manifests (no Docker engine
or cluster here). Every server command line in them is parsed by the real ``sjff serve`` parser,
and the image's dependency list (the "serve" extra) must cover everything the server imports."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tomllib

import pytest
import serving_utils as su
import yaml
from sjff_client.pb import grpc_service_pb2, learning_pb2
from sjff_server.main import build_parser

DEPLOY = su.ROOT / "deploy"
K8S = DEPLOY / "k8s"  # the default: one replica, local update log
K8S_REPLICATED = DEPLOY / "k8s-replicated"  # Redis + three replicas


def k8s_docs(root=K8S) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for path in sorted(root.glob("*.yaml")):
        out[path.name] = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def by_kind(kind: str, root=K8S) -> list[dict]:
    return [d for docs in k8s_docs(root).values() for d in docs if d.get("kind") == kind]


# -- schema: the Kubernetes API models (the `kubernetes` client package) describe every field ---

KINDS = {
    "Deployment": "V1Deployment",
    "Service": "V1Service",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
    "Secret": "V1Secret",
    "StatefulSet": "V1StatefulSet",
    "ConfigMap": "V1ConfigMap",
    "PodDisruptionBudget": "V1PodDisruptionBudget",
}


def schema_errors(value, type_name: str, path: str = "") -> list[str]:
    """Field names and value types of ``value`` checked against the OpenAPI model ``type_name``."""
    import kubernetes.client.models as models

    m = re.fullmatch(r"[lL]ist\[(.+)\]", type_name)
    if m:
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [e for i, v in enumerate(value) for e in schema_errors(v, m.group(1), f"{path}[{i}]")]
    m = re.fullmatch(r"(?:dict\(|Dict\[)str, (.+)[)\]]", type_name)
    if m:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        return [e for k, v in value.items() for e in schema_errors(v, m.group(1), f"{path}.{k}")]
    simple = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "object": object}
    if type_name in simple:
        ok = isinstance(value, simple[type_name]) and not (type_name == "int" and isinstance(value, bool))
        if type_name == "object" or ok:
            return []
        if type_name == "str" and isinstance(value, int | float):  # e.g. IntOrString, quantities
            return []
        return [f"{path}: expected {type_name}, got {type(value).__name__} {value!r}"]
    cls = getattr(models, type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} mapping"]
    by_json = {json_name: attr for attr, json_name in cls.attribute_map.items()}
    errors = []
    for key, v in value.items():
        if key not in by_json:
            errors.append(f"{path}.{key}: not a field of {type_name}")
            continue
        errors += schema_errors(v, cls.openapi_types[by_json[key]], f"{path}.{key}")
    return errors


def test_manifests_match_the_kubernetes_schema():
    import kubernetes  # noqa: F401 (a dev dependency: the API schema the manifests are checked against)

    checked = {}
    for root in (K8S, K8S_REPLICATED):
        for name, docs in k8s_docs(root).items():
            for d in docs:
                if d["kind"] in KINDS:
                    errors = schema_errors(d, KINDS[d["kind"]], f"{root.name}/{name}:{d['kind']}")
                    assert not errors, errors
                    checked[root.name] = checked.get(root.name, 0) + 1
    # default: Deployment, Service, 2 claims, Secret; replicated: + Redis ConfigMap, Service,
    # StatefulSet, one claim (models), two Secrets, PodDisruptionBudget
    assert checked == {"k8s": 5, "k8s-replicated": 9}
    # and the check does catch mistakes
    (dep,) = by_kind("Deployment")
    bad = json.loads(json.dumps(dep))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 8001
    bad["spec"]["replicas"] = "one"
    errors = schema_errors(bad, "V1Deployment")
    assert any("prot: not a field of V1GRPCAction" in e for e in errors) and any(
        "replicas: expected int" in e for e in errors
    )


def server_args_ok(args: list[str]) -> None:
    """The real parser accepts them, and no token is passed as a value."""
    ns = build_parser().parse_args(args)
    assert ns.model_repository is not None
    assert not any(a.startswith("--token=") or a == "--token" for a in args)


@pytest.mark.parametrize("root", [K8S, K8S_REPLICATED], ids=lambda r: r.name)
def test_every_manifest_is_well_formed(root):
    docs = k8s_docs(root)
    assert {"deployment.yaml", "service.yaml", "pvc.yaml", "kustomization.yaml", "secret.example.yaml"} <= set(docs)
    for name, items in docs.items():
        for d in items:
            assert isinstance(d.get("apiVersion"), str) and isinstance(d.get("kind"), str), name
            if d["kind"] != "Kustomization":
                assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"]), name
    kust = docs["kustomization.yaml"][0]
    for res in kust["resources"]:
        assert (root / res).is_file()
    assert set(kust["resources"]) == set(docs) - {"kustomization.yaml", "secret.example.yaml"}
    assert "secret.example.yaml" not in kust["resources"]  # the real secret is created, never committed


def test_deployment():
    (dep,) = by_kind("Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"  # one writer of the update log
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    assert (
        c["securityContext"]["readOnlyRootFilesystem"] is True
        and c["securityContext"]["allowPrivilegeEscalation"] is False
    )
    server_args_ok(c["args"])
    args = build_parser().parse_args(c["args"])
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": args.port, "metrics": args.metrics_port}
    assert pod["terminationGracePeriodSeconds"] > args.shutdown_grace
    services = {s.full_name for s in grpc_service_pb2.DESCRIPTOR.services_by_name.values()}
    services |= {s.full_name for s in learning_pb2.DESCRIPTOR.services_by_name.values()} | {""}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc_probe = c[probe]["grpc"]  # native gRPC health probes (grpc.health.v1)
        assert grpc_probe["port"] == args.port and grpc_probe.get("service", "") in services
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert str(args.model_repository) == "/models" and mounts["/models"]["readOnly"] is True
    assert str(args.state_dir) in mounts and not mounts[str(args.state_dir)].get("readOnly")
    assert str(args.token_file).startswith(next(p for p in mounts if p.startswith("/run/secrets")))
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert {m["name"] for m in c["volumeMounts"]} == set(volumes)
    claims = {d["metadata"]["name"] for d in by_kind("PersistentVolumeClaim")}
    used = {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v}
    assert used == claims == {"sjff-models", "sjff-state"}
    secret_names = {d["metadata"]["name"] for d in by_kind("Secret")}
    assert {v["secret"]["secretName"] for v in volumes.values() if "secret" in v} <= secret_names
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert "torch" not in json.dumps(dep)


def test_service_and_claims():
    (svc,) = by_kind("Service")
    (dep,) = by_kind("Deployment")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    container_ports = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= container_ports
    assert any(p.get("appProtocol") == "grpc" for p in svc["spec"]["ports"])
    for pvc in by_kind("PersistentVolumeClaim"):
        assert pvc["spec"]["accessModes"] and re.fullmatch(
            r"\d+[MGT]i", pvc["spec"]["resources"]["requests"]["storage"]
        )


def dockerfile() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile():
    ins = dockerfile()
    froms = [r for op, r in ins if op == "FROM"]
    args = dict(r.split("=", 1) for op, r in ins if op == "ARG" and "=" in r)
    assert args["PYTHON_IMAGE"].endswith("-slim") and len(froms) == 2  # multi-stage, slim base
    final = ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM") :]
    user = [r for op, r in final if op == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    volumes = json.loads(next(r for op, r in final if op == "VOLUME"))
    assert set(volumes) == {"/models", "/state"}
    exposed = {int(p) for op, r in final if op == "EXPOSE" for p in r.split()}
    assert exposed == {8001, 8002}
    entry = json.loads(next(r for op, r in final if op == "ENTRYPOINT"))
    cmd = json.loads(next(r for op, r in final if op == "CMD"))
    assert entry == ["python", "-m", "sjff_server"]
    server_args_ok(cmd)
    assert "sjff_server.healthcheck" in next(r for op, r in final if op == "HEALTHCHECK")
    runs = " ".join(r for op, r in ins if op == "RUN")
    assert "optional-dependencies']['serve']" in runs and "--no-deps" in runs  # no torch: only the serve extra
    assert "torch" not in runs.replace("'torch' not in sys.modules", "")
    assert (su.ROOT / ".dockerignore").is_file()


def test_compose():
    doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    svc = doc["services"]["server"]
    assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    ).resolve()
    server_args_ok(svc["command"])
    args = build_parser().parse_args(svc["command"])
    assert {int(p.split(":")[1]) for p in svc["ports"]} == {args.port, args.metrics_port}
    mounts = {v.split(":")[1]: v for v in svc["volumes"]}
    assert mounts["/models"].endswith(":ro") and str(args.state_dir) in mounts
    assert svc["volumes"][1].split(":")[0] in doc["volumes"]
    assert str(args.token_file) == f"/run/secrets/{svc['secrets'][0]}" and svc["secrets"][0] in doc["secrets"]
    assert svc["user"].split(":")[0] not in ("0", "root") and svc["read_only"] is True
    assert "sjff_server.healthcheck" in svc["healthcheck"]["test"]
    assert svc["stop_signal"] == "SIGTERM"


def test_serve_extra_covers_what_the_server_imports(sjff_models):
    """The Docker image installs only the "serve" extra (plus our wheel without dependencies):
    every distribution the running server imports must be in it."""
    extra = tomllib.loads((su.ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    declared = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in extra}
    code = (
        "import sys, json, importlib.metadata as md\n"
        "from pathlib import Path\n"
        "import sjff_server.main, sjff_server.app, sjff_server.healthcheck\n"
        "from sjff_server.serving.models import load_served_model\n"
        "from sjff_server.serving.repository import ModelSpec, ServingConfig\n"
        "from sjff_server.interrupt import WorkerPool\n"
        "from sjff_server.learning.options import LearnOptions\n"
        f"for kind, p in (('analog', {str(sjff_models['analog'])!r}), ('spiking', {str(sjff_models['spike'])!r})):\n"
        "    load_served_model(ModelSpec('m', '1', Path(p), kind, ServingConfig()), state_dir=None, ort_threads=1,\n"
        "                      learn_options=LearnOptions(), pool=WorkerPool(1))\n"
        "dists = md.packages_distributions()\n"
        "top = {name.split('.')[0] for name in list(sys.modules)}\n"
        "print(json.dumps({t: dists[t] for t in sorted(top) if t in dists}))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    modules = json.loads(p.stdout.splitlines()[-1])  # top-level module -> distributions providing it
    norm = {m: {d.lower().replace("_", "-") for d in ds} for m, ds in modules.items()}
    ok = declared | {"spikingjelly-ff"}
    # installed as dependencies of declared packages, or by the environment itself (.pth hooks);
    # grpc imports grpc_tools only if it happens to be installed (try/except ImportError)
    ok |= {
        "typing-extensions",
        "ml-dtypes",
        "flatbuffers",
        "packaging",
        "coloredlogs",
        "humanfriendly",
        "sympy",
        "mpmath",
    }
    ok |= {"setuptools", "grpcio-tools"}
    # numba's own dependency, and what numba imports only when it happens to be installed
    ok |= {"llvmlite", "scipy", "cffi", "pycparser", "pyyaml", "charset-normalizer"}
    missing = {m: sorted(ds) for m, ds in norm.items() if not ds & ok}
    assert not missing, f"the server imports {missing}, which the 'serve' extra (the Docker image) lacks"
    used = set().union(*norm.values())
    assert "torch" not in used


# -- replicated serving: Redis + three replicas ----------------------------------------------

REDIS_REQUIRED = {"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction"}


def redis_settings(text: str) -> dict[str, str]:
    """The directives of a redis.conf (whole-line comments only, as Redis reads them)."""
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            out[key] = value
    return out


def replicated_args_ok(args: list[str]) -> argparse.Namespace:
    """A replica's command line: accepted by the real parser, Redis named, its password read from
    a file (never in the URL or an argument), no local state directory."""
    server_args_ok(args)
    ns = build_parser().parse_args(args)
    assert ns.replication and ns.replication.startswith("redis://") and "@" not in ns.replication
    assert ns.replication_password_file is not None and ns.state_dir is None
    assert not any("password=" in a.lower() and "password-file" not in a for a in args)
    return ns


def test_redis_config_is_durable_and_never_evicts():
    conf = (DEPLOY / "redis" / "redis.conf").read_text()
    settings = redis_settings(conf)
    assert REDIS_REQUIRED.items() <= settings.items()
    assert "requirepass" not in settings  # written from the secret at start-up, never committed
    (cm,) = by_kind("ConfigMap", K8S_REPLICATED)
    assert cm["data"]["redis.conf"] == conf  # one config for compose and Kubernetes


def test_replicated_kubernetes():
    (dep,) = by_kind("Deployment", K8S_REPLICATED)
    spec = dep["spec"]
    assert spec["replicas"] == 3 and spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    ns = replicated_args_ok(c["args"])
    assert ns.replica_id == "$(POD_NAME)" and any(e["name"] == "POD_NAME" for e in c["env"])
    # ready only once the model is caught up: the per-model health service "<model>/<version>"
    ready = c["readinessProbe"]["grpc"]
    assert ready["port"] == ns.port and re.fullmatch(r"[\w.-]+/[\w.-]+", ready["service"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert not any("state" in name for name in volumes)  # stateless replicas
    claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v}
    assert claims == {"sjff-models"}
    (models,) = by_kind("PersistentVolumeClaim", K8S_REPLICATED)
    assert models["spec"]["accessModes"] == ["ReadOnlyMany"]  # three pods on any nodes read it
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    secret_of = {m["mountPath"]: volumes[m["name"]].get("secret", {}).get("secretName") for m in c["volumeMounts"]}
    assert secret_of[str(ns.replication_password_file.parent)] == "sjff-redis"
    assert secret_of[str(ns.token_file.parent)] == "sjff-token" and mounts["/models"]["readOnly"] is True
    secrets = {d["metadata"]["name"]: d for d in by_kind("Secret", K8S_REPLICATED)}
    assert {"sjff-token", "sjff-redis"} <= set(secrets) and "password" in secrets["sjff-redis"]["stringData"]
    # Redis: a StatefulSet whose data is a persistent volume, the password from the same secret
    (sts,) = by_kind("StatefulSet", K8S_REPLICATED)
    (redis,) = sts["spec"]["template"]["spec"]["containers"]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert sts["spec"]["replicas"] == 1 and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    rmounts = {m["name"]: m["mountPath"] for m in redis["volumeMounts"]}
    assert rmounts[claim["metadata"]["name"]] == redis_settings(cm_conf())["dir"]
    rvolumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    password_mount = next(n for n, v in rvolumes.items() if v.get("secret", {}).get("secretName") == "sjff-redis")
    assert f"{rmounts[password_mount]}/password" in redis["command"][-1]
    assert "requirepass" in redis["command"][-1] and "--requirepass" not in " ".join(redis["command"])
    assert redis_settings(cm_conf())["include"].startswith(rmounts[next(n for n in rvolumes if n == "auth")])
    redis_svc = next(d for d in by_kind("Service", K8S_REPLICATED) if d["metadata"]["name"] == "sjff-redis")
    assert sts["spec"]["serviceName"] == "sjff-redis" and redis_svc["spec"]["clusterIP"] == "None"
    assert ns.replication.split("//")[1].split(":")[0] == "sjff-redis"
    (pdb,) = by_kind("PodDisruptionBudget", K8S_REPLICATED)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert 0 < pdb["spec"]["minAvailable"] < spec["replicas"]


def cm_conf() -> str:
    (cm,) = by_kind("ConfigMap", K8S_REPLICATED)
    return cm["data"]["redis.conf"]


def test_replicated_compose():
    doc = yaml.safe_load((DEPLOY / "compose.replicated.yaml").read_text())
    services = doc["services"]
    replicas = {name: svc for name, svc in services.items() if name.startswith("server-")}
    assert len(replicas) == 3
    host_ports = set()
    for svc in replicas.values():
        ns = replicated_args_ok(svc["command"])
        dockerfile = (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).resolve()
        assert dockerfile == (DEPLOY / "Dockerfile").resolve()
        assert ns.replication.split("//")[1].split(":")[0] == "redis"
        assert str(ns.replication_password_file) == "/run/secrets/redis_password"
        assert str(ns.token_file) == "/run/secrets/sjff_token" and set(svc["secrets"]) <= set(doc["secrets"])
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert not any(":/state" in v for v in svc["volumes"]) and svc["read_only"] is True
        assert {int(p.split(":")[1]) for p in svc["ports"]} == {ns.port, ns.metrics_port}
        host_ports |= {int(p.split(":")[0]) for p in svc["ports"]}
    assert len(host_ports) == 6  # each replica reachable on its own ports: clients list them all
    redis = services["redis"]
    assert redis["image"].split(":")[1].startswith("7")
    conf = next(v for v in redis["volumes"] if v.endswith("redis.conf:ro"))
    assert (DEPLOY / conf.split(":")[0]).resolve() == (DEPLOY / "redis" / "redis.conf").resolve()
    data = next(v for v in redis["volumes"] if v.split(":")[0] in doc["volumes"])
    assert data.split(":")[1] == redis_settings((DEPLOY / "redis" / "redis.conf").read_text())["dir"]
    assert "redis_password" in redis["secrets"] and "/run/secrets/redis_password" in redis["command"][-1]
    assert redis["user"].split(":")[0] not in ("0", "root")


@pytest.mark.parametrize("doc", ["README.md"])
def test_deploy_is_documented(doc):
    text = (DEPLOY / doc).read_text()
    for needle in ("docker build", "compose", "kubectl", "sjff-token", "--health-port", "/state", "/models"):
        assert needle in text, needle
    for needle in ("Replicated serving", "appendfsync always", "noeviction", "--replication-wait", "sjff-redis"):
        assert needle in text, needle
    # the image's list of packages, as the README states it, is the "serve" extra
    extra = tomllib.loads((su.ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    for req in extra:
        name = re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0]
        assert f"`{name}`" in text, name
