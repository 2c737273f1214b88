"""``oomless report`` on a history recorded by a real governed worker, drawn by a real headless Chromium
with the network blocked: the page must draw every figure without a script error, offline."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from oomless.history.store import Store

from .workload import record_mixed

sys.path.insert(0, str(Path(__file__).parent.parent / "celery"))


def oomless_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "oomless.cli", *args], capture_output=True, text=True, timeout=300)


def render(page: Path, tmp: Path) -> str:
    """The DOM of ``page`` after Chromium ran its scripts (15 s of virtual time), with every host unresolvable."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("Debian's chromium is not installed, and these tests draw the report in it: run `make test` "
                    "(it installs chromium when missing) or `apt-get install -y chromium`")
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         f"--user-data-dir={tmp / 'chromium-profile'}", '--host-resolver-rules=MAP * ~NOTFOUND',
         "--virtual-time-budget=15000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0 and "<body" in out.stdout, out.stderr[-3000:]
    return out.stdout


class _Resources(HTMLParser):
    """Every URL the page would load by itself: script and image sources, stylesheets, frames."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in ("src", "href") if tag in ("script", "img", "iframe", "link", "embed", "source") else ():
            if found.get(name) and not (tag == "link" and found.get("rel") not in ("stylesheet", "preload")):
                self.urls.append(str(found[name]))


def remote_resources(page_text: str) -> list[str]:
    parser = _Resources()
    parser.feed(page_text)
    remote = [u for u in parser.urls if not u.startswith(("data:", "#"))]
    # CSS can load too: @import and url(...) in <style>
    remote += re.findall(r"@import\s+['\"]?https?://[^'\"\s;]+|url\(\s*['\"]?https?://[^)'\"]+", page_text)
    return remote


def body_data(dom: str) -> dict[str, str]:
    body = re.search(r"<body([^>]*)>", dom)
    assert body is not None, dom[:2000]
    return dict(re.findall(r'data-([\w-]+)="([^"]*)"', body.group(1)))


def assert_drew_without_errors(dom: str) -> dict[str, str]:
    data = body_data(dom)
    errors = re.search(r'<pre id="oomless-errors"[^>]*>(.*?)</pre>', dom, re.S)
    assert "errors" not in data and errors is not None and errors.group(1) == "", errors and errors.group(1)
    assert data.get("rendered") == data["figures"], data  # every Plotly.newPlot resolved
    figures = dom.split('class="plotly-graph-div')[1:]
    assert len(figures) == int(data["figures"])
    for figure in figures:
        assert 'class="main-svg"' in figure  # plotly drew an SVG in each figure
    return data


@pytest.fixture(scope="module")
def history(tmp_path_factory, redis_url):
    """Attempts of a real governed worker: four ok, one memory-killed, one refused as infeasible."""
    tmp = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{tmp / 'h.sqlite'}"
    record_mixed(tmp, redis_url, url, "watchdog", (32, 64, 64, 128), "1GiB")
    outcomes = sorted(a.outcome for a in Store(url).attempts("t.hog"))
    assert outcomes == ["infeasible", "memory-killed", "ok", "ok", "ok", "ok"], outcomes
    return url, tmp


def test_a_real_workers_history_draws_every_chart_offline_without_script_errors(history):
    url, tmp = history
    page = tmp / "report.html"
    out = oomless_cli("report", "--history", url, "-o", str(page))
    assert out.returncode == 0, out.stderr
    assert f"wrote {page}" in out.stdout and "6 attempts of 1 task name on 1 worker, 3 charts" in out.stdout
    text = page.read_text()
    assert remote_resources(text) == []  # plotly.js is inlined: the page needs no network
    assert text.count("<script") >= 3 and "<script src" not in text
    dom = render(page, tmp)
    data = assert_drew_without_errors(dom)
    # memory over time (one worker), requested vs peak, the kills timeline
    assert data["figures"] == "3", data
    assert 'data-unformatted="t.hog"' in dom  # the task's name is drawn: in a legend and on the bars' axis
    assert 'data-unformatted="memory-killed"' in dom and 'data-unformatted="infeasible"' in dom  # the markers
    assert "no attempts recorded yet" not in dom.lower()
    recommendations = dom.split('id="recommendations"')[1]
    assert ">t.hog<" in recommendations and "256.0 MiB" in recommendations  # its current limit


def test_an_empty_store_gives_a_page_that_says_so(tmp_path):
    url = f"sqlite:///{tmp_path / 'h.sqlite'}"
    Store(url).migrate()
    page = tmp_path / "empty.html"
    out = oomless_cli("report", "--history", url, "-o", str(page))
    assert out.returncode == 0, out.stderr
    assert "no attempts recorded yet" in out.stdout
    dom = render(page, tmp_path)
    assert assert_drew_without_errors(dom)["figures"] == "0"
    assert "No attempts recorded yet" in dom and "oomless_history" in dom


def test_an_unknown_since_is_a_usage_error_naming_the_value_and_the_forms(history):
    url, tmp = history
    out = oomless_cli("report", "--history", url, "--since", "last tuesday", "-o", str(tmp / "never.html"))
    assert out.returncode == 2
    assert "'last tuesday'" in out.stderr and "7d" in out.stderr and "ISO date" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not (tmp / "never.html").exists()


def test_a_store_that_does_not_exist_is_a_usage_error_not_a_new_empty_store(tmp_path):
    missing = tmp_path / "nowhere.sqlite"
    out = oomless_cli("report", "--history", f"sqlite:///{missing}", "-o", str(tmp_path / "never.html"))
    assert out.returncode == 2
    assert str(missing) in out.stderr and "oomless_history" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert not missing.exists()


def test_a_bucket_too_small_for_the_period_says_which_bucket_would_do(history):
    url, tmp = history
    out = oomless_cli("report", "--history", url, "--bucket", "0.0001", "-o", str(tmp / "never.html"))
    assert out.returncode == 2
    assert "use a bucket of at least" in out.stderr and "Traceback" not in out.stderr
