"""
The Go HTTPS server and client of tests/support/go/gotls (crypto/tls, net/http: HTTP/2 by ALPN),
built from source with the Debian Go toolchain, standard library only: GOPROXY=off, no modules,
the build cache in a temporary folder. Built once per test module (a few seconds).
"""
import os
import subprocess

from tests.support.http_apps import Child

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go", "gotls")


def build(folder, stripped=False, pie=False):
    """
    Build the program into folder; the executable's path. stripped: without a symbol table
    (-ldflags=-s -w); pie: position-independent (ELF type DYN, as distributions often build Go).
    """
    out = os.path.join(folder, "gotls" + ("-stripped" if stripped else "") + ("-pie" if pie else ""))
    env = dict(os.environ, GOPROXY="off", GO111MODULE="off", GOFLAGS="", CGO_ENABLED="0",
               GOCACHE=os.path.join(folder, "gocache"), GOPATH=os.path.join(folder, "gopath"))
    flags = (["-ldflags=-s -w"] if stripped else []) + (["-buildmode=pie"] if pie else [])
    subprocess.run(["go", "build", *flags, "-o", out, "."], cwd=SOURCE, env=env, check=True, capture_output=True,
                   timeout=600)
    return out


def server(binary, certificate):
    """(Child, port) of the Go HTTPS server (HTTP/2 and HTTP/1.1 by ALPN) with certificate=(cert, key)."""
    child = Child([binary, "server", *certificate], stdout=subprocess.PIPE, text=True)
    return child, int(child.proc.stdout.readline())


def start_client(binary, urls, proto, wait=False):
    """The Go client requesting urls in order on one connection, HTTP/2 (proto 2) or HTTP/1.1 only (1)."""
    return subprocess.Popen([binary, "client", f"-proto={proto}", *(["-wait"] if wait else []), *urls],
                            stdin=subprocess.PIPE if wait else None, stdout=subprocess.PIPE, text=True)


def client_results(proc, go=False):
    """(pid, ["STATUS PROTO" per url]) once the client is done (told to start first with go)."""
    out, _ = proc.communicate("go\n" if go else None, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"Go client failed with exit code {proc.returncode}: {out}")
    return proc.pid, [line for line in out.splitlines() if line != "ready"]


def run_client(binary, urls, proto):
    return client_results(start_client(binary, urls, proto))
