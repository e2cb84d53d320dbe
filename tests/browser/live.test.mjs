// Browser test of the live page that sluice-sse serves at `/` (web/index.html), in headless
// Debian Chromium driven by playwright-core. Needs the stack up (tests/browser/run.sh starts it).
//
//   SLUICE_SSE_URL (http://127.0.0.1:8081)  SLUICE_API_URL (http://127.0.0.1:8080)
//   CHROMIUM (/usr/bin/chromium)            OUT_DIR (tests/browser/out)
//   SLUICE_PAGE_FILE: serve this file in place of the compiled-in page (with the real response's
//   headers, CSP included), to try an edit of web/index.html without rebuilding sluice-sse.
// Mastodon posts come in for real (mastodon.mjs): a fake Mastodon instance and a sluice-ingest of
// the test's own, publishing into the stack's queue:
//   SLUICE_BIN_DIR (<repo>/build/bin: fake-mastodon, sluice-ingest)
//   SLUICE_INGEST_AMQP_URL, else SLUICE_AMQP_URL: the stack's RabbitMQ, for that ingest
//   SLUICE_DB_URL: the stack's PostgreSQL (a check changes a stored message there)
//   SLUICE_BROWSER_INGEST_PORT: its control port (default: a free one)
//   SLUICE_BROWSER_MASTODON=0 skips those checks (they fail when the URLs above are missing).
//
// Prints one line per check ("ok"/"not ok"), then "N passed, N failed"; exits 1 on a failure.
// Every wait is bounded (WAIT_MS), and the browser is closed whatever happens.
import { chromium } from "playwright-core";
import { mkdir, readFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { startFake, startIngest, status, png, psql, withTimeout } from "./mastodon.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SSE = (process.env.SLUICE_SSE_URL || "http://127.0.0.1:8081").replace(/\/+$/, "");
const API = (process.env.SLUICE_API_URL || "http://127.0.0.1:8080").replace(/\/+$/, "");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const OUT = process.env.OUT_DIR || path.join(HERE, "out");
const WAIT_MS = Number(process.env.WAIT_MS || 15000);
const PAGE_FILE = process.env.SLUICE_PAGE_FILE || "";
// A host name that is not loopback: the page is then not a secure context (see "insecure origin").
const LAN_HOST = "sluice-lan.test";

const RUN = Date.now().toString(36) + Math.random().toString(36).slice(2, 6);
const XSS = "<script>alert(1)</script><img src=x onerror=alert(2)>";
const t0 = Date.now();

let passed = 0, failed = 0;
async function check(name, fn) {
  const start = Date.now();
  try {
    const note = await fn();
    passed++;
    console.log(`ok - ${name} (${Date.now() - start} ms)${note ? ": " + note : ""}`);
  } catch (e) {
    failed++;
    console.log(`not ok - ${name} (${Date.now() - start} ms)\n    ${String(e && e.stack || e).split("\n").join("\n    ")}`);
  }
}
function assert(cond, msg) { if (!cond) throw new Error(msg); }
function eq(actual, expected, what) {
  if (actual !== expected) throw new Error(`${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}

async function api(method, p, body) {
  const r = await fetch(API + p, {
    method, signal: AbortSignal.timeout(WAIT_MS),
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  return { status: r.status, body: text ? JSON.parse(text) : null };
}
async function post(msg) {
  const r = await api("POST", "/v1/messages", msg);
  eq(r.status, 202, `POST /v1/messages ${JSON.stringify(msg).slice(0, 80)}`);
  return r.body;
}
// Waits until the api's history of `channel` holds `n` messages (the persister has stored them).
async function waitStored(channel, n) {
  const deadline = Date.now() + WAIT_MS;
  let got = -1;
  while (Date.now() < deadline) {
    const r = await api("GET", `/v1/messages?channel=${channel}&limit=200`);
    if (r.status === 200 && (got = r.body.messages.length) >= n) return;
    await new Promise(res => setTimeout(res, 100));
  }
  throw new Error(`channel ${channel}: ${got} of ${n} messages stored after ${WAIT_MS} ms`);
}

// What the page shows: one entry per <li>, as the user sees it (textContent).
function feedOf(page) {
  return page.$$eval("#feed li", lis => lis.map(li => ({
    author: li.querySelector(".author").textContent,
    channel: li.querySelector(".channel").textContent,
    seq: Number(li.dataset.seq),
    text: li.querySelector(".text").textContent,
    deleted: li.classList.contains("deleted"),
  })));
}
// Waits (bounded) until an entry by `author` shows, and returns it.
async function waitEntry(page, author, what) {
  try {
    await page.waitForFunction(a => [...document.querySelectorAll("#feed li .author")].some(e => e.textContent === a),
                               author, { timeout: WAIT_MS });
  } catch (e) {
    const err = await page.textContent("#error").catch(() => "?");
    throw new Error(`${what}: no message by ${author} within ${WAIT_MS} ms (feed has ${(await feedOf(page)).length}, error line ${JSON.stringify(err)})`);
  }
  return (await feedOf(page)).find(m => m.author === author);
}
async function waitLive(page) {
  await page.waitForFunction(() => document.getElementById("status").textContent === "live", null, { timeout: WAIT_MS });
  const s = await page.$eval("#status", e => ({ text: e.textContent, cls: e.className }));
  eq(s.text, "live", "status text");
  eq(s.cls, "live", "status class");
}
// No element of a message became markup, and no script ran.
async function assertInert(page, label, rec) {
  eq(await page.$$eval("#feed script, #feed img", els => els.length), 0, `${label}: <script>/<img> elements in #feed`);
  eq(await page.evaluate(() => window.__sluiceAlerts.length), 0, `${label}: alert() calls seen by the page`);
  eq(rec.dialogs.length, 0, `${label}: dialogs (${rec.dialogs.join(", ")})`);
}

// Records what a page does that it should not: dialogs, uncaught errors, console errors, failed requests.
function watch(page, label) {
  const rec = { label, dialogs: [], errors: [], websockets: [], streams: [] };
  page.on("websocket", ws => rec.websockets.push(ws.url()));
  page.on("request", r => { if (r.url().includes("/v1/stream")) rec.streams.push(r.url()); });
  page.on("dialog", d => { rec.dialogs.push(`${d.type()}: ${d.message()}`); d.dismiss().catch(() => {}); });
  page.on("pageerror", e => rec.errors.push(`pageerror: ${e.message}`));
  page.on("console", m => {
    const where = m.location().url || "?";
    // sluice-sse has no /favicon.ico (404), and its CSP (default-src 'self') blocks a data: icon.
    if (m.type() === "error" && !where.endsWith("/favicon.ico")) rec.errors.push(`console: ${m.text()} (${where})`);
  });
  page.on("requestfailed", r => {
    // EventSource connections are aborted when the page closes or switches channels.
    if (!r.url().includes("/v1/stream")) rec.errors.push(`requestfailed: ${r.url()} ${r.failure()?.errorText}`);
  });
  return rec;
}
async function newContext(browser, opts = {}) {
  const context = await browser.newContext(opts);
  context.setDefaultTimeout(WAIT_MS);
  if (PAGE_FILE) {
    const html = await readFile(PAGE_FILE);
    await context.route(u => u.pathname === "/" || u.pathname === "/index.html", async route => {
      try {
        // Fetched by node, which does not know LAN_HOST: ask the sse by its own URL.
        const real = await route.fetch({ url: `${SSE}/`, timeout: WAIT_MS });
        await route.fulfill({ response: real, body: html });
      } catch (e) {
        console.log(`# SLUICE_PAGE_FILE: ${e.message.split("\n")[0]}`);
        await route.abort().catch(() => {});
      }
    });
  }
  return context;
}
async function openPage(browser, url, label) {
  const context = await newContext(browser, { viewport: { width: 1000, height: 800 } });
  const page = await context.newPage();
  // Belt and braces next to the dialog handler: count alert() calls inside the page.
  await page.addInitScript(() => {
    window.__sluiceAlerts = [];
    const orig = window.alert.bind(window);
    window.alert = m => { window.__sluiceAlerts.push(String(m)); return orig(m); };
  });
  const rec = watch(page, label);
  await page.goto(url, { waitUntil: "load", timeout: WAIT_MS });
  return { context, page, rec };
}

async function main() {
  await mkdir(OUT, { recursive: true });
  // The api and sse must be up before a page is worth opening.
  for (const u of [`${API}/readyz`, `${SSE}/readyz`]) {
    const r = await fetch(u, { signal: AbortSignal.timeout(WAIT_MS) }).catch(e => ({ status: e.message }));
    if (r.status !== 200) throw new Error(`${u} answered ${r.status}: is the stack up (SLUICE_RUN_BOT=0 ./run.sh)?`);
  }
  const browser = await withTimeout(chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: WAIT_MS,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", `--host-resolver-rules=MAP ${LAN_HOST} 127.0.0.1`,
           // A page fulfilled by the test has no address, so Chromium would count it as public and
           // refuse its requests to the loopback api (Local Network Access): only with SLUICE_PAGE_FILE.
           ...(PAGE_FILE ? ["--disable-features=LocalNetworkAccessChecks"] : [])],
  }), WAIT_MS + 5000, "chromium.launch");
  console.log(`# chromium ${browser.version()}, run ${RUN}, page ${SSE}/${PAGE_FILE ? ` (body from ${PAGE_FILE})` : ""}, api ${API}`);
  try {
    await run(browser);
    await runMastodon(browser);
  } finally {
    await withTimeout(browser.close(), WAIT_MS, "browser.close").catch(e => console.log(`# ${e.message}`));
  }
}

