import json

import pytest

from mixlm.schemas import ItemEvent, ValidationError, parse_item_event

VALID = {"item_id": "job-1", "op": "upsert", "version": 3, "title": "Data engineer", "text": "Build pipelines.",
         "fields": {"city": "Oslo"}, "event_time": "2026-11-22T10:30:00Z"}


def reason(raw, **kwargs) -> str:
    with pytest.raises(ValidationError) as caught:
        parse_item_event(raw, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_valid_upsert_round_trips_through_json():
    event = parse_item_event(json.dumps(VALID).encode())
    assert event == ItemEvent("job-1", "upsert", 3, "Data engineer", "Build pipelines.", {"city": "Oslo"},
                              "2026-11-22T10:30:00Z")
    assert parse_item_event(event.to_json()) == event


def test_delete_needs_no_text_and_drops_content():
    event = parse_item_event({"item_id": "job-1", "op": "delete", "version": 9})
    assert event.is_delete and event.text == ""
    assert json.loads(event.to_json()) == {"item_id": "job-1", "op": "delete", "version": 9}


def test_version_reason_names_the_value():
    assert reason({**VALID, "version": "12a"}) == "version: must be an integer >= 0, got '12a'"


@pytest.mark.parametrize("version", [-1, True, 1.5, "3", None, 2**63])
def test_bad_versions(version):
    assert reason({**VALID, "version": version}).startswith("version: ")


@pytest.mark.parametrize("field", ["item_id", "op", "version", "text"])
def test_missing_fields(field):
    data = {k: v for k, v in VALID.items() if k != field}
    assert reason(data).startswith(f"{field}: ")


@pytest.mark.parametrize(("patch", "field"), [
    ({"item_id": 7}, "item_id"),
    ({"item_id": ""}, "item_id"),
    ({"item_id": "a\x00b"}, "item_id"),
    ({"item_id": "x" * 401}, "item_id"),
    ({"op": "merge"}, "op"),
    ({"title": ["a"]}, "title"),
    ({"text": 5}, "text"),
    ({"fields": ["a"]}, "fields"),
    ({"fields": {"city": 3}}, "fields.city"),
    ({"event_time": "yesterday"}, "event_time"),
    ({"event_time": "2026-11-22T10:30:00"}, "event_time"),
    ({"title": " ", "text": ""}, "text"),
])
def test_wrong_types_and_values_name_the_field(patch, field):
    assert reason({**VALID, **patch}).startswith(f"{field}: ")


def test_unknown_op_lists_the_choices():
    assert "upsert, delete" in reason({**VALID, "op": "merge"})


def test_non_utf8_bytes():
    message = reason(b'{"item_id": "a", "text": "\xff"}')
    assert message.startswith("value: is not valid UTF-8") and "0xff" in message


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b'"text"'])
def test_not_a_json_object(raw):
    assert reason(raw).startswith("value: ")


def test_oversized_text_beyond_configured_limit():
    big = {**VALID, "text": "x" * 5_000}
    assert parse_item_event(big, max_text_bytes=10_000).text == "x" * 5_000
    message = reason(big, max_text_bytes=1_000)
    assert message.startswith("text: ") and "1,000" in message


def test_unknown_keys_are_ignored():
    assert parse_item_event({**VALID, "source": "crm"}) == parse_item_event(VALID)


def test_content_hash_follows_content_only():
    base = parse_item_event(VALID)
    assert base.content_hash() == parse_item_event({**VALID, "version": 99}).content_hash()
    for patch in ({"text": "other"}, {"title": "other"}, {"fields": {"city": "Bergen"}}):
        assert parse_item_event({**VALID, **patch}).content_hash() != base.content_hash()
