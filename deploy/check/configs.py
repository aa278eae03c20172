"""Checks that the grantd configs inside deploy/'s manifests are real, working configs.

For each example directory it lays out the files the grantd container would see (every ConfigMap
volume at its mount path, the image's rule files where no ConfigMap replaces them), checks that
every `${VAR}` without a default in grantd.yaml is set in the container's env, that the
`kubectl create secret` recipe atop deployment.yaml makes every Secret key the pod reads, and runs
`grantd check --config` on it: the same loading, validation and rule tests `grantd serve` does.

It also keeps deploy/sidecar/rules.yaml equal to the repository's rule files it carries
(`--write-rules` regenerates it), so the ConfigMap never drifts from rules/.

Usage: configs.py GRANTD_BINARY [--write-rules]
"""

import argparse
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ("sidecar", "shared")
# What the Dockerfile puts in the image, used where no ConfigMap is mounted over it.
IMAGE_RULES = "/etc/grantd/rules"
IMAGE_CONFIG = "/etc/grantd/config/grantd.yaml"
# The sidecar example's rules ConfigMap: the shared base and the example app's integration.
RULES_CONFIGMAP = ROOT / "deploy/sidecar/rules.yaml"
SIDECAR_RULES = ("_base.yaml", "slack.yaml")
# `${NAME}` with no `:-default`; `$${` is a literal `$` followed by `{`.
REQUIRED_VAR = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class CheckError(Exception):
    pass


def render_rules() -> str:
    """The rules ConfigMap, each rule file verbatim as a literal block."""
    lines = [
        "# GENERATED from rules/ by `target/deploy-venv/bin/python deploy/check/configs.py --write-rules`",
        "# (the venv .ci/deploy-check makes); CI fails when it differs from them. The rule files the",
        "# sidecar uses, mounted at /etc/grantd/rules in place of the image's: a rule change is a",
        "# ConfigMap change, not a new image.",
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: grantd-rules",
        "  labels:",
        "    app.kubernetes.io/name: grantd",
        "data:",
    ]
    for name in SIDECAR_RULES:
        text = (ROOT / "rules" / name).read_text()
        lines.append(f"  {name}: |")
        lines.extend(("    " + line).rstrip(" ") if line else "" for line in text.splitlines())
    rendered = "\n".join(lines) + "\n"
    # A literal block cannot carry every text (trailing spaces, no final newline): prove it did.
    data = yaml.safe_load(rendered)["data"]
    for name in SIDECAR_RULES:
        if data[name] != (ROOT / "rules" / name).read_text():
            raise CheckError(f"rules/{name} does not survive a YAML literal block unchanged")
    return rendered


def load_dir(directory: Path) -> list:
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
        except yaml.YAMLError as e:
            raise CheckError(f"{path.relative_to(ROOT)}: not YAML: {e}") from e
    return docs


def grantd_container(docs: list, where: str) -> tuple:
    deployments = [d for d in docs if d.get("kind") == "Deployment"]
    if len(deployments) != 1:
        raise CheckError(f"{where}: expected one Deployment, found {len(deployments)}")
    pod = deployments[0]["spec"]["template"]["spec"]
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        if c["name"] == "grantd":
            return pod, c
    raise CheckError(f"{where}: the Deployment has no container named grantd")


def placeholder(name: str) -> str:
    """A stand-in value shaped like the real one where grantd checks the shape."""
    if name.endswith("ENCRYPTION_KEY"):
        return base64.b64encode(hashlib.sha256(name.encode()).digest()).decode()
    if name.endswith("SHA256"):
        return hashlib.sha256(name.encode()).hexdigest()
    if name.endswith("DATABASE_URL"):
        return "postgres://grantd@db.invalid:5432/grantd"
    return "placeholder-" + name.lower()


def write_configmap(target: Path, data: dict) -> None:
    """As the kubelet writes a ConfigMap volume: the files in a timestamped directory, `..data`
    pointing at it and each key a symlink through `..data` (an update swaps `..data`), so grantd
    reads its files through the same links as in a pod."""
    stamp = target / "..2026_01_01_00_00_00.000000000"
    stamp.mkdir(parents=True)
    for name, text in data.items():
        (stamp / name).write_text(text)
    (target / "..data").symlink_to(stamp.name)
    for name in data:
        (target / name).symlink_to(f"..data/{name}")


