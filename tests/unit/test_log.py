import logging

from ssh_ipykernel.log import RedactFilter, redact_text

KEY = "0f1e2d3c-secret-key"


def test_redact_text():
    assert redact_text(f"a {KEY} b {KEY}", KEY) == "a <key> b <key>"
    assert redact_text("nothing here", KEY) == "nothing here"
    assert redact_text("short k", "k") == "short k"  # too short to be a key: left alone


def test_filter_redacts_formatted_messages():
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "key is %s", (KEY,), None)
    assert RedactFilter(KEY).filter(record)
    assert record.getMessage() == "key is <key>"
