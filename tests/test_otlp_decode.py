"""OTLP protobuf/JSON decoding into the neutral span model."""

from __future__ import annotations

import gzip
import math
import re
import zlib

import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from otlp_samples import SPEC_EXAMPLE_JSON, gzip_bomb, many_spans_request, sdk_request, sdk_spans, to_otlp_json
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from trifle_otel.errors import OTLPDecodeError, OTLPTooLarge, TrifleError
from trifle_otel.ingest.otlp_decode import decode_protobuf, decode_request, inflate
from trifle_otel.ingest.otlp_json import decode_json
from trifle_otel.ingest.sdk import from_readable_span

TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")


def _request_with_span(**fields) -> tuple[ExportTraceServiceRequest, object]:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "svc"
    ss = rs.scope_spans.add()
    ss.scope.name = "lib"
    span = ss.spans.add()
    span.trace_id = fields.pop("trace_id", TRACE)
    span.span_id = fields.pop("span_id", bytes.fromhex("eee19b7ec3c1b174"))
    span.name = fields.pop("name", "work")
    span.start_time_unix_nano = 1_000
    span.end_time_unix_nano = 3_000
    for key, value in fields.items():
        setattr(span, key, value)
    return request, span


# -- protobuf ------------------------------------------------------------------------------


def test_protobuf_from_the_sdk_exporter_equals_the_in_process_conversion():
    spans = sdk_spans(jobs=2, steps=3)
    decoded = decode_protobuf(encode_spans(spans).SerializeToString())
    assert decoded.rejected_spans == 0 and decoded.message == ""
    by_id = {s.span_id: s for s in decoded.spans}
    assert len(by_id) == len(spans) == 8
    for sdk_span in spans:
        expected = from_readable_span(sdk_span)
        assert by_id[expected.span_id] == expected
    roots = [s for s in decoded.spans if s.parent_span_id is None]
    assert {s.kind for s in roots} == {"consumer"}
    assert roots[0].attributes["trifle.tags"] == ("a", "b")
    failed = [s for s in decoded.spans if s.status == "error"]
    assert [s.status_message for s in failed] == ["below cost", "below cost"]


def test_resource_attributes_are_one_dict_per_resource_spans():
    decoded = decode_protobuf(sdk_request(jobs=3, steps=2).SerializeToString())
    assert len({id(s.resource) for s in decoded.spans}) == 1
    assert decoded.spans[0].resource["service.name"] == "pricing-worker"
    assert {s.scope for s in decoded.spans} == {"pricing.jobs"}


def test_every_attribute_value_type():
    request, span = _request_with_span()

    def add(key: str) -> AnyValue:
        kv = span.attributes.add()
        kv.key = key
        return kv.value

    add("s").string_value = "text"
    add("b").bool_value = True
    add("i").int_value = -(2**63)
    add("d").double_value = 2.5
    add("bytes").bytes_value = b"\x00\xff"
    array = add("array").array_value
    array.values.add().string_value = "x"
    array.values.add().int_value = 7
    array.values.add().array_value.values.add().bool_value = False
    kvlist = add("kvlist").kvlist_value
    inner = kvlist.values.add()
    inner.key, inner.value.double_value = "ratio", 0.5
    nested = kvlist.values.add()
    nested.key = "nested"
    nested_kv = nested.value.kvlist_value.values.add()
    nested_kv.key, nested_kv.value.string_value = "deep", "yes"
    add("empty")  # an AnyValue with nothing set: OTLP's null
    add("empty_array").array_value.SetInParent()
    (decoded,) = decode_protobuf(request.SerializeToString()).spans
    assert decoded.attributes == {
        "s": "text",
        "b": True,
        "i": -(2**63),
        "d": 2.5,
        "bytes": b"\x00\xff",
        "array": ("x", 7, (False,)),
        "kvlist": {"ratio": 0.5, "nested": {"deep": "yes"}},
        "empty": None,
        "empty_array": (),
    }


