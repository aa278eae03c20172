#!/usr/bin/env python3
"""What OpenTelemetry traces cost: grantd pass-through with traces off, then on (every request
sampled, exported over OTLP/HTTP to a local receiver that accepts and discards), in one run.

Usage: python3 bench/traces.py [--seconds 10] [--connections 32] [--debug]

`--debug` uses the debug build (no release build needed; only the ratio means anything then).

Reuses bench/proxy.py's tools (wrk, CPU from /proc). Reports requests/s, p50/p99 and CPU µs per
request of grantd, the receiver's batches and bytes, and whether the batch processor had to drop
spans (its queue is bounded; a request never waits for the exporter).
"""
import argparse, http.server, os, shutil, signal, subprocess, sys, tempfile, threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy  # noqa: E402  (bench/proxy.py)

PORTS = {"upstream": 19940, "off": 19941, "on": 19942, "collector": 19943}


class Receiver(http.server.BaseHTTPRequestHandler):
    batches = 0
    bytes = 0

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        Receiver.batches += 1
        Receiver.bytes += len(body)
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args()
    proxy.ensure_tools()
    profile = [] if args.debug else ["--release"]
    subprocess.run(["cargo", "build", *profile, "--quiet", "--bin", "grantd", "--example", "fake_provider"],
                   cwd=proxy.ROOT, check=True)
    target = f"{proxy.ROOT}/target/{'debug' if args.debug else 'release'}"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", PORTS["collector"]), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    work = tempfile.mkdtemp(prefix="grantd-traces-bench-")
    procs, logs = [], {}
    try:
        up = f"127.0.0.1:{PORTS['upstream']}"
        procs.append(subprocess.Popen([f"{target}/examples/fake_provider", up],
                                      stderr=subprocess.DEVNULL))
        proxy.wait_http(f"http://{up}/bench/json")
        os.makedirs(f"{work}/rules")
        grantd = {}
        for name in ("off", "on"):
            telemetry = f"telemetry: {{ otlp_endpoint: 'http://127.0.0.1:{PORTS['collector']}' }}\n" if name == "on" else ""
            with open(f"{work}/{name}.yaml", "w") as f:
                f.write(f"listen: 127.0.0.1:{PORTS[name]}\nrules_dir: rules\nstore: {{ path: {name}.db }}\n"
                        f"encryption: {{ key: {proxy.BENCH_KEY} }}\n{telemetry}"
                        f"integrations:\n  plain: {{ base_url: 'http://{up}' }}\n")
            logs[name] = open(f"{work}/{name}.log", "w")
            env = dict(os.environ, GRANTD_LOG="warn")
            p = subprocess.Popen([f"{target}/grantd", "serve", "--config", f"{work}/{name}.yaml"],
                                 env=env, stderr=logs[name])
            procs.append(p)
            grantd[name] = p
            proxy.wait_http(f"http://127.0.0.1:{PORTS[name]}/plain/bench/json")
        print(f"wrk -t1 -c{args.connections} -d{args.seconds}s, 1 KiB JSON, {os.cpu_count()} cores shared by load, grantd and upstream\n")
        print(f"{'grantd pass-through':<22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'CPU µs/req':>11} {'vs off':>7}")
        results = {}
        for name in ("off", "on"):
            r = proxy.wrk(f"http://127.0.0.1:{PORTS[name]}/plain/bench/json", args.seconds, args.connections,
                          [grantd[name].pid])
            results[name] = r
            vs = r["cpu_us"] / results["off"]["cpu_us"]
            print(f"{'traces ' + name:<22} {r['rps']:>9.0f} {r['p50']:>8.3f} {r['p99']:>8.3f} {r['cpu_us']:>11.1f} {vs:>7.2f}")
        grantd["on"].send_signal(signal.SIGTERM)
        grantd["on"].wait(timeout=30)
        with open(f"{work}/on.log") as f:
            dropped = "dropped a Span" in f.read()
        print(f"\nreceiver: {Receiver.batches} OTLP batches, {Receiver.bytes / 1e6:.1f} MB "
              f"({Receiver.bytes / max(Receiver.batches, 1) / 1024:.0f} KiB each); "
              f"spans dropped by a full queue: {'yes' if dropped else 'no'}")
        print("Traces on: 2 spans per request (request, upstream), every request sampled.")
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
