#!/usr/bin/env python3
"""A tiny HTTPS server on 127.0.0.1 for docker_check: the upstream the fetch effe calls from its
container. Answers every GET with 200 `upstream over TLS ok`; prints `listening PORT` once bound.

    tls_upstream.py CERT KEY            (port chosen by the kernel)

Python 3.11 stdlib; ends on SIGTERM (docker_check ends it by PID).
"""

import http.server
import ssl
import sys

BODY = b"upstream over TLS ok"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


def main():
    cert, key = sys.argv[1], sys.argv[2]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
