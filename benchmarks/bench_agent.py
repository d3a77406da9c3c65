"""Is ``blindbox serve`` a fast enough reverse proxy? The agent against nginx, side by side in one run.

Run on demand (not part of the test suite; ``.ci/run`` does not run it)::

    python benchmarks/bench_agent.py [--duration 2] [--rounds 3] [--haproxy] [--json OUT]

Needs the Debian packages ``nginx`` (or ``nginx-light``), ``wrk`` and ``util-linux``
(``taskset``); ``--haproxy`` also needs ``haproxy``. It exits with status 2 and a
message naming the missing packages otherwise.

Everything runs on loopback and is started (and stopped, also on Ctrl-C and
SIGTERM) by this script, in a temporary directory:

* **upstream**: nginx serving two static files (1 KiB and 1 MiB) over plain
  HTTP, one worker, ``sendfile``: the fastest neutral upstream at hand, the
  same one behind every proxy. It is also measured directly ("direct"), so
  that each proxy's *added* latency is its p50 minus the direct p50.
* **nginx**: a TLS-terminating reverse proxy (TLS 1.2/1.3, the same kind of key
  as the agent: a P-256 certificate made by the agent's own
  ``TlsIdentity.generate``), keep-alive to the upstream (``keepalive 64``,
  HTTP/1.1), ``X-Forwarded-For``/``-Proto`` set like the agent sets them,
  response buffering in memory only (``proxy_max_temp_file_size 0``: 1 MiB
  bodies are streamed through 64 KiB buffers as the agent streams them, never
  spooled to disk), no access log.
* **agent**: ``blindbox serve --backend simulator`` (no owner policy, so no
  authentication work) with the same upstream.
* **haproxy** (``--haproxy``): HAProxy started with a throwaway placeholder
  certificate (deleted as soon as HAProxy has read it); the benchmark then hands
  it the real certificate and key over its runtime API (``set ssl cert NAME
  <<`` with the PEM payload, ``commit ssl cert NAME``), as an agent
  supervising it would, and checks that the certificate served is the real
  one. ``nbthread`` 1, keep-alive to the upstream (``http-reuse always``).

CPU budget (fairness): the agent is one Python process, so by default each
proxy under test is pinned to CPU 0 (``taskset``) and nginx runs
``worker_processes 1`` (HAProxy ``nbthread 1``); the upstream and the load
generator (``wrk``, one thread) share CPU 1. ``--no-pin`` lets everything
float. On a 2-core machine the load generator can be the bottleneck for the
fastest proxy, so each proxy's CPU time per request (from ``/proc``) is
reported too: that figure does not depend on how fast ``wrk`` is.

Measured: requests/s and p50/p99 latency (``wrk --latency``) for 1 KiB and
1 MiB responses with 1, 16 and 64 connections, every target once per round,
targets in a rotated order each round (interleaved), medians over rounds.
Targets: agent/nginx throughput >= 0.8x (judged at 16 and 64 connections) and
agent/nginx added p50 latency <= 1.5x (judged at 1 connection). ``wrk`` is a
closed loop: with 16 or 64 connections every target is saturated and its p50
is about connections / throughput (Little's law), so a proxy's p50 there says
how fast it is, not what it adds to one request, and may even be below the
direct p50 when the load generator is the bottleneck. The p50 at one
connection is the latency a proxy adds to a request. The load average is
recorded with each sample.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

TARGET_THROUGHPUT = 0.8
TARGET_ADDED_P50 = 1.5
BODIES = {"1k": 1024, "1m": 1024 * 1024}
MEASUREMENT = "ab" * 48
#: program -> the Debian package that provides it
PACKAGES = {"nginx": "nginx (or nginx-light)", "wrk": "wrk", "taskset": "util-linux", "haproxy": "haproxy"}


class BenchError(Exception):
    """Something the benchmark needs did not work; the message says what."""


@dataclass(frozen=True)
class Sample:
    """One ``wrk`` run against one target."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors + non-2xx/3xx responses
    cpu_s: float  # CPU time of the target's processes during the run (0 for "direct")
    load1: float  # 1-minute load average just before the run


