// A real browser signing in through Portcullis, for its integration tests.
//
//   node signin.mjs --url URL --login NAME [--fetch 'METHOD URL']... [--wait-before-sign-out] [--sign-out URL]
//                   [--after URL]... [--timeout SECONDS] [--exit-with-stdin]
//
// Drives Debian's headless /usr/bin/chromium through playwright-core (no browser download), with one
// browser context that accepts self-signed certificates (the proxy's dev certificate for localhost).
// Only 127.0.0.1 and localhost are reachable: other hosts fail to resolve inside Chromium
// (--host-resolver-rules, which also covers redirects) and any request to them is aborted by a route
// handler (which covers IP literals; the web fonts oidc-provider's pages import are dropped that way).
//
// Steps, each printed as one JSON line on stdout (nothing else goes to stdout; diagnostics go to stderr):
//   1. Opens --url. Wherever the browser is sent, it fills oidc-provider's devInteractions forms: the login
//      form (input[name=login], input[name=password], any password) and the consent form
//      (input[name=prompt][value=consent] + its submit button), each only if it appears; on a form that
//      lists users as buttons (`portcullis demo idp`: button[name=login][value=NAME]) it clicks NAME's.
//      Once the page is back on the --url origin and has settled (loaded, no further navigation for a
//      short while):
//        {"step":"landed","url":…,"status":…,"body":…,"cookies":[…]}
//   With --fetch 'METHOD URL', for each in order: calls fetch() from the landed page, as its own script
//   would (same-origin, the session cookie; a POST sends the JSON body {}):
//        {"step":"fetch","method":…,"url":…,"status":…,"body":…}
//   2. With --wait-before-sign-out, first waits for a line on stdin (the test's go-ahead, once it has used the
//      session elsewhere). With --sign-out URL: opens it; if oidc-provider's end_session confirmation appears
//      (form#op.logoutForm), clicks "Yes, sign me out" (button[name=logout][value=yes]); once settled:
//        {"step":"signed_out",…same fields…}
//   3. For each --after URL, in order: opens it and, without logging in, once settled:
//        {"step":"after",…same fields…}
// "url" is the final URL, "status" the HTTP status of the main document, "body" document.body.innerText,
// "cookies" every cookie of the --url host (any path; cookies are per host, not per port) as
// {name,value,domain,path,secure,httpOnly,sameSite,expires}.
//
// Exits 0 after the last step. On any failure prints {"step":"error","message":…,"url":…,"body":…} and exits
// 1; so does the timeout (--timeout, default 60 s, bounds the whole run) and, with --exit-with-stdin, stdin
// closing early (so a test process that died never leaves a browser behind). The browser is always closed.

import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const QUIET_MS = 200; // a page has settled once it is loaded and no navigation started for this long
const LOOPBACK = new Set(['127.0.0.1', 'localhost']);

function usage(message) {
  process.stderr.write(`signin.mjs: ${message}\n`);
  process.stderr.write('usage: node signin.mjs --url URL --login NAME [--fetch \'METHOD URL\']... '
    + '[--wait-before-sign-out] [--sign-out URL] '
    + '[--after URL]... [--timeout SECONDS] [--exit-with-stdin]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    url: undefined, login: undefined, fetches: [], signOut: undefined, after: [], timeout: 60, exitWithStdin: false,
    waitBeforeSignOut: false,
  };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    const value = () => {
      i += 1;
      if (i >= argv.length) usage(`${arg} needs a value`);
      return argv[i];
    };
    switch (arg) {
      case '--url': opts.url = value(); break;
      case '--login': opts.login = value(); break;
      case '--fetch': {
        const [method, url, extra] = value().split(' ');
        if (!method || !url || extra !== undefined || !URL.canParse(url)) usage(`--fetch needs 'METHOD URL', not ${argv[i]}`);
        opts.fetches.push({ method: method.toUpperCase(), url });
        break;
      }
      case '--wait-before-sign-out': opts.waitBeforeSignOut = true; break;
      case '--sign-out': opts.signOut = value(); break;
      case '--after': opts.after.push(value()); break;
      case '--timeout': opts.timeout = Number(value()); break;
      case '--exit-with-stdin': opts.exitWithStdin = true; break;
      default: usage(`unknown argument ${arg}`);
    }
  }
  if (!opts.url || !opts.login) usage('--url and --login are required');
  if (!URL.canParse(opts.url)) usage(`bad URL ${opts.url}`);
  opts.url = new URL(opts.url);
  if (!(opts.timeout > 0)) usage('--timeout needs a positive number of seconds');
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const log = (message) => process.stderr.write(`signin.mjs: ${message}\n`);
const withoutQuery = (url) => url.replace(/\?.*/, '?…');
const emit = (record) => process.stdout.write(`${JSON.stringify(record)}\n`);

let browser;
let page;
let finished = false;

// Gives up on a promise after `ms` (resolving to `fallback`): a page in mid-navigation can hang evaluate().
const within = (ms, promise, fallback) => Promise.race([
  promise.catch(() => fallback),
  new Promise((resolve) => { setTimeout(resolve, ms, fallback).unref(); }),
]);