def test_events_links_status_kind_and_times():
    request, span = _request_with_span(kind=5, end_time_unix_nano=0)
    span.status.code, span.status.message = 2, "timeout"
    event = span.events.add()
    event.name, event.time_unix_nano = "exception", 2_000
    kv = event.attributes.add()
    kv.key, kv.value.string_value = "exception.type", "ValueError"
    link = span.links.add()
    link.trace_id, link.span_id = bytes(range(16)), bytes(range(1, 9))
    kv = link.attributes.add()
    kv.key, kv.value.string_value = "type", "enqueued-by"
    span.links.add()  # empty: nothing to follow, left out
    (decoded,) = decode_protobuf(request.SerializeToString()).spans
    assert decoded.kind == "consumer"
    assert (decoded.status, decoded.status_message) == ("error", "timeout")
    assert decoded.end_ns == decoded.start_ns == 1_000  # an unset end time: zero length, never "running"
    assert [(e.name, e.time_ns, dict(e.attributes)) for e in decoded.events] == [("exception", 2_000, {"exception.type": "ValueError"})]
    assert [(l.trace_id, l.span_id, dict(l.attributes)) for l in decoded.links] == [
        ("000102030405060708090a0b0c0d0e0f", "0102030405060708", {"type": "enqueued-by"})
    ]


@pytest.mark.parametrize(
    "flags, remote, known",
    [
        (0x100 | 0x200, True, True),  # the exporter says: remote parent
        (0x100, False, True),  # the exporter says: local parent
        (0x000, False, False),  # the exporter does not say
        (0x200, False, False),  # is_remote without has_is_remote means nothing
    ],
)
def test_remote_parent_flags(flags, remote, known):
    request, _ = _request_with_span(parent_span_id=bytes.fromhex("eee19b7ec3c1b173"), flags=flags | 0x01)
    (decoded,) = decode_protobuf(request.SerializeToString()).spans
    assert (decoded.parent_span_id, decoded.parent_remote, decoded.parent_remote_known) == ("eee19b7ec3c1b173", remote, known)
    assert decoded.is_local_root is remote


def test_a_span_without_parent_knows_it_is_a_root():
    request, _ = _request_with_span(flags=0)
    (decoded,) = decode_protobuf(request.SerializeToString()).spans
    assert decoded.parent_span_id is None and decoded.parent_remote_known and decoded.is_local_root


def test_all_zero_parent_id_means_no_parent():
    request, _ = _request_with_span(parent_span_id=bytes(8))
    (decoded,) = decode_protobuf(request.SerializeToString()).spans
    assert decoded.parent_span_id is None


def test_spans_with_empty_or_zero_ids_are_rejected_alone():
    request, _ = _request_with_span()
    spans = request.resource_spans[0].scope_spans[0].spans
    bad = spans.add()
    bad.name, bad.span_id = "no trace", b"\x01" * 8
    zero = spans.add()
    zero.name, zero.trace_id, zero.span_id = "zero span", TRACE, bytes(8)
    decoded = decode_protobuf(request.SerializeToString())
    assert [s.name for s in decoded.spans] == ["work"]
    assert decoded.rejected_spans == 2
    assert decoded.message == "2 span(s) rejected; the first: span 'no trace' has an empty or all-zero traceId"


def test_wrong_id_length_refuses_the_request_and_says_where():
    request, _ = _request_with_span(trace_id=b"\x01\x02\x03\x04")
    with pytest.raises(OTLPDecodeError, match=r"resourceSpans\[0\]\.scopeSpans\[0\]\.spans\[0\]: traceId is 4 bytes, expected 16"):
        decode_protobuf(request.SerializeToString())
    request, _ = _request_with_span(parent_span_id=b"\x01\x02")
    with pytest.raises(OTLPDecodeError, match="parentSpanId is 2 bytes, expected 8"):
        decode_protobuf(request.SerializeToString())


def test_truncated_or_foreign_bodies_are_refused_with_a_message():
    body = sdk_request().SerializeToString()
    with pytest.raises(OTLPDecodeError, match="not a protobuf ExportTraceServiceRequest .*truncated"):
        decode_protobuf(body[:-7])
    with pytest.raises(OTLPDecodeError, match="application/json"):
        decode_protobuf(to_otlp_json(sdk_request()))
    assert issubclass(OTLPDecodeError, TrifleError)