async function run(browser) {
  let p1, p2;
  await check("two pages open the live page and the indicator says live", async () => {
    p1 = await openPage(browser, `${SSE}/`, "page 1");
    p2 = await openPage(browser, `${SSE}/`, "page 2");
    eq(await p1.page.title(), "sluice: live feed", "title");
    await waitLive(p1.page);
    await waitLive(p2.page);
  });
  if (!p1 || !p2) return;

  await check("the page reads through /client.js, over a WebSocket", async () => {
    const r = await fetch(`${SSE}/client.js`, { signal: AbortSignal.timeout(WAIT_MS) });
    eq(r.status, 200, "/client.js status");
    eq(r.headers.get("content-type"), "text/javascript; charset=utf-8", "/client.js content-type");
    eq(p1.rec.websockets.join(","), `${SSE.replace(/^http/, "ws")}/v1/ws`, "page 1's WebSockets");
    eq(p1.rec.streams.length, 0, "page 1's /v1/stream requests");
  });

  await check("the page asks /config.json for the api and reaches it", async () => {
    const r = await fetch(`${SSE}/config.json`, { signal: AbortSignal.timeout(WAIT_MS) });
    eq(r.status, 200, "/config.json status");
    const c = await r.json();
    assert(typeof c.api === "string", `/config.json has no "api" string: ${JSON.stringify(c)}`);
    return `api ${JSON.stringify(c.api)}${c.api ? "" : " (empty: the page falls back to its host at port 8080)"}`;
  });

  await check("a message posted with page 1's form appears in both pages", async () => {
    const author = `form-${RUN}`, text = `hello from the form, run ${RUN}`;
    const { page } = p1;
    await page.fill("form#post input[name=author]", author);
    eq(await page.inputValue("form#post input[name=channel]"), "general", "form channel");
    await page.fill("form#post input[name=text]", text);
    const start = Date.now();
    await page.click("form#post button[type=submit]");
    const [a, b] = await Promise.all([waitEntry(p1.page, author, "page 1"), waitEntry(p2.page, author, "page 2")]);
    const ms = Date.now() - start;
    for (const [m, label] of [[a, "page 1"], [b, "page 2"]]) {
      eq(m.text, text, `${label} text`);
      eq(m.channel, "#general", `${label} channel`);
      assert(m.seq > 0, `${label} seq ${m.seq}`);
    }
    eq(a.seq, b.seq, "same seq in both pages");
    eq(await page.inputValue("form#post input[name=text]"), "", "the form's text field is cleared after the post");
    eq(await page.textContent("#error"), "", "page 1 error line");
    const stored = await api("GET", `/v1/messages?channel=general&limit=50`);
    assert(stored.body.messages.some(m => m.author === author && m.text === text && m.seq === a.seq),
           "the api's history has the posted message");
    return `visible in both pages ${ms} ms after the click`;
  });

  await check("markup posted via the api shows as literal text in both pages, and no script runs", async () => {
    const author = `xss-${RUN}`;
    await post({ channel: "general", author, text: XSS });
    const [a, b] = await Promise.all([waitEntry(p1.page, author, "page 1"), waitEntry(p2.page, author, "page 2")]);
    eq(a.text, XSS, "page 1 text");
    eq(b.text, XSS, "page 2 text");
    // Give an <img onerror> time to fire, were it an element.
    await p1.page.waitForTimeout(500);
    await assertInert(p1.page, "page 1", p1.rec);
    await assertInert(p2.page, "page 2", p2.rec);
  });

  await mkdir(OUT, { recursive: true });
  await p1.page.screenshot({ path: path.join(OUT, "page1.png"), fullPage: true });
  await p2.page.screenshot({ path: path.join(OUT, "page2.png"), fullPage: true });

  await check('"older messages" loads history below the stream\'s 30, in order, to the beginning', async () => {
    // A channel of its own: 35 messages, the oldest carrying markup, so that it arrives by the
    // history path (fetch + render), not by the stream. Channel -b (for the next check) gets its
    // 10 messages first: they are older than all of these.
    const channel = `bt-${RUN}`, n = 35;
    for (let i = 0; i < 10; i++) await post({ channel: `${channel}-b`, author: `histb-${RUN}-${i}`, text: `older channel ${i}` });
    await post({ channel, author: `hist-${RUN}-00`, text: XSS });
    for (let i = 1; i < n; i++) await post({ channel, author: `hist-${RUN}-${String(i).padStart(2, "0")}`, text: `history ${i}` });
    await waitStored(`${channel}-b`, 10);
    await waitStored(channel, n);
    const { page } = p2;
    await page.fill("#channels", channel);
    await page.click("#apply");
    await waitLive(page);
    await page.waitForFunction(k => document.querySelectorAll("#feed li").length === k, 30, { timeout: WAIT_MS });
    let feed = await feedOf(page);
    eq(feed.length, 30, "messages from the stream's history");
    eq(feed[29].author, `hist-${RUN}-05`, "oldest message the stream showed");
    const start = Date.now();
    await page.click("#older");
    await page.waitForFunction(k => document.querySelectorAll("#feed li").length >= k, n, { timeout: WAIT_MS });
    await page.waitForFunction(() => document.getElementById("error").textContent !== "", null, { timeout: WAIT_MS });
    const ms = Date.now() - start;
    feed = await feedOf(page);
    eq(feed.length, n, "messages after loading older ones");
    const authors = feed.map(m => m.author);
    eq(authors.join(","), Array.from({ length: n }, (_, i) => `hist-${RUN}-${String(n - 1 - i).padStart(2, "0")}`).join(","),
       "authors, newest first");
    for (let i = 1; i < n; i++) assert(feed[i - 1].seq > feed[i].seq, `seq not descending at ${i}: ${feed[i - 1].seq}, ${feed[i].seq}`);
    assert(feed.every(m => m.channel === `#${channel}`), "every message is of the watched channel");
    eq(feed[n - 1].text, XSS, "the oldest message's text (markup, from history)");
    eq(await page.textContent("#error"), "that is the beginning", "the page says it reached the beginning");
    await assertInert(page, "page 2 (history)", p2.rec);
    await page.screenshot({ path: path.join(OUT, "page2-older.png"), fullPage: true });
    return `${n - 30} older messages in ${ms} ms`;
  });

  await check('"older messages" with two channels pages through each of them', async () => {
    // The api filters by one channel, and the WebSocket's history is per channel: a's newest 30
    // and all of b's 10 (older than all of a's 35); the older page must come from a only, from
    // below a's oldest shown (not below b's).
    const a = `bt-${RUN}`, b = `bt-${RUN}-b`;
    const { page } = p2;
    await page.fill("#channels", `${a},${b}`);
    await page.click("#apply");
    await waitLive(page);
    await page.waitForFunction(() => document.querySelectorAll("#feed li").length === 40, null, { timeout: WAIT_MS });
    eq(await page.textContent("#error"), "", "error line before");
    await page.click("#older");
    await page.waitForFunction(() => document.getElementById("error").textContent !== "", null, { timeout: WAIT_MS });
    const feed = await feedOf(page);
    eq(await page.textContent("#error"), "that is the beginning", "error line after");
    eq(feed.length, 45, "messages of both channels");
    eq(feed.filter(m => m.channel === `#${b}`).length, 10, `messages of #${b}`);
    for (let i = 1; i < feed.length; i++) assert(feed[i - 1].seq > feed[i].seq, `seq not descending at ${i}: ${feed[i - 1].seq}, ${feed[i].seq}`);
    eq(feed[44].author, `histb-${RUN}-0`, "oldest entry");
  });

  await check("a page on a non-loopback host name (not a secure context) posts and reads from the api", async () => {
    // http://<name>:8081/ is what a LAN user opens: the page must find the api at <name>:8080
    // and post without crypto.randomUUID (secure contexts only).
    const p3 = await openPage(browser, `http://${LAN_HOST}:${new URL(SSE).port || 80}/`, "page 3");
    try {
      const { page } = p3;
      eq(await page.evaluate(() => window.isSecureContext), false, "isSecureContext");
      await waitLive(page);
      const author = `lan-${RUN}`, text = `posted from http://${LAN_HOST}`;
      await page.fill("form#post input[name=author]", author);
      await page.fill("form#post input[name=text]", text);
      await page.click("form#post button[type=submit]");
      const m = await waitEntry(page, author, "page 3");
      eq(m.text, text, "text");
      eq(await page.textContent("#error"), "", "error line");
      eq(p3.rec.errors.join("; "), "", "page 3 errors");
    } finally {
      await p3.context.close();
    }
  });

  // What an edit and a deletion look like in the page, whatever carried them.
  const base = { channel: "general", source: "api", created_at: "2026-11-24T20:56:05.326231Z" };
  const stubbed = [
    ["message", { ...base, id: "m1", author: "ann", text: "first", seq: 101 }],
    ["message", { ...base, id: "m2", author: "bob", text: "second", seq: 102 }],
    ["update", { type: "update", id: "m1", channel: "general", text: XSS, edited_at: "2026-11-24T20:57:00Z", seq: 103 }],
    ["delete", { type: "delete", id: "m2", channel: "general", seq: 104 }],
  ];
  async function checkEdited(page, rec) {
    await page.waitForFunction(() => document.querySelector("#feed li.deleted") !== null, null, { timeout: WAIT_MS });
    const feed = await feedOf(page);
    eq(feed.length, 2, "entries");
    eq(feed[0].author, "bob", "newest first");
    eq(feed[0].text, "(deleted)", "deleted message text");
    eq(feed[0].deleted, true, "deleted message marked");
    eq(feed[1].text, XSS + " (edited)", "updated message text (literal)");
    eq(feed[1].deleted, false, "updated message not marked deleted");
    eq(await page.$$eval("#feed script, #feed img", els => els.length), 0, "<script>/<img> elements in #feed");
    eq(rec.dialogs.length, 0, "dialogs");
  }

  await check("update and delete events change the message in place (stubbed EventSource stream)", async () => {
    const ctx = await newContext(browser);
    try {
      const page = await ctx.newPage();
      const rec = watch(page, "page 4");
      const body = "retry: 600000\n\n" +
        stubbed.map(([type, o]) => `id: ${o.seq}\nevent: ${type}\ndata: ${JSON.stringify(o)}\n\n`).join("");
      await page.route("**/v1/stream*", route => route.fulfill({
        status: 200, headers: { "Content-Type": "text/event-stream", "Cache-Control": "no-cache" }, body }));
      await page.goto(`${SSE}/?transport=eventsource`, { waitUntil: "load", timeout: WAIT_MS });
      await checkEdited(page, rec);
      eq(rec.websockets.length, 0, "WebSockets with ?transport=eventsource");
    } finally {
      await ctx.close();
    }
  });

  await check("update and delete events change the message in place (stubbed WebSocket)", async () => {
    const ctx = await newContext(browser);
    try {
      const page = await ctx.newPage();
      const rec = watch(page, "page 5");
      const commands = [];
      await page.routeWebSocket(/\/v1\/ws$/, ws => {
        ws.onMessage(text => {
          const cmd = JSON.parse(text);
          commands.push(cmd);
          if (cmd.command !== "subscribe") return;
          ws.send(JSON.stringify({ type: "subscribed", channel: cmd.channel }));
          ws.send(JSON.stringify({ type: "history", channel: cmd.channel, messages: stubbed.slice(0, 2).map(([, o]) => o) }));
          for (const [type, o] of stubbed.slice(2)) ws.send(JSON.stringify({ type, message: o }));
        });
      });
      await page.goto(`${SSE}/`, { waitUntil: "load", timeout: WAIT_MS });
      await checkEdited(page, rec);
      eq(JSON.stringify(commands[0]), JSON.stringify({ command: "subscribe", channel: "general", history: 30 }), "the subscribe command");
    } finally {
      await ctx.close();
    }
  });

  await check("where a WebSocket cannot open, the page goes on over EventSource (real stream)", async () => {
    const ctx = await newContext(browser);
    try {
      const page = await ctx.newPage();
      // As a proxy that refuses the upgrade: the handshake gets 404 from sse.
      await page.addInitScript(() => {
        const Real = window.WebSocket;
        window.WebSocket = class extends Real {
          constructor(url, protocols) { super(String(url).replace("/v1/ws", "/v1/no-websocket"), protocols); }
        };
      });
      const rec = watch(page, "page 6");
      await page.goto(`${SSE}/`, { waitUntil: "load", timeout: WAIT_MS });
      await waitLive(page);
      const author = `fallback-${RUN}`;
      await post({ channel: "general", author, text: "over EventSource" });
      const m = await waitEntry(page, author, "page 6");
      eq(m.text, "over EventSource", "text");
      assert(rec.streams.length >= 1, "an EventSource request to /v1/stream");
      return `WebSocket tried ${rec.websockets.length} time(s), then ${rec.streams.length} stream request(s)`;
    } finally {
      await ctx.close();
    }
  });

  await check("?transport=eventsource reads the real stream over EventSource", async () => {
    const p = await openPage(browser, `${SSE}/?transport=eventsource`, "page 7");
    try {
      await waitLive(p.page);
      const author = `es-${RUN}`;
      await post({ channel: "general", author, text: "EventSource" });
      const m = await waitEntry(p.page, author, "page 7");
      eq(m.text, "EventSource", "text");
      eq(p.rec.websockets.length, 0, "WebSockets");
      eq(p.rec.errors.join("; "), "", "page 7 errors");
    } finally {
      await p.context.close();
    }
  });

  await check("no dialog, uncaught error, console error or failed request in pages 1 and 2", async () => {
    const all = [...p1.rec.dialogs, ...p1.rec.errors, ...p2.rec.dialogs, ...p2.rec.errors];
    eq(all.join("; "), "", "recorded problems");
  });
  await p1.context.close();
  await p2.context.close();
}