// Prints the error record (once), closes the browser and exits 1.
async function fail(message) {
  if (finished) return;
  finished = true;
  const body = page ? await within(2000, page.evaluate(() => document.body?.innerText ?? ''), null) : null;
  emit({
    step: 'error', message, url: page?.url() ?? null, body,
  });
  await closeAndExit(1);
}

async function closeAndExit(code) {
  await within(5000, browser?.close() ?? Promise.resolve());
  process.exit(code);
}

setTimeout(() => fail(`timed out after ${opts.timeout} s`), opts.timeout * 1000).unref();
if (opts.exitWithStdin) {
  process.stdin.on('end', () => fail('stdin closed'));
  process.stdin.on('error', () => fail('stdin error'));
  process.stdin.resume();
}

// Lines read on stdin so far, and who waits for the next one (--wait-before-sign-out).
let goAheads = 0;
let onGoAhead;
if (opts.waitBeforeSignOut) {
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (text) => {
    goAheads += text.split('\n').length - 1;
    if (goAheads > 0 && onGoAhead) onGoAhead();
  });
  process.stdin.resume();
}
const goAhead = () => new Promise((resolve) => {
  if (goAheads > 0) resolve();
  else onGoAhead = resolve;
});

// Status of the latest main-frame document response (redirect hops included, so the last one wins).
let status;

// Waits until the page is loaded and no main-frame navigation has started for QUIET_MS.
async function settle() {
  for (;;) {
    await page.waitForLoadState('load');
    const url = page.url();
    const navigated = await page.waitForEvent('framenavigated', {
      predicate: (frame) => frame === page.mainFrame(),
      timeout: QUIET_MS,
    }).then(() => true, () => false);
    if (!navigated && page.url() === url) return;
  }
}

async function has(selector) {
  return (await page.locator(selector).count()) > 0;
}

async function snapshot(step) {
  const cookies = (await page.context().cookies())
    .filter(({ domain }) => domain.replace(/^\./, '') === opts.url.hostname)
    .map(({
      name, value, domain, path, secure, httpOnly, sameSite, expires,
    }) => ({
      name, value, domain, path, secure, httpOnly, sameSite, expires,
    }));
  emit({
    step,
    url: page.url(),
    status,
    body: await page.evaluate(() => document.body?.innerText ?? ''),
    cookies,
  });
}

async function open(url) {
  log(`opening ${url}`);
  await page.goto(url);
  await settle();
}

async function signIn() {
  await open(opts.url.href);
  for (let round = 0; round < 10; round += 1) {
    if (new URL(page.url()).origin === opts.url.origin) return;
    const pick = `form button[name="login"][value="${opts.login}"]`;
    if (await has(pick)) {
      log(`user list at ${withoutQuery(page.url())}`);
      await page.click(pick);
    } else if (await has('form input[name="login"]')) {
      log(`login form at ${withoutQuery(page.url())}`);
      await page.fill('form input[name="login"]', opts.login);
      await page.fill('form input[name="password"]', 'any password');
      await page.click('form button[type="submit"]');
    } else if (await has('form input[name="prompt"][value="consent"]')) {
      log(`consent form at ${withoutQuery(page.url())}`);
      await page.click('form:has(input[name="prompt"][value="consent"]) button[type="submit"]');
    } else {
      throw new Error(`stuck at ${page.url()}: neither a login nor a consent form, nor the --url origin`);
    }
    await settle();
  }
  throw new Error('still not back on the --url origin after 10 forms');
}

// fetch() from the page, as the page's own script would call its API.
async function pageFetch({ method, url }) {
  log(`fetch ${method} ${url}`);
  const answer = await page.evaluate(async ({ method: m, url: u }) => {
    const init = { method: m };
    if (m !== 'GET' && m !== 'HEAD') {
      init.headers = { 'content-type': 'application/json' };
      init.body = '{}';
    }
    const response = await fetch(u, init);
    return { status: response.status, body: await response.text() };
  }, { method, url });
  emit({
    step: 'fetch', method, url, ...answer,
  });
}

async function signOut() {
  await open(opts.signOut);
  if (await has('form[id="op.logoutForm"]')) {
    log(`end_session confirmation at ${withoutQuery(page.url())}`);
    await page.click('button[name="logout"][value="yes"]');
    await settle();
  }
}

try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
    ],
  });
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  context.setDefaultTimeout(15000);
  await context.route('**/*', (route) => {
    const url = new URL(route.request().url());
    if (LOOPBACK.has(url.hostname)) return route.continue();
    log(`blocked ${withoutQuery(url.href)}`);
    return route.abort('blockedbyclient');
  });
  page = await context.newPage();
  page.on('response', (response) => {
    if (response.request().isNavigationRequest() && response.frame() === page.mainFrame()) {
      status = response.status();
    }
  });

  await signIn();
  await snapshot('landed');
  for (const request of opts.fetches) {
    await pageFetch(request);
  }
  if (opts.waitBeforeSignOut) {
    log('waiting for a line on stdin before signing out');
    await goAhead();
  }
  if (opts.signOut) {
    await signOut();
    await snapshot('signed_out');
  }
  for (const url of opts.after) {
    await open(url);
    await snapshot('after');
  }
  if (!finished) {
    finished = true;
    await closeAndExit(0);
  }
} catch (err) {
  // Playwright messages go on with a multi-line, ANSI-coloured call log: keep the first line.
  await fail(String(err?.message ?? err).split('\n')[0]);
}
