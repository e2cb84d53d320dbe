// Types of the sluice client (sluice.js), written by hand.

/** A stored message, as the api and the streams carry it. */
export interface Message {
  id: string;
  channel: string;
  author: string;
  text: string;
  source: string;
  created_at: string;
  seq: number;
  url?: string;
  edited_at?: string;
  /** What ingest adds for Mastodon posts (display name, avatar, media, ...): see sluice's README. */
  meta?: Record<string, unknown>;
}

/** An edit or a deletion of a message (its own seq). */
export interface MessageEvent {
  type: "update" | "delete";
  id: string;
  channel: string;
  seq: number;
  text?: string;
  edited_at?: string;
  meta?: Record<string, unknown>;
}

/** A presence event: a user (a reader token's sub and name) joined or left the channel. */
export interface PresenceEvent {
  type: "join" | "leave";
  channel: string;
  user: { id: string; name?: string };
  [key: string]: unknown;
}

export type EventKind = "message" | "update" | "delete" | "join" | "leave";

export interface EventInfo {
  type: EventKind;
  channel: string;
  /** null for presence events. */
  seq: number | null;
  /** True when the event came in a WebSocket history frame (a stream cannot tell). */
  history: boolean;
}

export type OnMessage = (data: Message | MessageEvent | PresenceEvent, info: EventInfo) => void;

export type Transport = "websocket" | "eventsource" | "ndjson";
export type State = "connecting" | "open" | "reconnecting" | "closed";

export interface ConnectOptions {
  /** Sent in each WebSocket subscribe command, as ?token= (EventSource) or Authorization: Bearer (fetch). */
  token?: string;
  /** Called before every connection attempt (the first one too); its answer replaces the token. */
  getToken?: () => string | null | Promise<string | null>;
  /** "auto" (default): WebSocket, else EventSource, else NDJSON over fetch. */
  transport?: "auto" | Transport;
  /** Constructors and fetch to use in place of the globals (Node, tests). */
  WebSocket?: typeof WebSocket;
  EventSource?: typeof EventSource;
  fetch?: typeof fetch;
  /** ms; first backoff step (default 250). */
  minDelay?: number;
  /** ms; backoff cap (default 15000). */
  maxDelay?: number;
  /** ms a connection must have been open for its drop to restart the backoff (default 1000). */
  stableAfter?: number;
  /** ms between WebSocket pings (default 20000; 0: none). */
  pingInterval?: number;
  /** ms without a byte before a connection counts as dead (default 45000; 0: never). */
  idleTimeout?: number;
  /** ms for a connection to open before the attempt counts as failed (default 10000; 0: no limit). */
  connectTimeout?: number;
  /** WebSocket subscriptions reading their history at once (default 4). */
  historyConcurrency?: number;
}

export interface SubscribeOptions {
  /** Messages of history to start with (WebSocket: of this channel; a stream: of its channels together). */
  history?: number;
  /** Start after this seq (resume). */
  since?: number | null;
  /** Ask for join/leave events (passed to the server). */
  presence?: boolean;
}

export interface StateDetail {
  state: State;
  previous: State;
  url: string | null;
  transport: Transport | null;
}

export interface ReconnectDetail {
  /** Every channel resumed from its last seq, without a reset: nothing was lost. */
  recovered: boolean;
  channels: Record<string, { since: number | null; recovered: boolean; reset: boolean }>;
  url: string;
  transport: Transport;
  /** ms from the drop to the confirmed resume. */
  downtime: number;
  /** Failed attempts before this one. */
  attempts: number;
}

export interface ResetDetail {
  channel: string;
  since: number | null;
  reason: string;
}

export interface ErrorDetail {
  code?: string;
  message?: string;
  channel?: string;
  status?: number;
  /** False when the client goes on by itself (retries, falls back). */
  fatal: boolean;
  [key: string]: unknown;
}

export interface EventDetail extends EventInfo {
  data: Message | MessageEvent | PresenceEvent;
}

export interface FeedEventMap {
  message: EventDetail;
  update: EventDetail;
  delete: EventDetail;
  join: EventDetail;
  leave: EventDetail;
  reset: ResetDetail;
  reconnect: ReconnectDetail;
  error: ErrorDetail;
  state: StateDetail;
  connecting: StateDetail;
  open: StateDetail;
  reconnecting: StateDetail;
  closed: StateDetail;
}

export class SluiceEvent<T = unknown> extends Event {
  readonly detail: T;
}

export class Subscription {
  readonly channel: string;
  readonly active: boolean;
  /** The last seq delivered for this channel (null before the first). */
  readonly lastSeq: number | null;
  /** The position a resume starts after (null while unknown). */
  readonly position: number | null;
  unsubscribe(): void;
}

export class Feed extends EventTarget {
  readonly urls: string[];
  readonly state: State;
  readonly url: string | null;
  readonly transport: Transport | null;
  readonly stats: { events: number; duplicates: number; reconnects: number; resets: number; connects: number };
  readonly channels: { channel: string; lastSeq: number | null; position: number | null }[];
  /** channel: [a-z0-9_-]{1,64} ("#general" is general), or "*" (every channel; stream transports only). */
  subscribe(channel: string, options: SubscribeOptions, onMessage?: OnMessage): Subscription;
  subscribe(channel: string, onMessage?: OnMessage): Subscription;
  /** Listens to a feed event; returns a function that stops listening. */
  on<K extends keyof FeedEventMap>(type: K, fn: (detail: FeedEventMap[K], event: SluiceEvent<FeedEventMap[K]>) => void): () => void;
  off<K extends keyof FeedEventMap>(type: K, fn: (detail: FeedEventMap[K], event: SluiceEvent<FeedEventMap[K]>) => void): void;
  close(): void;
}

export const VERSION: string;

/** url: the sse service's base URL (http(s)://host:port[/prefix]), or several (instances to go round). */
export function connect(url: string | URL | (string | URL)[], options?: ConnectOptions): Feed;

declare const sluice: {
  connect: typeof connect;
  Feed: typeof Feed;
  Subscription: typeof Subscription;
  SluiceEvent: typeof SluiceEvent;
  VERSION: string;
};
export default sluice;
