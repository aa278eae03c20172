#!/usr/bin/env python3
"""Scale benchmark: how grantd's costs grow with the number of connections, in one run.

Usage: python3 bench/scale.py [--sizes 10000,100000] [--store sqlite|postgres] [--due 10000]

Builds grantd in release mode, starts a fake token endpoint and API (Python, threaded) and, for each
size N on a fresh store: the idle RSS of a fresh process (1 s after it answers, and 10 s after,
once its start-up code is unmapped); the batch-import rate of N connections
(`POST /v1/connections/batch`, NDJSON); RSS after the import; the time to refresh `--due`
connections that become due at once (the per-integration cap at 16) against the local endpoint;
and p50/p99 of proxied requests spread over min(N, 100k) distinct connections against the same
with one connection (wrk, same run); last, the RSS of a process restarted on the same store after
the same spread (the steady state, with no import in the process's past). Speed is measured here, never asserted in tests; compare
figures within one run, and across sizes for growth.
"""
import argparse, http.server, json, os, socket, socketserver, subprocess, sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from proxy import cpu_ticks, ensure_tools, wait_http  # noqa: E402

KEY = "YmVuY2gta2V5LWJlbmNoLWtleS1iZW5jaC1rZXktISE="
PORTS = {"fake": 19950, "proxy": 19951, "admin": 19952}
TOKEN_CALLS = [0]


class Fake(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        # Headers and body leave in two writes: without this, Nagle and delayed ACKs add 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _answer(self, body):
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        TOKEN_CALLS[0] += 1
        n = TOKEN_CALLS[0]
        self._answer({"access_token": f"at-{n}", "refresh_token": f"rt-{n}", "expires_in": 3600})

    def do_GET(self):
        self._answer({"ok": True})


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def admin_post(path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{PORTS['admin']}{path}", data=body, method="POST",
                                 headers={"authorization": "Bearer bench"})
    return json.loads(urllib.request.urlopen(req, timeout=600).read())


def ndjson(ids, expires_in):
    return "".join(json.dumps({"id": i, "integration": "lab", "credentials": {
        "access_token": f"at-{i}", "refresh_token": f"rt-{i}", "expires_in": expires_in}}) + "\n" for i in ids).encode()


CACHE_LINE = ""
BINARY = [f"{ROOT}/target/release/grantd"]


def start_grantd(dir, store_line, replica=0):
    """Replica 0 serves the benchmark's ports; others (PostgreSQL only) share its store."""
    dir = f"{dir}/r{replica}"
    proxy, admin = PORTS["proxy"] + 10 * replica, PORTS["admin"] + 10 * replica
    os.makedirs(f"{dir}/rules", exist_ok=True)
    open(f"{dir}/rules/lab.yaml", "w").write(
        f"integration: lab\nbase_url: http://127.0.0.1:{PORTS['fake']}\nauth:\n  token_url: http://127.0.0.1:{PORTS['fake']}/token\nrules: []\n")
    open(f"{dir}/grantd.yaml", "w").write(
        f"listen: 127.0.0.1:{proxy}\nworkers: 1\nrules_dir: rules\n{store_line[:-1]}{CACHE_LINE} }}\n"
        f"encryption: {{ key: {KEY} }}\nadmin: {{ listen: 127.0.0.1:{admin}, token: bench }}\n"
        "refresh: { max_concurrent_per_integration: 16, scan_interval: 1s }\n"
        f"integrations:\n  lab: {{ client_id: bench, client_secret: bench }}\n")
    proc = subprocess.Popen([BINARY[0], "serve", "--config", f"{dir}/grantd.yaml"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(f"http://127.0.0.1:{proxy}/_grantd/healthz")
    return proc


def wrk(ids, seconds):
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write("n = 0\nrequest = function()\n  n = n + 1\n"
                 f"  return wrk.format('GET', '/lab/api', {{['Grantd-Connection'] = 'c' .. (n % {ids})}})\nend\n")
    script.close()
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "--latency", "-s", script.name,
                          f"http://127.0.0.1:{PORTS['proxy']}/"], capture_output=True, text=True).stdout
    lat = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[1] == "requests" and parts[2] == "in":
            lat["requests"] = int(parts[0])
        if len(parts) == 2 and parts[0] in ("50%", "99%"):
            v = parts[1]
            lat[parts[0]] = float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-2]) if v.endswith("ms") else float(v[:-1]) * 1000
    return lat


def drain(prefix, due):
    """Imports `due` connections already expired; the rate at which the proactive loop renews
    them (token calls per second, from the import's end to the last call)."""
    before = TOKEN_CALLS[0]
    admin_post("/v1/connections/batch", ndjson([f"{prefix}{i}" for i in range(due)], 0))
    started = time.time()
    while TOKEN_CALLS[0] - before < due and time.time() - started < 600:
        time.sleep(0.05)
    return round((TOKEN_CALLS[0] - before) / (time.time() - started))