def test_empty_request_is_no_spans():
    assert decode_protobuf(b"").spans == []
    assert decode_json(b"{}").spans == []
    assert decode_json(b'{"resourceSpans": []}').spans == []


def test_invalid_utf8_in_protobuf_strings_is_repaired_not_refused():
    request, span = _request_with_span(name="price \u00e9")
    kv = span.attributes.add()
    kv.key, kv.value.string_value = "customer.name", "Caf\u00e9"
    other = request.resource_spans[0].scope_spans[0].spans.add()
    other.CopyFrom(span)
    other.span_id, other.name = b"\x02" * 8, "fine"
    body = request.SerializeToString()
    # "é" is c3 a9 in UTF-8; a lone \xe9 is Latin-1, as a C or Ruby client might send it.
    body = body.replace("price \u00e9".encode(), b"price \xe9x").replace("Caf\u00e9".encode(), b"Caf\xe9!")
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    decoded = decode_protobuf(body)
    assert [s.name for s in decoded.spans] == ["price \ufffdx", "fine"]
    assert [s.attributes["customer.name"] for s in decoded.spans] == ["Caf\ufffd!", "Caf\ufffd!"]
    assert decoded.rejected_spans == 0
    assert decoded.message == "3 string value(s) were not valid UTF-8; invalid bytes were replaced with U+FFFD"


def test_100k_spans_decode_in_one_go():
    body = many_spans_request(100_000).SerializeToString()
    decoded = decode_protobuf(body)
    assert len(decoded.spans) == 100_000
    assert decoded.spans[-1].parent_span_id == format(99_901, "016x")


# -- JSON ---------------------------------------------------------------------------------------


def test_the_specification_example():
    decoded = decode_json(SPEC_EXAMPLE_JSON)
    (span,) = decoded.spans
    assert span.trace_id == "5b8efff798038103d269b633813fc60c"
    assert span.span_id == "eee19b7ec3c1b174"
    assert span.parent_span_id == "eee19b7ec3c1b173"
    assert (span.start_ns, span.end_ns) == (1544712660000000000, 1544712661000000000)
    assert span.kind == "server"
    assert span.attributes == {"my.span.attr": "some value"}
    assert span.resource == {"service.name": "my.service"}
    assert span.scope == "my.library"
    assert (span.parent_remote, span.parent_remote_known) == (False, False)


def test_times_as_numbers_and_original_field_names():
    document = orjson.loads(SPEC_EXAMPLE_JSON)
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["startTimeUnixNano"] = 1544712660000000000
    span["end_time_unix_nano"] = span.pop("endTimeUnixNano")
    span["parent_span_id"] = span.pop("parentSpanId")
    span["kind"] = "SPAN_KIND_CONSUMER"
    span["status"] = {"code": "STATUS_CODE_ERROR", "message": "boom"}
    span["somethingNew"] = {"ignored": True}
    document["resource_spans"] = document.pop("resourceSpans")
    (decoded,) = decode_json(orjson.dumps(document)).spans
    assert (decoded.start_ns, decoded.end_ns) == (1544712660000000000, 1544712661000000000)
    assert decoded.parent_span_id == "eee19b7ec3c1b173"
    assert (decoded.kind, decoded.status, decoded.status_message) == ("consumer", "error", "boom")


def test_json_and_protobuf_of_the_same_request_decode_equal():
    request = sdk_request(jobs=2, steps=3)
    assert decode_json(to_otlp_json(request)).spans == decode_protobuf(request.SerializeToString()).spans


