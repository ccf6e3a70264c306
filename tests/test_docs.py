"""The README's and the documentation's code blocks run as written, and the docs say what the code does.

A block is found by a line it contains, so a test breaks when its block is
edited away. Where a block names a Redis server, the test's own broker is
put in its place; where it decorates the shared ``sse`` (which other tests
have registered already), it gets a fresh blueprint of the same name.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import tomllib
from flask import Flask

from flask_sse import ServerSentEventsBlueprint, send_event, sse
from flask_sse.config import DEFAULTS, OTHER_KEYS
from flask_sse.testing import captured_events, read_events

from .conftest import ROOT, MakeApp, OpenClientStream

DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", *DOCS.glob("*.md")])


def block(page: str, containing: str, language: str = "python") -> str:
    """The code block of ``page`` (a path from the repository's root) that contains ``containing``."""
    text = (ROOT / page).read_text()
    for found in re.findall(rf"```{language}\n(.*?)```", text, re.S):
        if containing in found:
            return str(found)
    raise AssertionError(f"no {language} block of {page} contains {containing!r}")


def run(code: str, **names: Any) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "docs_example", **names}
    exec(compile(code, "<docs>", "exec"), namespace)  # noqa: S102
    return namespace


@pytest.mark.parametrize("page", ["README.md", "docs/quickstart.md"])
def test_the_quick_start_app(page: str, memory_url: str) -> None:
    code = block(page, "@app.post(\"/price\")").replace("redis://localhost:6379/0", memory_url)
    app = run(code)["app"]
    with captured_events(app) as events:
        assert app.test_client().post("/price").status_code == 204
    assert [(e.channel, e.message.type, e.message.data) for e in events] == [
        ("news", "update", {"price": 3})
    ] * 2


def test_publishing_without_an_app(make_app: MakeApp, memory_url: str) -> None:
    code = block("docs/quickstart.md", "Publisher(").replace("redis://localhost:6379/0", memory_url)
    run(code)
    client = make_app().test_client()
    (message,) = read_events(client, "/stream?channel=job-7&lastEventId=0-0", count=1)
    assert (message.type, message.data) == ("progress", '{"done": 42}')


def test_a_task_run_twice_publishes_once(make_app: MakeApp) -> None:
    app = make_app()
    order_shipped = run(
        textwrap.dedent(block("docs/resume.md", "idempotency_key=")), send_event=send_event
    )["order_shipped"]
    with app.app_context():
        order_shipped("task-1", 7)
        order_shipped("task-1", 7)  # the queue ran the task again
        order_shipped("task-2", 8)
    messages = read_events(app.test_client(), "/stream?channel=orders&lastEventId=0-0", count=3, timeout=0.5)
    assert [message.data for message in messages] == ['{"order": 7}', '{"order": 8}']


