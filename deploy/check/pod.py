"""Runs the sidecar example's grantd container the way its manifest does, without a container engine.

No Docker or Kubernetes runs where CI does, so this builds the container's view by hand and runs
the real binary in it, in its own mount and network namespaces (nothing it does can leave the
machine):
- a root holding only the binary (at the image's path), the C libraries it links (distroless/cc
  has the same glibc and libgcc) and CA certificates, mounted read-only
  (readOnlyRootFilesystem);
- the ConfigMaps at their mount paths, each emptyDir as a tmpfs owned by fsGroup;
- the manifest's user (runAsUser/runAsGroup) and env (secrets as stand-ins);
then checks: the startup, liveness and readiness probes' paths answer 200 on the listener the
probes use; an integration route without the caller token is refused and with it is admitted; a
connection imported on the admin API is stored on the emptyDir; the process runs as the
manifest's uid; SIGTERM while a request is upstream (a slow local stand-in for Slack) still
answers that request, then grantd exits 0 within terminationGracePeriodSeconds.

What it does not show: that the Dockerfile builds (dockerfile.py checks its shape).

Needs root and util-linux `unshare` (CI has both). Elsewhere it says SKIPPED, loudly; under
CI=true it fails instead.

Usage: pod.py GRANTD_BINARY
"""

import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import configs
import yaml

EXAMPLE = "sidecar"
IMAGE_BINARY = "/usr/local/bin/grantd"   # the Dockerfile's ENTRYPOINT
IN_NAMESPACE = "GRANTD_POD_CHECK_NAMESPACED"


def request(method: str, url: str, headers=None, body=None) -> tuple:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def build_root(root: Path, binary: Path) -> None:
    """The image's non-config files: the binary's mount point, its libraries, CA certificates."""
    root.chmod(0o755)
    target = root / IMAGE_BINARY.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.touch()
    ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    for lib in (w for line in ldd.splitlines() for w in line.split() if w.startswith("/")):
        dest = root / lib.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(lib, dest)
    certs = root / "etc/ssl/certs"
    certs.mkdir(parents=True, exist_ok=True)
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt", certs)


class Upstream(http.server.BaseHTTPRequestHandler):
    """Slack's stand-in inside the namespace: answers ok; /api/slow only after SLOW seconds."""

    SLOW = 1.5
    slow_started = threading.Event()

    def do_GET(self):
        if self.path.startswith("/api/slow"):
            Upstream.slow_started.set()
            time.sleep(Upstream.SLOW)
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


