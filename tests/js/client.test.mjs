// The client's pure parts: node --test tests/js (run by tests/test_client_js.py).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
  EventParser,
  backoff,
  isAfter,
  joinId,
  movedChannel,
  parseData,
  refusalMessage,
  sameChannels,
  splitId,
  streamUrl,
  unionChannels,
} from "../../flask_sse/static/client.js";

test("the parser reads events split anywhere, with every line ending", () => {
  const wire = "retry:2500\nid:1-0\n\n: keepalive\n\nevent: update\ndata: one\r\ndata:two\rid:2-0\r\n\ndata\n\n";
  for (let cut = 0; cut <= wire.length; cut++) {
    const parser = new EventParser();
    const blocks = [...parser.push(wire.slice(0, cut)), ...parser.push(wire.slice(cut))];
    assert.deepEqual(
      blocks.map((block) => [block.event ?? null, block.id, block.retry]),
      [
        [null, "1-0", 2500],
        [null, null, null],
        [{ type: "update", data: "one\ntwo" }, "2-0", null],
        [{ type: "message", data: "" }, null, null],
      ],
      `cut at ${cut}`,
    );
  }
});

test("the parser keeps a leading space after the first, drops a BOM, ignores bad retry and NUL ids", () => {
  const parser = new EventParser();
  const [block] = parser.push("\ufeffdata:  two spaces\nretry: 10x\nid:a\0b\n\n");
  assert.deepEqual(block.event, { type: "message", data: " two spaces" });
  assert.equal(block.retry, null);
  assert.equal(block.id, null);
});

test("the parser keeps a refusal's comment", () => {
  const [block] = new EventParser().push("retry:4000\n: Redis is unreachable\n\n");
  assert.deepEqual(block.comments, ["Redis is unreachable"]);
  assert.equal(block.retry, 4000);
});

test("ids split into positions per channel and join back, from now where unknown", () => {
  const channels = ["a", "b", "c"];
  assert.deepEqual(splitId("1-0,2-0,3-1", channels), { a: "1-0", b: "2-0", c: "3-1" });
  assert.equal(splitId("1-0,2-0", channels), null);
  assert.equal(splitId("", channels), null);
  assert.equal(joinId(["a", "new", "c"], { a: "1-0", c: "3-1", gone: "9-9" }), "1-0,,3-1");
  assert.equal(joinId(["new"], { a: "1-0" }), "");
});

test("the channel an event belongs to is the one its id moved", () => {
  const channels = ["a", "b"];
  const before = { a: "1-0", b: "5-0" };
  assert.equal(movedChannel(channels, before, { a: "1-0", b: "6-0" }), "b");
  assert.equal(movedChannel(channels, before, { a: "2-0", b: "5-0" }), "a");
  assert.equal(movedChannel(channels, before, { a: "1-0", b: "5-0" }), null);
  assert.equal(movedChannel(channels, {}, { a: "1-0" }), "a");
});

test("the union of the tabs' channels has each once, in one order", () => {
  assert.deepEqual(unionChannels([["news", "b"], ["b", "a"], []]), ["a", "b", "news"]);
  assert.deepEqual(unionChannels([]), []);
});

test("a tab's refusal holds while it wants the same channels, and no others", () => {
  assert.equal(sameChannels(["a", "private-b"], ["a", "private-b"]), true);
  assert.equal(sameChannels(["a", "private-b"], ["a"]), false);
  assert.equal(sameChannels(["a b"], ["a", "b"]), false);
  assert.equal(sameChannels([], []), true);
});

test("the stream URL carries the channels, the resume id and the token", () => {
  const url = new URL(streamUrl("http://127.0.0.1:5000/stream?channel=old&x=1", ["a b", "c"], "1-0,", "t.k"));
  assert.deepEqual(url.searchParams.getAll("channel"), ["a b", "c"]);
  assert.equal(url.searchParams.get("lastEventId"), "1-0,");
  assert.equal(url.searchParams.get("token"), "t.k");
  assert.equal(url.searchParams.get("x"), "1");
  assert.equal(new URL(streamUrl("http://h/s", ["a"], "", null)).search, "?channel=a");
});

test("data is JSON when it is JSON, unless turned off", () => {
  assert.deepEqual(parseData('{"price": 3}', true), { price: 3 });
  assert.equal(parseData("plain text", true), "plain text");
  assert.equal(parseData('{"price": 3}', false), '{"price": 3}');
});

test("backoff waits the server's retry, then doubles with jitter up to 30 s", () => {
  assert.equal(backoff(3000, 0), 3000);
  assert.equal(backoff(3000, 1, () => 0.5), 3000);
  assert.equal(backoff(3000, 3, () => 0.5), 12000);
  assert.equal(backoff(3000, 20, () => 0.5), 30000);
  assert.equal(backoff(3000, 1, () => 0), 1500);
});

test("a refusal's message comes from its JSON, its text or its HTML", () => {
  assert.equal(refusalMessage(403, '{"error": "The token has expired"}'), "403: The token has expired");
  assert.equal(refusalMessage(400, "bad channel\n"), "400: bad channel");
  assert.equal(refusalMessage(403, "<h1>Forbidden</h1><p>No.</p>"), "403: Forbidden No.");
  assert.equal(refusalMessage(404, ""), "404: the server refused the stream");
});

test("positions compare by milliseconds, then by sequence", () => {
  assert.equal(isAfter("1700000000001-0", "1700000000000-9"), true);
  assert.equal(isAfter("1700000000000-10", "1700000000000-9"), true);
  assert.equal(isAfter("1700000000000-9", "1700000000000-9"), false);
  assert.equal(isAfter("999-0", "1700000000000-0"), false);
  assert.equal(isAfter("1-0", undefined), true);
});
