import json

import pytest

from mixlm.schemas import DEFAULT_MAX_TEXT_BYTES, ItemEvent, ValidationError, parse_item_event
from mixlm.schemas.item_event import MAX_TITLE_CHARS, decode_json, display_title, rejection_reason

VALID = {"item_id": "job-1", "op": "upsert", "version": 3, "title": "Data engineer", "text": "Build pipelines.",
         "fields": {"city": "Oslo"}, "event_time": "2026-11-22T10:30:00Z"}


def reason(raw, **kwargs) -> str:
    """The one-line reason a bad event is rejected with."""
    with pytest.raises(ValidationError) as caught:
        parse_item_event(raw, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    assert message == f"{caught.value.field}: {caught.value.reason}"
    return message


def encoded(data: dict) -> bytes:
    return json.dumps(data).encode()


def test_valid_upsert_round_trips_through_json():
    event = parse_item_event(encoded(VALID))
    assert event == ItemEvent("job-1", "upsert", 3, "Data engineer", "Build pipelines.", {"city": "Oslo"},
                              "2026-11-22T10:30:00Z")
    assert not event.is_delete
    assert parse_item_event(event.to_json()) == event
    assert parse_item_event(event.to_json().encode()) == event
    assert json.loads(event.to_json()) == VALID


def test_non_ascii_content_round_trips():
    event = parse_item_event({**VALID, "title": "Ingeniør 数据", "fields": {"by": "Tromsø"}})
    assert parse_item_event(event.to_json().encode("utf-8")) == event


def test_delete_needs_no_text_and_round_trips():
    event = parse_item_event(encoded({"item_id": "job-1", "op": "delete", "version": 9}))
    assert event.is_delete and event.text == "" and event.title == "" and event.fields == {}
    assert json.loads(event.to_json()) == {"item_id": "job-1", "op": "delete", "version": 9}
    assert parse_item_event(event.to_json()) == event


def test_delete_drops_content_it_was_sent_with():
    event = parse_item_event({**VALID, "op": "delete"})
    assert event.is_delete and event.text == "" and event.event_time == VALID["event_time"]
    assert "text" not in json.loads(event.to_json())


def test_version_reason_names_the_value():
    assert reason({**VALID, "version": "12a"}) == "version: must be an integer >= 0, got '12a'"
    assert "version: must be an integer >= 0, got '12a'" in reason(b'{"item_id": "a", "op": "upsert", '
                                                                   b'"version": "12a", "text": "t"}')


@pytest.mark.parametrize("version", [-1, True, False, 1.5, 3.0, "3", None, [3], 2**63])
def test_bad_versions(version):
    assert reason({**VALID, "version": version}).startswith("version: must be an integer >= 0, got ")


@pytest.mark.parametrize("version", [0, 2**63 - 1])
def test_version_bounds_are_accepted(version):
    assert parse_item_event({**VALID, "version": version}).version == version


@pytest.mark.parametrize("field", ["item_id", "op", "version", "text"])
def test_missing_fields(field):
    data = {k: v for k, v in VALID.items() if k != field}
    message = reason(data)
    assert message.startswith(f"{field}: ")
    assert reason(encoded(data)) == message


def test_title_is_optional():
    data = {k: v for k, v in VALID.items() if k != "title"}
    assert parse_item_event(data).title == ""


@pytest.mark.parametrize(("patch", "field"), [
    ({"item_id": 7}, "item_id"),
    ({"item_id": None}, "item_id"),
    ({"item_id": ""}, "item_id"),
    ({"item_id": "a\x00b"}, "item_id"),
    ({"item_id": "x" * 401}, "item_id"),
    ({"item_id": "é" * 201}, "item_id"),  # 402 bytes: the limit counts UTF-8 bytes, not characters
    ({"op": "merge"}, "op"),
    ({"op": "UPSERT"}, "op"),
    ({"op": None}, "op"),
    ({"title": ["a"]}, "title"),
    ({"text": 5}, "text"),
    ({"fields": ["a"]}, "fields"),
    ({"fields": "city=Oslo"}, "fields"),
    ({"fields": {"city": 3}}, "fields.city"),
    ({"fields": {"city": None}}, "fields.city"),
    ({"event_time": "yesterday"}, "event_time"),
    ({"event_time": "2026-11-22T10:30:00"}, "event_time"),  # no zone
    ({"event_time": "2026-13-22T10:30:00Z"}, "event_time"),
    ({"event_time": 1763807400}, "event_time"),
    ({"title": " ", "text": ""}, "text"),
])
def test_wrong_types_and_values_name_the_field(patch, field):
    assert reason({**VALID, **patch}).startswith(f"{field}: ")


def test_item_id_limits():
    assert "NUL" in reason({**VALID, "item_id": "a\x00b"})
    assert "401 bytes" in reason({**VALID, "item_id": "x" * 401})
    assert parse_item_event({**VALID, "item_id": "x" * 400}).item_id == "x" * 400
    assert parse_item_event({**VALID, "item_id": "é" * 200}).item_id == "é" * 200


def test_unknown_op_lists_the_choices_and_shows_the_value():
    message = reason({**VALID, "op": "merge"})
    assert "upsert, delete" in message and "'merge'" in message


def test_wrong_type_shows_type_and_value():
    message = reason({**VALID, "text": 5})
    assert message == "text: must be a string, got int 5"


@pytest.mark.parametrize(("raw", "offset"), [
    (b'\xff{"item_id": "a", "op": "upsert", "version": 1, "text": "t"}', 0),
    (b'{"item_id": "a", "text": "\xff"}', 26),
])
def test_non_utf8_bytes(raw, offset):
    message = reason(raw)
    assert message.startswith("value: is not valid UTF-8")
    assert "0xff" in message and f"offset {offset}" in message


@pytest.mark.parametrize("patch", [
    {"text": "\ud800"},
    {"title": "bad \udcff title"},
    {"item_id": "\udc80"},
    {"fields": {"\ud800": "v"}},
    {"fields": {"city": "\ud800"}},
])
def test_lone_surrogates_from_json_escapes_are_rejected(patch):
    # Valid UTF-8 bytes and valid JSON, but the decoded string cannot be encoded back to UTF-8.
    raw = json.dumps({**VALID, **patch}).encode()
    field = next(iter(patch))
    assert reason(raw).startswith(f"{field}")


def test_non_string_field_keys_are_rejected():
    assert reason({**VALID, "fields": {1: "one"}}).startswith("fields: ")


@pytest.mark.parametrize("raw", [b"{not json", b"", b"{\"item_id\": \"a\",}", "{\"item_id\""])
def test_invalid_json(raw):
    message = reason(raw)
    assert message.startswith("value: is not valid JSON") and "line 1" in message


DEEP_OBJECT = '{"a":' * 1000 + "1" + "}" * 1000  # about 7 KB
DEEP_ARRAY = "[" * 1000 + "]" * 1000  # 2 KB
HUGE_INT = "1" * 5000  # past Python's int-string limit (4,300 digits)


@pytest.mark.parametrize("line", [DEEP_OBJECT, DEEP_ARRAY, '{"item_id": "a", "op": "upsert", "version": 1, "text": '
                                  '"t", "extra": ' + DEEP_ARRAY + "}"])
def test_nesting_beyond_the_recursion_limit_is_a_validation_error(line):
    assert reason(line) == "value: is nested too deeply to decode"
    assert reason(line.encode()) == "value: is nested too deeply to decode"


@pytest.mark.parametrize("template", [
    '{"item_id": "a", "op": "upsert", "version": %s, "text": "t"}',
    '{"item_id": "a", "op": "upsert", "version": 1, "title": %s, "text": "t"}',
    '{"item_id": "a", "op": "upsert", "version": 1, "text": "t", "unknown": [%s]}',
])
def test_integer_literals_past_the_int_string_limit_are_a_validation_error(template):
    line = template % HUGE_INT
    assert reason(line.encode()) == "value: holds an integer literal longer than 4,300 digits"


def test_a_huge_integer_in_a_decoded_object_is_named_without_printing_it():
    assert reason({**VALID, "version": 10**5000}) == "version: must be an integer >= 0, got <int too large to show>"


def test_decode_json_is_the_one_safe_decoder():
    assert decode_json(b'{"a": [1]}') == {"a": [1]} and decode_json("[]") == []
    for raw in (b"\xff", b"{", DEEP_ARRAY, HUGE_INT):
        with pytest.raises(ValidationError) as caught:
            decode_json(raw)
        assert caught.value.field == "value"


def test_rejection_reason_is_one_line_for_any_error():
    assert rejection_reason(ValidationError("op", "must be a string")) == "op: must be a string"
    assert rejection_reason(KeyError("item_id")) == "cannot parse: KeyError: 'item_id'"
    assert rejection_reason(RuntimeError("first line\nsecond line")) == "cannot parse: RuntimeError: first line"
    assert rejection_reason(RuntimeError()) == "cannot parse: RuntimeError"


@pytest.mark.parametrize(("raw", "kind"), [(b"[1, 2]", "list"), (b'"text"', "str"), (b"42", "int"),
                                           (b"null", "NoneType"), ([VALID], "list")])
def test_not_a_json_object(raw, kind):
    assert reason(raw) == f"value: must be a JSON object, got {kind}"


def test_oversized_text_beyond_configured_limit():
    big = {**VALID, "text": "x" * 5_000}
    assert parse_item_event(big, max_text_bytes=10_000).text == "x" * 5_000
    message = reason(big, max_text_bytes=1_000)
    assert message.startswith("text: ") and "1,000" in message
    size = len(("Data engineer" + "x" * 5_000 + "city" + "Oslo").encode())
    assert f"{size:,} bytes" in message


def test_size_limit_counts_utf8_bytes_of_all_content():
    event = {**VALID, "title": "", "text": "ø" * 50, "fields": {}}  # 100 bytes
    assert parse_item_event(event, max_text_bytes=100).text == "ø" * 50
    assert reason(event, max_text_bytes=99).startswith("text: ")
    with_fields = {**event, "fields": {"k": "v"}}  # 102 bytes
    assert reason(with_fields, max_text_bytes=101).startswith("text: ")


def test_default_size_limit():
    assert parse_item_event({**VALID, "text": "x" * (DEFAULT_MAX_TEXT_BYTES // 2)})
    assert reason({**VALID, "text": "x" * DEFAULT_MAX_TEXT_BYTES}).startswith("text: ")


def test_deletes_are_not_size_checked():
    event = parse_item_event({**VALID, "op": "delete", "text": "x" * 5_000}, max_text_bytes=10)
    assert event.is_delete


def test_event_time_with_offset_is_accepted():
    assert parse_item_event({**VALID, "event_time": "2026-11-22T12:30:00+02:00"}).event_time.endswith("+02:00")
    assert parse_item_event({**VALID, "event_time": None}).event_time is None


def test_unknown_keys_are_ignored():
    assert parse_item_event({**VALID, "source": "crm", "extra": {"nested": [1]}}) == parse_item_event(VALID)


def test_first_offending_field_is_named():
    # item_id is checked before version: one reason, not a list.
    assert reason({**VALID, "item_id": "", "version": -1}).startswith("item_id: ")


def test_content_hash_follows_content_only():
    base = parse_item_event(VALID)
    assert len(base.content_hash()) == 64
    for patch in ({"version": 99}, {"item_id": "job-2"}, {"event_time": "2027-01-01T00:00:00Z"},
                  {"source": "crm"}):
        assert parse_item_event({**VALID, **patch}).content_hash() == base.content_hash(), patch
    # Field order does not matter.
    two = {**VALID, "fields": {"a": "1", "b": "2"}}
    assert parse_item_event(two).content_hash() == parse_item_event(
        {**VALID, "fields": {"b": "2", "a": "1"}}).content_hash()
    changed = [{"text": "other"}, {"title": "other"}, {"fields": {"city": "Bergen"}}, {"fields": {}},
               {"fields": {"town": "Oslo"}}, {"title": "Data engineerBuild pipelines.", "text": ""}]
    hashes = {parse_item_event({**VALID, **patch}).content_hash() for patch in changed}
    assert len(hashes) == len(changed) and base.content_hash() not in hashes


def test_display_title_is_one_bounded_line():
    assert display_title("  Vitamin D\n\tand   fractures ", "text") == "Vitamin D and fractures"
    assert display_title("", "  The start of the text\nwhen there is no title") == \
        "The start of the text when there is no title"
    assert ItemEvent("i", "upsert", 1, " ", "only text").display_title() == "only text"
    exact = "x" * MAX_TITLE_CHARS
    assert display_title(exact) == exact
    for char in ("a", "é", "€", "𝔘"):  # 1 to 4 bytes in UTF-8: cut on a character, never inside one
        long = display_title(char * 500)
        assert len(long) == MAX_TITLE_CHARS and long.endswith("…") and long[:-1] == char * (MAX_TITLE_CHARS - 1)
        assert long.encode("utf-8").decode("utf-8") == long
    assert display_title("word " * 100).endswith("word…")  # no space before the ellipsis
