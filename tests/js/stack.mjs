// The stack tests/js/run.sh started, seen from the tests: posting and reading history through
// the api, and killing and restarting the sse instances by PID (the PIDs of the instances a test
// starts go into the same PID files, so that run.sh stops them at the end).
import { spawn } from "node:child_process";
import { closeSync, openSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run the tests with tests/js/run.sh`);
  return v;
}

export const API = need("SLUICE_JS_API");
export const SSE = { sse1: need("SLUICE_JS_SSE1"), sse2: need("SLUICE_JS_SSE2") };
const PORTS = { sse1: need("SLUICE_JS_SSE1_PORT"), sse2: need("SLUICE_JS_SSE2_PORT") };
const PID_DIR = need("SLUICE_JS_PID_DIR");
const LOG_DIR = need("SLUICE_JS_LOG_DIR");
const BIN_DIR = need("SLUICE_BIN_DIR");

/** A name for this run, so that channels never meet those of an earlier run. */
export const RUN = Date.now().toString(36).slice(-5) + Math.random().toString(36).slice(2, 5);

export const sleep = ms => new Promise(res => setTimeout(res, ms));

/** Waits until fn() is truthy (checked every 50 ms), at most ms; returns its value or throws. */
export async function waitFor(fn, ms, what) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() >= end) throw new Error(`${what}: not within ${ms} ms`);
    await sleep(50);
  }
}

/** Resolves with the detail of the next `type` event of feed that passes pred (at most ms). */
export function next(feed, type, pred = () => true, ms = 15000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { off(); reject(new Error(`no ${type} event within ${ms} ms`)); }, ms);
    const off = feed.on(type, d => {
      if (!pred(d)) return;
      clearTimeout(timer);
      off();
      resolve(d);
    });
  });
}

async function api(method, p, body, headers = {}) {
  const r = await fetch(API + p, {
    method, signal: AbortSignal.timeout(10000),
    headers: body ? { "Content-Type": "application/json", ...headers } : headers,
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}

let keys = 0;
/** Posts one message; 429/503 are retried with the same Idempotency-Key until 202 (bounded). */
export async function post(channel, text, author = `js-${RUN}`) {
  const key = `js-${RUN}-${++keys}`;
  for (let i = 0; ; i++) {
    const r = await api("POST", "/v1/messages", { channel, author, text }, { "Idempotency-Key": key });
    if (r.status === 202) return r.body;
    if ((r.status !== 429 && r.status !== 503) || i >= 50) throw new Error(`POST ${channel}: ${r.status} ${JSON.stringify(r.body)}`);
    await sleep(100);
  }
}

/**
 * Posts n messages over channels (round robin) at `rate` per second, at most `concurrency` at
 * once. Returns {accepted: per channel count, seconds}.
 */
export async function postAt(channels, n, rate, concurrency = 16) {
  const accepted = Object.fromEntries(channels.map(c => [c, 0]));
  const t0 = Date.now();
  let inflight = 0, sent = 0, failed = null;
  const done = [];
  while (sent < n && !failed) {
    const due = Math.floor(((Date.now() - t0) / 1000) * rate);
    while (sent < Math.min(due, n) && inflight < concurrency) {
      const ch = channels[sent % channels.length];
      const i = sent++;
      inflight++;
      done.push(post(ch, `steady ${RUN} #${i}`).then(() => { accepted[ch]++; }, e => { failed = e; })
        .finally(() => { inflight--; }));
    }
    await sleep(2);
  }
  await Promise.all(done);
  if (failed) throw failed;
  return { accepted, seconds: (Date.now() - t0) / 1000 };
}

/** The newest seq of the feed (0 when empty). */
export async function headSeq() {
  const r = await api("GET", "/v1/messages?limit=1");
  return r.body.messages.length ? r.body.messages[0].seq : 0;
}

/** The seqs of channel's messages after `after`, oldest first, read page by page from the api. */
export async function storedSeqs(channel, after = 0) {
  const seqs = [];
  let before = null;
  for (;;) {
    const r = await api("GET", `/v1/messages?channel=${channel}&limit=200${before ? `&before=${before}` : ""}`);
    if (r.status !== 200) throw new Error(`GET history of ${channel}: ${r.status}`);
    let older = false;
    for (const m of r.body.messages) {
      if (m.seq > after) seqs.push(m.seq);
      else older = true;
    }
    if (older || r.body.next === null) break;
    before = r.body.next;
  }
  return seqs.reverse();
}

/** Waits until the api's history of channel holds n messages after `after`. */
export async function waitStored(channel, n, after = 0, ms = 20000) {
  let got = [];
  await waitFor(async () => (got = await storedSeqs(channel, after)).length >= n, ms,
    `${n} messages stored in ${channel} (have ${got.length})`);
  return got;
}

/**
 * Waits until both sse instances have delivered up to seq (their /readyz position): a history
 * served from an instance's memory holds what it has delivered, so a test that compares a history
 * with the database waits for this first.
 */
export async function waitDelivered(seq, ms = 10000) {
  const pos = async name => {
    try {
      const r = await fetch(`${SSE[name]}/readyz`, { signal: AbortSignal.timeout(2000) });
      return (await r.json()).position;
    } catch {
      return -1;
    }
  };
  await waitFor(async () => (await pos("sse1")) >= seq && (await pos("sse2")) >= seq, ms, `both sse instances at ${seq}`);
}

export async function isReady(name) {
  try {
    const r = await fetch(`${SSE[name]}/readyz`, { signal: AbortSignal.timeout(2000) });
    return r.status === 200;
  } catch {
    return false;
  }
}

function pidOf(name) {
  return Number(readFileSync(path.join(PID_DIR, name), "utf8").trim());
}

function gone(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] === "Z"; // a zombie is gone
  } catch {
    return true;
  }
}

/** Sends signal to the sse instance `name` (its PID file), and nothing more. */
export function signal(name, sig) {
  process.kill(pidOf(name), sig);
}

/** Sends signal to the sse instance `name` (its PID file) and waits until it is gone. */
export async function stop(name, signal) {
  const pid = pidOf(name);
  process.kill(pid, signal);
  await waitFor(() => gone(pid), 15000, `${name} (pid ${pid}) gone after ${signal}`);
  return pid;
}

/** Starts whichever sse instance is not running (after a test that failed halfway). */
export async function ensureUp() {
  for (const name of Object.keys(SSE)) if (gone(pidOf(name))) await start(name);
}

/** Starts the sse instance `name` again, with run.sh's environment, and waits until it is ready. */
export async function start(name) {
  const log = openSync(path.join(LOG_DIR, `${name}.log`), "a");
  const child = spawn(path.join(BIN_DIR, "sluice-sse"), [], {
    env: { ...process.env, SLUICE_SSE_PORT: PORTS[name], SLUICE_SSE_INSTANCE: `js-${name}` },
    stdio: ["ignore", log, log],
  });
  closeSync(log);
  child.unref();
  writeFileSync(path.join(PID_DIR, name), `${child.pid}\n`);
  await waitFor(() => isReady(name), 30000, `${name} ready after its restart`);
  return child.pid;
}
