#!/usr/bin/env python3
"""HTTP benchmark: direct vs nginx vs grantd pass-through vs grantd with rules, in one run.

Usage: python3 bench/proxy.py [--seconds 10] [--connections 32]

Installs wrk and nginx from Debian if missing, builds grantd and the fake provider in release
mode, then for each target runs wrk against a 1 KiB JSON response on 127.0.0.1 and reports
requests/s, p50/p99 latency, CPU microseconds per request of the serving process(es)
(utime+stime from /proc, so the load generator's own CPU is excluded) and their context
switches per request (all threads). Ratios are against
nginx and against grantd pass-through measured in the same run: trust them over absolutes.
"""
import argparse, glob, os, re, shutil, signal, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PORTS = {"upstream": 19900, "nginx": 19901, "pass": 19902, "rule": 19903, "slack": 19904, "bare": 19905, "affine": 19907, "admin": 19906}
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
BENCH_KEY = "YmVuY2gta2V5LWJlbmNoLWtleS1iZW5jaC1rZXktISE="  # 32 bytes, benchmark only

ONE_RULE = """integration: one
base_url: http://127.0.0.1:1
rules:
  - name: token-expired
    match: { status: [200], content_type: json }
    expr: |
      body.ok = false and body.error = "token_expired"
        ? { "status": 401, "action": "refresh", "error": body.error }
"""


def ensure_tools():
    missing = [p for p, b in (("wrk", "wrk"), ("nginx", "nginx")) if not shutil.which(b) and not os.path.exists(f"/usr/sbin/{b}")]
    if missing:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except FileNotFoundError:
            pass
    return total


def switches(pids):
    """Context switches (voluntary + involuntary) of every thread of `pids`: each one is a
    thread that went to sleep or was preempted, which is where the kernel's share goes."""
    total = 0
    for pid in pids:
        for status in glob.glob(f"/proc/{pid}/task/*/status"):
            try:
                for line in open(status):
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
            except FileNotFoundError:
                pass
    return total


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]
    except FileNotFoundError:
        return []


def wait_http(url, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"nothing answers {url}")


