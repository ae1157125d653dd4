"""STOW-RS push of a SEG to a tiny real HTTP receiver: what goes over the wire, and how refusals and an
unreachable endpoint come back (as outcomes, never as exceptions)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from python_multipart.multipart import parse_options_header

from tests.support.stack import free_port
from workers.push import push_seg


class _Receiver(BaseHTTPRequestHandler):
    answer: ClassVar[tuple[int, dict[str, Any]]] = (200, {})
    received: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.received.append((self.path, dict(self.headers.items()), self.rfile.read(length)))
        status, body = self.answer
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Receiver.received.clear()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/dicom-web/"
    finally:
        server.shutdown()


def test_a_pushed_seg_arrives_as_one_application_dicom_part(receiver: str, tmp_path: Path) -> None:
    seg = tmp_path / "labels.seg.dcm"
    seg.write_bytes(b"\0" * 128 + b"DICM" + b"seg body")
    _Receiver.answer = (200, {"00081199": {"vr": "SQ", "Value": [{}]}})
    outcome = push_seg(receiver, seg, "tok-1", timeout_s=10)
    assert outcome.ok and outcome.http_status == 200
    ((path, headers, body),) = _Receiver.received
    assert path == "/dicom-web/studies" and headers["Authorization"] == "Bearer tok-1"
    media, options = parse_options_header(headers["Content-Type"])
    assert media == b"multipart/related" and options[b"type"] == b"application/dicom"
    boundary = options[b"boundary"]
    head = b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"
    assert body.startswith(head + seg.read_bytes())
    assert body.endswith(b"\r\n--" + boundary + b"--\r\n")


def test_refusals_and_unreachable_endpoints_are_outcomes(receiver: str, tmp_path: Path) -> None:
    seg = tmp_path / "labels.seg.dcm"
    seg.write_bytes(b"x")
    refused = {"00081198": {"vr": "SQ", "Value": [{"00081197": {"vr": "US", "Value": [0x0122]}}]}}
    _Receiver.answer = (409, refused)
    outcome = push_seg(receiver, seg, None, timeout_s=10)
    assert not outcome.ok and outcome.http_status == 409 and "0x0122" in outcome.detail
    assert "Authorization" not in _Receiver.received[0][1]
    _Receiver.answer = (202, refused)  # some stored, some failed: not a success for a one-part push
    assert not push_seg(receiver, seg, None, timeout_s=10).ok
    gone = push_seg(f"http://127.0.0.1:{free_port()}", seg, None, timeout_s=5)
    assert not gone.ok and gone.http_status is None and "could not be reached" in gone.detail
