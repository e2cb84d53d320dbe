// sluice client: live channels of a sluice feed, in browsers and Node 20, with no dependency and
// no build step. `connect(url | [urls], options)` gives a Feed; `feed.subscribe(channel, options,
// onMessage)` reads a channel. The feed reconnects by itself (jittered exponential backoff, the
// next URL of the list first) and resumes every channel after the last seq it saw, so a reconnect
// loses nothing and repeats nothing; it says so with a `reconnect` event ({recovered: true}).
//
// Transports: a WebSocket (GET /v1/ws) first; where one cannot open, one Server-Sent Events stream
// (EventSource) for the set of channels; where neither exists (Node 20), one NDJSON stream over
// fetch. seq is global to the feed and a stream delivers its channels in seq order, so one `since`
// (the smallest channel position) resumes a stream of several channels; what a channel already
// had is dropped by seq. See README.md beside this file.
//
// Served by sluice-sse at /client.js (compiled in from clients/js/sluice.js).

export const VERSION = "0.1.0";

const CHANNEL_RE = /^[a-z0-9_-]{1,64}$/;
const DEFAULTS = {
  transport: "auto",   // "auto" | "websocket" | "eventsource" | "ndjson"
  minDelay: 250,       // ms: first backoff step (and the jitter of a first reconnect)
  maxDelay: 15000,     // ms: backoff cap
  stableAfter: 1000,   // ms open after which a drop starts the backoff afresh
  pingInterval: 20000, // ms between WebSocket pings (0: none)
  idleTimeout: 45000,  // ms without a byte before the connection counts as dead (0: never)
  connectTimeout: 10000, // ms for a connection to open (a stopped server accepts TCP, answers nothing)
  // WebSocket subscriptions reading their history at once: sse reads at most 4 per client
  // address (SLUICE_SSE_HISTORY_PER_CLIENT) and refuses more (history_busy).
  historyConcurrency: 4,
};
const EVENT_TYPES = new Set(["message", "update", "delete"]);
const PRESENCE_TYPES = new Set(["join", "leave"]);
// WebSocket errors that end a subscription which may be taken again (after a pause, or with a
// fresh token); any other error naming a subscription ends it for good.
const RETRY_CODES = new Set(["history_busy", "history_unavailable"]);
const TOKEN_CODES = new Set(["token_expired", "expired_token"]);

/** The events a Feed dispatches: `event.detail` holds what `feed.on()` listeners receive. */
export class SluiceEvent extends Event {
  constructor(type, detail) {
    super(type);
    this.detail = detail;
  }
}

function now() { return Date.now(); }
function jitter(ms) { return ms * (0.5 + Math.random() * 0.5); }
function isSeq(v) { return Number.isSafeInteger(v) && v >= 0; }
// An exception in user code must not break the feed's own bookkeeping: report it the way
// EventTarget reports a throwing listener (an uncaught error), after the feed is done.
function safeCall(fn, ...args) {
  try { fn(...args); } catch (e) { queueMicrotask(() => { throw e; }); }
}

function baseUrl(u) {
  const loc = globalThis.location && globalThis.location.href;
  const url = loc ? new URL(String(u), loc) : new URL(String(u));
  url.pathname = url.pathname.replace(/\/v1\/(ws|stream)\/?$/, "/").replace(/\/?$/, "/");
  url.search = "";
  url.hash = "";
  return url.href;
}
function wsUrl(base) {
  const u = new URL("v1/ws", base);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  return u.href;
}

/** One channel read by a feed; every Subscription of that channel shares it. */
class Channel {
  constructor(name, opts) {
    this.name = name;
    this.history = opts.history;      // the caller's, undefined: the server's default
    this.since = opts.since;
    this.presence = !!opts.presence;
    this.handles = new Set();
    this.lastSeq = null;              // the last seq delivered (or dropped as seen)
    // Where to resume: every event of the channel up to pos has been delivered. Starts at since;
    // a stream raises it for each of its channels with every seq it delivers (one ordered
    // stream), a WebSocket with the channel's own seqs.
    this.pos = isSeq(opts.since) ? opts.since : null;
    this.started = false;             // something (a history, an event) was read for it
    this.ws = null;                   // its subscription on the current WebSocket
    this.retries = 0;
    this.retryTimer = null;
  }
}

