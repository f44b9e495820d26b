#!/usr/bin/env node
// A real browser for tokctl's end-to-end tests: used as `$BROWSER` (through the
// `tokctl-test-browser` wrapper next to this file), it opens the IdP's authorization URL in
// headless Chromium, acts as the user on the test IdP's pages (tests/idp/idp.mjs) and
// follows the redirect to the client's loopback listener, like a person at a desktop would.
//
//   node browser.mjs URL
//
// tokctl starts `$BROWSER` with stdin, stdout and stderr on /dev/null and does not wait for
// it, so the outcome goes to a file (TOKCTL_TEST_BROWSER_OUT) and, if wanted, a log file.
//
// Environment:
//   TOKCTL_TEST_BROWSER_ACTION    `login` (default): sign in, consent if asked, follow the
//                                 redirect to the client. `deny`: press Cancel on the login
//                                 page (or Deny on the consent page), so the client gets
//                                 `error=access_denied`.
//   TOKCTL_TEST_BROWSER_USER      user name to sign in as (default `alice`).
//   TOKCTL_TEST_BROWSER_PASSWORD  its password (default `alice-password`). Read once and
//                                 removed from the environment: Chromium never sees it, and
//                                 it is never printed, logged, put in argv or written out.
//   TOKCTL_TEST_BROWSER_OUT       file to write the outcome to when finished, as one JSON
//                                 object (written to a temp file, then renamed into place,
//                                 after the browser has exited and its profile is removed):
//                                   {"ok": bool, "action": "login"|"deny",
//                                    "final_url": str|null,  the last page (`code` redacted),
//                                    "status": int|null,     its HTTP status,
//                                    "title": str|null,
//                                    "text": str|null,       its visible text, ≤ 2000 chars,
//                                    "referrer_policy": str|null,  its Referrer-Policy header,
//                                    "error": str|null,
//                                    "steps": [str], "duration_ms": int}
//                                 `ok` is true when the browser reached the client's
//                                 redirect URI carrying `code` (login) or
//                                 `error=access_denied` (deny) and got an HTTP answer there;
//                                 whatever that page says is the test's business.
//   TOKCTL_TEST_BROWSER_SCREENSHOT when to save a screenshot of the last page next to the
//                                 outcome file, with the extension `.png` (`out.json` ->
//                                 `out.png`): `failure` (default: when not ok), `always`
//                                 (or `1`), `never` (or `0`). It costs seconds on a busy
//                                 machine.
//   TOKCTL_TEST_BROWSER_LOG       file to append progress lines to (also printed on stderr).
//   TOKCTL_TEST_BROWSER_TIMEOUT   overall time limit in seconds (default 120); then the
//                                 browser is closed, the error recorded, and the exit code
//                                 is non-zero.
//   TOKCTL_TEST_BROWSER_CHROMIUM  Chromium executable (default /usr/bin/chromium).
//   TOKCTL_TEST_BROWSER_STRICT_TLS `1` to reject untrusted HTTPS certificates (by default
//                                 they are accepted, for the test IdP's self-signed TLS).
//   DEBUG                         only `pw:browser` is honoured (Chromium's launch and its
//                                 output on stderr); Playwright's protocol log would show
//                                 the typed password, so `pw:protocol`/`pw:*` are dropped.
//
// Exit status: 0 when `ok`, 1 when not, 2 for bad usage. Chromium runs with a fresh
// temporary profile that is removed at the end, whatever happens.

