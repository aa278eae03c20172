"""Runs each example's grantd container the way its manifest does, without a container engine.

No Docker or Kubernetes runs where CI does, so this builds the container's view by hand and runs
the real binary in it, in its own mount and network namespaces (nothing it does can leave the
machine):
- a root holding only the binary (at the image's path), the C libraries it links (distroless/cc
  has the same glibc and libgcc) and CA certificates, mounted read-only
  (readOnlyRootFilesystem);
- the ConfigMaps at their mount paths (laid out as the kubelet does, keys as symlinks through
  `..data`), each emptyDir as a tmpfs (group-writable for fsGroup);
- the manifest's user (runAsUser/runAsGroup) and env (secrets as stand-ins); the shared service's
  database is the local PostgreSQL, reached through its Unix socket, in a fresh schema;
then checks: the startup, liveness and readiness probes' paths answer 200 on the port the probes
name, /_grantd/metrics on the port Prometheus is told to scrape, and that port (the ops listener)
never proxies; an integration route reaches a local stand-in for Slack, with the caller token
where the config has callers (and is refused without it), without one on the sidecar's loopback;
a connection imported on the admin API is stored (on the emptyDir, or in PostgreSQL); the process
runs as the manifest's uid; SIGTERM while a request is upstream turns readiness 503 and still
answers that request, then grantd exits 0 within terminationGracePeriodSeconds.

What it does not show: that the Dockerfile builds (dockerfile.py checks its shape), or several
replicas side by side (tests/processes.rs and the fleet tests do that).

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

IMAGE_BINARY = "/usr/local/bin/grantd"  # the Dockerfile's ENTRYPOINT
IN_NAMESPACE = "GRANTD_POD_CHECK_NAMESPACED"
PG_SOCKET_DIR = "/var/run/postgresql"
# Each example, and the env var of the caller whose token the check presents (None: the proxy is
# on loopback with no callers). configs.placeholder() makes a SHA-256 stand-in the hash of the
# variable's own name, so the name is the token.
EXAMPLES = (("sidecar", None), ("shared", "BILLING_CALLER_TOKEN_SHA256"))


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


def request(method: str, url: str, headers=None, body=None) -> tuple:
    req = urllib.request.Request(url, method=method, headers=headers or {}, data=body)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def psql(sql: str) -> str:
    return subprocess.run(
        ["psql", "-h", PG_SOCKET_DIR, "-U", "postgres", "-d", "test", "-Atqc", sql],
        capture_output=True, text=True, check=True,
    ).stdout.strip()


def mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True)


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


def mount_volumes(root: Path, binary: Path, pod: dict, container: dict, postgres: bool) -> None:
    """Read-only root with the binary in it; each emptyDir a tmpfs; the database's socket."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    empty_dirs = [(m["mountPath"], volumes[m["name"]]["emptyDir"])
                  for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]]
    extra = [PG_SOCKET_DIR] if postgres else []
    for path in [p for p, _ in empty_dirs] + extra:
        (root / path.lstrip("/")).mkdir(parents=True, exist_ok=True)
    mount("--bind", str(root), str(root))
    mount("--bind", "-o", "ro", str(binary), str(root / IMAGE_BINARY.lstrip("/")))
    mount("-o", "remount,bind,ro", str(root))
    # As the kubelet makes them: group-owned by fsGroup when there is one, else world-writable.
    fs_group = pod["securityContext"].get("fsGroup")
    mode = f"gid={fs_group},mode=2775" if fs_group is not None else "mode=1777"
    for path, empty in empty_dirs:
        size = empty.get("sizeLimit", "64Mi").replace("Mi", "m")
        mount("-t", "tmpfs", "-o", f"size={size},uid=0,{mode}", "tmpfs", str(root / path.lstrip("/")))
    for path in extra:
        mount("--bind", path, str(root / path.lstrip("/")))


