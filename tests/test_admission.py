"""Admission control: a rate of new streams per process, resumes first."""

from __future__ import annotations

from flask_sse.admission import Admission

from .conftest import Clock, MakeApp, OpenClientStream


def test_new_streams_get_the_top_half_of_a_second_and_resumes_the_rest() -> None:
    clock = Clock()
    admission = Admission(10, clock)
    assert [admission.admit(resuming=False) for _ in range(7)] == [True] * 5 + [False] * 2
    assert [admission.admit(resuming=True) for _ in range(7)] == [True] * 5 + [False] * 2
    clock.now += 0.15  # one token back (and a half)
    assert not admission.admit(resuming=False)
    assert admission.admit(resuming=True)
    clock.now += 10  # a quiet spell fills the bucket, no further than one second's worth
    assert sum(admission.admit(resuming=True) for _ in range(20)) == 10


def test_past_the_rate_a_browser_is_asked_to_come_back(
    make_app: MakeApp, client_stream: OpenClientStream
) -> None:
    app = make_app(SSE_ADMISSION_RATE=2)
    client = app.test_client()
    browser = {"Accept": "text/event-stream"}
    opened = client_stream("/stream?channel=a", headers=browser, client=client)
    assert opened.response.mimetype == "text/event-stream"
    opened.close()
    refused = client.get("/stream?channel=a", headers=browser)
    assert refused.status_code == 200
    body = refused.get_data(as_text=True)
    assert body.startswith("retry:") and "SSE_ADMISSION_RATE" in body and "id:" not in body
    other = client.get("/stream?channel=a")
    assert other.status_code == 503 and "SSE_ADMISSION_RATE" in other.get_json()["error"]
    resumed = client_stream(
        "/stream?channel=a", headers={**browser, "Last-Event-ID": "0-0"}, client=client
    )
    assert "retry:3000" in resumed.read_chunk()
