#!/usr/bin/env bash
# Offline checks of deploy/ (issue 12): no cluster, no container engine, no network after the first run.
#   scripts/check-deploy.sh           check
#   scripts/check-deploy.sh --sync    first copy config/deltaspace.toml to deploy/k8s/deltaspace.toml
# 1. deploy/k8s/deltaspace.toml (the ConfigMap's source) equals config/deltaspace.toml, byte for byte.
# 2. hadolint lints deploy/Dockerfile; its set-up steps are the ones scripts/run-main.sh runs.
# 3. `kubectl kustomize deploy/k8s` renders the kustomization; kubernetes-validate checks the result, each
#    manifest on its own and the Secret template against Kubernetes $K8S_VERSION (default below), strict:
#    unknown fields fail.
# 4. The rendered objects agree with each other and with the server: names, selectors, ports, the
#    ConfigMap's content, the Secret's keys, every DELTASPACE_* variable a known setting, probes on
#    documented routes, a grace period longer than the server's shutdown timeout.
# Makes .venv-deploy (git-ignored) from deploy/requirements.txt on its first run (about 20 s, 250 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
k8s_version=${K8S_VERSION:-1.33.0}
if [ "${1:-}" = "--sync" ]; then
  cp config/deltaspace.toml deploy/k8s/deltaspace.toml
fi