def run_example(name: str, caller_var: str, binary: Path, upstream_port: int) -> list:
    docs = configs.load_dir(configs.ROOT / "deploy" / name)
    pod, container = configs.grantd_container(docs, f"deploy/{name}")
    root = Path(tempfile.mkdtemp(prefix=f"grantd-{name}-"))
    env = {e["name"]: e.get("value") or configs.placeholder(e["name"]) for e in container.get("env", [])}
    env["SLACK_BASE_URL"] = f"http://127.0.0.1:{upstream_port}/api"
    postgres = "GRANTD_DATABASE_URL" in env
    schema = f"t_deploy_{os.getpid()}"  # t_: .ci/run sweeps leftovers
    if postgres:
        env["GRANTD_DATABASE_URL"] = f"postgres://postgres@localhost/test?host={PG_SOCKET_DIR}"
        env["GRANTD_DATABASE_SCHEMA"] = schema
    try:
        config = configs.lay_out(root, docs, pod, container, f"deploy/{name}")
        build_root(root, binary)
        mount_volumes(root, binary, pod, container, postgres)
        annotations = next(d for d in docs if d.get("kind") == "Deployment")["spec"]["template"]["metadata"]["annotations"]
        ports = {"scrape": int(annotations["prometheus.io/port"])}
        with tempfile.TemporaryFile("w+") as log:
            problems = serve_and_check(root, config, pod, container, env, caller_var, ports, log)
            log.seek(0)
            text = log.read()
        if postgres and not problems and psql(f"SELECT count(*) FROM {schema}.connections WHERE id = 'pod_check'") != "1":
            problems.append(f"the imported connection is not in PostgreSQL ({schema}.connections)")
    finally:
        subprocess.run(["umount", "-R", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)
        if postgres:
            psql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    if "Read-only file system" in text:
        problems.append("grantd tried to write outside its volumes")
    if problems:
        problems.append(f"grantd's log:\n{text}")
    return problems


def local(listen: str) -> str:
    return listen.replace("0.0.0.0", "127.0.0.1")


def serve_and_check(root: Path, config: Path, pod: dict, container: dict, env: dict, caller_var, ports: dict, log) -> list:
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    uid, gid = security["runAsUser"], security["runAsGroup"]
    grantd = yaml.safe_load(config.read_text())
    admin = local(grantd["admin"]["listen"])
    ports["proxy"] = local(grantd["listen"])
    ports["ops"] = int(grantd["ops"]["listen"].rsplit(":", 1)[1])
    proc = subprocess.Popen(
        ["unshare", f"--root={root}", "--setgid", str(gid), "--setuid", str(uid),
         IMAGE_BINARY, "serve", *container.get("args", [])],
        env={"PATH": "/usr/bin:/bin", **env}, stdout=log, stderr=subprocess.STDOUT,
    )
    caller = {"Proxy-Authorization": f"Bearer {caller_var}"} if caller_var else {}
    try:
        problems = probe(proc, container, env, caller, admin, ports)
        store = root / "var/lib/grantd/grantd.db"
        if "GRANTD_DATABASE_URL" not in env and (not store.is_file() or store.stat().st_uid != uid):
            problems.append(f"no store file owned by uid {uid} on the emptyDir")
        with open(f"/proc/{proc.pid}/status") as f:
            uids = next(l.split()[1:] for l in f if l.startswith("Uid:"))
        if set(uids) != {str(uid)}:
            problems.append(f"grantd runs as uids {uids}, not {uid}")
        return problems + (stop(proc, pod, container, caller, ports) if proc.poll() is None else [])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def probe(proc, container: dict, env: dict, caller: dict, admin_listen: str, ports: dict) -> list:
    base = f"http://127.0.0.1:{probe_port(container, 'startupProbe')}"
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
        status, body = request("GET", f"http://127.0.0.1:{probe_port(container, name)}{path}")
        if status != 200:
            problems.append(f"{name} {path}: {status} {body}")
    if request("GET", f"http://127.0.0.1:{ports['scrape']}/_grantd/metrics")[0] != 200:
        problems.append(f"/_grantd/metrics did not answer 200 on the scraped port {ports['scrape']}")
    status, _ = request("GET", f"http://127.0.0.1:{ports['ops']}/slack/auth.test", caller)
    if status != 404:
        problems.append(f"the ops listener answered an integration route with {status}, not 404")
    proxy = f"http://{ports['proxy']}/slack/auth.test"
    if caller:
        status, _ = request("GET", proxy)
        if status != 401:
            problems.append(f"an integration route without a caller token answered {status}, not 401")
    status, body = request("GET", proxy, caller)
    if status != 200:
        problems.append(f"a request {'with the caller token' if caller else 'on loopback'} answered {status} {body}, not 200")
    url = f"http://{admin_listen}/v1/connections/pod_check"
    auth = {"Authorization": f"Bearer {env['GRANTD_ADMIN_TOKEN']}", "Content-Type": "application/json"}
    conn = {"integration": "slack", "credentials": {"access_token": "xoxb-pod-check", "expires_in": 3600}}
    status, body = request("PUT", url, auth, json.dumps(conn).encode())
    if status != 200 or request("GET", url, auth)[0] != 200:
        problems.append(f"importing a connection on the admin API failed: {status} {body}")
    return problems


def probe_port(container: dict, probe: str) -> int:
    """The port a probe names, by name or number, as the kubelet resolves it."""
    port = container[probe]["httpGet"]["port"]
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def stop(proc, pod: dict, container: dict, caller: dict, ports: dict) -> list:
    """SIGTERM while a request is upstream: readiness turns 503 at once, the request is still
    answered, then grantd exits 0."""
    grace = pod.get("terminationGracePeriodSeconds", 30)
    answer = []
    url = f"http://{ports['proxy']}/slack/slow"
    client = threading.Thread(target=lambda: answer.append(request("GET", url, caller)))
    Upstream.slow_started.clear()
    client.start()
    if not Upstream.slow_started.wait(10):
        return ["the in-flight request never reached the upstream"]
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    ready = f"http://127.0.0.1:{probe_port(container, 'readinessProbe')}{container['readinessProbe']['httpGet']['path']}"
    draining = None
    while draining is None and time.monotonic() - sent < Upstream.SLOW / 2:
        try:
            status = request("GET", ready)[0]
            draining = time.monotonic() - sent if status == 503 else None
        except OSError:
            pass
    try:
        code = proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        return [f"grantd did not stop within terminationGracePeriodSeconds ({grace} s) of SIGTERM"]
    print(f"     stopped {time.monotonic() - sent:.2f} s after SIGTERM, one request in flight ({Upstream.SLOW} s upstream)")
    client.join(10)
    problems = [] if code == 0 else [f"SIGTERM: grantd exited {code}, not 0"]
    if draining is None:
        problems.append(f"readiness did not answer 503 within {Upstream.SLOW / 2} s of SIGTERM, while a request was in flight")
    else:
        print(f"     readiness 503 {draining:.2f} s after SIGTERM")
    if answer[:1] != [(200, '{"ok":true}')]:
        problems.append(f'the request in flight at SIGTERM got {answer[:1]}, not 200 {{"ok":true}}')
    return problems


def in_namespace(binary: Path) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    mount("--make-rprivate", "/")
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    failed = False
    for name, caller_var in EXAMPLES:
        problems = run_example(name, caller_var, binary, upstream.server_port)
        for p in problems:
            print(f"FAIL deploy/{name} pod: {p}", file=sys.stderr)
        if not problems:
            store = "PostgreSQL" if name == "shared" else "the emptyDir"
            callers = "caller check" if caller_var else "no caller token on loopback"
            print(f"ok   deploy/{name} pod: probes and scrape on the ops port, {callers}, store on {store}, non-root, read-only root, drain on SIGTERM")
        failed |= bool(problems)
    upstream.shutdown()
    return 1 if failed else 0


def main() -> int:
    binary = Path(sys.argv[1]).resolve()
    if os.environ.get(IN_NAMESPACE):
        return in_namespace(binary)
    missing = [what for what, ok in (
        ("root", os.geteuid() == 0),
        ("unshare", shutil.which("unshare")),
        (f"PostgreSQL's socket in {PG_SOCKET_DIR}", Path(PG_SOCKET_DIR, ".s.PGSQL.5432").exists()),
    ) if not ok]
    if missing:
        ci = os.environ.get("CI") == "true"
        print(f"{'FAIL' if ci else '!!!!'} SKIPPED: the pod check needs {', '.join(missing)}", file=sys.stderr)
        return 1 if ci else 0
    ns = ["unshare", "--mount", "--net", "--fork", sys.executable, __file__, str(binary)]
    return subprocess.run(ns, env={**os.environ, IN_NAMESPACE: "1"}, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