def to_ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(url, seconds, connections, pids, headers=()):
    extra = [a for h in headers for a in ("-H", h)]
    subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", *extra, url], capture_output=True)  # warm-up
    before, switched = cpu_ticks(pids), switches(pids)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url],
                         capture_output=True, text=True, check=True).stdout
    cpu_us = (cpu_ticks(pids) - before) * TICK_US
    switched = switches(pids) - switched
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
        "p99": to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
        "cpu_us": cpu_us / requests,
        "switches": switched / requests,
        "bad": (int(non2xx.group(1)) if non2xx else 0, errors.group(1) if errors else ""),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    args = ap.parse_args()
    ensure_tools()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "grantd", "--example", "fake_provider", "--example", "bare_proxy", "--example", "affine_proxy"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="grantd-bench-")
    procs = []
    try:
        up = f"127.0.0.1:{PORTS['upstream']}"
        procs.append(subprocess.Popen([f"{ROOT}/target/release/examples/fake_provider", up], stderr=subprocess.DEVNULL))
        wait_http(f"http://{up}/bench/json")

        os.makedirs(f"{work}/tmp")
        with open(f"{work}/nginx.conf", "w") as f:
            f.write(f"""worker_processes 2; daemon off; pid {work}/nginx.pid; error_log {work}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp;
  fastcgi_temp_path {work}/tmp; uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
  upstream up {{ server {up}; keepalive 64; }}
  server {{ listen 127.0.0.1:{PORTS['nginx']};
    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }} }} }}
""")
        nginx = subprocess.Popen(["nginx", "-c", f"{work}/nginx.conf", "-p", work], stderr=subprocess.DEVNULL)
        procs.append(nginx)
        wait_http(f"http://127.0.0.1:{PORTS['nginx']}/bench/json")

        os.makedirs(f"{work}/rules")
        with open(f"{work}/rules/one.yaml", "w") as f:
            f.write(ONE_RULE)
        shutil.copy(f"{ROOT}/rules/slack.yaml", f"{work}/rules/slack.yaml")
        # The shared base, as shipped: inherited by `one` and `slack` after their own rules.
        shutil.copy(f"{ROOT}/rules/_base.yaml", f"{work}/rules/_base.yaml")
        bare = subprocess.Popen([f"{ROOT}/target/release/examples/bare_proxy", f"127.0.0.1:{PORTS['bare']}", up])
        procs.append(bare)
        affine = subprocess.Popen([f"{ROOT}/target/release/examples/affine_proxy", f"127.0.0.1:{PORTS['affine']}", up])
        procs.append(affine)
        grantd = {}
        for name in ("pass", "rule", "slack"):
            cfg = f"{work}/{name}.yaml"
            with open(cfg, "w") as f:
                f.write(f"listen: 127.0.0.1:{PORTS[name]}\nrules_dir: rules\nstore: {{ path: {name}.db }}\n"
                        f"encryption: {{ key: {BENCH_KEY} }}\nintegrations:\n"
                        f"  plain: {{ base_url: 'http://{up}' }}\n  one: {{ base_url: 'http://{up}' }}\n"
                        f"  slack: {{ base_url: 'http://{up}' }}\n")
                if name == "pass":
                    f.write(f"admin: {{ listen: 127.0.0.1:{PORTS['admin']}, token: bench }}\n")
            env = dict(os.environ, GRANTD_LOG="warn")
            p = subprocess.Popen([f"{ROOT}/target/release/grantd", "serve", "--config", cfg], env=env, stderr=subprocess.DEVNULL)
            procs.append(p)
            grantd[name] = p
        wait_http(f"http://127.0.0.1:{PORTS['pass']}/plain/bench/json")
        put = urllib.request.Request(
            f"http://127.0.0.1:{PORTS['admin']}/v1/connections/bench_1", method="PUT",
            headers={"authorization": "Bearer bench"},
            data=b'{"integration":"plain","credentials":{"access_token":"bench-token","expires_in":86400}}')
        urllib.request.urlopen(put, timeout=5).read()
        targets = [
            ("direct", f"http://{up}/bench/json", [procs[0].pid]),
            ("nginx", f"http://127.0.0.1:{PORTS['nginx']}/bench/json", [nginx.pid, *children(nginx.pid)]),
            ("bare hyper proxy", f"http://127.0.0.1:{PORTS['bare']}/plain/bench/json", [bare.pid]),
            ("affine hyper proxy", f"http://127.0.0.1:{PORTS['affine']}/plain/bench/json", [affine.pid]),
            ("grantd pass-through", f"http://127.0.0.1:{PORTS['pass']}/plain/bench/json", [grantd["pass"].pid]),
            ("grantd + connection", f"http://127.0.0.1:{PORTS['pass']}/plain/bench/json", [grantd["pass"].pid], ("Grantd-Connection: bench_1",)),
            ("grantd 1 rule", f"http://127.0.0.1:{PORTS['rule']}/one/bench/json", [grantd["rule"].pid]),
            ("grantd slack rules (7)", f"http://127.0.0.1:{PORTS['slack']}/slack/bench/json", [grantd["slack"].pid]),
        ]
        targets = [t if len(t) == 4 else (*t, ()) for t in targets]
        for _, url, _, _ in targets:
            wait_http(url)
        print(f"wrk -t1 -c{args.connections} -d{args.seconds}s, 1 KiB JSON, {os.cpu_count()} cores shared by load, proxy and upstream\n")
        print(f"{'target':<24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>11} {'vs nginx':>9} {'vs pass':>8} {'switches/req':>13}")
        results = {}
        for name, url, pids, headers in targets:
            r = wrk(url, args.seconds, args.connections, pids, headers)
            results[name] = r
            vs_nginx = r["cpu_us"] / results["nginx"]["cpu_us"] if "nginx" in results else float("nan")
            vs_pass = r["cpu_us"] / results["grantd pass-through"]["cpu_us"] if "grantd pass-through" in results else float("nan")
            bad = "" if r["bad"] == (0, "") else f"  (non-2xx {r['bad'][0]} {r['bad'][1]})"
            print(f"{name:<24} {r['rps']:>9.0f} {r['p50']:>8.3f} {r['p99']:>8.3f} {r['cpu_us']:>11.1f} {vs_nginx:>9.2f} {vs_pass:>8.2f} {r['switches']:>13.2f}{bad}")
        print("\nCPU µs/req counts only the serving process(es): the upstream for 'direct', nginx's workers, grantd.")
        print("'bare hyper proxy' is examples/bare_proxy.rs: hyper server + hyper-util client with no grantd logic (the floor).")
        print("'affine hyper proxy' is examples/affine_proxy.rs: one upstream connection per client connection, same task.")
        print("'grantd + connection' names a connection on every request: token looked up in memory and injected.")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