def lay_out(root: Path, docs: list, pod: dict, container: dict, where: str) -> Path:
    """Writes the container's view of its files under `root`; returns the config's path."""
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d.get("kind") == "ConfigMap"}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounted = set()
    for mount in container.get("volumeMounts", []):
        source = volumes[mount["name"]].get("configMap")
        if source is None:
            continue
        if source["name"] not in configmaps:
            raise CheckError(f"{where}: ConfigMap {source['name']} is mounted but not in {where}")
        write_configmap(root / mount["mountPath"].lstrip("/"), configmaps[source["name"]])
        mounted.add(mount["mountPath"])
    if IMAGE_RULES not in mounted:
        shutil.copytree(ROOT / "rules", root / IMAGE_RULES.lstrip("/"))
    args = container.get("args", [])
    config = args[args.index("--config") + 1] if "--config" in args else IMAGE_CONFIG
    path = root / config.lstrip("/")
    if not path.is_file():
        raise CheckError(f"{where}: {config} is not provided by any mounted ConfigMap")
    return path


def check_secret_recipe(where: str, pod: dict) -> None:
    """The `kubectl create secret` recipe atop deployment.yaml makes every key the pod reads."""
    text = (ROOT / where / "deployment.yaml").read_text()
    made = set(re.findall(r"--from-literal=([A-Za-z0-9._-]+)=", text))
    read = {
        e["valueFrom"]["secretKeyRef"]["key"]
        for c in pod.get("initContainers", []) + pod.get("containers", [])
        for e in c.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    if read - made:
        raise CheckError(f"{where}/deployment.yaml: the secret recipe does not make {', '.join(sorted(read - made))}")


def check_example(name: str, grantd: str) -> None:
    where = f"deploy/{name}"
    docs = load_dir(ROOT / where)
    pod, container = grantd_container(docs, where)
    check_secret_recipe(where, pod)
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    with tempfile.TemporaryDirectory() as tmp:
        config = lay_out(Path(tmp), docs, pod, container, where)
        missing = sorted(set(REQUIRED_VAR.findall(config.read_text())) - env.keys())
        if missing:
            raise CheckError(
                f"{where}: grantd.yaml needs {', '.join(missing)} (no default), "
                "but the grantd container's env does not set it"
            )
        run_env = dict(os.environ)
        run_env.update({k: v if v is not None else placeholder(k) for k, v in env.items()})
        result = subprocess.run(
            [grantd, "check", "--config", str(config)],
            env=run_env, capture_output=True, text=True, check=False,
        )
    # Paths as the pod sees them, not the temporary directory's.
    lines = result.stdout.replace(tmp, "").strip().splitlines()
    if result.returncode != 0:
        failures = [l for l in lines if l.startswith(("FAIL", "error"))]
        raise CheckError(f"{where}: grantd check failed:\n" + "\n".join(failures + lines[-1:]) + result.stderr.replace(tmp, ""))
    print(f"ok   {where}: grantd check: {lines[-1] if lines else 'no output'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grantd", nargs="?", help="the grantd binary to run `check` with")
    parser.add_argument("--write-rules", action="store_true", help="regenerate deploy/sidecar/rules.yaml")
    args = parser.parse_args()
    try:
        rendered = render_rules()
        if args.write_rules:
            RULES_CONFIGMAP.write_text(rendered)
            print(f"wrote {RULES_CONFIGMAP.relative_to(ROOT)}")
            return 0
        if not RULES_CONFIGMAP.is_file() or RULES_CONFIGMAP.read_text() != rendered:
            raise CheckError(
                "deploy/sidecar/rules.yaml differs from rules/: run "
                "target/deploy-venv/bin/python deploy/check/configs.py --write-rules"
            )
        print("ok   deploy/sidecar/rules.yaml matches rules/")
        if not args.grantd:
            parser.error("the grantd binary is required")
        for name in EXAMPLES:
            check_example(name, args.grantd)
    except CheckError as e:
        print(f"FAIL {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