// ---- Mastodon posts ------------------------------------------------------------------------------
const BIN = process.env.SLUICE_BIN_DIR || path.join(HERE, "..", "..", "build", "bin");
const INGEST_AMQP = process.env.SLUICE_INGEST_AMQP_URL || process.env.SLUICE_AMQP_URL || "";
const DB_URL = process.env.SLUICE_DB_URL || "";
const CSP = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' https:; connect-src *";
// The posts' images live on a made-up https host: the test answers for it (the only requests it
// answers itself here), records each request, and serves a PNG per path.
const IMG = "https://files.example";
const IMAGES = new Map([
  ["/avatars/alice.png", png(48, 48, [124, 58, 237], [236, 72, 153])],
  ["/avatars/bob.png", png(48, 48, [22, 163, 74], [190, 242, 100])],
  ["/avatars/dave.png", png(48, 48, [234, 88, 12], [250, 204, 21])],
  ["/avatars/erin.png", png(48, 48, [37, 99, 235], [103, 232, 249])],
  ["/avatars/frank.png", png(48, 48, [71, 85, 105], [203, 213, 225])],
  ["/media/spider.png", png(448, 288, [15, 23, 42], [100, 116, 139])],
  ["/media/spider-small.png", png(224, 144, [15, 23, 42], [100, 116, 139])],
  ["/media/kite-small.png", png(224, 144, [14, 165, 233], [254, 243, 199])],
  ["/media/frank-small.png", png(224, 144, [190, 18, 60], [253, 186, 116])],
]);

