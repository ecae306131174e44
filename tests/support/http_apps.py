"""
Support for the eBPF HTTP tests and bench/ebpf (no tests here): real HTTP servers and clients
in child processes, because the agent's kernel filter hides everything the test process itself
does (it is the agent: TELEGEN_PID).

- python_server(): a ThreadingHTTPServer (HTTP/1.1, keep-alive) with /ok, /missing, /boom,
  /echo (POST, answers the body size), /big/<n> (n body bytes, written in several writes).
- nginx(): nginx-light on a free port with the same answers plus a sendfile'd static file (HTTP/1.x,
  or h2c with prior knowledge).
- run_client(): http.client in a child process making the requests of a plan.
- self_signed(): a certificate and key for the HTTPS variants of all three (tls=(cert, key)
  for the servers, tls=True for the client, which then trusts any certificate).
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

SERVER = textwrap.dedent(r'''
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def _answer(self, code, body):
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                for i in range(0, len(body), 65536):
                    self.wfile.write(body[i:i + 65536])

        def do_GET(self):
            if self.path.startswith("/big/"):
                return self._answer(200, b"x" * int(self.path[5:]))
            code = {"/missing": 404, "/boom": 500}.get(self.path.split("?")[0], 200)
            self._answer(code, b"hello\n")

        do_HEAD = do_GET
        do_DELETE = do_GET

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer(201 if self.path == "/create" else 200, str(len(body)).encode())

        do_PUT = do_POST

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if len(sys.argv) == 3:                       # certificate and key: HTTPS
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[1], sys.argv[2])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()
''')

CLIENT = textwrap.dedent(r'''
    import http.client, json, ssl, sys
    from concurrent.futures import ThreadPoolExecutor

    plan = json.loads(sys.argv[1])
    port, concurrency = plan["port"], plan.get("concurrency", 1)
    if plan.get("wait"):                         # started early: go when told (a line on stdin)
        print("ready", flush=True)
        sys.stdin.readline()

    def connect():
        if plan.get("tls"):
            return http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ssl._create_unverified_context())
        return http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def run(reqs):
        out = []
        conn = None
        for r in reqs:
            if conn is None:
                conn = connect()
            headers = dict(r.get("headers", {}))
            if not r.get("keepalive", True):
                headers["Connection"] = "close"
            body = r.get("body")
            conn.request(r["method"], r["path"], body=body.encode() if body is not None else None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out.append([resp.status, len(data)])
            if not r.get("keepalive", True):
                conn.close()
                conn = None
        if conn is not None:
            conn.close()
        return out

    groups = [plan["requests"][i::concurrency] for i in range(concurrency)]
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(run, groups))
    print(json.dumps(results))
''')

NGINX_CONF = """
user root;
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port}{listen_options};
        location = /ok {{ return 200 "hello\\n"; }}
        location = /missing {{ return 404; }}
        location = /boom {{ return 500; }}
        location /static/ {{ alias {tmp}/static/; }}
        location / {{ root {tmp}/static; }}
    }}
}}
"""


def free_port():
    """A TCP port free on 127.0.0.1 right now (bind port 0, read it, release it)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A child process stopped by its PID (never by name)."""

    def __init__(self, args, **kwargs):
        self.proc = subprocess.Popen(args, **kwargs)
        self.pid = self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()


def self_signed(folder):
    """(certificate, key) files for CN=localhost made by `openssl req` in folder."""
    cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def python_server(tls=None):
    """(Child, port) of the Python test server; HTTPS with tls=(certificate, key)."""
    child = Child([sys.executable, "-c", SERVER, *(tls or ())], stdout=subprocess.PIPE, text=True)
    port = int(child.proc.stdout.readline())
    return child, port


def nginx(tmp, port=None, static_bytes=1 << 20, http2=False, tls=None):
    """(Child, port) of nginx (one worker, in the foreground) serving tmp/static (a file `big.bin` of static_bytes);
    with http2, the port speaks h2c with prior knowledge only (nginx does not do the h2c upgrade), or h2 over
    TLS when tls=(certificate, key) is given too; HTTPS with tls."""
    port = port or free_port()
    os.makedirs(os.path.join(tmp, "static"), exist_ok=True)
    with open(os.path.join(tmp, "static", "big.bin"), "wb") as f:
        f.write(b"z" * static_bytes)
    with open(os.path.join(tmp, "static", "index.html"), "wb") as f:
        f.write(b"<html>hello</html>\n")
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        options = (" ssl" if tls else "") + (" http2" if http2 else "")
        if tls:
            options += ";\n        ssl_certificate {};\n        ssl_certificate_key {}".format(*tls)
        f.write(NGINX_CONF.format(tmp=tmp, port=port, listen_options=options))
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    child = Child([binary, "-c", conf, "-e", os.path.join(tmp, "error.log")], stderr=subprocess.DEVNULL)
    return child, port


def wait_listening(port, timeout=10.0):
    """Block until something accepts on 127.0.0.1:port (used before the reactor matters)."""
    import socket
    import time
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def start_client(port, requests, concurrency=1, tls=False, wait=False, env=None):
    """The client running the plan in a child process (HTTPS with tls); with wait it prints "ready" and waits for a line on stdin."""
    plan = json.dumps({"port": port, "requests": requests, "concurrency": concurrency, "tls": tls, "wait": wait})
    return subprocess.Popen([sys.executable, "-c", CLIENT, plan], stdin=subprocess.PIPE if wait else None,
                            stdout=subprocess.PIPE, text=True, env=env)


def client_results(proc, go=False):
    """Wait for a start_client() child (telling it to go first); (pid, [[status, body_len] per request per worker])."""
    out, _ = proc.communicate("go\n" if go else None, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"client failed with exit code {proc.returncode}")
    return proc.pid, json.loads(out.splitlines()[-1])


def run_client(port, requests, concurrency=1, tls=False):
    """Run the plan in a child process (HTTPS with tls); returns (pid, [[status, body_len] per request per worker])."""
    return client_results(start_client(port, requests, concurrency, tls))


def nginx_fixture(http2):
    """A module-scoped pytest fixture: the port of an nginx (h2c prior knowledge with http2) for the module."""
    import pytest

    @pytest.fixture(scope="module")
    def port(tmp_path_factory):
        child, port = nginx(str(tmp_path_factory.mktemp("nginx")), http2=http2)
        try:
            wait_listening(port)
            yield port
        finally:
            child.stop()
    return port