venv=.venv-deploy
stamp="$venv/.requirements.sha256"
want=$(sha256sum deploy/requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r deploy/requirements.txt
  echo "$want" > "$stamp"
  echo "deploy venv ready: $venv"
fi

if ! cmp -s config/deltaspace.toml deploy/k8s/deltaspace.toml; then
  echo "check-deploy: deploy/k8s/deltaspace.toml differs from config/deltaspace.toml;" \
    "run scripts/check-deploy.sh --sync and review the change" >&2
  diff -u config/deltaspace.toml deploy/k8s/deltaspace.toml >&2 || true
  exit 1
fi
echo "check-deploy: deploy/k8s/deltaspace.toml equals config/deltaspace.toml"

"$venv/bin/hadolint" deploy/Dockerfile
echo "check-deploy: hadolint $("$venv/bin/hadolint" --version | awk '{print $NF}'): deploy/Dockerfile is clean"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$venv/bin/kubectl" kustomize deploy/k8s > "$tmp/rendered.yaml"
"$venv/bin/kubernetes-validate" --strict --quiet -k "$k8s_version" "$tmp/rendered.yaml" \
  deploy/k8s/deployment.yaml deploy/k8s/service.yaml deploy/k8s/hpa.yaml deploy/k8s/pdb.yaml \
  deploy/k8s/secret.example.yaml
echo "check-deploy: the rendered kustomization, each manifest and the Secret template validate" \
  "against Kubernetes $k8s_version (strict)"

"$venv/bin/python" - "$tmp/rendered.yaml" <<'PY'
import json
import re
import shlex
import sys
import tomllib

import yaml

problems = []


def check(ok, message):
    if not ok:
        problems.append(message)


with open(sys.argv[1]) as f:
    objects = {o["kind"]: o for o in yaml.safe_load_all(f) if o}
with open("deploy/k8s/secret.example.yaml") as f:
    secret = yaml.safe_load(f)
with open("config/deltaspace.toml", "rb") as f:
    config_bytes = f.read()
config = tomllib.loads(config_bytes.decode())
with open("docs/openapi.json") as f:
    routes = set(json.load(f)["paths"])

kinds = {"ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
check(set(objects) == kinds, f"the kustomization renders {sorted(objects)}, expected {sorted(kinds)}")
if problems:
    sys.exit("check-deploy: " + "; ".join(problems))
configmap, deployment = objects["ConfigMap"], objects["Deployment"]
service, hpa, pdb = objects["Service"], objects["HorizontalPodAutoscaler"], objects["PodDisruptionBudget"]
pod = deployment["spec"]["template"]
spec = pod["spec"]
(container,) = spec["containers"]
labels = pod["metadata"]["labels"]

# Every DELTASPACE_<SECTION>_<KEY> is a setting of config/deltaspace.toml, or [store] url, the PostgreSQL
# store's key (not in config/deltaspace.toml until that store lands; then this entry is redundant).
settings = {f"DELTASPACE_{s}_{k}".upper() for s, keys in config.items() for k in keys} | {"DELTASPACE_STORE_URL"}
sections = {f"DELTASPACE_{s}_".upper() for s in config} | {"DELTASPACE_STORE_"}


def unknown_settings(names):
    return [n for n in names if any(n.startswith(p) for p in sections) and n not in settings]


# The ConfigMap is config/deltaspace.toml, mounted where the container's --config points.
check(configmap["data"].get("deltaspace.toml") == config_bytes.decode(),
      "the ConfigMap's deltaspace.toml is not config/deltaspace.toml")
volumes = {v["name"]: v for v in spec["volumes"]}
mounts = {m["name"]: m for m in container["volumeMounts"]}
config_volume = [n for n, v in volumes.items() if v.get("configMap", {}).get("name") == configmap["metadata"]["name"]]
check(len(config_volume) == 1, "no volume mounts the generated ConfigMap")
args = container.get("args", [])
if config_volume and "--config" in args:
    path = args[args.index("--config") + 1]
    check(path == mounts[config_volume[0]]["mountPath"].rstrip("/") + "/deltaspace.toml",
          f"--config {path} is not the ConfigMap's file")
else:
    check(False, "the container does not pass --config")

# Settings from the environment.
env = {e["name"]: e for e in container["env"]}
check(not unknown_settings(env), f"unknown settings in the Deployment: {unknown_settings(env)}")
replica = env.get("DELTASPACE_SERVER_REPLICA", {}).get("valueFrom", {}).get("fieldRef", {})
check(replica.get("fieldPath") == "metadata.name", "DELTASPACE_SERVER_REPLICA is not the pod's name")
for name in ("DELTASPACE_SERVER_TOKENS", "DELTASPACE_STORE_URL"):
    ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef")
    check(ref is not None, f"{name} does not come from a Secret")
    if ref:
        check(ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"],
              f"{name} refers to {ref['name']}/{ref['key']}, not in secret.example.yaml")
data_dir = env.get("DELTASPACE_SERVER_DATA_DIR", {}).get("value")
check(data_dir in {m["mountPath"] for m in mounts.values()}, f"data_dir {data_dir} is not a mounted volume")
check(spec.get("enableServiceLinks") is False,
      "enableServiceLinks must be false: service links inject DELTASPACE_* variables")

# Ports, probes, selectors, the autoscaler's target.
bind_port = int(env["DELTASPACE_SERVER_BIND"]["value"].rsplit(":", 1)[1])
ports = {p["name"]: p["containerPort"] for p in container["ports"]}
check(list(ports.values()) == [bind_port], f"container ports {ports} are not the bind port {bind_port}")
for probe, route in (("livenessProbe", "/health/live"), ("readinessProbe", "/health/ready")):
    get = container.get(probe, {}).get("httpGet", {})
    check(get.get("path") == route and route in routes, f"{probe} is not GET {route}")
    check(get.get("port") in ports, f"{probe} uses port {get.get('port')}, not a container port")
check(all(p["targetPort"] in ports for p in service["spec"]["ports"]), "the Service targets an unknown port")
for name, selector in (("Service", service["spec"]["selector"]), ("PodDisruptionBudget", pdb["spec"]["selector"]["matchLabels"])):
    check(selector.items() <= labels.items(), f"the {name} does not select the pods")
check(deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), "the Deployment does not select its pods")
target = hpa["spec"]["scaleTargetRef"]
check((target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"]),
      "the HorizontalPodAutoscaler does not scale the Deployment")
check("replicas" not in deployment["spec"], "the Deployment sets replicas, which the autoscaler owns")

# Shutdown: the grace period covers preStop and the server's own drain.
pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
sleep = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
drain = config["server"]["shutdown_timeout_s"]
check(spec.get("terminationGracePeriodSeconds", 30) > sleep + drain,
      f"terminationGracePeriodSeconds must exceed preStop {sleep} s + shutdown_timeout_s {drain} s")

# The Dockerfile: the same set-up as scripts/run-main.sh, known settings, the port, a non-root user.
with open("deploy/Dockerfile") as f:
    dockerfile = f.read()
with open("scripts/run-main.sh") as f:
    run_main = f.read()
model = re.search(r"^model=(\S+)$", run_main, re.M).group(1)
joined = re.sub(r"\\\n\s*", " ", dockerfile)  # continuation lines joined
runs = [" ".join(shlex.split(line)) for line in re.findall(r"^RUN (.+)$", joined, re.M)]
for step in re.findall(r"^\s*((?:scripts/setup-\S+\.sh|\.venv-export/bin/python export/export\.py|cargo build)\b.*)$",
                       run_main, re.M):
    step = " ".join(shlex.split(step.replace("$model", model), comments=True))
    check(step in runs, f"deploy/Dockerfile does not run scripts/run-main.sh's step: {step}")
docker_env = re.findall(r"\b(DELTASPACE_[A-Z_]+)=", dockerfile)
check(not unknown_settings(docker_env), f"unknown settings in deploy/Dockerfile: {unknown_settings(docker_env)}")
check(f"EXPOSE {bind_port}" in dockerfile, f"deploy/Dockerfile does not EXPOSE {bind_port}")
user = re.findall(r"^USER (\S+)$", dockerfile, re.M)
check(bool(user) and not user[-1].startswith(("root", "0")), "deploy/Dockerfile runs as root")
uid = int(user[-1].split(":")[0]) if user and user[-1].split(":")[0].isdigit() else None
check(uid == spec["securityContext"].get("runAsUser"), "the pod's runAsUser is not the image's USER")

if problems:
    sys.exit("check-deploy: " + "\ncheck-deploy: ".join(problems))
print("check-deploy: the manifests agree with each other, the Dockerfile and config/deltaspace.toml")
PY
