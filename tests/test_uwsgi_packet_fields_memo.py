"""uwsgi packets remember the last request's encoded fields: a request must never get
another's, whether its fields differ, or the same list changed after it was encoded."""

from __future__ import annotations

from gantry.front.upstream_request import connection_vars, uwsgi_packet
from gantry.protocol.http1 import RequestHead
from gantry.protocol.uwsgi import decode_vars


def packet_vars(head: RequestHead) -> dict[bytes, bytes]:
    packet = uwsgi_packet(connection_vars("127.0.0.1", "5000", "80"), head, "/p", "", 0, False)
    return dict(decode_vars(packet[4:]))


def head_with(fields: list[tuple[bytes, bytes]]) -> RequestHead:
    head = RequestHead()
    head.method, head.target, head.path = "GET", b"/p", b"/p"
    head.headers = fields
    return head


def test_two_requests_in_a_row_get_their_own_fields() -> None:
    first = packet_vars(head_with([(b"Host", b"a.example"), (b"Cookie", b"session=alice")]))
    second = packet_vars(head_with([(b"Host", b"b.example"), (b"Cookie", b"session=bob")]))
    again = packet_vars(head_with([(b"Host", b"a.example"), (b"Cookie", b"session=alice")]))
    assert first[b"HTTP_COOKIE"] == again[b"HTTP_COOKIE"] == b"session=alice"
    assert (second[b"HTTP_COOKIE"], second[b"SERVER_NAME"]) == (b"session=bob", b"b.example")
    assert first == again


def test_a_list_changed_in_place_after_encoding_is_encoded_again() -> None:
    fields = [(b"Host", b"h"), (b"Authorization", b"Bearer one")]
    assert packet_vars(head_with(fields))[b"HTTP_AUTHORIZATION"] == b"Bearer one"
    fields[1] = (b"Authorization", b"Bearer two")
    fields.append((b"Content-Type", b"text/plain"))
    changed = packet_vars(head_with(fields))
    assert changed[b"HTTP_AUTHORIZATION"] == b"Bearer two"
    assert changed[b"CONTENT_TYPE"] == b"text/plain"


def test_fields_a_connection_field_names_are_left_out_every_time() -> None:
    fields = [(b"Host", b"h"), (b"Connection", b"x-secret"), (b"X-Secret", b"1")]
    for _ in range(2):
        encoded = packet_vars(head_with(list(fields)))
        assert b"HTTP_X_SECRET" not in encoded and b"HTTP_CONNECTION" not in encoded
