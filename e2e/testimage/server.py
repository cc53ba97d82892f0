#!/usr/bin/env python3
"""A tiny pod for the pod runner's own scenario (image e2e-test:latest).

Serves on $POD_IP:8080:
  GET /healthz, /readyz   200 (readyz 503 once /lifecycle/prestop ran)
  GET /lifecycle/prestop  records the call in $DATA/events.log, then 200
  GET /whoami             "$POD_NAME $POD_NAMESPACE $POD_IP"
  GET /data               the events log of this pod's volume
  GET /resolve?name=N     the address N resolves to inside the pod
  GET /api                the API server's answer to reading this pod with the
                          pod's service-account token (status line, then body)
On start and on SIGTERM it appends a line to $DATA/events.log, so a scenario
can see that the volume outlived the process and in which order things ran.
"""
import http.server
import os
import signal
import socket
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request

DATA = os.environ.get("DATA", "/data")
POD = os.environ.get("POD_NAME", "?")
IP = os.environ["POD_IP"]
stopping = False


def record(event):
    with open(os.path.join(DATA, "events.log"), "a") as f:
        f.write(f"{POD} {event}\n")
        f.flush()
        os.fsync(f.fileno())


class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, code, body):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        global stopping
        url = urllib.parse.urlparse(self.path)
        if url.path == "/healthz":
            self.reply(200, "ok\n")
        elif url.path == "/readyz":
            self.reply(503 if stopping else 200, "stopping\n" if stopping else "ok\n")
        elif url.path == "/lifecycle/prestop":
            stopping = True
            record("prestop")
            self.reply(200, "{}\n")
        elif url.path == "/whoami":
            self.reply(200, f"{POD} {os.environ.get('POD_NAMESPACE', '?')} {IP}\n")
        elif url.path == "/data":
            with open(os.path.join(DATA, "events.log")) as f:
                self.reply(200, f.read())
        elif url.path == "/resolve":
            name = urllib.parse.parse_qs(url.query).get("name", [""])[0]
            try:
                self.reply(200, socket.gethostbyname(name) + "\n")
            except OSError as e:
                self.reply(404, f"{name}: {e}\n")
        elif url.path == "/api":
            sa = "/var/run/secrets/kubernetes.io/serviceaccount"
            with open(f"{sa}/token") as f:
                token = f.read()
            with open(f"{sa}/namespace") as f:
                ns = f.read()
            host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
            req = urllib.request.Request(f"https://{host}:{port}/api/v1/namespaces/{ns}/pods/{POD}",
                                         headers={"Authorization": f"Bearer {token}"})
            ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                    self.reply(200, f"{r.status}\n{r.read().decode()}")
            except urllib.error.HTTPError as e:
                self.reply(200, f"{e.code}\n{e.read().decode()}")
        else:
            self.reply(404, "not found\n")

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))


def on_term(signum, frame):
    record("sigterm")
    sys.exit(0)


signal.signal(signal.SIGTERM, on_term)
record("start")
server = http.server.ThreadingHTTPServer((IP, 8080), Handler)
print(f"{POD} serving on {IP}:8080", flush=True)
server.serve_forever()