// What the page shows of the post by `author` (the message's author: the booster of a boost).
function postOf(page, author) {
  return page.evaluate(a => {
    const li = [...document.querySelectorAll("#feed li")].find(l => l.querySelector(".author").textContent === a);
    if (!li) return null;
    const q = sel => li.querySelector(sel), t = sel => (q(sel) ? q(sel).textContent : null);
    const img = i => ({ src: i.getAttribute("src"), alt: i.getAttribute("alt"), referrerpolicy: i.getAttribute("referrerpolicy"),
                        loading: i.getAttribute("loading"), loaded: i.complete && i.naturalWidth > 0,
                        link: i.closest("a") ? i.closest("a").getAttribute("href") : null });
    const details = q("details.cw");
    return {
      boost: t(".boost"), displayName: t(".display-name"), acct: t(".acct"),
      original: q(".original") && { tag: q(".original").tagName, href: q(".original").getAttribute("href"),
                                    target: q(".original").getAttribute("target"), rel: q(".original").getAttribute("rel") },
      avatar: q("img.avatar") && img(q("img.avatar")),
      cw: details && { open: details.open, spoiler: t(".spoiler") },
      lang: (details || q(".content") || li).getAttribute("lang"),
      text: t(".text"), textVisible: q(".text").checkVisibility(),
      images: [...li.querySelectorAll(".media img")].map(img),
      attachments: [...li.querySelectorAll(".media .attachment")].map(e => ({ tag: e.tagName, href: e.getAttribute("href"), text: e.textContent })),
      hiddenMedia: q(".show-media") !== null,
      anchors: [...li.querySelectorAll("a")].map(e => ({ href: e.getAttribute("href"), target: e.getAttribute("target"), rel: e.getAttribute("rel") })),
      imgs: [...li.querySelectorAll("img")].map(e => e.getAttribute("src")),
      scripts: li.querySelectorAll("script").length,
      deleted: li.classList.contains("deleted"),
    };
  }, author);
}
// Waits (bounded) until fn(post by author) is true; returns the post.
async function waitPost(page, author, fn, what) {
  const deadline = Date.now() + WAIT_MS;
  let p = null;
  while (Date.now() < deadline) {
    p = await postOf(page, author);
    if (p !== null && fn(p)) return p;
    await page.waitForTimeout(50);
  }
  throw new Error(`${what}: not seen within ${WAIT_MS} ms; the post by ${author} is ${JSON.stringify(p)}`);
}
const LINK = { target: "_blank", rel: "noopener noreferrer nofollow" };
function eqJSON(actual, expected, what) { eq(JSON.stringify(actual), JSON.stringify(expected), what); }

