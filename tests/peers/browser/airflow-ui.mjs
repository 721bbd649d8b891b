// The Airflow web UI in a real browser, through Portcullis, for its integration tests.
//
//   node airflow-ui.mjs --url URL --token TOKEN --wait-for TEXT [--timeout SECONDS] [--exit-with-stdin]
//
// Drives Debian's headless /usr/bin/chromium through playwright-core, sending the caller's bearer
// token with every request (as an API client or a browser behind a TLS-terminating SSO would), opens
// --url, and waits until the page's text contains --wait-for (the UI renders from API calls after
// load). Only 127.0.0.1 and localhost are reachable. Prints one JSON line:
//   {"url":…,"status":…,"body":…,"calls":[{"method":…,"url":…,"status":…},…]}
// where "body" is document.body.innerText and "calls" every /api and /ui request the page made.
// Exits 0; on failure prints {"error":…,"body":…,"calls":[…]} and exits 1 (also on --timeout,
// default 60 s, and with --exit-with-stdin when stdin closes early).

import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const LOOPBACK = new Set(['127.0.0.1', 'localhost']);

function parseArgs(argv) {
  const opts = { url: undefined, token: undefined, waitFor: undefined, timeout: 60, exitWithStdin: false };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    const value = () => {
      i += 1;
      if (i >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[i];
    };
    if (arg === '--url') opts.url = value();
    else if (arg === '--token') opts.token = value();
    else if (arg === '--wait-for') opts.waitFor = value();
    else if (arg === '--timeout') opts.timeout = Number(value());
    else if (arg === '--exit-with-stdin') opts.exitWithStdin = true;
    else throw new Error(`unknown argument ${arg}`);
  }
  if (!opts.url || !opts.token || !opts.waitFor) throw new Error('--url, --token and --wait-for are required');
  return opts;
}

const calls = [];
let page;

async function fail(message) {
  let body = '';
  try { body = page ? await page.evaluate(() => document.body.innerText) : ''; } catch { /* closed */ }
  process.stdout.write(`${JSON.stringify({ error: message, body, calls })}\n`);
  process.exit(1);
}

async function main() {
  let opts;
  try { opts = parseArgs(process.argv.slice(2)); } catch (e) {
    process.stderr.write(`airflow-ui.mjs: ${e.message}\n`);
    process.exit(2);
  }
  setTimeout(() => fail(`timed out after ${opts.timeout}s`), opts.timeout * 1000).unref();
  if (opts.exitWithStdin) {
    process.stdin.on('end', () => fail('stdin closed'));
    process.stdin.resume();
  }
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1'],
  });
  try {
    const context = await browser.newContext({ extraHTTPHeaders: { Authorization: `Bearer ${opts.token}` } });
    await context.route('**/*', (route) => {
      const host = new URL(route.request().url()).hostname;
      return LOOPBACK.has(host) ? route.continue() : route.abort();
    });
    page = await context.newPage();
    page.on('response', (response) => {
      const path = new URL(response.url()).pathname;
      if (path.startsWith('/api/') || path.startsWith('/ui/')) {
        calls.push({ method: response.request().method(), url: path + new URL(response.url()).search, status: response.status() });
      }
    });
    const response = await page.goto(opts.url, { waitUntil: 'load' });
    try {
      await page.waitForFunction((text) => document.body.innerText.includes(text), opts.waitFor, { timeout: 30000 });
    } catch {
      await fail(`the page never showed ${JSON.stringify(opts.waitFor)}`);
    }
    // Let the remaining calls of the page land.
    await page.waitForLoadState('networkidle').catch(() => {});
    const body = await page.evaluate(() => document.body.innerText);
    process.stdout.write(`${JSON.stringify({ url: page.url(), status: response ? response.status() : 0, body, calls })}\n`);
  } finally {
    await browser.close();
  }
  process.exit(0);
}

main().catch((e) => fail(String(e && e.stack ? e.stack : e)));
