"""``oomless.urls.redact``: a URL shown to people has its password hidden, and nothing else changed."""

from __future__ import annotations

from oomless.urls import redact


def test_redact_hides_the_password_of_each_failover_url():
    assert redact("amqp://me:s3cret@a//;amqp://me:s3cret@b//") == "amqp://me:***@a//;amqp://me:***@b//"


def test_redact_leaves_a_url_without_a_password_as_it_was_even_without_a_host():
    for url in ("rpc://", "cache+memory://", "redis://127.0.0.1:6379/1", "sqlite:///var/lib/h.sqlite"):
        assert redact(url) == url
