"""An SMTP server on loopback for Paygent's tests (aiosmtpd, the reference asyncio SMTP server), that keeps every
mail it takes and lists them over HTTP.

SMTP on 127.0.0.1 at a free port; GET /mails on the HTTP port lists [{from, to, subject, body}] in arrival order
(`body` the decoded text). Output: one JSON line on stdout, {smtp_port, url}, once both listen.
"""

import email
import email.policy
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller

MAILS = []
LOCK = threading.Lock()


class Keep:
    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        part = message.get_body(preferencelist=("plain",))
        with LOCK:
            MAILS.append({
                "from": envelope.mail_from,
                "to": envelope.rcpt_tos,
                "subject": str(message["subject"]),
                "body": part.get_content() if part else "",
            })
        return "250 kept"


class Listing(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/mails":
            self.send_error(404)
            return
        with LOCK:
            body = json.dumps(MAILS).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    port = free_port()
    controller = Controller(Keep(), hostname="127.0.0.1", port=port)
    controller.start()
    http = ThreadingHTTPServer(("127.0.0.1", 0), Listing)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    print(json.dumps({"smtp_port": port, "url": f"http://127.0.0.1:{http.server_address[1]}"}), flush=True)
    sys.stdin.read()
    controller.stop()


if __name__ == "__main__":
    main()