# --------------------------------------------------------------------------- processes


class Processes:
    """Every process this benchmark starts, each in its own session; :meth:`stop_all` ends them by id."""

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path, cpu: int | None) -> subprocess.Popen[bytes]:
        if self.pin and cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in reversed(self.started):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.started.clear()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)  # the session (= process group) this script started: nginx's workers too
    except ProcessLookupError:
        pass


def _group_cpu_seconds(pgid: int) -> float:
    """user + system CPU time of every live process in process group ``pgid``."""
    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # fields[0] is field 3 (state): pgrp is field 5
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return ticks / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(what: str, port: int, tls: bool, proc: subprocess.Popen[bytes], log: Path,
               timeout: float = 15) -> None:
    """Wait until ``GET /1k`` and ``GET /1m`` on ``port`` return the whole file."""
    deadline = time.monotonic() + timeout
    context = None
    if tls:  # certificates made by this run (wrk does not verify either)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            for name, size in BODIES.items():
                conn: http.client.HTTPConnection = (
                    http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context) if tls
                    else http.client.HTTPConnection("127.0.0.1", port, timeout=5))
                conn.request("GET", f"/{name}")
                response = conn.getresponse()
                body = response.read()
                conn.close()
                if response.status != 200 or len(body) != size:
                    raise BenchError(f"GET /{name}: {response.status}, {len(body)} bytes")
            return
        except (OSError, http.client.HTTPException, BenchError) as exc:
            last = str(exc)
            time.sleep(0.1)
    raise BenchError(f"{what} not serving on port {port} after {timeout} s ({last}); "
                     f"log: {log.read_text()[-2000:]}")


# --------------------------------------------------------------------------- targets

_NGINX_COMMON = """\
daemon off;
master_process on;
pid {tmp}/{name}.pid;
error_log {tmp}/{name}.error.log warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
"""
_NGINX_TEMP = ("client_body_temp_path {tmp}/{name}-body; proxy_temp_path {tmp}/{name}-proxy; "
               "fastcgi_temp_path {tmp}/{name}-fcgi; uwsgi_temp_path {tmp}/{name}-uwsgi; "
               "scgi_temp_path {tmp}/{name}-scgi;")

UPSTREAM_CONF = _NGINX_COMMON + """\
worker_processes 1;
http {{
  access_log off;
  """ + _NGINX_TEMP + """
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 10000000; keepalive_timeout 75s;
  server {{
    listen 127.0.0.1:{port};
    root {tmp}/www;
    default_type application/octet-stream;
  }}
}}
"""

NGINX_PROXY_CONF = _NGINX_COMMON + """\
worker_processes {workers};
http {{
  access_log off;
  """ + _NGINX_TEMP + """
  tcp_nodelay on;
  keepalive_requests 10000000; keepalive_timeout 75s;
  upstream app {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {tmp}/tls/cert.pem;
    ssl_certificate_key {tmp}/tls/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto https;
      proxy_buffering on; proxy_buffer_size 64k; proxy_buffers 16 64k; proxy_busy_buffers_size 128k;
      proxy_max_temp_file_size 0;
    }}
  }}
}}
"""

HAPROXY_CONF = """\
global
  nbthread 1
  maxconn 4096
  stats socket {tmp}/haproxy.sock mode 600 level admin
  ssl-default-bind-options ssl-min-ver TLSv1.2
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 75s
  option http-keep-alive
frontend fe
  bind 127.0.0.1:{port} ssl crt {placeholder}
  http-request set-header X-Forwarded-Proto https
  option forwardfor
  default_backend app
backend app
  http-reuse always
  server app 127.0.0.1:{upstream} maxconn 64
"""