def test_json_attribute_values():
    values = [
        {"key": "s", "value": {"stringValue": "x"}},
        {"key": "i_str", "value": {"intValue": "9007199254740993"}},
        {"key": "i_num", "value": {"intValue": 42}},
        {"key": "d", "value": {"doubleValue": 1.5}},
        {"key": "d_int", "value": {"doubleValue": 2}},
        {"key": "nan", "value": {"doubleValue": "NaN"}},
        {"key": "inf", "value": {"doubleValue": "-Infinity"}},
        {"key": "b", "value": {"boolValue": False}},
        {"key": "bytes", "value": {"bytesValue": "AP8="}},
        {"key": "array", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "1"}, {}]}}},
        {"key": "kvlist", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"boolValue": True}}]}}},
        {"key": "empty", "value": {}},
        {"key": "missing"},
        {"key": "unknown_type", "value": {"futureValue": 1}},
    ]
    body = _json_span({"attributes": values})
    (span,) = decode_json(body).spans
    attrs = dict(span.attributes)
    assert math.isnan(attrs.pop("nan"))
    assert attrs == {
        "s": "x",
        "i_str": 9007199254740993,
        "i_num": 42,
        "d": 1.5,
        "d_int": 2.0,
        "inf": -math.inf,
        "b": False,
        "bytes": b"\x00\xff",
        "array": ("a", 1, None),
        "kvlist": {"k": True},
        "empty": None,
        "missing": None,
        "unknown_type": None,
    }
    assert type(attrs["d_int"]) is float


def test_json_events_links_and_remote_flags():
    body = _json_span(
        {
            "parentSpanId": "00000000000000AB",
            "flags": 0x301,
            "events": [{"name": "retry", "timeUnixNano": "5", "attributes": [{"key": "n", "value": {"intValue": "2"}}]}],
            "links": [{"traceId": "0102030405060708090A0B0C0D0E0F10", "spanId": "0102030405060708", "attributes": []}, {}],
        }
    )
    (span,) = decode_json(body).spans
    assert (span.parent_span_id, span.parent_remote, span.parent_remote_known) == ("00000000000000ab", True, True)
    assert [(e.name, e.time_ns, e.attributes) for e in span.events] == [("retry", 5, {"n": 2})]
    assert [(l.trace_id, l.span_id) for l in span.links] == [("0102030405060708090a0b0c0d0e0f10", "0102030405060708")]


def test_base64_ids_are_refused_with_a_hint():
    body = _json_span({"traceId": "W47/95gDgQPSabYzgT/GDA==", "spanId": "7uGbfsPBsXQ="})
    with pytest.raises(OTLPDecodeError) as caught:
        decode_json(body)
    assert str(caught.value) == (
        "resourceSpans[0].scopeSpans[0].spans[0].traceId: traceId 'W47/95gDgQPSabYzgT/GDA==' is not 32 hex characters "
        "(OTLP/JSON uses hex ids, not base64)"
    )
    with pytest.raises(OTLPDecodeError, match=r"spanId: spanId 'AAECAwQFBgc=' is not 16 hex characters"):
        decode_json(_json_span({"spanId": "AAECAwQFBgc="}))
    with pytest.raises(OTLPDecodeError, match="link's traceId 'xyz' is not 32 hex"):
        decode_json(_json_span({"links": [{"traceId": "xyz", "spanId": "0102030405060708"}]}))


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"resourceSpans": [', "not valid JSON"),
        (b"[1, 2]", re.escape("must be a JSON object with 'resourceSpans' (got an array)")),
        (b'{"resourceSpans": {"a": 1}}', re.escape("resourceSpans: 'resourceSpans' must be a JSON array (got an object)")),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [7]}]}]}', r"spans\[0\]: must be a JSON object \(got a number\)"),
    ],
)
def test_malformed_json_is_refused_with_where_and_what(body, message):
    with pytest.raises(OTLPDecodeError, match=message):
        decode_json(body)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"startTimeUnixNano": "soon"}, r"spans\[0\]\.startTimeUnixNano: startTimeUnixNano must be an integer"),
        ({"name": 5}, r"spans\[0\]\.name: name must be a string \(got a number\)"),
        ({"attributes": [{"key": "n", "value": {"intValue": "1.5x"}}]}, "attribute 'n': intValue must be an integer"),
        ({"attributes": [{"key": "b", "value": {"bytesValue": "!!"}}]}, "attribute 'b': bytesValue '!!' is not base64"),
        ({"attributes": [{"value": {"stringValue": "x"}}]}, "attributes must be"),
        ({"kind": [2]}, r"spans\[0\]\.kind: unexpected JSON"),
        ({"events": {"name": "x"}}, r"spans\[0\]\.events: must be a JSON array"),
    ],
)
def test_wrong_json_types_are_refused_with_the_field(fields, message):
    with pytest.raises(OTLPDecodeError, match=message):
        decode_json(_json_span(fields))