def run_pod(binary: Path) -> list:
    docs = configs.load_dir(configs.ROOT / "deploy" / EXAMPLE)
    pod, container = configs.grantd_container(docs, f"deploy/{EXAMPLE}")
    root = Path(tempfile.mkdtemp(prefix="grantd-pod-"))
    try:
        config = configs.lay_out(root, docs, pod, container, f"deploy/{EXAMPLE}")
        build_root(root, binary)
        mount_volumes(root, binary, pod, container)
        with tempfile.TemporaryFile("w+") as log:
            problems = serve_and_check(root, config, pod, container, log)
            log.seek(0)
            text = log.read()
    finally:
        subprocess.run(["umount", "-R", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)
    if "Read-only file system" in text:
        problems.append("grantd tried to write outside its emptyDirs")
    if problems:
        problems.append(f"grantd's log:\n{text}")
    return problems


def mount_volumes(root: Path, binary: Path, pod: dict, container: dict) -> None:
    """Read-only root with the binary in it; each emptyDir a tmpfs writable by fsGroup."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    mount("--make-rprivate", "/")
    volumes = {v["name"]: v for v in pod["volumes"]}
    empty_dirs = [(m["mountPath"], volumes[m["name"]]["emptyDir"])
                  for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]]
    for path, _ in empty_dirs:
        (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    mount("--bind", str(root), str(root))
    mount("--bind", "-o", "ro", str(binary), str(root / IMAGE_BINARY.lstrip("/")))
    mount("-o", "remount,bind,ro", str(root))
    fs_group = pod["securityContext"]["fsGroup"]
    for path, empty in empty_dirs:
        size = empty.get("sizeLimit", "64Mi").replace("Mi", "m")
        mount("-t", "tmpfs", "-o", f"size={size},uid=0,gid={fs_group},mode=2775", "tmpfs", str(root / path.lstrip("/")))


def serve_and_check(root: Path, config: Path, pod: dict, container: dict, log) -> list:
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    uid, gid = security["runAsUser"], security["runAsGroup"]
    env = {e["name"]: e.get("value") or configs.placeholder(e["name"]) for e in container.get("env", [])}
    admin = yaml.safe_load(config.read_text())["admin"]["listen"]
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    env["SLACK_BASE_URL"] = f"http://127.0.0.1:{upstream.server_port}/api"
    proc = subprocess.Popen(
        ["unshare", f"--root={root}", "--setgid", str(gid), "--setuid", str(uid),
         IMAGE_BINARY, "serve", *container.get("args", [])],
        env={"PATH": "/usr/bin:/bin", **env}, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        problems = probe(proc, container, env, root, uid, admin)
        return problems + (stop(proc, pod, container) if proc.poll() is None else [])
    finally:
        upstream.shutdown()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def probe(proc, container, env, root: Path, uid: int, admin_listen: str) -> list:
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    base = f"http://127.0.0.1:{port['proxy']}"
    startup = container["startupProbe"]
    started = time.monotonic()
    deadline = started + startup["periodSeconds"] * startup["failureThreshold"]
    while True:
        try:
            if request("GET", base + startup["httpGet"]["path"])[0] == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            return [f"the startup probe's {startup['httpGet']['path']} never answered 200 (exit {proc.poll()})"]
        time.sleep(0.05)
    print(f"     {startup['httpGet']['path']} answered 200 {time.monotonic() - started:.2f} s after start")
    problems = []
    for name in ("livenessProbe", "readinessProbe"):
        path = container[name]["httpGet"]["path"]
        status, body = request("GET", base + path)
        if status != 200:
            problems.append(f"{name} {path}: {status} {body}")
    if request("GET", base + "/_grantd/metrics")[0] != 200:
        problems.append("/_grantd/metrics did not answer 200")
    # configs.placeholder() makes a SHA-256 stand-in the hash of the variable's own name.
    status, _ = request("GET", base + "/slack/auth.test")
    if status != 401:
        problems.append(f"an integration route without the caller token answered {status}, not 401")
    token = {"Proxy-Authorization": "Bearer GRANTD_CALLER_TOKEN_SHA256"}
    status, body = request("GET", base + "/slack/auth.test", token)
    if status != 200:
        problems.append(f"a request with the caller token answered {status} {body}, not 200")
    admin = f"http://{admin_listen}/v1/connections/pod_check"
    auth = {"Authorization": f"Bearer {env['GRANTD_ADMIN_TOKEN']}", "Content-Type": "application/json"}
    conn = {"integration": "slack", "credentials": {"access_token": "xoxb-pod-check", "expires_in": 3600}}
    status, body = request("PUT", admin, auth, json.dumps(conn).encode())
    if status != 200 or request("GET", admin, auth)[0] != 200:
        problems.append(f"importing a connection on the admin API failed: {status} {body}")
    store = root / "var/lib/grantd/grantd.db"
    if not store.is_file() or store.stat().st_uid != uid:
        problems.append(f"no store file owned by uid {uid} on the emptyDir")
    with open(f"/proc/{proc.pid}/status") as f:
        uids = next(l.split()[1:] for l in f if l.startswith("Uid:"))
    if set(uids) != {str(uid)}:
        problems.append(f"grantd runs as uids {uids}, not {uid}")
    return problems


def stop(proc, pod, container) -> list:
    """SIGTERM while a request is upstream: it must still be answered, then grantd exits 0."""
    grace = pod.get("terminationGracePeriodSeconds", 30)
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["proxy"]
    answer = []
    token = {"Proxy-Authorization": "Bearer GRANTD_CALLER_TOKEN_SHA256"}
    client = threading.Thread(target=lambda: answer.append(request("GET", f"http://127.0.0.1:{port}/slack/slow", token)))
    client.start()
    if not Upstream.slow_started.wait(10):
        return ["the in-flight request never reached the upstream"]
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    try:
        code = proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        return [f"grantd did not stop within terminationGracePeriodSeconds ({grace} s) of SIGTERM"]
    print(f"     stopped {time.monotonic() - sent:.2f} s after SIGTERM, one request in flight ({Upstream.SLOW} s upstream)")
    client.join(10)
    problems = [] if code == 0 else [f"SIGTERM: grantd exited {code}, not 0"]
    if answer[:1] != [(200, '{"ok":true}')]:
        problems.append(f"the request in flight at SIGTERM got {answer[:1]}, not 200 {{\"ok\":true}}")
    return problems


def main() -> int:
    binary = Path(sys.argv[1]).resolve()
    if os.environ.get(IN_NAMESPACE):
        problems = run_pod(binary)
        for p in problems:
            print(f"FAIL deploy/{EXAMPLE} pod: {p}", file=sys.stderr)
        if not problems:
            print(f"ok   deploy/{EXAMPLE} pod: probes, caller check, store on emptyDir, non-root, read-only root, drain on SIGTERM")
        return 1 if problems else 0
    if os.geteuid() != 0 or not shutil.which("unshare"):
        message = "SKIPPED: the pod check needs root and unshare (mount and network namespaces)"
        print(f"{'FAIL' if os.environ.get('CI') == 'true' else '!!!!'} {message}", file=sys.stderr)
        return 1 if os.environ.get("CI") == "true" else 0
    ns = ["unshare", "--mount", "--net", "--fork", sys.executable, __file__, str(binary)]
    return subprocess.run(ns, env={**os.environ, IN_NAMESPACE: "1"}, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