def _haproxy_command(sock: Path, command: str) -> str:
    """One runtime API command over the stats socket; its whole answer."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(10)
        conn.connect(str(sock))
        conn.sendall(command.encode("ascii") + b"\n")
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _haproxy_load_identity(sock: Path, name: str, cert_pem: bytes, key_pem: bytes) -> None:
    """Replace HAProxy's placeholder certificate ``name`` by ``cert_pem`` and ``key_pem``, from memory."""
    payload = (cert_pem + key_pem).decode("ascii").strip("\n")
    for command, expected in ((f"set ssl cert {name} <<\n{payload}\n", "Transaction created"),
                              (f"commit ssl cert {name}", "Success!")):
        answer = _haproxy_command(sock, command)
        if expected not in answer:
            raise BenchError(f"haproxy runtime API: {command.splitlines()[0]!r} answered {answer.strip()!r}")


class Bench:
    """The targets, started in ``tmp``; :meth:`run` measures them."""

    def __init__(self, args: argparse.Namespace, tmp: Path, procs: Processes) -> None:
        self.args, self.tmp, self.procs = args, tmp, procs
        self.ports: dict[str, int] = {}
        self.pgids: dict[str, int] = {}

    def start(self) -> None:
        from blindbox.server.tls import TlsIdentity

        tmp = self.tmp
        tmp.chmod(0o755)  # nginx's workers run as nobody when started by root: they read www/
        (tmp / "www").mkdir()
        for name, size in BODIES.items():
            (tmp / "www" / name).write_bytes(os.urandom(size))
        (tmp / "tls").mkdir(mode=0o700)
        identity = TlsIdentity.generate(["127.0.0.1"])  # the agent makes its own; this is nginx's
        identity.save(tmp / "tls" / "cert.pem", tmp / "tls" / "key.pem")
        proxy_cpu, load_cpu = 0, 1

        up = self.ports["direct"] = _free_port()
        self._nginx("upstream", UPSTREAM_CONF.format(tmp=tmp, name="upstream", port=up), cpu=load_cpu,
                    tls=False)
        port = self.ports["nginx"] = _free_port()
        conf = NGINX_PROXY_CONF.format(tmp=tmp, name="nginx", port=port, upstream=up,
                                       workers=self.args.nginx_workers)
        self._nginx("nginx", conf, cpu=proxy_cpu, tls=True)
        self._agent(up, proxy_cpu)
        if self.args.haproxy:
            self._haproxy(up, proxy_cpu, identity.cert_pem, identity.key_pem)

    def _nginx(self, name: str, conf: str, cpu: int, tls: bool) -> None:
        path = self.tmp / f"{name}.conf"
        path.write_text(conf)
        log = self.tmp / f"{name}.out"
        proc = self.procs.start(["nginx", "-e", str(self.tmp / f"{name}.error.log"), "-p", str(self.tmp),
                                 "-c", str(path)], log, cpu)
        self.pgids[name] = proc.pid
        _wait_http(name, self.ports["direct" if name == "upstream" else name], tls, proc, log)

    def _agent(self, upstream: int, cpu: int) -> None:
        log = self.tmp / "agent.out"
        proc = self.procs.start([sys.executable, "-m", "blindbox", "serve",
                                 "--upstream", f"http://127.0.0.1:{upstream}", "--listen", "127.0.0.1:0",
                                 "--backend", "simulator", "--measurement", MEASUREMENT,
                                 "--roots-out", str(self.tmp / "roots.pem")], log, cpu)
        self.pgids["agent"] = proc.pid
        deadline = time.monotonic() + 30
        while not (found := re.search(r"listening on https://127\.0\.0\.1:(\d+)", log.read_text())):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"blindbox serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.ports["agent"] = int(found.group(1))
        _wait_http("blindbox serve", self.ports["agent"], True, proc, log)

    def _haproxy(self, upstream: int, cpu: int, cert_pem: bytes, key_pem: bytes) -> None:
        from blindbox.server.tls import TlsIdentity

        port = self.ports["haproxy"] = _free_port()
        # HAProxy 2.6 refuses a TLS bind without a certificate unless strict-sni, which refuses clients
        # that send no SNI (Python sends none for an IP address): start it with a throwaway
        # placeholder, delete that file at once, then swap in the real key over the runtime API.
        placeholder = self.tmp / "placeholder.pem"
        throwaway = TlsIdentity.generate(["placeholder.invalid"])
        placeholder.write_bytes(throwaway.cert_pem + throwaway.key_pem)
        conf = self.tmp / "haproxy.cfg"
        conf.write_text(HAPROXY_CONF.format(tmp=self.tmp, port=port, upstream=upstream,
                                            placeholder=placeholder))
        log = self.tmp / "haproxy.out"
        proc = self.procs.start(["haproxy", "-db", "-f", str(conf)], log, cpu)
        self.pgids["haproxy"] = proc.pid
        sock = self.tmp / "haproxy.sock"
        deadline = time.monotonic() + 15
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"haproxy did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        placeholder.unlink()
        _haproxy_load_identity(sock, str(placeholder), cert_pem, key_pem)
        _wait_http("haproxy", port, True, proc, log)
        served = ssl.get_server_certificate(("127.0.0.1", port))
        if ssl.PEM_cert_to_DER_cert(served) != ssl.PEM_cert_to_DER_cert(cert_pem.decode("ascii")):
            raise BenchError("haproxy still serves the placeholder certificate after the runtime API swap")

    # ----------------------------------------------------------------------- measuring

    def targets(self) -> list[str]:
        return ["direct", "nginx", "agent"] + (["haproxy"] if self.args.haproxy else [])

    def wrk(self, target: str, body: str, connections: int, duration: int) -> Sample:
        scheme = "http" if target == "direct" else "https"
        argv = ["wrk", "-t", str(min(self.args.wrk_threads, connections)), "-c", str(connections),
                "-d", f"{duration}s", "--latency", "--timeout", "10s",
                f"{scheme}://127.0.0.1:{self.ports[target]}/{body}"]
        if self.args.pin:
            argv = ["taskset", "-c", "1", *argv]
        pgid = self.pgids.get(target) if target != "direct" else None
        load1 = os.getloadavg()[0]
        cpu0 = _group_cpu_seconds(pgid) if pgid else 0.0
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"wrk against {target} did not finish within {duration + 30} s") from None
        cpu = (_group_cpu_seconds(pgid) - cpu0) if pgid else 0.0
        if done.returncode != 0:
            raise BenchError(f"wrk failed ({done.returncode}): {(done.stdout + done.stderr).strip()}")
        return _parse_wrk(done.stdout, cpu, load1)

    def run(self) -> dict[str, Any]:
        args = self.args
        configs = [(body, conns) for body in BODIES for conns in args.connections]
        targets = self.targets()
        samples: dict[str, dict[str, list[Sample]]] = {
            f"{body}/{conns}": {t: [] for t in targets} for body, conns in configs}
        for target in targets:  # warm-up: connections, upstream pools, caches; not recorded
            self.wrk(target, "1k", max(args.connections), args.warmup)
        loads = []
        for round_no in range(args.rounds):
            order = targets[round_no % len(targets):] + targets[:round_no % len(targets)]
            loads.append(_uptime())
            print(f"round {round_no + 1}/{args.rounds} ({loads[-1]})", file=sys.stderr, flush=True)
            for body, conns in configs:
                for target in order:
                    samples[f"{body}/{conns}"][target].append(self.wrk(target, body, conns, args.duration))
        return {"samples": samples, "uptime": loads}


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _latency_ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not found:
        raise BenchError(f"wrk: unexpected latency {text!r}")
    return float(found.group(1)) * _UNITS[found.group(2)]