/** What `feed.subscribe()` returns. */
export class Subscription {
  #feed; #chan; #callback;
  constructor(feed, chan, callback) {
    this.#feed = feed;
    this.#chan = chan;
    this.#callback = callback;
    this.active = true;
  }
  get channel() { return this.#chan.name; }
  /** The last seq delivered for this channel (null before the first). */
  get lastSeq() { return this.#chan.lastSeq; }
  /** The position a resume starts after (null while unknown). */
  get position() { return this.#chan.pos; }
  _call(data, info) { if (this.active && this.#callback) safeCall(this.#callback, data, info); }
  unsubscribe() {
    if (!this.active) return;
    this.active = false;
    this.#feed._unsubscribe(this.#chan, this);
  }
}

export class Feed extends EventTarget {
  #wrapped = new Map(); // listener -> (type -> wrapper), for on()/off()

  constructor(urls, options = {}) {
    super();
    const list = (Array.isArray(urls) ? urls : [urls]).filter(u => u !== undefined && u !== null && u !== "");
    if (list.length === 0) throw new TypeError("sluice.connect: give the sse URL (or a list of them)");
    this.urls = list.map(baseUrl);
    this.options = { ...DEFAULTS, ...options };
    if (!["auto", "websocket", "eventsource", "ndjson"].includes(this.options.transport))
      throw new TypeError(`sluice.connect: unknown transport ${JSON.stringify(this.options.transport)}`);
    this.state = "connecting";
    this.url = null;        // the base URL of the current (or last) connection
    this.transport = null;  // its kind: "websocket" | "eventsource" | "ndjson"
    this.stats = { events: 0, duplicates: 0, reconnects: 0, resets: 0, connects: 0 };
    this._channels = new Map();
    this._conn = null;
    this._urlIndex = 0;
    this._failures = 0;
    this._wsBroken = false;
    this._timer = null;
    this._reopenQueued = false;
    this._everOpen = false;
    this._token = options.token || null;
    this._lost = null;      // since the last connection dropped, until its reconnect is reported
    queueMicrotask(() => this._attempt());
  }

  // ---- public API ------------------------------------------------------------------------------

  /** Listens to a feed event; fn gets the event's detail. Returns a function that stops it. */
  on(type, fn) {
    let byType = this.#wrapped.get(fn);
    if (!byType) this.#wrapped.set(fn, (byType = new Map()));
    if (!byType.has(type)) {
      const w = e => fn(e.detail, e);
      byType.set(type, w);
      this.addEventListener(type, w);
    }
    return () => this.off(type, fn);
  }
  off(type, fn) {
    const byType = this.#wrapped.get(fn);
    const w = byType && byType.get(type);
    if (w) {
      this.removeEventListener(type, w);
      byType.delete(type);
    }
  }

  subscribe(channel, options, onMessage) {
    if (typeof options === "function") [options, onMessage] = [{}, options];
    options = options || {};
    if (this.state === "closed") throw new Error("sluice: this feed is closed");
    // "#general" is general, as sse takes it; its frames name the channel without the "#".
    if (typeof channel === "string" && channel.length > 1 && channel[0] === "#") channel = channel.slice(1);
    if (channel !== "*" && !CHANNEL_RE.test(channel))
      throw new TypeError(`sluice: channel ${JSON.stringify(channel)} must match [a-z0-9_-]{1,64} (or be "*")`);
    if (options.history !== undefined && !isSeq(options.history))
      throw new TypeError("sluice: history must be a non-negative integer");
    if (options.since !== undefined && options.since !== null && !isSeq(options.since))
      throw new TypeError("sluice: since must be a non-negative integer (a seq)");
    if (channel === "*" && this.options.transport === "websocket")
      throw new TypeError('sluice: all channels ("*") need a stream transport (eventsource or ndjson)');
    let chan = this._channels.get(channel);
    const fresh = !chan;
    if (fresh) {
      chan = new Channel(channel, options);
      this._channels.set(channel, chan);
    }
    const sub = new Subscription(this, chan, onMessage);
    chan.handles.add(sub);
    if (fresh) this._added(chan);
    return sub;
  }

  /** Ends the feed: no more events, no reconnect. */
  close() {
    if (this.state === "closed") return;
    clearTimeout(this._timer);
    this._timer = null;
    for (const chan of this._channels.values()) clearTimeout(chan.retryTimer);
    const conn = this._conn;
    this._conn = null;
    if (conn) conn.close();
    this._setState("closed");
  }

  /** The channels subscribed, with their positions. */
  get channels() {
    return [...this._channels.values()].map(c => ({ channel: c.name, lastSeq: c.lastSeq, position: c.pos }));
  }

  // ---- events ----------------------------------------------------------------------------------

  _emit(type, detail) { this.dispatchEvent(new SluiceEvent(type, detail)); }
  _error(detail) { this._emit("error", { fatal: false, ...detail }); }

  _setState(state) {
    if (state === this.state) return;
    const previous = this.state;
    this.state = state;
    const detail = { state, previous, url: this.url, transport: this.transport };
    this._emit("state", detail);
    this._emit(state, detail);
  }

  // Events reached targets (the channel's own, and "*"): each drops what it already had, by seq.
  // The feed emits the event once if any target took it.
  _arrive(targets, type, data, meta = {}) {
    const seq = data && isSeq(data.seq) ? data.seq : null;
    let taken = false;
    const channel = data && typeof data.channel === "string" ? data.channel : meta.channel;
    const info = { type, channel, seq, history: !!meta.history };
    for (const chan of targets) {
      if (seq !== null && !PRESENCE_TYPES.has(type)) {
        if (chan.lastSeq !== null && seq <= chan.lastSeq) continue;
        chan.lastSeq = seq;
        if (chan.pos === null || seq > chan.pos) chan.pos = seq;
      }
      chan.started = true;
      taken = true;
      if (meta.silent) continue;
      for (const h of [...chan.handles]) h._call(data, info);
    }
    if (!taken && seq !== null) this.stats.duplicates++;
    if (!taken || meta.silent) return;
    this.stats.events++;
    this._emit(type, { ...info, data });
  }

  _reset(chan, detail) {
    this.stats.resets++;
    if (this._lost) this._lost.resets.add(chan.name);
    this._emit("reset", { channel: chan.name, since: detail.since ?? null, reason: detail.reason || "too_old" });
  }

  // ---- subscriptions -----------------------------------------------------------------------------

  _added(chan) {
    const conn = this._conn;
    if (chan.name === "*" && conn && conn.kind === "websocket") {
      this._restart(); // all channels: only a stream carries them
    } else if (conn && conn.kind === "websocket") {
      if (conn.opened) conn.subscribe(chan);
    } else if (this._streamKind() || conn) {
      this._queueReopen();
    }
  }

  _unsubscribe(chan, sub) {
    chan.handles.delete(sub);
    if (chan.handles.size > 0 || this._channels.get(chan.name) !== chan) return;
    this._channels.delete(chan.name);
    clearTimeout(chan.retryTimer);
    if (this._lost) {
      this._lost.channels.delete(chan.name);
      if (this._lost.report) this._lost.report.delete(chan.name);
      this._checkReport(); // it was perhaps the one the report waited for
    }
    const conn = this._conn;
    if (conn && conn.kind === "websocket") conn.unsubscribe(chan);
    else if (conn || this._streamKind()) this._queueReopen();
  }

  // A stream carries a fixed set of channels: a change reopens it (after this turn, so that
  // subscriptions made together cost one request), resuming every channel from its position.
  _queueReopen() {
    if (this._reopenQueued || this.state === "closed") return;
    this._reopenQueued = true;
    queueMicrotask(() => {
      this._reopenQueued = false;
      if (this.state === "closed" || this._timer) return; // a reconnect is due anyway
      const conn = this._conn;
      if (conn && conn.kind === "websocket") return;
      if (conn) {
        this._conn = null;
        conn.close();
        this._open(conn.url, conn.token, [conn.kind], 0); // none left: no connection, until a subscribe
      } else {
        this._attempt();
      }
    });
  }

  _streamChannels() { return [...this._channels.values()]; }
  _wsChannels() { return [...this._channels.values()].filter(c => c.name !== "*"); }

  // The stream kind in use when there is no connection because nothing was subscribed.
  _streamKind() { return this._idleKind || null; }

  // ---- connections -------------------------------------------------------------------------------

  _kinds() {
    const o = this.options;
    const hasWS = !!(o.WebSocket || globalThis.WebSocket);
    const stream = o.EventSource || globalThis.EventSource ? "eventsource" : "ndjson";
    if (o.transport !== "auto") return [o.transport];
    if (hasWS && !this._wsBroken && !this._channels.has("*")) return ["websocket", stream];
    return [stream];
  }

  async _attempt() {
    this._timer = null;
    if (this.state === "closed" || this._conn || this._attempting) return;
    const url = this.urls[this._urlIndex % this.urls.length];
    let token = this._token;
    if (typeof this.options.getToken === "function") {
      this._attempting = true; // one attempt at a time, while getToken answers
      try {
        token = await this.options.getToken();
        this._token = token || null;
      } catch (e) {
        this._error({ code: "token_unavailable", message: `getToken failed: ${e && e.message || e}` });
        this._urlIndex++;
        this._retry();
        return;
      } finally {
        this._attempting = false;
      }
      if (this.state === "closed" || this._conn) return;
    }
    this._open(url, token || null, this._kinds(), 0);
  }

  _open(url, token, kinds, i) {
    const kind = kinds[i];
    this._idleKind = null;
    if (kind !== "websocket" && this._streamChannels().length === 0) {
      this._idleKind = kind; // a stream of no channel would be every channel: wait for a subscribe
      return;
    }
    const conn = kind === "websocket" ? new WsConn(this, url, token) : new StreamConn(this, url, token, kind);
    conn.fallback = i + 1 < kinds.length ? () => this._open(url, token, kinds, i + 1) : null;
    conn.afterWsFailure = i > 0 && kinds[0] === "websocket";
    this._conn = conn;
    conn.start();
  }

  _restart() {
    const conn = this._conn;
    this._conn = null;
    if (conn) conn.close();
    clearTimeout(this._timer);
    this._timer = null;
    this._attempt();
  }

  _retry(delay) {
    if (this.state === "closed") return;
    this._setState(this._everOpen ? "reconnecting" : "connecting");
    if (delay === undefined) {
      const o = this.options;
      delay = this._failures === 0 ? Math.random() * o.minDelay
        : jitter(Math.min(o.maxDelay, o.minDelay * 2 ** (this._failures - 1)));
    }
    this._failures++;
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._attempt(), delay);
  }

  _onOpen(conn) {
    if (conn !== this._conn) return;
    if (conn.afterWsFailure && !this._wsBroken) {
      this._wsBroken = true; // a WebSocket cannot open here but a stream can: stay on streams
      this._error({ code: "websocket_unavailable", message: `no WebSocket to ${conn.url}: using ${conn.kind}` });
    }
    conn.openedAt = now();
    this.url = conn.url;
    this.transport = conn.kind;
    this.stats.connects++;
    const lost = this._lost;
    if (lost) {
      // What each channel resumes from; the report waits until each is confirmed.
      lost.report = new Map();
      for (const [name, started] of lost.channels) {
        const chan = this._channels.get(name);
        if (chan) lost.report.set(name, { since: started ? chan.pos : null, fresh: !started, confirmed: false });
      }
      lost.attempts = this._failures;
    }
    this._everOpen = true;
    this._setState("open");
    this._checkReport();
  }

  // The connection ended: before it opened (fall back to the next transport, or retry later),
  // or after (reconnect: at once after a 1001 or a stream the server ended, else with backoff).
  _onClose(conn, info) {
    if (conn !== this._conn) return;
    this._conn = null;
    if (info.fatal) {
      this._error({ ...info.error, status: info.status, fatal: true });
      this.close();
      return;
    }
    // Open until now (or a stream reopened for a new set of channels, which failed): what comes
    // next is a reconnect, to be reported.
    if ((conn.opened || this.state === "open") && !this._lost) {
      this._lost = { at: now(), channels: new Map(), resets: new Set(), failed: new Set(), report: null };
      for (const chan of this._channels.values()) this._lost.channels.set(chan.name, chan.started);
    }
    if (this._lost) this._lost.report = null;
    if (!conn.opened) {
      if (info.error) this._error({ code: "connect_failed", url: conn.url, transport: conn.kind, ...info.error });
      if (conn.fallback) { conn.fallback(); return; }
      this._urlIndex++;
      this._retry();
      return;
    }
    if (info.goingAway || now() - conn.openedAt >= this.options.stableAfter) this._failures = 0;
    this._urlIndex++;
    this._retry(info.goingAway ? 0 : undefined);
  }

  // A channel's resume is confirmed (its history came, or its stream spoke): once every channel
  // of the reconnect is, report whether it recovered without a gap.
  _confirm(name, failed = false) {
    if (failed && this._lost) this._lost.failed.add(name);
    const r = this._lost && this._lost.report && this._lost.report.get(name);
    if (r) r.confirmed = true;
    this._checkReport();
  }
  _checkReport() {
    const lost = this._lost;
    if (!lost || !lost.report) return;
    for (const r of lost.report.values()) if (!r.confirmed) return;
    const channels = {};
    let recovered = true;
    for (const [name, r] of lost.report) {
      const reset = lost.resets.has(name);
      const ok = !lost.failed.has(name) && (r.fresh || (r.since !== null && !reset));
      channels[name] = { since: r.since, recovered: ok, reset };
      recovered = recovered && ok;
    }
    this._lost = null;
    this.stats.reconnects++;
    this._emit("reconnect", {
      recovered, channels, url: this.url, transport: this.transport,
      downtime: now() - lost.at, attempts: lost.attempts,
    });
  }
}

// A connection that has not opened within connectTimeout fails (end(): its own way to give up).
function armConnectTimer(conn, end) {
  const ms = conn.feed.options.connectTimeout;
  if (ms > 0) conn.connectTimer = setTimeout(() => { if (!conn.opened && !conn.closed) end(); }, ms);
}

// ---- WebSocket -----------------------------------------------------------------------------------

class WsConn {
  constructor(feed, url, token) {
    this.feed = feed;
    this.url = url;
    this.token = token;
    this.kind = "websocket";
    this.opened = false;
    this.closed = false;
    this.pending = []; // commands awaiting their reply, in order: {kind, channel}
    this.subs = new Map(); // channel -> {state, sinceSent, chan}
    this.waiting = []; // channels to subscribe once fewer histories are being read
  }

  start() {
    const WS = this.feed.options.WebSocket || globalThis.WebSocket;
    try {
      this.ws = new WS(wsUrl(this.url));
    } catch (e) {
      queueMicrotask(() => this.feed._onClose(this, { error: { message: String(e && e.message || e) } }));
      return;
    }
    const ws = this.ws;
    armConnectTimer(this, () => {
      this._stop();
      try { ws.close(); } catch { /* not open */ }
      this.feed._onClose(this, { error: { message: "the WebSocket did not open in time" } });
    });
    ws.onopen = () => {
      if (this.closed) return;
      clearTimeout(this.connectTimer);
      this.opened = true;
      this._touch();
      const o = this.feed.options;
      if (o.pingInterval > 0) this.pingTimer = setInterval(() => this._send({ command: "ping" }, { kind: "ping" }), o.pingInterval);
      this.feed._onOpen(this);
      for (const chan of this.feed._wsChannels()) this.subscribe(chan);
    };
    ws.onmessage = e => {
      if (this.closed) return;
      this._touch();
      if (typeof e.data !== "string") return;
      let f;
      try { f = JSON.parse(e.data); } catch { return; }
      if (f && typeof f === "object") this._frame(f);
    };
    // Browsers follow an error with a close event; Node's WebSocket (undici) does not when the
    // connection fails before the handshake: either way, the first of them ends the connection.
    ws.onerror = () => {
      if (this.closed) return;
      this._stop();
      try { ws.close(); } catch { /* not open */ }
      this.feed._onClose(this, { code: 1006, error: this.opened ? undefined : { message: "the WebSocket did not open" } });
    };
    ws.onclose = e => {
      if (this.closed) return;
      this._stop();
      this.feed._onClose(this, { code: e.code, reason: e.reason, goingAway: e.code === 1001 });
    };
  }

  close() {
    if (this.closed) return;
    this._stop();
    try { this.ws && this.ws.close(1000); } catch { /* already closing */ }
  }

  _stop() {
    this.closed = true;
    clearTimeout(this.connectTimer);
    clearInterval(this.pingTimer);
    clearTimeout(this.idleTimer);
    for (const s of this.subs.values()) if (s.chan.ws === s) s.chan.ws = null;
  }

  _touch() {
    const ms = this.feed.options.idleTimeout;
    if (!(ms > 0)) return;
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => {
      if (this.closed) return;
      this._stop();
      try { this.ws.close(4000, "idle"); } catch { /* gone */ }
      this.feed._onClose(this, { code: 4000, reason: "no answer" });
    }, ms);
  }

  _send(cmd, entry) {
    if (this.closed || !this.ws || this.ws.readyState !== 1) return false;
    this.ws.send(JSON.stringify(cmd));
    this.pending.push(entry);
    return true;
  }

  _take(kind, channel) {
    const i = this.pending.findIndex(p => p.kind === kind && (channel === undefined || p.channel === channel));
    return i < 0 ? null : this.pending.splice(i, 1)[0];
  }

  subscribe(chan) {
    clearTimeout(chan.retryTimer);
    chan.retryTimer = null;
    let reading = 0;
    for (const s of this.subs.values()) if (s.state === "subscribing" || s.state === "history") reading++;
    if (reading >= Math.max(1, this.feed.options.historyConcurrency)) {
      if (!this.waiting.includes(chan)) this.waiting.push(chan);
      return;
    }
    const cmd = { command: "subscribe", channel: chan.name };
    // With history 0 the server would send nothing to place the channel: ask for one message,
    // which is not delivered, so that a resume knows where the channel stood.
    if (chan.history !== undefined) cmd.history = chan.history === 0 ? 1 : chan.history;
    if (chan.pos !== null) cmd.since = chan.pos;
    if (chan.presence) cmd.presence = true;
    // sse ignores members it does not know, so a token can go along before tokens are checked.
    if (this.token) cmd.token = this.token;
    const s = { state: "subscribing", sinceSent: cmd.since, chan };
    if (!this._send(cmd, { kind: "subscribe", channel: chan.name })) return;
    this.subs.set(chan.name, s);
    chan.ws = s;
  }

  // A history was read (or refused): the next waiting channel may subscribe.
  _next() {
    while (this.waiting.length > 0 && !this.closed) {
      const chan = this.waiting.shift();
      if (this.feed._channels.get(chan.name) !== chan || chan.ws) continue;
      this.subscribe(chan);
      return;
    }
  }

  unsubscribe(chan) {
    this.waiting = this.waiting.filter(c => c !== chan);
    const s = this.subs.get(chan.name);
    if (!s || s.chan !== chan) return;
    s.state = "unsubscribing";
    chan.ws = null;
    this._send({ command: "unsubscribe", channel: chan.name }, { kind: "unsubscribe", channel: chan.name });
    this._next();
  }

  // The subscription s of this socket, if frames for it count now (after its "subscribed").
  _live(name) {
    const s = this.subs.get(name);
    if (!s || (s.state !== "history" && s.state !== "live")) return null;
    const chan = this.feed._channels.get(name);
    return chan && chan.ws === s ? s : null;
  }

  _frame(f) {
    const feed = this.feed;
    switch (f.type) {
      case "subscribed": {
        this._take("subscribe", f.channel);
        const s = this.subs.get(f.channel);
        if (s && s.state === "subscribing") s.state = "history";
        return;
      }
      case "unsubscribed": {
        this._take("unsubscribe", f.channel);
        const s = this.subs.get(f.channel);
        if (s && s.state === "unsubscribing") this.subs.delete(f.channel);
        return;
      }
      case "pong":
        this._take("ping");
        return;
      case "history": {
        const s = this._live(f.channel);
        if (!s || s.state !== "history") return;
        const chan = s.chan;
        const messages = Array.isArray(f.messages) ? f.messages : [];
        // The one message asked for in place of history 0 only places the channel.
        const silent = chan.history === 0 && s.sinceSent === undefined;
        for (const m of messages) {
          if (!m || typeof m !== "object") continue;
          const type = EVENT_TYPES.has(m.type) ? m.type : "message";
          feed._arrive([chan], type, m, { history: true, silent, channel: chan.name });
        }
        // An empty history (of history > 0, not a resume): the channel has no message standing
        // yet, so a resume reads it from its beginning.
        if (messages.length === 0 && chan.pos === null && s.sinceSent === undefined) chan.pos = 0;
        s.state = "live";
        chan.started = true;
        chan.retries = 0;
        feed._confirm(chan.name);
        this._next();
        return;
      }
      case "message":
      case "update":
      case "delete": {
        const m = f.message;
        const s = m && this._live(m.channel);
        if (s && s.state === "live") feed._arrive([s.chan], f.type, m);
        return;
      }
      case "join":
      case "leave": {
        const s = this._live(f.channel);
        if (s) feed._arrive([s.chan], f.type, f, { channel: f.channel });
        return;
      }
      case "reset": {
        const s = this._live(f.channel);
        if (!s) return;
        s.sinceSent = undefined; // the newest history follows, as if subscribed afresh
        feed._reset(s.chan, f);
        return;
      }
      case "error":
        this._onError(f);
        return;
      default:
        return; // a frame this client does not know yet
    }
  }

  _onError(f) {
    this._onErrorFrame(f);
    this._next();
  }

  _onErrorFrame(f) {
    const feed = this.feed;
    const s = f.channel ? this.subs.get(f.channel) : null;
    let chan = null;
    if (s && s.state !== "subscribing" && s.state !== "unsubscribing") {
      // It ends a subscription that was running (history unreadable, token expired, ...).
      this.subs.delete(f.channel);
      chan = s.chan.ws === s ? s.chan : null;
    } else {
      // The reply to the oldest command (to its channel's subscribe if it names one).
      const entry = f.channel ? this._take("subscribe", f.channel) || this.pending.shift() : this.pending.shift();
      if (entry && entry.kind === "subscribe") {
        const es = this.subs.get(entry.channel);
        if (es && es.state === "subscribing") {
          this.subs.delete(entry.channel);
          chan = es.chan.ws === es ? es.chan : null;
        }
      } else if (entry && entry.kind === "unsubscribe") {
        const es = this.subs.get(entry.channel);
        if (es && es.state === "unsubscribing") this.subs.delete(entry.channel);
        return; // not_subscribed: it is gone either way
      }
    }
    if (!chan) {
      feed._error({ code: f.code, message: f.message, channel: f.channel });
      return;
    }
    chan.ws = null;
    const retry = RETRY_CODES.has(f.code) || TOKEN_CODES.has(f.code);
    feed._error({ code: f.code, message: f.message, channel: chan.name, fatal: !retry });
    if (!retry) {
      feed._confirm(chan.name, true); // it will not resume: the report must not wait for it
      return;
    }
    const delay = jitter(Math.min(feed.options.maxDelay, feed.options.minDelay * 2 ** chan.retries++));
    chan.retryTimer = setTimeout(async () => {
      chan.retryTimer = null;
      if (this.closed || feed._conn !== this || feed._channels.get(chan.name) !== chan) return;
      if (TOKEN_CODES.has(f.code) && typeof feed.options.getToken === "function") {
        try { this.token = feed._token = (await feed.options.getToken()) || null; } catch (e) {
          feed._error({ code: "token_unavailable", message: `getToken failed: ${e && e.message || e}` });
        }
        if (this.closed || feed._conn !== this || feed._channels.get(chan.name) !== chan) return;
      }
      this.subscribe(chan);
    }, delay);
  }
}

// ---- streams: EventSource (SSE) and NDJSON over fetch ----------------------------------------------

class StreamConn {
  constructor(feed, url, token, kind) {
    this.feed = feed;
    this.url = url;
    this.token = token;
    this.kind = kind;
    this.opened = false;
    this.closed = false;
    this.confirmed = false;
    this.lines = 0;
  }

  start() {
    const feed = this.feed;
    const chans = feed._streamChannels();
    this.names = chans.map(c => c.name);
    const all = this.names.includes("*");
    const q = new URLSearchParams();
    if (!all) q.set("channels", this.names.join(","));
    // seq is global and a stream delivers its channels in seq order: resuming after the smallest
    // position loses nothing for any channel, and each drops what it already had by seq. A channel
    // added to a running stream (no position yet) starts from there too: over a stream, `history`
    // applies only when no channel has a position (and counts the channels' messages together).
    const placed = chans.filter(c => c.pos !== null);
    if (placed.length > 0) {
      this.since = Math.min(...placed.map(c => c.pos));
      q.set("since", String(this.since));
    } else {
    }
    // With since, history is what follows a reset (too old a position: the newest messages).
    const hs = chans.map(c => c.history).filter(h => h !== undefined);
    if (hs.length > 0) q.set("history", String(Math.max(...hs)));
    if (chans.some(c => c.presence)) q.set("presence", "1");
    if (this.kind === "ndjson") q.set("format", "ndjson");
    else if (this.token) q.set("token", this.token); // EventSource cannot set a header
    const url = new URL("v1/stream", this.url);
    url.search = q.toString();
    armConnectTimer(this, () => this._end({ error: { message: "the stream did not open in time" } }));
    if (this.kind === "eventsource") this._startEventSource(url.href);
    else this._startFetch(url.href);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.idleTimer);
    clearTimeout(this.connectTimer);
    if (this.es) this.es.close();
    if (this.ac) this.ac.abort();
  }

  _end(info) {
    if (this.closed) return;
    this.close();
    this.feed._onClose(this, info);
  }

  _touch() {
    const ms = this.feed.options.idleTimeout;
    if (!(ms > 0) || this.kind === "eventsource") return; // EventSource hides the heartbeats
    clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => this._end({ reason: "no heartbeat" }), ms);
  }

  _opened() {
    clearTimeout(this.connectTimer);
    this.opened = true;
    this._touch();
    this.feed._onOpen(this);
  }

  _startEventSource(url) {
    const ES = this.feed.options.EventSource || globalThis.EventSource;
    try {
      this.es = new ES(url);
    } catch (e) {
      queueMicrotask(() => this._end({ error: { message: String(e && e.message || e) } }));
      return;
    }
    this.es.onopen = () => { if (!this.closed) this._opened(); };
    // EventSource would reconnect by itself, to the same URL with its own backoff: the feed does.
    this.es.onerror = () => this._end({});
    for (const type of ["message", "update", "delete", "reset", "join", "leave"]) {
      this.es.addEventListener(type, e => {
        if (this.closed) return;
        let data;
        try { data = JSON.parse(e.data); } catch { return; }
        this._event(type, data);
      });
    }
  }

  _startFetch(url) {
    const f = this.feed.options.fetch || globalThis.fetch;
    if (typeof f !== "function") {
      queueMicrotask(() => this._end({ fatal: true, error: { code: "no_transport", message: "no WebSocket, EventSource or fetch here" } }));
      return;
    }
    this.ac = new AbortController();
    const headers = { Accept: "application/x-ndjson" };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    f(url, { headers, signal: this.ac.signal, cache: "no-store" }).then(async res => {
      if (this.closed) return;
      if (!res.ok) {
        let error = { code: `http_${res.status}`, message: res.statusText };
        try {
          const body = await res.json();
          if (body && body.error) error = body.error;
        } catch { /* not JSON */ }
        // A request the server refuses as such will not pass by retrying (except 401 with a
        // getToken to refresh it); overload and readiness answers (429, 5xx) are retried.
        const s = res.status;
        const fatal = s >= 400 && s < 500 && s !== 408 && s !== 429 && !(s === 401 && this.feed.options.getToken);
        this._end({ fatal, status: s, error });
        return;
      }
      this._opened();
      const reader = res.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { done, value } = await reader.read();
        if (this.closed) return;
        if (done) break;
        this._touch();
        buf += dec.decode(value, { stream: true });
        let start = 0, nl;
        while ((nl = buf.indexOf("\n", start)) >= 0) {
          this._line(buf.slice(start, nl));
          if (this.closed) return;
          start = nl + 1;
        }
        buf = buf.slice(start);
      }
      // A stream never ends by itself: the server is stopping (drain). Go on elsewhere at once.
      this._end({ goingAway: true });
    }).catch(e => {
      if (!this.closed) this._end({ error: { code: "stream_failed", message: String(e && e.message || e) } });
    });
  }