def test_json_spans_with_empty_ids_are_rejected_alone():
    document = orjson.loads(_json_span({}))
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    spans.append({"name": "no ids"})
    spans.append({"name": "zero", "traceId": "0" * 32, "spanId": "0102030405060708"})
    decoded = decode_json(orjson.dumps(document))
    assert len(decoded.spans) == 1 and decoded.rejected_spans == 2
    assert "span 'no ids' has an empty or all-zero traceId" in decoded.message


def test_invalid_utf8_and_lone_surrogates_in_json_are_repaired():
    body = _json_span({"name": "caf\u00e9"}).replace("caf\u00e9".encode(), b"caf\xe9")
    decoded = decode_json(body)
    assert decoded.spans[0].name == "caf\ufffd"
    assert "not valid UTF-8" in decoded.message
    body = _json_span({"name": "PLACEHOLDER"}).replace(b"PLACEHOLDER", b"half \\ud83d pair")
    decoded = decode_json(body)
    assert decoded.spans[0].name == "half \ufffd pair"
    assert "lone UTF-16 surrogates" in decoded.message
    decoded.spans[0].name.encode("utf-8")  # safe to write anywhere


def test_decode_request_dispatches_on_content_type():
    assert decode_request(SPEC_EXAMPLE_JSON, "application/json").spans[0].kind == "server"
    assert len(decode_request(sdk_request().SerializeToString(), "application/x-protobuf").spans) == 8


def _json_span(fields: dict) -> bytes:
    span = {"traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174", "name": "s",
            "startTimeUnixNano": "1", "endTimeUnixNano": "2"}
    span.update(fields)
    return orjson.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})


# -- inflating request bodies ------------------------------------------------------------------


def test_inflate_gzip_deflate_and_concatenated_members():
    data = b"otlp " * 1000
    assert inflate(data, "", 10_000) == data
    assert inflate(gzip.compress(data), "gzip", 10_000) == data
    assert inflate(zlib.compress(data), "deflate", 10_000) == data
    assert inflate(gzip.compress(data[:10]) + gzip.compress(data[10:]), "gzip", 10_000) == data


def test_inflate_refuses_truncated_or_foreign_bodies():
    with pytest.raises(OTLPDecodeError, match="the gzip request body is truncated"):
        inflate(gzip.compress(b"x" * 5000)[:-12], "gzip", 10_000)
    with pytest.raises(OTLPDecodeError, match=r"not valid gzip \(Content-Encoding: gzip\)"):
        inflate(b"plain text", "gzip", 10_000)


def test_inflate_stops_at_the_limit_without_inflating_the_rest(monkeypatch):
    bomb = gzip_bomb(1024)  # 1 GiB of zeros
    produced = [0]
    real = zlib.decompressobj

    class Counting:
        def __init__(self, *args):
            self._inner = real(*args)

        def decompress(self, data, max_length=0):
            out = self._inner.decompress(data, max_length)
            produced[0] += len(out)
            return out

        def __getattr__(self, name):
            return getattr(self._inner, name)

    monkeypatch.setattr(zlib, "decompressobj", Counting)
    with pytest.raises(OTLPTooLarge, match=r"inflates to more than the limit of 16,777,216 bytes \(1,061,908 bytes of gzip"):
        inflate(bomb, "gzip", 16 << 20)
    assert produced[0] == (16 << 20) + 1
    with pytest.raises(OTLPTooLarge, match="the request body is 2,000 bytes, over the limit of 1,000 bytes"):
        inflate(bytes(2000), "", 1000)