def _parse_wrk(out: str, cpu: float, load1: float) -> Sample:
    def field(pattern: str) -> str:
        found = re.search(pattern, out, re.MULTILINE)
        if not found:
            raise BenchError(f"wrk output without {pattern!r}:\n{out}")
        return found.group(1)

    socket_errors = re.search(r"Socket errors:(.*)$", out, re.MULTILINE)
    errors = sum(int(n) for n in re.findall(r"(\d+)", socket_errors.group(1))) if socket_errors else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Sample(rps=float(field(r"^Requests/sec:\s+([\d.]+)")),
                  p50_ms=_latency_ms(field(r"^\s+50%\s+(\S+)")),
                  p99_ms=_latency_ms(field(r"^\s+99%\s+(\S+)")),
                  requests=int(field(r"^\s+(\d+) requests in")),
                  errors=errors + (int(non2xx.group(1)) if non2xx else 0), cpu_s=cpu, load1=load1)


def _uptime() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f}"


# --------------------------------------------------------------------------- report


def summarise(samples: dict[str, dict[str, list[Sample]]]) -> dict[str, Any]:
    """Medians per config and target, and the agent's (and HAProxy's) ratios against nginx."""
    out: dict[str, Any] = {}
    for config, per_target in samples.items():
        med: dict[str, dict[str, float]] = {}
        for target, runs in per_target.items():
            med[target] = {
                "rps": statistics.median(s.rps for s in runs),
                "p50_ms": statistics.median(s.p50_ms for s in runs),
                "p99_ms": statistics.median(s.p99_ms for s in runs),
                "errors": sum(s.errors for s in runs),
                "cpu_us_per_request": statistics.median(1e6 * s.cpu_s / s.requests if s.requests else 0.0
                                                        for s in runs),
            }
        direct_p50 = med["direct"]["p50_ms"]
        nginx_added = med["nginx"]["p50_ms"] - direct_p50
        ratios = {}
        for proxy in [t for t in med if t not in ("direct", "nginx")]:
            added = med[proxy]["p50_ms"] - direct_p50
            ratios[proxy] = {
                "throughput_vs_nginx": med[proxy]["rps"] / med["nginx"]["rps"],
                "added_p50_ms": added,
                "added_p50_vs_nginx": added / nginx_added if nginx_added > 0 else None,
                "cpu_per_request_vs_nginx": (
                    med[proxy]["cpu_us_per_request"] / med["nginx"]["cpu_us_per_request"]
                    if med["nginx"]["cpu_us_per_request"] else None),
            }
        out[config] = {"median": med, "nginx_added_p50_ms": nginx_added, "ratios": ratios}
    return out