  _line(line) {
    line = line.trim();
    this.lines++;
    if (line === "") {
      // The first empty line starts every NDJSON stream; later ones are heartbeats, which come
      // only after the history (and so after any reset).
      if (this.lines > 1) this._confirm();
      return;
    }
    let data;
    try { data = JSON.parse(line); } catch { return; }
    if (!data || typeof data !== "object") return;
    const type = typeof data.type === "string" ? data.type : "message";
    this._event(type, data);
  }

  _confirm() {
    if (this.confirmed) return;
    this.confirmed = true;
    for (const name of this.names) this.feed._confirm(name);
  }

  _event(type, data) {
    const feed = this.feed;
    if (feed._conn !== this) return;
    const mine = this.names.map(n => feed._channels.get(n)).filter(Boolean);
    if (type === "reset") {
      // The position was too old: the stream goes on from the newest history, for every channel.
      for (const chan of mine) feed._reset(chan, data);
      this._confirm();
      return;
    }
    if (!EVENT_TYPES.has(type) && !PRESENCE_TYPES.has(type)) return;
    // SSE names a join or leave by its event: line only; NDJSON and WebSocket carry it as `type`.
    if (PRESENCE_TYPES.has(type) && data.type !== type) data = { type, ...data };
    this._confirm();
    const targets = mine.filter(c => c.name === "*" || c.name === data.channel);
    feed._arrive(targets, type, data);
    if (PRESENCE_TYPES.has(type) || !isSeq(data.seq)) return;
    // One stream, in seq order: every event of its channels up to this seq has come.
    for (const chan of mine) {
      chan.started = true;
      if (chan.pos === null || data.seq > chan.pos) chan.pos = data.seq;
    }
  }
}

export function connect(urls, options) {
  return new Feed(urls, options);
}

export default { connect, Feed, Subscription, SluiceEvent, VERSION };
