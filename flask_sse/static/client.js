// flask-sse's browser client: one stream per browser, shared by its tabs.
//
//   import { connect } from "/stream/client.js";
//   const events = connect("/stream");
//   const news = events.subscribe("news", { update: (data, event) => show(data) });
//   events.on("reset", (channel) => reload(channel));
//   events.on("state", (state) => badge(state.state));
//   news.close();
//
// Why it exists: browsers allow six HTTP/1.1 connections per site across all
// tabs, so each tab holding its own EventSource soon leaves the app's own
// requests queued behind streams. Here the tabs of an origin elect a leader
// (Web Locks) that holds the only stream, with the union of every tab's
// channels, and relays each event to the tabs (BroadcastChannel). When the
// leader goes, another tab takes the lock and resumes from the last positions
// relayed, so nothing is lost or repeated. Without those APIs (or with
// `shared: false`) each tab has a stream of its own.
//
// The stream is read with fetch rather than EventSource, to read a refusal's
// message (a 400 or 403 ends the stream with it), to renew a token before
// each connect (`tokenUrl`), and to send a Last-Event-ID that names a
// position for the channels that stay and nothing ("from now") for a new
// one, so changing channels loses nothing. No dependencies, no build step.

const DEFAULT_RETRY_MS = 3000;
const LONGEST_BACKOFF_MS = 30000;
const LOCK_PREFIX = "flask-sse";
/** Answers that will not change by asking again: the stream stops with the server's message. */
const FINAL_STATUSES = new Set([400, 401, 403, 404, 405, 410, 414]);

// -- pure parts (unit-tested in Node) ----------------------------------------

/** An incremental parser of the event-stream format (WHATWG HTML, "server-sent events"). */
export class EventParser {
  constructor() {
    this.buffer = "";
    this.data = [];
    this.type = "";
    this.id = null; // the id buffer: null until an id: line is seen
    this.comments = [];
    this.retry = null;
    this.started = false;
  }

