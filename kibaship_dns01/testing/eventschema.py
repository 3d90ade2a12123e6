"""Validate stream entries against the published JSON Schema (``schema/``)."""
import json
import os

import jsonschema

_HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMA_PATH = os.path.join(_HERE, os.pardir, os.pardir, "schema", "dns-challenge-event.v1.json")


def loadSchema(path=SCHEMA_PATH):
    with open(path) as f:
        return json.load(f)


_validator = None


def _get():
    global _validator
    if _validator is None:
        schema = loadSchema()
        jsonschema.Draft202012Validator.check_schema(schema)
        _validator = jsonschema.Draft202012Validator(schema)
    return _validator


def validateEntry(fields):
    """Raise ``jsonschema.ValidationError`` unless ``fields`` (a stored stream entry,
    all values strings) and its ``event_data`` match the schema."""
    validator = _get()
    fields = {_text(k): _text(v) for k, v in dict(fields).items()}
    validator.validate(fields)
    eventData = json.loads(fields["event_data"])
    jsonschema.Draft202012Validator(
        {"$defs": validator.schema["$defs"], "$ref": "#/$defs/eventData"}).validate(eventData)
    if eventData["metadata"]["sequence_number"] != int(fields["sequence"]):
        raise jsonschema.ValidationError("event_data.metadata.sequence_number != sequence")
    return eventData


def _text(value):
    return value.decode("utf-8") if isinstance(value, bytes) else value
