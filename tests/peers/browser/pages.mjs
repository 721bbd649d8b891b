// A real browser reading Portcullis's own pages (error pages, sign-in and sign-out links), for its
// integration tests.
//
//   node pages.mjs --login NAME [--open URL | --post URL | --click TEXT]... [--timeout SECONDS]
//                  [--exit-with-stdin]
//
// Drives Debian's headless /usr/bin/chromium through playwright-core (no browser download), with one
// browser context that accepts self-signed certificates (the proxy's dev certificate for localhost).
// Only 127.0.0.1 and localhost are reachable, as in signin.mjs.
//
// The steps run in the order given, in one page; each prints one JSON line on stdout once the page has
// settled (nothing else goes to stdout; diagnostics go to stderr):
//   --open URL     navigates to URL;
//   --post URL     submits an empty HTML form to URL with method POST (a navigation, as when a person
//                  submits a form), from a blank page;
//   --click TEXT   clicks the link whose text is exactly TEXT on the current page.
// Wherever a step sends the browser off the origin of the first URL, the browser signs in as NAME on
// oidc-provider's devInteractions forms (login, then consent), and confirms its end_session page
// ("Yes, sign me out"), until it is back on that origin. The line:
//   {"step":"open"|"post"|"click","url":…,"status":…,"requestId":…,"cacheControl":…,"body":…,"links":[…]}
// "url" is the final URL, "status", "requestId" and "cacheControl" the status and the X-Request-Id and
// Cache-Control headers of the main document's last response, "body" document.body.innerText, "links"
// every <a> of the page as {text, href} (href resolved to an absolute URL).
//
// Exits 0 after the last step. On any failure prints {"step":"error","message":…,"url":…,"body":…} and
// exits 1; so does the timeout (--timeout, default 60 s, bounds the whole run) and, with
// --exit-with-stdin, stdin closing early. The browser is always closed.

import { chromium } from 'playwright-core';

const CHROMIUM = '/usr/bin/chromium';
const QUIET_MS = 200;
const LOOPBACK = new Set(['127.0.0.1', 'localhost']);

function usage(message) {
  process.stderr.write(`pages.mjs: ${message}\n`);
  process.stderr.write('usage: node pages.mjs --login NAME [--open URL | --post URL | --click TEXT]... '
    + '[--timeout SECONDS] [--exit-with-stdin]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    login: undefined, steps: [], timeout: 60, exitWithStdin: false,
  };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    const value = () => {
      i += 1;
      if (i >= argv.length) usage(`${arg} needs a value`);
      return argv[i];
    };
    switch (arg) {
      case '--login': opts.login = value(); break;
      case '--open':
      case '--post': {
        const url = value();
        if (!URL.canParse(url)) usage(`bad URL ${url}`);
        opts.steps.push({ step: arg.slice(2), target: url });
        break;
      }
      case '--click': opts.steps.push({ step: 'click', target: value() }); break;
      case '--timeout': opts.timeout = Number(value()); break;
      case '--exit-with-stdin': opts.exitWithStdin = true; break;
      default: usage(`unknown argument ${arg}`);
    }
  }
  if (!opts.login) usage('--login is required');
  if (opts.steps.length === 0 || opts.steps[0].step === 'click') usage('begin with --open or --post');
  if (!(opts.timeout > 0)) usage('--timeout needs a positive number of seconds');
  return opts;
}

const opts = parseArgs(process.argv.slice(2));
const origin = new URL(opts.steps[0].target).origin;
const log = (message) => process.stderr.write(`pages.mjs: ${message}\n`);
const withoutQuery = (url) => url.replace(/\?.*/, '?…');
const emit = (record) => process.stdout.write(`${JSON.stringify(record)}\n`);

let browser;
let page;
let finished = false;

const within = (ms, promise, fallback) => Promise.race([
  promise.catch(() => fallback),
  new Promise((resolve) => { setTimeout(resolve, ms, fallback).unref(); }),
]);

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

// The latest main-frame document response (redirect hops included, so the last one wins).
let last = { status: undefined, headers: {} };

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

// Off the origin: the provider's forms, until the browser is back.
async function backHome() {
  await settle();
  for (let round = 0; round < 10; round += 1) {
    if (new URL(page.url()).origin === origin) return;
    if (await has('form[id="op.logoutForm"]')) {
      log(`end_session confirmation at ${withoutQuery(page.url())}`);
      await page.click('button[name="logout"][value="yes"]');
    } else if (await has('form input[name="login"]')) {
      log(`login form at ${withoutQuery(page.url())}`);
      await page.fill('form input[name="login"]', opts.login);
      await page.fill('form input[name="password"]', 'any password');
      await page.click('form button[type="submit"]');
    } else if (await has('form input[name="prompt"][value="consent"]')) {
      log(`consent form at ${withoutQuery(page.url())}`);
      await page.click('form:has(input[name="prompt"][value="consent"]) button[type="submit"]');
    } else {
      throw new Error(`stuck at ${page.url()}: no provider form and not back on ${origin}`);
    }
    await settle();
  }
  throw new Error(`still not back on ${origin} after 10 forms`);
}

async function snapshot(step) {
  emit({
    step,
    url: page.url(),
    status: last.status,
    requestId: last.headers['x-request-id'] ?? null,
    cacheControl: last.headers['cache-control'] ?? null,
    body: await page.evaluate(() => document.body?.innerText ?? ''),
    links: await page.evaluate(() => [...document.querySelectorAll('a')]
      .map((a) => ({ text: a.innerText.trim(), href: a.href }))),
  });
}

async function run({ step, target }) {
  if (step === 'open') {
    log(`opening ${target}`);
    await page.goto(target);
  } else if (step === 'post') {
    log(`posting a form to ${target}`);
    await page.goto('about:blank');
    await page.evaluate((action) => {
      const form = document.createElement('form');
      form.method = 'post';
      form.action = action;
      document.body.appendChild(form);
      form.submit();
    }, target);
    await page.waitForURL((url) => url.href !== 'about:blank');
  } else {
    log(`clicking ${target}`);
    const link = page.getByRole('link', { name: target, exact: true });
    if ((await link.count()) !== 1) throw new Error(`no single link "${target}" on ${page.url()}`);
    const before = page.url();
    await link.click();
    await page.waitForURL((url) => url.href !== before, { timeout: 5000 }).catch(() => {});
  }
  await backHome();
  await snapshot(step);
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
  page.on('response', async (response) => {
    if (response.request().isNavigationRequest() && response.frame() === page.mainFrame()) {
      last = { status: response.status(), headers: response.headers() };
    }
  });
  for (const step of opts.steps) {
    await run(step);
  }
  if (!finished) {
    finished = true;
    await closeAndExit(0);
  }
} catch (err) {
  await fail(String(err?.message ?? err).split('\n')[0]);
}