  /** Feed decoded text; returns the blocks it completed, each {event?, id, retry, comments}. */
  push(text) {
    if (!this.started && text) {
      this.started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    this.buffer += text;
    const blocks = [];
    let start = 0;
    for (;;) {
      const match = /\r\n|\r|\n/g;
      match.lastIndex = start;
      const found = match.exec(this.buffer);
      if (!found) break;
      // a lone CR at the end may be the first half of a CRLF still on its way
      if (found[0] === "\r" && found.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(start, found.index);
      start = found.index + found[0].length;
      const block = this.line(line);
      if (block) blocks.push(block);
    }
    this.buffer = this.buffer.slice(start);
    return blocks;
  }

  line(line) {
    if (line === "") return this.dispatch();
    if (line.startsWith(":")) {
      this.comments.push(line.slice(1).trim());
      return null;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
    return null;
  }

  dispatch() {
    const block = { id: this.id, retry: this.retry, comments: this.comments };
    if (this.data.length) {
      block.event = { type: this.type || "message", data: this.data.join("\n") };
    }
    this.data = [];
    this.type = "";
    this.comments = [];
    this.retry = null;
    this.id = null;
    return block;
  }
}

/** The per-channel positions in a stream's id: {channel: "1700000000000-3"}, or null if it is not one. */
export function splitId(id, channels) {
  if (typeof id !== "string" || !id) return null;
  const parts = id.split(",");
  if (parts.length !== channels.length) return null;
  const positions = {};
  channels.forEach((channel, index) => {
    if (parts[index]) positions[channel] = parts[index];
  });
  return positions;
}

/** The Last-Event-ID that resumes `channels` from `positions`; "" parts start a channel from now. */
export function joinId(channels, positions) {
  const parts = channels.map((channel) => positions[channel] || "");
  return parts.some(Boolean) ? parts.join(",") : "";
}

/** Which of `channels` an id moved forward: the channel the event with that id belongs to. */
export function movedChannel(channels, before, after) {
  return channels.find((channel) => after[channel] && after[channel] !== before[channel]) ?? null;
}

/** Whether history position `a` ("1700000000000-3") comes after `b` (a missing `b`: yes). */
export function isAfter(a, b) {
  if (!b) return true;
  const [aMs, aSeq] = a.split("-").map(Number);
  const [bMs, bSeq] = b.split("-").map(Number);
  return aMs > bMs || (aMs === bMs && aSeq > bSeq);
}

/** The channels a stream needs for every tab's wants: each once, in a stable order. */
export function unionChannels(lists) {
  return [...new Set(lists.flat())].sort();
}

/** The `state` of a stream the server refused for good. */
function closedState(status, reason, channels) {
  return { state: "closed", status, reason, channels };
}

/** Whether two lists name the same channels in the same order. */
export function sameChannels(a, b) {
  return a.join("\n") === b.join("\n");
}

/** The stream's URL for `channels`, resuming from `lastEventId`, with a `token` if given. */
export function streamUrl(base, channels, lastEventId, token) {
  const url = new URL(base);
  url.searchParams.delete("channel");
  for (const channel of channels) url.searchParams.append("channel", channel);
  if (lastEventId) url.searchParams.set("lastEventId", lastEventId);
  if (token) url.searchParams.set("token", token);
  return url.href;
}

/** `text` parsed as JSON when it is JSON (and `json` is on), else as it came. */
export function parseData(text, json) {
  if (!json) return text;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** The wait before connect attempt `failures` (0: none failed): the server's retry, doubling, ±50%. */
export function backoff(retryMs, failures, random = Math.random) {
  if (failures === 0) return retryMs;
  const grown = Math.min(retryMs * 2 ** (failures - 1), LONGEST_BACKOFF_MS);
  return Math.round(grown * (0.5 + random()));
}

/** The message of a refusal's body: {"error": ...}, {"message": ...}, or its text. */
export function refusalMessage(status, text) {
  let message = text.trim();
  try {
    const body = JSON.parse(text);
    message = body.error || body.message || body.description || message;
  } catch {
    // plain text, or an HTML error page: its text is the message
  }
  message = String(message).replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim();
  return `${status}: ${message || "the server refused the stream"}`;
}

// -- one stream ------------------------------------------------------------------

/**
 * One fetch-read event stream that reconnects, resumes, and changes channels.
 *
 * `sink` gets `event(channel, type, data, id, position, positions)` (`position`:
 * the event's own in its channel, null without one), `positions(positions)`
 * when an id alone moved them, and `state({state, reason, status, channels})`.
 */
class Stream {
  /** `positions`: where to resume each channel from (a new leader's, from the last relay). */
  constructor(url, options, sink, positions = {}) {
    this.url = url;
    this.options = options;
    this.sink = sink;
    this.channels = [];
    this.positions = positions;
    this.retry = DEFAULT_RETRY_MS;
    this.failures = 0;
    this.reason = "";
    this.closed = false;
    this.stopped = null; // a final refusal's state, until the channels change
    this.controller = null;
    this.wake = () => {};
    this.warned = false;
    this.run();
  }

  /** Stream `channels` from now on; the ones kept resume where they are. */
  setChannels(channels) {
    // only the channels kept: one that left and comes back starts from now
    const kept = channels.filter((channel) => this.positions[channel]);
    this.positions = Object.fromEntries(kept.map((channel) => [channel, this.positions[channel]]));
    if (channels.join("\n") === this.channels.join("\n")) return;
    this.channels = channels;
    this.stopped = null;
    this.failures = 0;
    this.restart();
  }

  restart() {
    if (this.controller) this.controller.abort();
    this.wake();
  }

  close() {
    this.closed = true;
    this.restart();
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  async run() {
    let delay = 0;
    while (!this.closed) {
      if (!this.channels.length || this.stopped) {
        await this.sleep(2 ** 31 - 1); // until the channels change
        delay = 0;
        continue;
      }
      this.sink.state({ state: "connecting", channels: this.channels, reason: this.reason });
      if (delay) await this.sleep(delay);
      if (!this.closed && this.channels.length && !this.stopped) delay = await this.connectOnce();
    }
    this.sink.state({ state: "closed", reason: "closed by the page", channels: [] });
  }

  /** One connection, from connect to end; returns how long to wait before the next. */
  async connectOnce() {
    const channels = this.channels;
    const controller = (this.controller = new AbortController());
    try {
      const lastEventId = joinId(channels, this.positions);
      const response = await this.request(channels, lastEventId, controller.signal);
      const type = response.headers.get("Content-Type") || "";
      if (response.status === 200 && type.startsWith("text/event-stream")) {
        await this.read(response, channels);
        this.reason ||= "the server ended the stream";
        return this.retry; // a clean end: the server's retry, as EventSource waits
      }
      const message = refusalMessage(response.status, await response.text());
      if (FINAL_STATUSES.has(response.status)) return this.stop(response.status, message, channels);
      this.reason = message;
      const after = Number(response.headers.get("Retry-After"));
      this.failures += 1;
      return Math.max(backoff(this.retry, this.failures), after > 0 ? after * 1000 : 0);
    } catch (error) {
      if (error && error.final) return this.stop(error.status, error.message, channels);
      if (controller.signal.aborted) return 0; // the channels changed, or close()
      this.reason = String((error && error.message) || error);
      this.failures += 1;
      return backoff(this.retry, this.failures);
    } finally {
      this.controller = null;
    }
  }

  stop(status, reason, channels) {
    this.stopped = closedState(status, reason, channels);
    this.sink.state(this.stopped);
    return 0;
  }

  /** The stream of `channels` from `lastEventId`, asked with a fresh token if it needs one. */
  async request(channels, lastEventId, signal) {
    const token = await this.token(channels, signal);
    return fetch(streamUrl(this.url, channels, lastEventId, token), {
      headers: { Accept: "text/event-stream" },
      credentials: this.options.credentials,
      cache: "no-store",
      signal,
    });
  }

  /**
   * The final refusal a stream of `channels` alone would get
   * ({state: "closed", status, reason, channels}), or null: asked with a
   * request of its own, whose stream (if the server opens it) is not read.
   */
  async refusal(channels) {
    const controller = new AbortController();
    try {
      const response = await this.request(channels, "", controller.signal);
      if (!FINAL_STATUSES.has(response.status)) return null;
      const reason = refusalMessage(response.status, await response.text());
      return closedState(response.status, reason, channels);
    } catch (error) {
      return error && error.final ? closedState(error.status, error.message, channels) : null;
    } finally {
      controller.abort();
    }
  }

  /** A fresh token from `tokenUrl` for `channels`, or null without one. */
  async token(channels, signal) {
    if (!this.options.tokenUrl) return null;
    const url = new URL(this.options.tokenUrl, globalThis.location?.href);
    for (const channel of channels) url.searchParams.append("channel", channel);
    const response = await fetch(url, { credentials: "include", cache: "no-store", signal });
    const text = await response.text();
    if (!response.ok) {
      const error = new Error(refusalMessage(response.status, text));
      error.final = FINAL_STATUSES.has(response.status);
      error.status = response.status;
      throw error;
    }
    try {
      const body = JSON.parse(text);
      return typeof body === "string" ? body : body.token;
    } catch {
      return text.trim();
    }
  }

  async read(response, channels) {
    const parser = new EventParser();
    const decoder = new TextDecoder();
    const reader = response.body.getReader();
    let opened = false;
    for (;;) {
      const { done, value } = await reader.read();
      const text = done ? decoder.decode() : decoder.decode(value, { stream: true });
      for (const block of parser.push(text)) {
        if (block.retry !== null) this.retry = block.retry;
        if (!opened) {
          opened = true;
          if (!block.event && block.id === null && block.comments.length) {
            // a server that cannot stream now says why in a comment, then ends
            this.reason = block.comments.join(" ");
          } else {
            this.reason = "";
            this.failures = 0; // a stream that dies later starts its backoff again
            this.sink.state({ state: "open", channels, reason: "" });
          }
        }
        this.take(block, channels);
      }
      if (done) return;
    }
  }

  take(block, channels) {
    const before = this.positions;
    const after = block.id === null ? null : splitId(block.id, channels);
    if (after) this.positions = { ...before, ...after };
    if (!block.event) {
      if (after) this.sink.positions(this.positions);
      return;
    }
    const { type, data } = block.event;
    let channel = channels.length === 1 ? channels[0] : null;
    if (after) channel = movedChannel(channels, before, after) ?? channel;
    if (type === "reset") channel = parseData(data, true)?.channel ?? channel;
    if (channel === null && !this.warned) {
      this.warned = true;
      console.warn(
        "flask-sse: an event without an id on a stream of several channels goes to all of " +
          "them (the server has SSE_HISTORY = 0, or a publisher bypassed the history)",
      );
    }
    const position = after && channel !== null ? (after[channel] ?? null) : null;
    this.sink.event(channel, type, data, block.id, position, this.positions);
  }
}

// -- the page's side ---------------------------------------------------------------

/** Open the app's events at `url` (the blueprint's prefix, e.g. "/stream"). */
export function connect(url = "/stream", options = {}) {
  return new Events(url, options);
}

class Events {
  constructor(url, options) {
    this.url = new URL(url, globalThis.location?.href).href;
    this.options = { json: true, shared: true, tokenUrl: null, credentials: "same-origin", ...options };
    this.handlers = new Map(); // channel -> Set of handler objects
    this.listeners = { reset: new Set(), state: new Set() };
    this.state = { state: "connecting", reason: "", channels: [] };
    this.waiting = new Set(); // {channel, resolve} until a stream with the channel opens
    const canShare = typeof BroadcastChannel === "function" && globalThis.navigator?.locks;
    const Engine = this.options.shared && canShare ? TabGroup : OwnStream;
    this.engine = new Engine(this);
  }

  /**
   * Listen to `channel`: `handlers` is `{type: (data, event) => ...}` (`message`
   * for events without a type) or one function for every type. Returns
   * `{close(), ready}`; `ready` resolves once a stream carries the channel.
   */
  subscribe(channel, handlers) {
    if (typeof channel !== "string" || !channel) throw new TypeError("channel must be a non-empty string");
    const entry = typeof handlers === "function" ? { "*": handlers } : { ...handlers };
    if (!this.handlers.has(channel)) this.handlers.set(channel, new Set());
    this.handlers.get(channel).add(entry);
    const waiter = { channel };
    const ready = new Promise((resolve) => (waiter.resolve = resolve));
    this.waiting.add(waiter);
    this.changed();
    this.resolveReady(); // at once if the open stream already carries the channel
    return {
      ready,
      close: () => {
        this.waiting.delete(waiter); // a channel left before it opened is never ready
        const set = this.handlers.get(channel);
        if (!set || !set.delete(entry)) return;
        if (!set.size) this.handlers.delete(channel);
        this.changed();
      },
    };
  }

  /** `"reset"`: `fn(channel)`, history could not cover a gap; `"state"`: `fn({state, reason, status})`. */
  on(name, fn) {
    if (!this.listeners[name]) throw new TypeError(`no such event: ${name} (reset, state)`);
    this.listeners[name].add(fn);
    return () => this.listeners[name].delete(fn);
  }

  /** Leave every channel and let another tab hold the stream. */
  close() {
    this.handlers.clear();
    this.waiting.clear();
    this.engine.close();
  }

  channels() {
    return [...this.handlers.keys()].sort();
  }

  changed() {
    if (this.pending) return;
    this.pending = true;
    queueMicrotask(() => {
      this.pending = false;
      this.engine.want(this.channels());
    });
  }

  /** An event for this page: to the handlers of `channel` (null: of every channel). */
  deliver(channel, type, raw, id) {
    if (channel !== null && !this.handlers.has(channel)) return; // another tab's channel
    const data = parseData(raw, this.options.json);
    if (type === "reset") {
      for (const fn of this.listeners.reset) fn(channel);
      return;
    }
    const targets = channel === null ? [...this.handlers.values()] : [this.handlers.get(channel)];
    for (const set of targets) {
      for (const entry of set || []) {
        const handler = entry[type] || entry["*"];
        if (handler) handler(data, { type, id, channel, data });
      }
    }
  }

  setState(state) {
    this.state = state;
    this.resolveReady();
    for (const fn of this.listeners.state) fn(state);
  }

  resolveReady() {
    if (this.state.state !== "open") return;
    for (const waiter of [...this.waiting]) {
      if (this.state.channels.includes(waiter.channel)) {
        this.waiting.delete(waiter);
        waiter.resolve();
      }
    }
  }
}

/** Each page its own stream: where tabs cannot share, or `shared: false`. */
class OwnStream {
  constructor(events) {
    this.stream = new Stream(events.url, events.options, {
      event: (channel, type, data, id) => events.deliver(channel, type, data, id),
      positions: () => {},
      state: (state) => events.setState(state),
    });
  }

  want(channels) {
    this.stream.setChannels(channels);
  }

  close() {
    this.stream.close();
  }
}

/**
 * The tabs of one browser sharing one stream to `url`.
 *
 * Messages on the BroadcastChannel: `want` (a tab's channels), `bye`,
 * `hello` (a new leader asks every tab for its wants), and from the leader
 * `event`, `positions`, `state` and `refused`. Every tab keeps the wants,
 * refusals and positions it hears, so any of them can take over at once.
 *
 * A final refusal (a 403) of the shared stream would stop every tab for the
 * sake of one that asked for a channel it may not open. So the leader asks
 * again for each tab's channels alone; a tab whose channels are refused is
 * told so (`refused`) and left out until it changes its channels, gets no
 * events, and the others stream on. If no tab's channels are refused alone
 * (only together: too many channels, say), every tab gets the refusal.
 */
class TabGroup {
  constructor(events) {
    this.events = events;
    this.name = `${LOCK_PREFIX} ${events.url}`;
    this.tab = Math.random().toString(36).slice(2) + Date.now().toString(36);
    this.wants = new Map(); // tab -> channels
    this.refused = new Map(); // tab -> {channels, state}: refused, until it wants others
    this.positions = {}; // each channel's last position relayed: where a new leader resumes
    this.delivered = {}; // each channel's last position delivered to this page
    this.stream = null; // held while this tab leads
    this.state = null; // the leader's stream's last state, as this tab heard it
    this.closed = false;
    this.channel = new BroadcastChannel(this.name);
    this.channel.onmessage = (message) => this.receive(message.data);
    this.release = null;
    const locks = navigator.locks;
    // held for the tab's life: the leader tells live tabs from crashed ones by it
    locks.request(this.tabLock(this.tab), () => new Promise((resolve) => (this.releaseTab = resolve)));
    locks.request(this.name, () => this.lead());
    this.onPageHide = () => this.close();
    globalThis.addEventListener?.("pagehide", this.onPageHide);
  }

  tabLock(tab) {
    return `${this.name} tab ${tab}`;
  }

  post(message) {
    if (!this.closed) this.channel.postMessage(message);
  }

  want(channels) {
    this.wants.set(this.tab, channels);
    if (this.forgetRefusal(this.tab) && this.state) this.events.setState(this.state);
    this.post({ t: "want", tab: this.tab, channels });
    this.update();
  }

  /** Whether `tab`'s channels are refused (the ones it wants now). */
  isRefused(tab) {
    const refusal = this.refused.get(tab);
    return Boolean(refusal) && sameChannels(refusal.channels, this.wants.get(tab) || []);
  }

  /** Drop `tab`'s refusal if it now wants other channels; whether it did. */
  forgetRefusal(tab) {
    if (!this.refused.has(tab) || this.isRefused(tab)) return false;
    this.refused.delete(tab);
    return true;
  }

  /** The state this page shows: its own refusal, or the shared stream's `state`. */
  showState(state) {
    this.events.setState(this.isRefused(this.tab) ? this.refused.get(this.tab).state : state);
  }

  receive(message) {
    switch (message.t) {
      case "want":
        this.wants.set(message.tab, message.channels);
        this.forgetRefusal(message.tab);
        this.update();
        if (this.stream) this.post({ t: "state", state: this.state, positions: this.positions });
        break;
      case "bye":
        this.wants.delete(message.tab);
        this.refused.delete(message.tab);
        this.update();
        break;
      case "hello":
        this.post({ t: "want", tab: this.tab, channels: this.wants.get(this.tab) || [] });
        break;
      // A leader's stream owns its positions: what an old leader said late is past.
      case "event":
        if (!this.stream) this.positions = message.positions;
        this.deliver(message);
        break;
      case "positions":
        if (!this.stream) this.positions = message.positions;
        break;
      case "state":
        if (this.stream) break;
        if (message.positions) this.positions = message.positions;
        if (message.state) {
          this.state = message.state;
          this.showState(message.state);
        }
        break;
      case "refused":
        this.refused.set(message.tab, { channels: message.channels, state: message.state });
        if (message.tab === this.tab && this.isRefused(this.tab)) this.events.setState(message.state);
        break;
    }
  }

  /**
   * To this page, once. A new leader may take the lock before the old one's
   * last relays arrive, and then resumes before them: what it relays again
   * is at or before what this page had, and is dropped.
   */
  deliver({ channel, type, data, id, position }) {
    if (this.isRefused(this.tab)) return; // its own stream would have had nothing
    if (position) {
      if (type !== "reset" && !isAfter(position, this.delivered[channel])) return;
      this.delivered[channel] = position; // a reset may move it back: history was lost
    }
    this.events.deliver(channel, type, data, id);
  }

  /** Holding the lock: run the stream until this tab closes. */
  async lead() {
    if (this.closed) return;
    this.state = null; // what it heard as a follower is the old leader's
    await this.prune();
    this.post({ t: "hello" });
    const sink = {
      event: (channel, type, data, id, position, positions) => {
        const message = { t: "event", channel, type, data, id, position, positions };
        this.positions = positions;
        this.post(message);
        this.deliver(message);
      },
      positions: (positions) => {
        this.positions = positions;
        this.post({ t: "positions", positions });
      },
      state: (state) => {
        if (state.status && this.sharedWants().length > 1) this.sortOutRefusal(state);
        else this.tell(state);
      },
    };
    this.stream = new Stream(this.events.url, this.events.options, sink, { ...this.positions });
    this.update();
    const pruning = setInterval(() => this.prune().then(() => this.update()), 5000);
    await new Promise((resolve) => (this.release = resolve));
    clearInterval(pruning);
  }

  /** Forget the wants of tabs that are gone without a word (crashed, killed). */
  async prune() {
    const held = await navigator.locks.query();
    const locks = [...(held.held || []), ...(held.pending || [])];
    const alive = new Set(locks.map((lock) => lock.name));
    for (const tab of [...this.wants.keys()]) {
      if (tab !== this.tab && !alive.has(this.tabLock(tab))) {
        this.wants.delete(tab);
        this.refused.delete(tab);
      }
    }
  }

  update() {
    if (this.stream) this.stream.setChannels(unionChannels(this.sharedWants().map(([, c]) => c)));
  }

  /** The wants the shared stream carries: every tab's but the refused ones'. */
  sharedWants() {
    return [...this.wants].filter(([tab, channels]) => channels.length && !this.isRefused(tab));
  }

  /** The leader's stream's `state`, to every tab. */
  tell(state) {
    this.state = state;
    this.post({ t: "state", state });
    this.showState(state);
  }

  /** A final refusal of the stream several tabs share: see the class's doc. */
  async sortOutRefusal(state) {
    const stream = this.stream;
    const refused = [];
    for (const [tab, channels] of this.sharedWants()) {
      const refusal = await stream.refusal(channels);
      if (refusal) refused.push({ tab, channels, state: refusal });
    }
    if (this.closed) return;
    for (const { tab, channels, state: refusal } of refused) {
      if (!sameChannels(channels, this.wants.get(tab) || [])) continue; // changed meanwhile
      this.refused.set(tab, { channels, state: refusal });
      this.post({ t: "refused", tab, channels, state: refusal });
    }
    this.update();
    if (stream.stopped) this.tell(state); // the others too, or their union alone, are refused
    else if (this.isRefused(this.tab)) this.events.setState(this.refused.get(this.tab).state);
  }

  close() {
    if (this.closed) return;
    this.post({ t: "bye", tab: this.tab });
    this.closed = true;
    this.channel.close();
    globalThis.removeEventListener?.("pagehide", this.onPageHide);
    if (this.stream) this.stream.close();
    if (this.release) this.release();
    if (this.releaseTab) this.releaseTab();
  }
}