def one_size(n, args, store_line):
    dir = tempfile.mkdtemp(prefix="grantd-scale-")
    proc = start_grantd(dir, store_line)
    # Idle RSS twice: 1 s after it answers, and once start-up has settled (the process unmaps
    # its start-up code 5 s after the listeners open, `memory::release_startup_code_after`).
    time.sleep(1)
    row = {"n": n, "idle_rss_1s_mib": rss_kib(proc.pid) / 1024}
    time.sleep(9)
    row["idle_rss_mib"] = rss_kib(proc.pid) / 1024
    started = time.time()
    for lo in range(0, n, 50_000):
        got = admin_post("/v1/connections/batch", ndjson([f"c{i}" for i in range(lo, min(n, lo + 50_000))], 3600))
        assert not got["failed"], got["failed"][:3]
    row["import_per_s"] = n / (time.time() - started)
    row["rss_after_import_mib"] = rss_kib(proc.pid) / 1024
    spread = min(n, 100_000)
    row["p50_p99_ms_spread"] = wrk(spread, args.seconds)
    row["p50_p99_ms_one"] = wrk(1, args.seconds)
    row["rss_after_traffic_mib"] = rss_kib(proc.pid) / 1024
    # The proactive scan's cost: CPU of an otherwise idle process over 10 scans (scan_interval
    # is 1 s), N connections stored, none due.
    ticks = cpu_ticks([proc.pid])
    time.sleep(10)
    row["idle_cpu_ms_per_scan"] = (cpu_ticks([proc.pid]) - ticks) * 1000 / os.sysconf("SC_CLK_TCK") / 10
    row["due_refresh_per_s"] = [drain(f"due{r}-", args.due) for r in range(args.drains)]
    if args.replicas > 1:
        # The same drains with the fleet splitting the work (the cap of 16 is fleet-wide).
        others = [start_grantd(dir, store_line, r) for r in range(1, args.replicas)]
        row["due_refresh_per_s_fleet"] = [drain(f"fleet{r}-", args.due) for r in range(args.drains)]
        for other in others:
            other.terminate()
            other.wait()
    proc.terminate()
    proc.wait()
    # The steady state: a process started on the N stored connections (no import in its past)
    # serving the same spread of min(N, 100k) of them.
    proc = start_grantd(dir, store_line)
    wrk(spread, args.seconds)
    row["rss_restarted_after_traffic_mib"] = rss_kib(proc.pid) / 1024
    proc.terminate()
    proc.wait()
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--store", default="sqlite", choices=["sqlite", "postgres"])
    ap.add_argument("--due", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=20, help="wrk duration; long enough to use 100k connections")
    ap.add_argument("--drains", type=int, default=3, help="repeated drains of --due connections")
    ap.add_argument("--replicas", type=int, default=1, help="also drain with this many processes (PostgreSQL)")
    ap.add_argument("--binary", help="a grantd binary to measure instead of building this checkout (A/B runs)")
    ap.add_argument("--cache-size", help="store.cache_size (default: grantd's)")
    args = ap.parse_args()
    if args.replicas > 1 and args.store != "postgres":
        ap.error("--replicas needs --store postgres (replicas share one store)")
    global CACHE_LINE
    CACHE_LINE = f", cache_size: {args.cache_size}" if args.cache_size else ""
    ensure_tools()
    if args.binary:
        BINARY[0] = os.path.abspath(args.binary)
    else:
        subprocess.run(["cargo", "build", "--release", "--bin", "grantd"], cwd=ROOT, check=True)
    threading.Thread(target=Server(("127.0.0.1", PORTS["fake"]), Fake).serve_forever, daemon=True).start()
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        store_line = "store: { path: scale.db }"
        if args.store == "postgres":
            schema = f"scale_{n}_{int(time.time())}"
            store_line = f"store: {{ url: 'postgres://postgres@127.0.0.1:5432/test', schema: {schema} }}"
        rows.append(one_size(n, args, store_line))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n| N ({args.store}) | idle RSS at 1 s / 10 s | import/s | RSS after import | RSS after traffic | RSS restarted, after traffic | requests spread | p50/p99 spread (ms) | p50/p99 one (ms) | CPU per idle scan | due refreshes/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        s, o = r["p50_p99_ms_spread"], r["p50_p99_ms_one"]
        print(f"| {r['n']:,} | {r['idle_rss_1s_mib']:.1f} / {r['idle_rss_mib']:.1f} MiB | {r['import_per_s']:,.0f} | {r['rss_after_import_mib']:.1f} MiB | "
              f"{r['rss_after_traffic_mib']:.1f} MiB | {r['rss_restarted_after_traffic_mib']:.1f} MiB | {s.get('requests', 0):,} | {s.get('50%', 0):.2f} / {s.get('99%', 0):.2f} | "
              f"{o.get('50%', 0):.2f} / {o.get('99%', 0):.2f} | {r['idle_cpu_ms_per_scan']:.1f} ms | "
              f"{', '.join(str(d) for d in r['due_refresh_per_s'])}"
              + (f" (fleet of {args.replicas}: {', '.join(str(d) for d in r['due_refresh_per_s_fleet'])})"
                 if "due_refresh_per_s_fleet" in r else "") + " |")


if __name__ == "__main__":
    main()
