// Courier's browser and app client: a dependency-free ES module.
//
//   import { Courier } from "/js/courier.js";
//   const courier = new Courier("https://courier.example.com", { token: jwt });
//   const sub = courier.subscribe("notifications",
//       { filter: { key: "user-42" }, transport: "sse" },
//       (message) => show(message),
//       { onReset: (r) => warn(r.lost + " expired"), onStatus: (s) => dot(s) });
//   await courier.publish("chat.room-1", "hello", { headers: { author: "me" } });
//   sub.close();
//
// Every subscription remembers the last sequence it delivered and resumes
// right after it when the connection comes back (Server-Sent Events:
// Last-Event-ID, and `last_event_id` when it reconnects by itself; WebSocket:
// `after`; long polling: `cursor`), so a reconnect neither loses nor repeats a
// message. Served by Courier at /js/courier.js; the wire is docs/realtime.md.

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 10000;

/** Milliseconds to wait before reconnect attempt `n` (0, 1, 2…): doubling, jittered. */
function backoff(n) {
  const ms = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** n);
  return ms / 2 + Math.random() * (ms / 2);
}

/** A random id: publishes carry one, so a retried publish is stored once. */
function randomId() {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  return "js-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** A failed request or operation: `code` is one of Courier's stable problem codes. */
export class CourierError extends Error {
  constructor(code, message, status) {
    super(message || code);
    this.name = "CourierError";
    this.code = code;
    this.status = status;
  }
}

export class Courier {
  /**
   * @param {string} baseUrl where Courier is ("" or omitted: this page's server)
   * @param {{token?: string}} options `token`: a JWT, when the server has [auth] keys
   */
  constructor(baseUrl = "", { token } = {}) {
    const base = baseUrl || globalThis.location?.origin || "";
    this.baseUrl = base.replace(/\/+$/, "");
    this.token = token;
    this._ws = null; // the shared WebSocket, opened by the first "ws" subscription
  }

  /**
   * Follows a topic. `onMessage(message)` gets each message once, in order
   * ({seq, id, published_at, key, headers, body | body_base64}).
   *
   * @param {string} topic
   * @param {{filter?: {key?: string, headers?: Object<string,string>},
   *          from?: string, transport?: "sse"|"ws"|"poll"}} options
   *   `from`: "new" (default), "earliest", a sequence, or "time:<ms>".
   * @param {(message: object) => void} onMessage
   * @param {{onReset?: (reset: {lost: number, up_to: number, next: number}) => void,
   *          onStatus?: (status: "connecting"|"open"|"reconnecting"|"closed", detail?: object) => void}} handlers
   * @returns {{close(): void}}
   */
  subscribe(topic, options = {}, onMessage, handlers = {}) {
    const transport = options.transport || "sse";
    const sub = new Subscription(this, topic, options, onMessage, handlers);
    if (transport === "sse") sub._startSse();
    else if (transport === "ws") sub._startWs();
    else if (transport === "poll") sub._startPoll();
    else throw new TypeError(`unknown transport "${transport}" (sse, ws or poll)`);
    return { close: () => sub.close() };
  }

  /**
   * Publishes one message; resolves with the receipt `{seq, id}` once it is
   * durable. Goes over the WebSocket when one is open, else over HTTP.
   *
   * @param {string} topic
   * @param {string} body
   * @param {{key?: string, headers?: Object<string,string>, id?: string}} options
   */
  publish(topic, body, { key, headers, id } = {}) {
    const message = { topic, body: String(body), id: id || randomId() };
    if (key !== undefined) message.key = key;
    if (headers && Object.keys(headers).length) message.headers = headers;
    if (this._ws && this._ws.isOpen()) {
      return this._ws.publish(message).catch((e) => {
        // The socket went away with the publish in flight: the same id makes
        // a retry over HTTP safe (the server deduplicates it).
        if (e.code === "connection_lost") return this._publishHttp(message);
        throw e;
      });
    }
    return this._publishHttp(message);
  }

  async _publishHttp({ topic, body, id, key, headers }) {
    const m = { id, body };
    if (key !== undefined) m.key = key;
    if (headers) m.headers = headers;
    const response = await fetch(this._url(`/v1/topics/${encodeURIComponent(topic)}/messages/batch`), {
      method: "POST",
      headers: this._headers({ "content-type": "application/json" }),
      body: JSON.stringify({ messages: [m] }),
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) throw new CourierError(answer.code || "http_error", answer.detail, response.status);
    return answer.receipts[0];
  }

  _headers(extra = {}) {
    return this.token ? { ...extra, authorization: `Bearer ${this.token}` } : extra;
  }

  /** An absolute URL of `path` with `params` (and the token when `withToken`). */
  _url(path, params = [], withToken = false) {
    const url = new URL(this.baseUrl + path, globalThis.location?.href);
    for (const [k, v] of params) url.searchParams.append(k, v);
    if (withToken && this.token) url.searchParams.set("token", this.token);
    return url;
  }

  _socket() {
    if (!this._ws) this._ws = new Socket(this);
    return this._ws;
  }
}

/** One subscription, on any transport. */
class Subscription {
  constructor(courier, topic, options, onMessage, handlers) {
    this.courier = courier;
    this.topic = topic;
    this.filter = options.filter || {};
    this.from = options.from || "new";
    this.onMessage = onMessage;
    this.onReset = handlers.onReset || (() => {});
    this.onStatus = handlers.onStatus || (() => {});
    /** The last sequence delivered: where a reconnect resumes. */
    this.lastSeq = null;
    this.closed = false;
    this.attempt = 0;
    this._timer = null;
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this._timer);
    this._stop?.();
    this.onStatus("closed");
  }

  _filterParams() {
    const params = [];
    if (this.filter.key !== undefined) params.push(["key", this.filter.key]);
    for (const [name, value] of Object.entries(this.filter.headers || {})) params.push([`header.${name}`, value]);
    return params;
  }

  /** Hands a message on once: anything at or before the last sequence is a repeat. */
  _deliver(message) {
    if (this.lastSeq !== null && message.seq <= this.lastSeq) return;
    this.lastSeq = message.seq;
    this.attempt = 0;
    this.onMessage(message);
  }

  _reset(reset) {
    // Delivery goes on from `next`: nothing before it can come any more.
    if (this.lastSeq === null || reset.up_to > this.lastSeq) this.lastSeq = reset.up_to;
    this.onReset(reset);
  }

  _retry(start) {
    if (this.closed) return;
    const wait = backoff(this.attempt++);
    this.onStatus("reconnecting", { in_ms: Math.round(wait) });
    this._timer = setTimeout(start, wait);
  }

  // ---- Server-Sent Events

  _startSse() {
    if (this.closed) return;
    const params = this._filterParams();
    if (this.lastSeq !== null) params.push(["last_event_id", String(this.lastSeq)]);
    else params.push(["from", this.from]);
    const url = this.courier._url(`/v1/topics/${encodeURIComponent(this.topic)}/events`, params, true);
    this.onStatus("connecting");
    const es = new EventSource(url);
    this._stop = () => es.close();
    es.onopen = () => this.onStatus("open");
    es.addEventListener("message", (e) => this._deliver(JSON.parse(e.data)));
    es.addEventListener("reset", (e) => this._reset(JSON.parse(e.data)));
    es.onerror = () => {
      if (this.closed) return;
      if (es.readyState === EventSource.CLOSED) {
        // The browser gave up (an error answer, or the server was away):
        // reconnect ourselves, after the last sequence we saw.
        this._retry(() => this._startSse());
      } else {
        // The browser reconnects by itself, sending Last-Event-ID.
        this.onStatus("reconnecting");
      }
    };
  }

  // ---- WebSocket

  _startWs() {
    const socket = this.courier._socket();
    this._stop = () => socket.unsubscribe(this);
    socket.subscribe(this);
  }

  /** The subscribe frame: after the last sequence seen, else from the start asked for. */
  _subscribeFrame(id) {
    const frame = { op: "subscribe", id, topic: this.topic };
    if (this.lastSeq !== null) frame.after = this.lastSeq;
    else frame.from = this.from;
    if (this.filter.key !== undefined) frame.key = this.filter.key;
    if (this.filter.headers) frame.headers = this.filter.headers;
    return frame;
  }

  // ---- Long polling

  _startPoll() {
    let cursor = null;
    if (this.from === "earliest") cursor = 1;
    else if (/^(seq:)?\d+$/.test(this.from)) cursor = Number(this.from.replace("seq:", ""));
    let controller = null;
    let open = false;
    this._stop = () => controller?.abort();
    const loop = async () => {
      while (!this.closed) {
        const params = this._filterParams();
        if (this.lastSeq !== null && (cursor === null || cursor <= this.lastSeq)) cursor = this.lastSeq + 1;
        if (cursor !== null) params.push(["cursor", String(cursor)]);
        params.push(["wait_ms", "25000"]);
        controller = new AbortController();
        try {
          const response = await fetch(
            this.courier._url(`/v1/topics/${encodeURIComponent(this.topic)}/poll`, params),
            { headers: this.courier._headers(), signal: controller.signal },
          );
          const answer = await response.json();
          if (!response.ok) throw new CourierError(answer.code, answer.detail, response.status);
          if (!open) {
            open = true;
            this.onStatus("open");
          }
          this.attempt = 0;
          if (answer.reset) this._reset(answer.reset);
          for (const m of answer.messages) this._deliver(m);
          cursor = answer.next_cursor;
        } catch (e) {
          if (this.closed) return;
          open = false;
          this.onStatus("reconnecting", { error: e });
          await new Promise((r) => (this._timer = setTimeout(r, backoff(this.attempt++))));
        }
      }
    };
    this.onStatus("connecting");
    loop();
  }
}

/** The one WebSocket of a Courier: every "ws" subscription and publish shares it. */
class Socket {
  constructor(courier) {
    this.courier = courier;
    this.subs = new Map(); // id → Subscription
    this.publishes = new Map(); // ref → {resolve, reject}
    this.nextId = 1;
    this.attempt = 0;
    this.ws = null;
    this._timer = null;
  }

  isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  subscribe(sub) {
    const id = `s${this.nextId++}`;
    sub._wsId = id;
    this.subs.set(id, sub);
    if (this.isOpen()) this._send(sub._subscribeFrame(id));
    else this._connect();
    sub.onStatus("connecting");
  }

  unsubscribe(sub) {
    this.subs.delete(sub._wsId);
    if (this.isOpen()) this._send({ op: "unsubscribe", id: sub._wsId });
    if (this.subs.size === 0 && this.publishes.size === 0) {
      clearTimeout(this._timer);
      this.ws?.close(1000);
      this.ws = null;
    }
  }

  publish(message) {
    const ref = `p${this.nextId++}`;
    return new Promise((resolve, reject) => {
      this.publishes.set(ref, { resolve, reject });
      this._send({ op: "publish", ref, ...message });
    });
  }

  _send(frame) {
    this.ws.send(JSON.stringify(frame));
  }

  _connect() {
    if (this.ws !== null) return;
    const url = this.courier._url("/v1/ws", [], true);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      for (const [id, sub] of this.subs) this._send(sub._subscribeFrame(id));
    };
    ws.onmessage = (e) => this._receive(JSON.parse(e.data));
    ws.onclose = (e) => {
      if (this.ws !== ws) return;
      this.ws = null;
      for (const { reject } of this.publishes.values()) {
        reject(new CourierError("connection_lost", `the WebSocket closed (${e.code})`));
      }
      this.publishes.clear();
      if (this.subs.size === 0) return;
      const wait = backoff(this.attempt++);
      for (const sub of this.subs.values()) sub.onStatus("reconnecting", { code: e.code, reason: e.reason, in_ms: Math.round(wait) });
      this._timer = setTimeout(() => this._connect(), wait);
    };
  }

  _receive(frame) {
    const sub = frame.sub !== undefined ? this.subs.get(frame.sub) : undefined;
    switch (frame.op) {
      case "subscribed":
        sub?.onStatus("open");
        break;
      case "message":
        sub?._deliver(frame.message);
        break;
      case "reset":
        sub?._reset({ lost: frame.lost, up_to: frame.up_to, next: frame.next });
        break;
      case "published": {
        const p = this.publishes.get(frame.ref);
        this.publishes.delete(frame.ref);
        p?.resolve({ seq: frame.seq, id: frame.id });
        break;
      }
      case "error": {
        const error = new CourierError(frame.code, frame.message);
        if (frame.ref !== undefined && this.publishes.has(frame.ref)) {
          this.publishes.get(frame.ref).reject(error);
          this.publishes.delete(frame.ref);
        } else if (sub) {
          // The subscription has ended on the server.
          this.subs.delete(frame.sub);
          sub.closed = true;
          sub.onStatus("closed", { error });
        }
        break;
      }
      default:
        break; // pong, unsubscribed, and frames of later versions
    }
  }
}