class Webhooks:
    """The task queue the presence example hands its webhooks to."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def enqueue(self, kind: str, channel: str) -> None:
        self.sent.append((kind, channel))


def test_the_presence_webhooks_example(app: Flask, client_stream: OpenClientStream) -> None:
    webhooks = Webhooks()
    run(block("docs/signals.md", "@channel_vacated.connect_via(app)"), app=app, webhooks=webhooks)
    first = client_stream("/stream?channel=room")
    second = client_stream("/stream?channel=room")
    first.close()
    assert webhooks.sent == [("channel_occupied", "room")]  # one stream is still open
    second.close()  # the receiver runs after the request has ended
    assert webhooks.sent == [("channel_occupied", "room"), ("channel_vacated", "room")]


def test_the_before_request_example(memory_url: str, client_stream: OpenClientStream) -> None:
    app = Flask(__name__)
    app.config.update(SSE_REDIS_URL=memory_url, SECRET_KEY="test")
    run(block("docs/security.md", "def staff_only():"), app=app)
    client = app.test_client()
    assert client.get("/events?channel=staff").status_code == 403
    with client.session_transaction() as session:
        session["staff"] = True
    client_stream("/events?channel=staff", client=client).close()


def test_the_authorize_example(memory_url: str, client_stream: OpenClientStream) -> None:
    app = Flask(__name__)
    app.config.update(SSE_REDIS_URL=memory_url, SECRET_KEY="test")
    code = block("docs/security.md", "@sse.authorize").replace("from flask_sse import sse\n", "")
    run(code, app=app, sse=ServerSentEventsBlueprint("sse", __name__))
    client = app.test_client()
    assert client.get("/stream?channel=private-user-42").status_code == 403
    with client.session_transaction() as session:
        session["user_id"] = 42
    client_stream("/stream?channel=news&channel=private-user-42", client=client).close()
    assert client.get("/stream?channel=private-user-7").status_code == 403


def test_the_cors_example(memory_url: str, client_stream: OpenClientStream) -> None:
    app = Flask(__name__)
    app.config.update(SSE_REDIS_URL=memory_url)
    app.register_blueprint(sse, url_prefix="/stream")
    run(block("docs/security.md", "CORS(app"), app=app)
    origin = "https://app.example.com"
    stream = client_stream("/stream", headers={"Origin": origin}, client=app.test_client())
    assert stream.response.headers["Access-Control-Allow-Origin"] == origin
    assert stream.response.headers["Access-Control-Allow-Credentials"] == "true"


def test_the_testing_example_is_a_complete_test_module(tmp_path: Path) -> None:
    module = tmp_path / "test_orders.py"
    module.write_text(block("docs/testing.md", "def test_the_stream(app, client):"))
    outcome = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert outcome.returncode == 0, outcome.stdout + outcome.stderr
    assert "2 passed" in outcome.stdout


def test_the_configuration_page_has_every_key_with_its_default_and_a_working_example(
    memory_url: str,
) -> None:
    page = (DOCS / "configuration.md").read_text()
    sections = dict(re.findall(r"^## `([A-Z_]+)`[^\n]*\n\n(.*?)(?=^## |\Z)", page, re.S | re.M))
    documented = set(re.findall(r"`(SSE_[A-Z_]+)`", "".join(re.findall(r"^## .*$", page, re.M))))
    assert documented == {*DEFAULTS, *OTHER_KEYS}
    for key, default in DEFAULTS.items():
        text = sections[key]
        stated = re.match(r"Default: `(.*?)`", text)
        assert stated is not None and ast.literal_eval(stated[1]) == default, f"{key}: not {default!r}"
        example = re.search(r"```python\n(.*?)```", text, re.S)
        assert example is not None, f"{key} has no example"
        app = Flask(__name__)
        run(example[1], app=app)
        assert key in app.config
        app.config.setdefault("SSE_REDIS_URL", memory_url)
        app.register_blueprint(ServerSentEventsBlueprint("sse", __name__), url_prefix="/stream")


def test_every_install_line_names_this_distribution_and_its_extras() -> None:
    """``pip install 'name[extra]'`` in the docs and in error messages installs this package."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] != "flask-sse", "flask-sse on the package index is another project"
    extras = set(project["optional-dependencies"])
    texts = [page.read_text() for page in PAGES]
    texts += [path.read_text() for path in (ROOT / "flask_sse").glob("*.py")]
    lines = [m for text in texts for m in re.findall(r"pip install [^'\n]*'([\w.-]+)\[([\w,]+)\]'", text)]
    assert len(lines) >= 4, "install lines not found"
    for name, wanted in lines:
        if name != ".":
            assert name == project["name"], f"'{name}' is not this distribution"
        assert set(wanted.split(",")) <= extras, f"{wanted} is not among the extras {extras}"


def test_the_readme_links_to_pages_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs/)?[\w./-]+\.(?:md|rst|png))\)", readme)
    assert len(links) >= 10
    for link in links:
        assert (ROOT / link).is_file(), f"the README links to {link}, which does not exist"


def test_the_version_comes_from_the_package_metadata() -> None:
    import flask_sse

    assert flask_sse.__version__ == importlib.metadata.version("flask-sse-hub")