import { mkdtempSync, renameSync, rmSync, appendFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const started = Date.now();
const env = process.env;

const ACTION = env.TOKCTL_TEST_BROWSER_ACTION || 'login';
const USER = env.TOKCTL_TEST_BROWSER_USER || 'alice';
const PASSWORD = env.TOKCTL_TEST_BROWSER_PASSWORD ?? 'alice-password';
const OUT = env.TOKCTL_TEST_BROWSER_OUT || '';
const LOG = env.TOKCTL_TEST_BROWSER_LOG || '';
const SCREENSHOT = { 1: 'always', 0: 'never' }[env.TOKCTL_TEST_BROWSER_SCREENSHOT] ?? (env.TOKCTL_TEST_BROWSER_SCREENSHOT || 'failure');
const TIMEOUT_S = Number(env.TOKCTL_TEST_BROWSER_TIMEOUT || 120);
const CHROMIUM = env.TOKCTL_TEST_BROWSER_CHROMIUM || '/usr/bin/chromium';
const STRICT_TLS = env.TOKCTL_TEST_BROWSER_STRICT_TLS === '1';
// Nothing below (least of all Chromium) gets the password through the environment.
delete env.TOKCTL_TEST_BROWSER_PASSWORD;
// Playwright's protocol log (DEBUG=pw:protocol, pw:*) would show the typed password: only
// `pw:browser` (Chromium's launch and output) is let through.
if (env.DEBUG) {
  const kept = env.DEBUG.split(',').map((d) => d.trim()).filter((d) => d === 'pw:browser');
  if (kept.length) env.DEBUG = kept.join(',');
  else delete env.DEBUG;
}

const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox', // we may run as root
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage', // small /dev/shm in containers
];
const MAX_STEPS = 20;
const TEXT_LIMIT = 2000;

// ---------------------------------------------------------------------------------------
// Output

function scrub(s) {
  if (typeof s !== 'string' || PASSWORD.length < 3) return s;
  return s.split(PASSWORD).join('<password>');
}

function log(msg) {
  const line = redact(scrub(`tokctl-test-browser[${process.pid}] +${Date.now() - started}ms ${msg}\n`));
  try {
    process.stderr.write(line);
  } catch {
    // stderr may be closed
  }
  if (LOG) {
    try {
      appendFileSync(LOG, line);
    } catch {
      // logging is best effort
    }
  }
}

// The authorization code is single use and already redeemed by the client, but it is
// still not the kind of thing to leave lying around in test artifacts. Applies to URLs
// and to any text that may quote one (Chromium's error pages do).
function redact(s) {
  if (typeof s !== 'string') return s ?? null;
  return s.replace(/([?&]code=)[^&#\s"'\\<>]+/g, '$1REDACTED');
}

function writeAtomically(file, data) {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  writeFileSync(tmp, data, { mode: 0o600 });
  renameSync(tmp, file);
}

function screenshotPath() {
  const ext = path.extname(OUT);
  return ext === '.png' ? `${OUT}.png` : `${OUT.slice(0, OUT.length - ext.length)}.png`;
}

const result = {
  ok: false,
  action: ACTION,
  final_url: null,
  status: null,
  title: null,
  text: null,
  referrer_policy: null,
  error: null,
  steps: [],
  duration_ms: null,
};

function fail(msg) {
  if (!result.error) result.error = msg;
  log(`error: ${msg}`);
}

// ---------------------------------------------------------------------------------------
// Arguments

function usage(msg) {
  process.stderr.write(`tokctl-test-browser: ${msg}\nusage: node browser.mjs URL\n`);
  // A test polling for the outcome file should not wait for nothing.
  if (OUT) {
    try {
      writeAtomically(OUT, `${redact(scrub(JSON.stringify({ ...result, error: `usage: ${msg}`, duration_ms: Date.now() - started })))}\n`);
    } catch {
      // nowhere to report it
    }
  }
  process.exit(2);
}

const argv = process.argv.slice(2);
if (argv.length !== 1) usage(`expected exactly one argument (the URL), got ${argv.length}`);
const START_URL = argv[0];
let idpOrigin;
try {
  const u = new URL(START_URL);
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('not http(s)');
  idpOrigin = u.origin;
} catch {
  usage('the argument is not an http(s) URL');
}
if (!['login', 'deny'].includes(ACTION)) usage(`TOKCTL_TEST_BROWSER_ACTION must be login or deny, not ${JSON.stringify(ACTION)}`);
if (!['always', 'failure', 'never'].includes(SCREENSHOT)) usage('TOKCTL_TEST_BROWSER_SCREENSHOT must be failure, always or never');
if (!(TIMEOUT_S > 0)) usage('TOKCTL_TEST_BROWSER_TIMEOUT must be a positive number of seconds');

// ---------------------------------------------------------------------------------------
// The browser

// Imported only now: after DEBUG is settled, and after the cheap checks above.
const { chromium } = await import('playwright-core');

let launching;
let context;
let page;
let userDataDir;
let lastDoc; // the main frame's last document response (after redirects)
let lastNavUrl; // the URL of the main frame's last navigation request (each redirect counts)
let navError; // set when a navigation of the main frame failed (net::ERR_...)

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function launch() {
  userDataDir = mkdtempSync(path.join(os.tmpdir(), 'tokctl-test-browser-'));
  log(`launching ${CHROMIUM} (profile ${userDataDir})`);
  const childEnv = Object.fromEntries(Object.entries(env).filter(([k]) => !k.startsWith('TOKCTL_TEST_BROWSER_')));
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    env: childEnv,
    ignoreHTTPSErrors: !STRICT_TLS,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
    timeout: 60_000,
  });
  page = context.pages()[0] ?? await context.newPage();
  // Generous: on a loaded CI machine one page can take many seconds. The overall
  // TOKCTL_TEST_BROWSER_TIMEOUT is what bounds the run.
  page.setDefaultTimeout(60_000);
  page.setDefaultNavigationTimeout(60_000);
  const mainNav = (req) => req.isNavigationRequest() && req.frame() === page.mainFrame();
  page.on('request', (req) => {
    if (mainNav(req)) {
      lastNavUrl = req.url();
      navError = undefined;
    }
  });
  page.on('response', (r) => {
    if (mainNav(r.request())) lastDoc = r;
  });
  page.on('requestfailed', (req) => {
    if (mainNav(req)) navError = req.failure()?.errorText ?? 'failed';
  });
}