def _verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "n/a"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "NOT met"


def print_table(summary: dict[str, Any], targets: list[str]) -> None:
    print(f"{'body/conns':<11} {'target':<8} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'added p50':>10} "
          f"{'CPU us/req':>11} {'errors':>7}")
    for config, data in summary.items():
        direct_p50 = data["median"]["direct"]["p50_ms"]
        for target in targets:
            m = data["median"][target]
            added = "" if target == "direct" else f"{m['p50_ms'] - direct_p50:.3f}"
            cpu = "" if target == "direct" else f"{m['cpu_us_per_request']:.0f}"
            print(f"{config:<11} {target:<8} {m['rps']:>10.0f} {m['p50_ms']:>9.3f} {m['p99_ms']:>9.3f} "
                  f"{added:>10} {cpu:>11} {m['errors']:>7}")
    print()
    for config, data in summary.items():
        unloaded = config.endswith("/1")
        for proxy, r in data["ratios"].items():
            added = r["added_p50_vs_nginx"]
            added_text = "n/a (nginx adds nothing measurable)" if added is None else f"{added:.2f}x"
            cpu = r["cpu_per_request_vs_nginx"]
            throughput = r["throughput_vs_nginx"]
            throughput_verdict = ("latency-bound, not judged" if unloaded
                                  else f"target >= {TARGET_THROUGHPUT}x: "
                                  f"{_verdict(throughput, TARGET_THROUGHPUT, True)}")
            added_verdict = (f"target <= {TARGET_ADDED_P50}x: {_verdict(added, TARGET_ADDED_P50, False)}"
                             if unloaded else "saturated, not judged")
            print(f"{config:<11} {proxy}/nginx: throughput {throughput:.2f}x ({throughput_verdict}), "
                  f"added p50 {added_text} ({added_verdict}), CPU per request "
                  f"{'n/a' if cpu is None else f'{cpu:.1f}x'}")


