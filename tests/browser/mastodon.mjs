// Mastodon posts for the browser test, the way they reach sluice in production: a fake Mastodon
// instance (fake-mastodon, tests/fake_mastodon_main.c) that a sluice-ingest of the test's own
// streams from, into the stack's persist queue. Both are the test's child processes, stopped by
// PID. Plus what the checks need around them: statuses as Mastodon writes them, small PNG images
// (served for the made-up image host), and psql for changes at the database level.
import { spawn, execFile } from "node:child_process";
import { openSync, closeSync } from "node:fs";
import { createServer } from "node:net";
import { createInterface } from "node:readline";
import path from "node:path";
import { deflateSync } from "node:zlib";

// p, or a rejection after ms (the bound of every wait of the test).
export function withTimeout(p, ms, what) {
  let timer;
  return Promise.race([p, new Promise((_, rej) => { timer = setTimeout(() => rej(new Error(`${what}: no answer in ${ms} ms`)), ms); })])
    .finally(() => clearTimeout(timer));
}

// Ends a child process: SIGTERM (or the end of its stdin), then SIGKILL after ms.
async function end(child, ms, how = "SIGTERM") {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise(res => child.once("exit", res));
  if (how === "stdin") child.stdin.end(); else child.kill(how);
  try { await withTimeout(gone, ms, `pid ${child.pid}`); } catch { child.kill("SIGKILL"); await gone; }
}

function freePort() {
  return new Promise((res, rej) => {
    const s = createServer().once("error", rej).listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => res(port)); });
  });
}

// The fake instance: start, then cmd({post: status}) / cmd({event, data}) / cmd({wait_streams}).
export async function startFake(bin, token, waitMs) {
  const child = spawn(path.join(bin, "fake-mastodon"), [token], { stdio: ["pipe", "pipe", "inherit"] });
  const spawned = new Promise((res, rej) => child.once("spawn", res).once("error", rej));
  await withTimeout(spawned, waitMs, "fake-mastodon start");
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const next = async what => {
    const r = await withTimeout(lines.next(), waitMs, `fake-mastodon: ${what}`);
    if (r.done) throw new Error(`fake-mastodon exited (${what})`);
    return r.value;
  };
  const url = await next("its URL");
  let chain = Promise.resolve();
  // One command at a time: each answer line belongs to the command before it.
  const cmd = o => (chain = chain.then(async () => {
    child.stdin.write(JSON.stringify(o) + "\n");
    const answer = await next(Object.keys(o)[0]);
    if (answer !== "ok") throw new Error(`fake-mastodon ${Object.keys(o)[0]}: ${answer}`);
  }));
  return { url, cmd, stop: () => end(child, waitMs, "stdin") };
}

// sluice-ingest reading the fake instance's public stream into `channel`; logs into logFile.
export async function startIngest(bin, { amqpUrl, mastodonUrl, token, channel, logFile, waitMs }) {
  const port = Number(process.env.SLUICE_BROWSER_INGEST_PORT) || await freePort();
  const log = openSync(logFile, "w");
  const child = spawn(path.join(bin, "sluice-ingest"), [], {
    stdio: ["ignore", log, log],
    env: { ...process.env, SLUICE_AMQP_URL: amqpUrl, SLUICE_AMQP_DECLARE: "passive", SLUICE_INGEST_PORT: String(port),
           SLUICE_MASTODON_URL: mastodonUrl, SLUICE_MASTODON_TOKEN: token, SLUICE_MASTODON_STREAM: "public",
           SLUICE_INGEST_CHANNEL: channel, SLUICE_INGEST_BACKOFF_MIN_MS: "100", SLUICE_INGEST_BACKOFF_MAX_MS: "1000" },
  });
  closeSync(log);
  const failed = new Promise((_, rej) => {
    child.once("error", rej);
    child.once("exit", (code, sig) => rej(new Error(`sluice-ingest exited (${sig || code}): see ${logFile}`)));
  });
  failed.catch(() => {});
  const base = `http://127.0.0.1:${port}`;
  // Ready: its control endpoint answers and says it is connected to the instance's stream.
  const deadline = Date.now() + waitMs;
  let last = "no answer";
  for (;;) {
    const r = await Promise.race([fetch(`${base}/v1/ingest`, { signal: AbortSignal.timeout(2000) })
      .then(r => r.json()).catch(e => ({ error: e.message })), failed]);
    last = JSON.stringify(r);
    if (r.connected === true && r.mode === "streaming") break;
    if (Date.now() > deadline) { await end(child, waitMs); throw new Error(`sluice-ingest not streaming after ${waitMs} ms: ${last.slice(0, 300)}`); }
    await new Promise(res => setTimeout(res, 100));
  }
  return { base, port, stop: () => end(child, waitMs) };
}

// A status as Mastodon's API gives it (public, with its account), for the fake to send.
let statusNo = 0;
export function status(o) {
  const id = String(Date.now() * 100 + (statusNo++ % 100));
  const acct = o.acct, user = acct.split("@")[0], home = o.home || "social.example";
  return {
    id, uri: `https://${home}/users/${user}/statuses/${o.key}`, url: "url" in o ? o.url : `https://${home}/@${user}/${o.key}`,
    created_at: new Date().toISOString(), edited_at: o.edited_at ?? null, content: o.content,
    spoiler_text: o.spoiler_text ?? "", sensitive: !!o.sensitive, visibility: "public", language: o.language ?? "en",
    account: { id: String(1000 + statusNo), username: user, acct, display_name: o.display_name ?? "", avatar: o.avatar ?? null,
               url: `https://${home}/@${user}` },
    reblog: o.reblog ?? null,
    media_attachments: (o.media || []).map((m, i) => ({ id: String(i + 1), remote_url: null, description: null, ...m })),
  };
}

// A PNG of w x h pixels: a diagonal gradient from rgb a to rgb b (distinct images, easy to tell
// apart on a screenshot).
export function png(w, h, a, b) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = buf => { let c = 0xffffffff; for (const x of buf) c = crcTable[(c ^ x) & 0xff] ^ (c >>> 8); return (c ^ 0xffffffff) >>> 0; };
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, "latin1");
    data.copy(out, 8);
    out.writeUInt32BE(crc(out.subarray(4, 8 + data.length)), 8 + data.length);
    return out;
  };
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    raw[y * (w * 3 + 1)] = 0;
    for (let x = 0; x < w; x++) {
      const t = (x + y) / (w + h - 2);
      for (let c = 0; c < 3; c++) raw[y * (w * 3 + 1) + 1 + x * 3 + c] = Math.round(a[c] + (b[c] - a[c]) * t);
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0); ihdr.writeUInt32BE(h, 4); ihdr[8] = 8; ihdr[9] = 2; // 8-bit RGB
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk("IHDR", ihdr),
                        chunk("IDAT", deflateSync(raw)), chunk("IEND", Buffer.alloc(0))]);
}

// Runs SQL with psql against dbUrl; vars become psql variables (:'name' in the SQL, quoted by
// psql). Returns psql's output.
export function psql(dbUrl, sql, vars, waitMs) {
  const args = [dbUrl, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-f", "-"];
  for (const [k, v] of Object.entries(vars || {})) args.push("-v", `${k}=${v}`);
  return new Promise((res, rej) => {
    const child = execFile("psql", args, { timeout: waitMs }, (err, stdout, stderr) =>
      err ? rej(new Error(`psql: ${stderr || err.message}`)) : res(stdout));
    child.stdin.end(sql);
  });
}