// Runs `trigger` (a click) and waits for the main frame's next navigation to load.
async function navigateBy(trigger) {
  await Promise.all([page.waitForNavigation({ waitUntil: 'load' }), trigger()]);
}

function step(name) {
  // After a timeout or signal the run is over: stop acting on the page.
  if (ending) throw new Error('stopped');
  result.steps.push(name);
  log(`step: ${name} (at ${redact(page.url())})`);
}

async function drive() {
  step('open');
  await page.goto(START_URL, { waitUntil: 'load' });
  let submittedLogin = false;
  for (let i = 0; i < MAX_STEPS; i += 1) {
    if (ending) throw new Error('stopped');
    const here = new URL(page.url());
    if (here.protocol === 'chrome-error:') {
      throw new Error('the browser shows an error page instead of a web page');
    }
    if (here.origin !== idpOrigin) {
      step('left-idp');
      return arrived(here);
    }
    if (await page.locator('#login-form').count()) {
      if (ACTION === 'deny') {
        step('login-page: cancel');
        await navigateBy(() => page.click('#abort-form [type=submit]'));
        continue;
      }
      if (submittedLogin) {
        const err = await page.locator('body').getAttribute('data-error');
        throw new Error(`the IdP showed the login form again (${err ?? 'no error given'}): wrong user name or password?`);
      }
      step(`login-page: sign in as ${USER}`);
      const form = page.locator('#login-form');
      const userField = form.locator('input[name="username"], input[name="login"]').first();
      await userField.fill(USER);
      await form.locator('input[name="password"]').fill(PASSWORD);
      submittedLogin = true;
      await navigateBy(() => form.locator('[type=submit]').first().click());
      continue;
    }
    if (await page.locator('#consent-form').count()) {
      if (ACTION === 'deny') {
        step('consent-page: deny');
        await navigateBy(() => page.click('#abort-form [type=submit]'));
      } else {
        step('consent-page: allow');
        await navigateBy(() => page.click('#consent-form [type=submit]'));
      }
      continue;
    }
    // Anything else on the IdP is a dead end (its error pages carry data-error on <body>).
    const err = await page.locator('body').getAttribute('data-error').catch(() => null);
    throw new Error(`stuck on an IdP page (HTTP ${lastDoc?.status() ?? '?'}, title ${JSON.stringify(await page.title())}, error ${err ?? 'none'})`);
  }
  throw new Error(`more than ${MAX_STEPS} steps on the IdP`);
}

// On the client's redirect URI: judge the redirect's parameters.
function arrived(here) {
  const q = here.searchParams;
  if (!lastDoc || lastDoc.url() !== here.href) {
    fail('no HTTP answer from the redirect URI');
    return false;
  }
  if (ACTION === 'login') {
    if (q.has('code')) return true;
    fail(`redirected to the client without a code (error=${q.get('error') ?? 'none'})`);
    return false;
  }
  if (q.get('error') === 'access_denied') return true;
  fail(`redirected to the client without error=access_denied (error=${q.get('error') ?? 'none'}${q.has('code') ? ', with a code' : ''})`);
  return false;
}