def _missing(haproxy: bool, pin: bool) -> list[str]:
    """The Debian packages whose programs are not on PATH (``/usr/sbin`` and ``/sbin`` added to it)."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(path + [d for d in ("/usr/sbin", "/sbin") if d not in path])
    needed = ["nginx", "wrk"] + (["taskset"] if pin else []) + (["haproxy"] if haproxy else [])
    return [PACKAGES[program] for program in needed if shutil.which(program) is None]


def _versions() -> dict[str, str]:
    def first_line(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "absent"
        text = (done.stdout + done.stderr).strip()
        return text.splitlines()[0] if text else "?"
    return {"nginx": first_line(["nginx", "-v"]), "wrk": first_line(["wrk", "-v"]),
            "haproxy": first_line(["haproxy", "-v"]), "openssl": ssl.OPENSSL_VERSION,
            "python": platform.python_version()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=2, help="seconds per wrk run (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of unrecorded warm-up per target")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians reported)")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16, 64],
                        help="wrk connections per config (default 1 16 64; 1 = unloaded latency)")
    parser.add_argument("--wrk-threads", type=int, default=1)
    parser.add_argument("--nginx-workers", type=int, default=1, help="nginx worker_processes (default 1, "
                        "the agent's budget: one process pinned to one CPU)")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin the proxies to CPU 0 and the upstream and wrk to CPU 1")
    parser.add_argument("--haproxy", action="store_true",
                        help="also measure HAProxy given the certificate and key over its runtime API")
    parser.add_argument("--json", metavar="OUT", help="write the results and every sample as JSON")
    args = parser.parse_args()
    if not (1 <= args.duration <= 60 and 1 <= args.warmup <= 10 and 1 <= args.rounds <= 20
            and all(1 <= c <= 64 for c in args.connections) and 1 <= args.wrk_threads <= 16):
        parser.error("expected --duration 1..60, --warmup 1..10, --rounds 1..20, --connections 1..64 "
                     "(the agent admits 64 per client address), --wrk-threads 1..16")
    if args.pin and (os.cpu_count() or 1) < 2:
        parser.error("pinning needs 2 CPUs: pass --no-pin")
    missing = _missing(args.haproxy, args.pin)
    if missing:
        print(f"bench_agent: needs the Debian package(s): {', '.join(missing)} "
              f"(apt-get install {' '.join(p.split()[0] for p in missing)})", file=sys.stderr)
        return 2

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`&`)
    procs = Processes(args.pin)
    started = dt.datetime.now(dt.timezone.utc)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
            bench = Bench(args, Path(tmp), procs)
            try:
                bench.start()
                measured = bench.run()
            finally:
                procs.stop_all()
    except KeyboardInterrupt:
        print("bench_agent: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    except BenchError as exc:
        print(f"bench_agent: {exc}", file=sys.stderr)
        return 1
    summary = summarise(measured["samples"])
    versions = _versions()
    pinning = "pinned: proxy CPU 0, upstream + wrk CPU 1" if args.pin else "not pinned"
    print(f"\n{started:%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, {pinning}, "
          f"nginx worker_processes {args.nginx_workers}, {args.rounds} rounds x {args.duration} s, medians")
    print("; ".join(measured["uptime"]) + f"; after: {_uptime()}")
    print("; ".join(f"{k} {v}" for k, v in versions.items()) + "\n")
    print_table(summary, bench.targets())
    if args.json:
        Path(args.json).write_text(json.dumps({
            "date": started.isoformat(timespec="seconds"), "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "settings": {k: v for k, v in vars(args).items() if k != "json"}, "versions": versions,
            "uptime": measured["uptime"], "summary": summary,
            "samples": {c: {t: [asdict(s) for s in runs] for t, runs in per.items()}
                        for c, per in measured["samples"].items()},
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
