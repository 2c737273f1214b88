"""``oomless.urls.redact``: a URL shown to people has its password hidden, and nothing else changed."""

from __future__ import annotations

import pytest

from oomless.urls import redact


def test_redact_hides_the_password_of_each_failover_url():
    assert redact("amqp://me:s3cret@a//;amqp://me:s3cret@b//") == "amqp://me:***@a//;amqp://me:***@b//"


def test_redact_leaves_a_url_without_a_password_as_it_was_even_without_a_host():
    for url in ("rpc://", "cache+memory://", "redis://127.0.0.1:6379/1", "sqlite:///var/lib/h.sqlite"):
        assert redact(url) == url


@pytest.mark.parametrize("char", ["/", "?", "#", ";", ":"])
def test_a_password_with_a_delimiter_in_it_is_masked_whole_as_sqlalchemy_does(char):
    from sqlalchemy.engine import make_url

    url = f"postgresql+psycopg://me:pa{char}ss@db:5432/x"
    assert redact(url) == "postgresql+psycopg://me:***@db:5432/x"
    assert redact(url) == make_url(url).render_as_string(hide_password=True)