async function mastodonPage(browser, channel, label, imageLog) {
  const p = await openPage(browser, "about:blank", label);
  await p.context.route(`${IMG}/**`, async route => {
    const r = route.request(), body = IMAGES.get(new URL(r.url()).pathname);
    imageLog.push({ url: r.url(), referer: (await r.allHeaders()).referer ?? null });
    await route.fulfill(body ? { status: 200, contentType: "image/png", body } : { status: 404, body: "" });
  });
  await p.page.goto(`${SSE}/`, { waitUntil: "load", timeout: WAIT_MS });
  await waitLive(p.page);
  await p.page.fill("#channels", channel);
  await p.page.click("#apply");
  await waitLive(p.page);
  return p;
}

async function runMastodon(browser) {
  if (process.env.SLUICE_BROWSER_MASTODON === "0") { console.log("# skip - Mastodon posts (SLUICE_BROWSER_MASTODON=0)"); return; }
  const channel = `masto-${RUN}`, token = `tok-${RUN}`;
  const posts = {
    plain: status({ key: `${RUN}-1`, acct: "alice@social.example", display_name: "Alice 🐦", avatar: `${IMG}/avatars/alice.png`,
                    language: "fr", content: "<p>Bonjour à tous</p>" }),
    cw: status({ key: `${RUN}-2`, acct: "bob@b.example", display_name: "Bob", avatar: `${IMG}/avatars/bob.png`, spoiler_text: "spiders",
                 sensitive: true, content: "<p>look at this</p>",
                 media: [{ type: "image", url: `${IMG}/media/spider.png`, preview_url: `${IMG}/media/spider-small.png`, description: "A spider on its web" }] }),
    media: status({ key: `${RUN}-3`, acct: "carol@c.example", display_name: "Carol", content: "<p>Kites today</p>",
                    media: [{ type: "image", url: `${IMG}/media/kite.png`, preview_url: `${IMG}/media/kite-small.png`, description: "A red kite over the hills" },
                            { type: "video", url: `${IMG}/media/kite.mp4`, preview_url: `${IMG}/media/kite-small.png`, description: "Kite flying" }] }),
    boost: status({ key: `${RUN}-4`, acct: "dave@d.example", display_name: "Dave", avatar: `${IMG}/avatars/dave.png`, content: "", url: null,
                    reblog: status({ key: `${RUN}-4o`, acct: "erin@remote.example", home: "remote.example", display_name: "Erin",
                                     avatar: `${IMG}/avatars/erin.png`, content: "<p>the original post</p>" }) }),
    xss: status({ key: `${RUN}-5`, acct: "mallory@m.example", display_name: XSS, spoiler_text: XSS,
                  content: "<p>&lt;script&gt;alert(3)&lt;/script&gt;</p>",
                  media: [{ type: "image", url: `${IMG}/media/kite.png`, preview_url: `${IMG}/media/kite-small.png`, description: XSS }] }),
    edit: status({ key: `${RUN}-6`, acct: "frank@f.example", display_name: "Frank", avatar: `${IMG}/avatars/frank.png`, content: "<p>before the edit</p>" }),
    gone: status({ key: `${RUN}-7`, acct: "gina@g.example", display_name: "Gina", content: "<p>soon gone</p>", spoiler_text: "a warning",
                   media: [{ type: "image", url: `${IMG}/media/kite.png`, preview_url: `${IMG}/media/kite-small.png`, description: "kite" }] }),
    target: status({ key: `${RUN}-8`, acct: "hacker@h.example", display_name: "Hacker", content: "<p>a link to follow</p>" }),
  };
  const images = [];
  let fake = null, ingest = null, page = null, rec = null, ctx = null;
  try {
    await check("Mastodon posts reach the page: a fake instance, sluice-ingest, the stack", async () => {
      assert(INGEST_AMQP, "SLUICE_AMQP_URL (or SLUICE_INGEST_AMQP_URL) is not set: the stack's RabbitMQ, for the test's sluice-ingest");
      fake = await startFake(BIN, token, WAIT_MS);
      ingest = await startIngest(BIN, { amqpUrl: INGEST_AMQP, mastodonUrl: fake.url, token, channel,
                                        logFile: path.join(OUT, "ingest.log"), waitMs: WAIT_MS });
      await fake.cmd({ wait_streams: 1, timeout_ms: WAIT_MS });
      ({ page, rec, context: ctx } = await mastodonPage(browser, channel, "mastodon page", images));
      const start = Date.now();
      for (const st of Object.values(posts)) await fake.cmd({ post: st });
      for (const st of Object.values(posts)) await waitEntry(page, st.account.acct, "mastodon page");
      const ms = Date.now() - start;
      // The edit and the deletion, as Mastodon streams them.
      const edited = { ...posts.edit, edited_at: new Date().toISOString(), content: "<p>after the edit</p>", language: "de",
                       spoiler_text: "an edit's warning", account: { ...posts.edit.account, display_name: "Frank (edited)" },
                       media_attachments: [{ id: "1", type: "image", url: `${IMG}/media/frank.png`, preview_url: `${IMG}/media/frank-small.png`,
                                             remote_url: null, description: "added by the edit" }] };
      await fake.cmd({ event: "status.update", data: edited });
      await fake.cmd({ event: "delete", data: posts.gone.id });
      await waitPost(page, "frank@f.example", p => p.text === "after the edit (edited)", "the edit");
      await waitPost(page, "gina@g.example", p => p.deleted, "the deletion");
      return `${Object.keys(posts).length} posts on the page ${ms} ms after the first reached the fake instance`;
    });
    if (!page) return;

    // Everything as it arrived live (before any click), to compare with a page that reads history.
    const postsHTML = pg => pg.$$eval("#feed li:not(.deleted)", lis => lis.map(li =>
      [li.querySelector(".author").textContent, li.querySelector(".post").innerHTML]));
    const liveHTML = await postsHTML(page);

    await check("a post shows its author's avatar (no referrer), display name and @acct, linked to the original", async () => {
      const p = await waitPost(page, "alice@social.example", p => p.avatar && p.avatar.loaded, "alice's avatar loaded");
      eq(p.displayName, "Alice 🐦", "display name");
      eq(p.acct, "@alice@social.example", "acct");
      eqJSON(p.original, { tag: "A", href: posts.plain.url, ...LINK }, "the link to the original");
      eqJSON(p.avatar, { src: `${IMG}/avatars/alice.png`, alt: "", referrerpolicy: "no-referrer", loading: "lazy", loaded: true,
                         link: posts.plain.url }, "avatar");
      eq(p.lang, "fr", "lang of the content");
      eq(p.text, "Bonjour à tous", "text");
      eq(p.cw, null, "no content warning");
      const req = images.filter(i => i.url === `${IMG}/avatars/alice.png`);
      assert(req.length >= 1, "the avatar was requested");
      eqJSON(req.map(i => i.referer), req.map(() => null), "Referer of the avatar's requests");
    });

    await check("a content warning is collapsed, the rest opens on a click", async () => {
      const before = await postOf(page, "bob@b.example");
      eqJSON(before.cw, { open: false, spoiler: "spiders" }, "warning before the click");
      eq(before.text, "look at this", "text without its \"CW:\" line");
      eq(before.textVisible, false, "the text is hidden");
      await page.locator("#feed li", { has: page.locator(".author", { hasText: "bob@b.example" }) }).locator("details.cw > summary").click();
      const after = await waitPost(page, "bob@b.example", p => p.cw.open, "the warning opened");
      eq(after.textVisible, true, "the text shows after the click");
      eq(after.lang, "en", "lang");
    });

    await check("sensitive media stay hidden (not even requested) until a click", async () => {
      const small = `${IMG}/media/spider-small.png`;
      const before = await postOf(page, "bob@b.example");
      eq(before.hiddenMedia, true, "a button to show the media");
      eq(before.images.length, 0, "images before the click");
      eq(images.filter(i => i.url === small).length, 0, "requests for the preview before the click");
      await page.locator("#feed li", { has: page.locator(".author", { hasText: "bob@b.example" }) }).locator(".show-media").click();
      const after = await waitPost(page, "bob@b.example", p => p.images.length === 1 && p.images[0].loaded, "the media shown");
      eqJSON(after.images[0], { src: small, alt: "A spider on its web", referrerpolicy: "no-referrer", loading: "lazy", loaded: true,
                                link: `${IMG}/media/spider.png` }, "the preview");
      eq(after.hiddenMedia, false, "the button is gone");
      eqJSON(images.filter(i => i.url === small).map(i => i.referer), [null], "the preview's request, without Referer");
    });

    await check("images show as previews with their alt text, linked to the full image; other media as links", async () => {
      const p = await waitPost(page, "carol@c.example", p => p.images.length === 1 && p.images[0].loaded, "the preview loaded");
      eqJSON(p.images[0], { src: `${IMG}/media/kite-small.png`, alt: "A red kite over the hills", referrerpolicy: "no-referrer",
                            loading: "lazy", loaded: true, link: `${IMG}/media/kite.png` }, "the image");
      eqJSON(p.attachments[1], { tag: "A", href: `${IMG}/media/kite.mp4`, text: "video: Kite flying" }, "the video");
      eq(p.avatar, null, "no avatar (none given)");
      eq(p.displayName, "Carol", "display name");
      for (const a of p.anchors) eqJSON({ target: a.target, rel: a.rel }, LINK, `link ${a.href}`);
    });

    await check("a boost says who boosted, then shows the original's author linked to the original", async () => {
      const p = await waitPost(page, "dave@d.example", p => p.avatar && p.avatar.loaded, "erin's avatar loaded");
      eq(p.boost, "🔁 Dave boosted", "boost line");
      eq(p.displayName, "Erin", "the original's display name");
      eq(p.acct, "@erin@remote.example", "the original's acct");
      eqJSON(p.original, { tag: "A", href: posts.boost.reblog.url, ...LINK }, "the link to the original");
      eq(p.avatar.src, `${IMG}/avatars/erin.png`, "the original author's avatar");
      eq(p.avatar.referrerpolicy, "no-referrer", "avatar referrerpolicy");
      eq(p.text, "the original post", "text");
    });

    await check("markup in a display name, a content warning, alt text and text stays text", async () => {
      const p = await postOf(page, "mallory@m.example");
      eq(p.displayName, XSS, "display name");
      eq(p.cw && p.cw.spoiler, XSS, "content warning");
      eq(p.text, "<script>alert(3)</script>", "text");
      eq(p.images.length, 1, "images in the media");
      eq(p.images[0].alt, XSS, "alt text");
      eqJSON(p.imgs, [`${IMG}/media/kite-small.png`], "every <img> of the post");
      eq(p.scripts, 0, "<script> elements");
      await page.locator("#feed li", { has: page.locator(".author", { hasText: "mallory@m.example" }) }).locator("details.cw > summary").click();
      await page.waitForTimeout(300); // an onerror would fire now, were it an element
      eq(await page.evaluate(() => window.__sluiceAlerts.length), 0, "alert() calls");
      eq(rec.dialogs.length, 0, "dialogs");
    });

    await check("an edit replaces the text and the meta; a deletion hides text and media", async () => {
      const p = await postOf(page, "frank@f.example");
      eq(p.text, "after the edit (edited)", "text");
      eq(p.displayName, "Frank (edited)", "display name");
      eqJSON(p.cw, { open: false, spoiler: "an edit's warning" }, "the warning the edit added");
      eq(p.lang, "de", "lang");
      eq(p.images.length, 1, "the image the edit added");
      eq(p.images[0].alt, "added by the edit", "its alt text");
      const g = await postOf(page, "gina@g.example");
      eq(g.text, "(deleted)", "deleted text");
      eq(g.cw, null, "no warning left");
      eq(g.images.length + g.attachments.length, 0, "no media left");
      eq(g.displayName, "Gina", "the header stays");
    });

    await mkdir(OUT, { recursive: true });
    await page.screenshot({ path: path.join(OUT, "mastodon.png"), fullPage: true });

    await check("a page opened afterwards renders the same posts from history as the live page did", async () => {
      const p2 = await mastodonPage(browser, channel, "mastodon page 2", images);
      try {
        // (the deleted post is not in history)
        await p2.page.waitForFunction(k => document.querySelectorAll("#feed li").length >= k, liveHTML.length, { timeout: WAIT_MS });
        const html = await postsHTML(p2.page);
        eq(html.map(([a]) => a).join(", "), liveHTML.map(([a]) => a).join(", "), "posts, newest first");
        for (let i = 0; i < liveHTML.length; i++) eq(html[i][1], liveHTML[i][1], `the post by ${liveHTML[i][0]}`);
        eq(p2.rec.errors.join("; "), "", "page 2 errors");
      } finally {
        await p2.context.close();
      }
    });

    await check("javascript: links written into the database never become links or images", async () => {
      assert(DB_URL, "SLUICE_DB_URL is not set: the stack's PostgreSQL");
      // Moved to a channel of its own, so that it reaches a page from the database (history), not
      // from what sse remembers of the live feed.
      const jsChannel = `${channel}-js`;
      const stored = await api("GET", `/v1/messages?channel=${channel}&limit=50`);
      const m = stored.body.messages.find(x => x.author === "hacker@h.example");
      assert(m, "the target post is stored");
      const meta = {
        display_name: "Injected <b>", avatar: "javascript:alert(11)", url: "javascript:alert(12)", account_url: "javascript:alert(13)",
        media: [{ type: "image", url: "javascript:alert(14)", preview_url: "javascript:alert(15)", description: "injected image" },
                { type: "video", url: " JaVaScRiPt:alert(16)" },
                { type: "image", url: "data:image/png;base64,iVBORw0KGgo=", preview_url: "data:image/png;base64,iVBORw0KGgo=" },
                { type: "image", url: "http://files.example/media/plain.png", preview_url: "http://files.example/media/plain.png", description: "over http" }],
        reblog: { acct: "someone", url: "javascript:alert(17)", avatar: "javascript:alert(18)" },
      };
      const out = await psql(DB_URL, "UPDATE messages SET channel = :'ch', url = :'url', meta = :'meta'::jsonb WHERE id = :'id'",
                             { ch: jsChannel, url: "javascript:alert(19)", meta: JSON.stringify(meta), id: m.id }, WAIT_MS);
      eq(out.trim(), "UPDATE 1", "psql");
      const p3 = await mastodonPage(browser, jsChannel, "mastodon page 3", images);
      try {
        let via = "the stream's history";
        if (await postOf(p3.page, "hacker@h.example") === null) {
          via = "\"older messages\" (the api)";
          await p3.page.click("#older");
        }
        const p = await waitPost(p3.page, "hacker@h.example", () => true, "the injected post");
        eq(p.boost, "🔁 Injected <b> boosted", "boost line");
        eq(p.displayName, "someone", "display name (the original's acct: it has none)");
        eq(p.acct, "@someone", "acct");
        eq(p.original.tag, "SPAN", "the header is no link");
        eq(p.avatar, null, "avatar");
        eqJSON(p.imgs, [], "images");
        eqJSON(p.anchors.map(a => a.href), ["http://files.example/media/plain.png"], "links (the http one only)");
        eqJSON(p.attachments.map(a => [a.tag, a.text]),
               [["SPAN", "image: injected image"], ["SPAN", "video"], ["SPAN", "image"], ["A", "image: over http"]], "media");
        await p3.page.waitForTimeout(300);
        eq(await p3.page.evaluate(() => window.__sluiceAlerts.length), 0, "alert() calls");
        eq(p3.rec.dialogs.length + p3.rec.errors.length, 0, `dialogs and errors: ${[...p3.rec.dialogs, ...p3.rec.errors].join("; ")}`);
        await p3.page.screenshot({ path: path.join(OUT, "mastodon-injected.png"), fullPage: true });
        return `reached the page through ${via}`;
      } finally {
        await p3.context.close();
      }
    });

    await check("the page keeps its CSP (images over https only), and broke none of it", async () => {
      const r = await fetch(`${SSE}/`, { signal: AbortSignal.timeout(WAIT_MS) });
      eq(r.headers.get("content-security-policy"), CSP, "CSP");
      eq(rec.errors.join("; "), "", "console errors (a CSP violation is one), failed requests");
      eq(images.filter(i => i.referer !== null).length, 0, "image requests with a Referer");
      return `${images.length} image requests, none with a Referer`;
    });
  } finally {
    if (ctx) await ctx.close().catch(() => {});
    if (ingest) await ingest.stop().catch(e => console.log(`# stopping sluice-ingest: ${e.message}`));
    if (fake) await fake.stop().catch(e => console.log(`# stopping fake-mastodon: ${e.message}`));
  }
}

try {
  await main();
} catch (e) {
  failed++;
  console.log(`not ok - setup\n    ${String(e && e.stack || e).split("\n").join("\n    ")}`);
}
console.log(`# ${((Date.now() - t0) / 1000).toFixed(1)} s, screenshots in ${OUT}`);
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
