#!/usr/bin/env python3
"""Where pass-through CPU goes: instructions per request of grantd and nginx under callgrind.

Usage: python3 bench/profile.py [--requests 20000] [--top 25]

CPU time on a shared 2-core VM moves by ±15% between runs; instruction counts do not (callgrind
counts them, whatever else the machine does). Both proxies run as one process with one worker
(nginx `master_process off`, grantd `workers: 1`) in front of the same upstream
(examples/fake_provider.rs); counters are zeroed after a warm-up and dumped after a fixed number
of requests (wrk), so start-up is excluded. Prints instructions per request, the ratio, and
grantd's most expensive functions (inclusive and self) from callgrind_annotate.
Dumps are kept as $TMPDIR/grantd-profile-{nginx,grantd}.callgrind for callgrind_annotate.
"""
import argparse, glob, os, re, shutil, signal, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from proxy import BENCH_KEY, ensure_tools, wait_http  # noqa: E402

PORTS = {"upstream": 19960, "nginx": 19961, "grantd": 19962}


def load(url, requests):
    """wrk until `requests` answered; returns the count (wrk is duration-based: 8 connections
    for a second at a time until the total is reached)."""
    done = 0
    while done < requests:
        out = subprocess.run(["wrk", "-t1", "-c8", "-d1s", url], capture_output=True, text=True).stdout
        done += int(re.search(r"(\d+) requests in", out).group(1))
    return done


def measured(name, cmd, url, work, requests):
    out = f"{work}/{name}.callgrind"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                             "--dump-instr=no", "--collect-atstart=yes", *cmd],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(url, timeout=120)
    load(url, 500)  # warm-up: connections, caches, lazy statics
    subprocess.run(["callgrind_control", "--zero", str(proc.pid)], capture_output=True, check=True)
    n = load(url, requests)
    subprocess.run(["callgrind_control", "--dump", str(proc.pid)], capture_output=True, check=True)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    dumps = sorted(glob.glob(f"{out}.*"), key=os.path.getmtime)
    dump = [d for d in dumps if os.path.getsize(d) > 0][0]
    kept = os.path.join(tempfile.gettempdir(), f"grantd-profile-{name}.callgrind")
    shutil.copy(dump, kept)
    dump = kept
    total = 0
    for line in open(dump):
        if line.startswith("summary:") or line.startswith("totals:"):
            total = int(line.split()[1])
            break
    return total / n, dump, n


def sampled(release, work, top):
    """User and kernel time together: perf's cpu-clock samples of grantd (one worker) under wrk."""
    if not shutil.which("perf"):
        print("perf not installed: no sampled profile (apt-get install linux-perf)")
        return
    proc = subprocess.Popen([f"{release}/grantd", "serve", "--config", f"{work}/grantd.yaml"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{PORTS['grantd']}/plain/bench/json"
    wait_http(url)
    load(url, 2000)
    data = f"{work}/perf.data"
    perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g", "-p", str(proc.pid),
                             "-o", data, "--", "sleep", "8"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(["wrk", "-t1", "-c8", "-d8s", url], capture_output=True)
    perf.wait()
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    for sort, title in (("dso", "by object"), ("symbol", "by function")):
        out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", sort, "--stdio"],
                             capture_output=True, text=True).stdout
        rows = [l for l in out.splitlines() if re.match(r"^\s+[\d.]+%", l)]
        print(f"grantd sampled with perf (cpu-clock, user + kernel), self time {title}:")
        for l in rows[:top]:
            print("  " + re.sub(r"\s+", " ", l.strip())[:150])
        print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--target-dir", default=os.path.join(ROOT, "target"),
                    help="use the release build there as it is (e.g. one built with other profile settings)")
    args = ap.parse_args()
    ensure_tools()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is needed (apt-get install valgrind)")
    if args.target_dir == ap.get_default("target_dir"):
        subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "grantd", "--example", "fake_provider"],
                       cwd=ROOT, check=True)
    release = os.path.join(args.target_dir, "release")
    work = tempfile.mkdtemp(prefix="grantd-profile-")
    up = f"127.0.0.1:{PORTS['upstream']}"
    upstream = subprocess.Popen([f"{release}/examples/fake_provider", up], stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://{up}/bench/json")
        os.makedirs(f"{work}/tmp")
        os.makedirs(f"{work}/rules")
        open(f"{work}/nginx.conf", "w").write(
            f"master_process off; daemon off; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx.err warn;\n"
            f"events {{ worker_connections 1024; }}\nhttp {{ access_log off; client_body_temp_path {work}/tmp;\n"
            f"  proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp; uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;\n"
            f"  upstream up {{ server {up}; keepalive 64; }}\n  server {{ listen 127.0.0.1:{PORTS['nginx']};\n"
            f"    location / {{ proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n")
        open(f"{work}/grantd.yaml", "w").write(
            f"listen: 127.0.0.1:{PORTS['grantd']}\nworkers: 1\nrules_dir: rules\nstore: {{ path: g.db }}\n"
            f"encryption: {{ key: {BENCH_KEY} }}\nintegrations:\n  plain: {{ base_url: 'http://{up}' }}\n")
        os.chdir(work)
        nginx = measured("nginx", ["nginx", "-c", f"{work}/nginx.conf", "-p", work],
                         f"http://127.0.0.1:{PORTS['nginx']}/bench/json", work, args.requests)
        grantd = measured("grantd", [f"{release}/grantd", "serve", "--config", f"{work}/grantd.yaml"],
                          f"http://127.0.0.1:{PORTS['grantd']}/plain/bench/json", work, args.requests)
        print(f"instructions per request (callgrind, one worker each, {nginx[2]:,} / {grantd[2]:,} requests)")
        print(f"  nginx   {nginx[0]:>10,.0f}")
        print(f"  grantd  {grantd[0]:>10,.0f}   {grantd[0] / nginx[0]:.2f}x nginx\n")
        out = subprocess.run(["callgrind_annotate", "--inclusive=yes", grantd[1]], capture_output=True, text=True).stdout
        rows = [l for l in out.splitlines() if re.match(r"^\s*[\d,]+ \(", l)]
        print(f"grantd under callgrind, top {args.top} (inclusive, % of user-space instructions in the window):")
        for l in rows[: args.top]:
            m = re.match(r"^\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*)$", l)
            if m:
                fn = re.sub(r"^\S+:", "", m.group(3))[:150]
                print(f"  {m.group(2):>6}%  {fn}")
        print()
        sampled(release, work, args.top)
    finally:
        upstream.send_signal(signal.SIGTERM)
        upstream.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