// Records where the browser is, whatever happened before. Each probe is bounded in time.
async function snapshot() {
  if (!page || page.isClosed()) return;
  const url = page.url();
  // After a failed navigation page.url() may still name the previous page.
  const failed = navError || url.startsWith('chrome-error:');
  result.final_url = redact(failed && lastNavUrl ? lastNavUrl : url);
  if (!failed && lastDoc && lastDoc.url() === url) {
    result.status = lastDoc.status();
    result.referrer_policy = await withTimeout(lastDoc.headerValue('referrer-policy'), 3000, 'headers').catch(() => null);
  }
  result.title = await withTimeout(page.title(), 3000, 'title').catch(() => null);
  const text = await withTimeout(page.evaluate(() => (document.body ? document.body.innerText : '')), 3000, 'text').catch(() => null);
  result.text = typeof text === 'string' ? redact(scrub(text)).slice(0, TEXT_LIMIT) : null;
  if (OUT && (SCREENSHOT === 'always' || (SCREENSHOT === 'failure' && !result.ok))) {
    const png = screenshotPath();
    const tmp = path.join(path.dirname(png), `.${path.basename(png)}.${process.pid}.tmp`);
    try {
      await withTimeout(page.screenshot({ path: tmp, type: 'png', timeout: 5000 }), 6000, 'screenshot');
      renameSync(tmp, png);
    } catch (e) {
      log(`screenshot failed: ${e.message.split('\n')[0]}`);
      rmSync(tmp, { force: true });
    }
  }
}

// ---------------------------------------------------------------------------------------
// Ending: exactly once, always closing the browser and removing the profile.

let ending;
function end(exitHint) {
  if (!ending) ending = finish(exitHint);
  return ending;
}

async function finish(exitHint) {
  // If closing hangs, still write the outcome and exit (playwright kills Chromium on exit).
  const hard = setTimeout(() => {
    // (Playwright kills Chromium on exit; the profile may stay behind in this case.)
    fail('closing the browser took too long');
    writeOutcome();
    process.exit(1);
  }, 45_000);
  // A launch under way is let finish, so that its browser is closed before the profile
  // is removed.
  if (launching) await withTimeout(launching, 15_000, 'launch').catch(() => {});
  try {
    await withTimeout(snapshot(), 12_000, 'snapshot');
  } catch (e) {
    log(`snapshot: ${e.message}`);
  }
  if (context) {
    try {
      await withTimeout(context.close(), 10_000, 'closing the browser');
    } catch (e) {
      log(`close: ${e.message}`);
    }
  }
  clearTimeout(hard);
  writeOutcome();
  const code = exitHint ?? (result.ok ? 0 : 1);
  log(`done: ok=${result.ok} in ${result.duration_ms} ms`);
  process.exit(code);
}

function writeOutcome() {
  if (userDataDir) {
    try {
      rmSync(userDataDir, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    } catch (e) {
      log(`cannot remove ${userDataDir}: ${e.message}`);
    }
  }
  result.duration_ms = Date.now() - started;
  if (!OUT) return;
  try {
    // Last line of defence: nothing that looks like the password or a code gets out.
    writeAtomically(OUT, `${redact(scrub(JSON.stringify(result)))}\n`);
  } catch (e) {
    log(`cannot write ${OUT}: ${e.message}`);
  }
}

for (const [sig, n] of [['SIGTERM', 15], ['SIGINT', 2], ['SIGHUP', 1]]) {
  process.on(sig, () => {
    fail(`killed by ${sig}`);
    result.ok = false;
    end(128 + n);
  });
}

const overall = setTimeout(() => {
  fail(`timed out after ${TIMEOUT_S} s`);
  result.ok = false;
  end(1);
}, TIMEOUT_S * 1000);

try {
  launching = launch();
  await launching;
  const ok = await drive();
  if (!ending) result.ok = ok === true;
} catch (e) {
  if (!ending) {
    const net = /net::ERR_[A-Z_]+/.exec(e.message);
    if (net) {
      navError = net[0];
      fail(`navigation to ${redact(lastNavUrl)} failed: ${net[0]}`);
    } else {
      fail(redact(e.message.split('\n')[0]));
    }
  }
}
clearTimeout(overall);
await end();
