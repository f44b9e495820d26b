#!/usr/bin/env node
// Self-test of the test browser, without tokctl: starts the test IdP (tests/idp), plays
// the client's part (a loopback listener at /callback, an authorization URL with PKCE S256)
// and runs `tokctl-test-browser URL` the way tokctl does, for a login, a denial, a wrong
// password and (on a second IdP that asks for consent) a login with a consent click.
//
//   node tests/browser/selftest.mjs
//
// Exits 0 when every check holds. Needs tests/idp and tests/browser `npm ci`'d and
// Chromium at /usr/bin/chromium (or TOKCTL_TEST_BROWSER_CHROMIUM).

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const IDP = path.join(here, '..', 'idp', 'idp.mjs');
const WRAPPER = path.join(here, 'tokctl-test-browser');
const tmp = mkdtempSync(path.join(os.tmpdir(), 'tokctl-browser-selftest-'));

let failures = 0;
function check(cond, what) {
  console.log(`${cond ? 'ok  ' : 'FAIL'} ${what}`);
  if (!cond) failures += 1;
}

// ---------------------------------------------------------------------------------------
// The IdP

const idps = [];

function startIdp(config) {
  const args = [IDP];
  if (config) {
    const file = path.join(tmp, `idp-${idps.length}.json`);
    writeFileSync(file, JSON.stringify(config));
    args.push(file);
  }
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const idp = { child, events: [], issuer: undefined };
  idps.push(idp);
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`IdP did not start: ${stderr}`)), 15_000);
    child.on('exit', (code) => reject(new Error(`IdP exited (${code}): ${stderr}`)));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const msg = JSON.parse(line);
      if (!idp.issuer) {
        idp.issuer = msg.issuer;
        clearTimeout(timer);
        resolve(idp);
      } else {
        idp.events.push(msg);
      }
    });
  });
}

function stopIdps() {
  for (const { child } of idps) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  }
}

// ---------------------------------------------------------------------------------------
// The client: a loopback listener and an authorization URL

const hits = [];
const callback = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  hits.push({ path: url.pathname, query: Object.fromEntries(url.searchParams), referer: req.headers.referer ?? null });
  if (url.pathname !== '/callback') {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found');
    return;
  }
  const error = url.searchParams.get('error');
  const msg = error ? `Login failed: ${error}` : 'Login succeeded. You can close this window.';
  const body = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>selftest callback</title></head><body><h1>selftest</h1><p>${msg}</p></body></html>`;
  res.writeHead(200, {
    'Content-Type': 'text/html; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'Referrer-Policy': 'no-referrer',
    'Cache-Control': 'no-store',
  });
  res.end(body);
});
await new Promise((r) => { callback.listen(0, '127.0.0.1', r); });
const REDIRECT_URI = `http://127.0.0.1:${callback.address().port}/callback`;

const b64url = (buf) => Buffer.from(buf).toString('base64url');

function authorizationRequest(issuer) {
  const verifier = b64url(crypto.randomBytes(32));
  const state = b64url(crypto.randomBytes(16));
  const url = new URL(`${issuer}/auth`);
  url.search = new URLSearchParams({
    client_id: 'native-cli',
    response_type: 'code',
    redirect_uri: REDIRECT_URI,
    scope: 'openid offline_access',
    state,
    code_challenge: b64url(crypto.createHash('sha256').update(verifier).digest()),
    code_challenge_method: 'S256',
  }).toString();
  return { url: url.toString(), verifier, state };
}

async function redeem(issuer, code, verifier) {
  const r = await fetch(`${issuer}/token`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({
      grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, client_id: 'native-cli', code_verifier: verifier,
    }),
  });
  const body = await r.json();
  return { status: r.status, hasAccessToken: typeof body.access_token === 'string', hasRefreshToken: typeof body.refresh_token === 'string', error: body.error };
}

// ---------------------------------------------------------------------------------------
// The browser, started like tokctl does (URL as the last argument, not waited for by
// tokctl; here we wait for it to exit and for the outcome file)

async function runBrowser(name, url, env) {
  const out = path.join(tmp, `${name}.json`);
  const logFile = path.join(tmp, `${name}.log`);
  const t0 = Date.now();
  const child = spawn(WRAPPER, [url], {
    stdio: ['ignore', 'ignore', 'ignore'],
    env: { ...process.env, TOKCTL_TEST_BROWSER_OUT: out, TOKCTL_TEST_BROWSER_LOG: logFile, ...env },
  });
  const code = await new Promise((r) => { child.on('exit', (c, sig) => r(c ?? sig)); });
  const ms = Date.now() - t0;
  const raw = existsSync(out) ? readFileSync(out, 'utf8') : '';
  const result = raw ? JSON.parse(raw) : null;
  const log = existsSync(logFile) ? readFileSync(logFile, 'utf8') : '';
  console.log(`---- ${name}: exit ${code} after ${ms} ms; steps ${JSON.stringify(result?.steps)}; error ${JSON.stringify(result?.error)}`);
  return { code, ms, raw, result, log, out };
}

function checkNoSecret(run, secret) {
  check(!run.raw.includes(secret) && !run.log.includes(secret), `${run.name}: the password appears neither in the outcome nor in the log`);
}

function leftoverProfiles() {
  return new Set(readdirSync(os.tmpdir()).filter((n) => n.startsWith('tokctl-test-browser-')));
}

// ---------------------------------------------------------------------------------------

const timings = [];
let exitCode = 1;
try {
  const profilesBefore = leftoverProfiles();
  const idp = await startIdp();
  console.log(`IdP ${idp.issuer}, callback ${REDIRECT_URI}`);

  // 1. login (consent is automatic on the default IdP)
  {
    const req = authorizationRequest(idp.issuer);
    const n = hits.length;
    const run = await runBrowser('login', req.url, {});
    run.name = 'login';
    timings.push(['login', run.ms]);
    const cb = hits.slice(n).find((h) => h.path === '/callback');
    check(run.code === 0, 'login: exit status 0');
    check(!!cb, 'login: the callback was hit');
    check(typeof cb?.query.code === 'string' && cb.query.code.length > 0, 'login: callback got a code');
    check(cb?.query.state === req.state, 'login: callback got the right state');
    check(cb?.query.iss === undefined || cb.query.iss === idp.issuer, `login: iss is absent or the issuer (${cb?.query.iss})`);
    check(run.result?.ok === true, 'login: outcome ok=true');
    check(run.result?.action === 'login', 'login: outcome action=login');
    check(run.result?.status === 200, 'login: outcome status 200');
    check(run.result?.text?.includes('Login succeeded'), 'login: outcome text is the callback page');
    check(run.result?.title === 'selftest callback', 'login: outcome title is the callback page');
    check(run.result?.referrer_policy === 'no-referrer', 'login: outcome referrer_policy=no-referrer');
    check(run.result?.final_url?.startsWith(`${REDIRECT_URI}?`) && run.result.final_url.includes('code=REDACTED'), 'login: final_url is the callback, code redacted');
    check(!run.raw.includes(cb?.query.code ?? '\0'), 'login: the code itself is not in the outcome');
    check(!existsSync(run.out.replace(/\.json$/, '.png')), 'login: no screenshot (only on failure by default)');
    checkNoSecret(run, 'alice-password');
    const login = idp.events.find((e) => e.event === 'login');
    check(login?.ok === true && login.username === 'alice', 'login: the IdP saw alice sign in');
    if (cb?.query.code) {
      const tok = await redeem(idp.issuer, cb.query.code, req.verifier);
      check(tok.status === 200 && tok.hasAccessToken, `login: the code redeems with the PKCE verifier (HTTP ${tok.status}${tok.error ? ` ${tok.error}` : ''}; refresh token ${tok.hasRefreshToken})`);
    }
    const others = hits.slice(n).filter((h) => h.path !== '/callback').map((h) => h.path);
    console.log(`     other requests to the loopback listener: ${JSON.stringify(others)}; Referer on callback: ${JSON.stringify(cb?.referer)}`);
  }

  // 2. deny: Cancel on the login page
  {
    const req = authorizationRequest(idp.issuer);
    const n = hits.length;
    const run = await runBrowser('deny', req.url, { TOKCTL_TEST_BROWSER_ACTION: 'deny' });
    run.name = 'deny';
    timings.push(['deny', run.ms]);
    const cb = hits.slice(n).find((h) => h.path === '/callback');
    check(run.code === 0, 'deny: exit status 0');
    check(cb?.query.error === 'access_denied', `deny: callback got error=access_denied (${cb?.query.error})`);
    check(cb?.query.state === req.state, 'deny: callback got the right state');
    check(cb?.query.code === undefined, 'deny: no code');
    check(run.result?.ok === true && run.result.action === 'deny', 'deny: outcome ok=true, action=deny');
    check(run.result?.text?.includes('Login failed: access_denied'), 'deny: outcome text is the callback page');
    check(idp.events.some((e) => e.event === 'login_aborted'), 'deny: the IdP saw the abort');
  }

  // 3. wrong password: the login form comes back; nothing reaches the client
  {
    const req = authorizationRequest(idp.issuer);
    const n = hits.length;
    const secret = 'not-the-password-0xC0FFEE';
    const run = await runBrowser('badpass', req.url, { TOKCTL_TEST_BROWSER_PASSWORD: secret });
    run.name = 'badpass';
    timings.push(['badpass', run.ms]);
    check(run.code === 1, 'badpass: exit status 1');
    check(!hits.slice(n).some((h) => h.path === '/callback'), 'badpass: the callback was not hit');
    check(run.result?.ok === false && /login form again/.test(run.result.error ?? ''), `badpass: outcome ok=false with the reason (${run.result?.error})`);
    check(existsSync(run.out.replace(/\.json$/, '.png')), 'badpass: a screenshot of the failure was written');
    checkNoSecret(run, secret);
  }

  // 4. login as bob on an IdP that shows a consent page
  {
    const idp2 = await startIdp({ consent: 'click' });
    const req = authorizationRequest(idp2.issuer);
    const n = hits.length;
    const run = await runBrowser('consent', req.url, { TOKCTL_TEST_BROWSER_USER: 'bob', TOKCTL_TEST_BROWSER_PASSWORD: 'bob-password' });
    run.name = 'consent';
    timings.push(['consent', run.ms]);
    const cb = hits.slice(n).find((h) => h.path === '/callback');
    check(run.code === 0 && run.result?.ok === true, 'consent: exit 0, ok=true');
    check(run.result?.steps?.some((s) => s.startsWith('consent-page')), 'consent: went through the consent page');
    check(cb?.query.state === req.state && !!cb?.query.code, 'consent: callback got a code and the right state');
    check(idp2.events.some((e) => e.event === 'login' && e.username === 'bob' && e.ok), 'consent: the IdP saw bob sign in');
    check(idp2.events.some((e) => e.event === 'consent'), 'consent: the IdP saw the consent');
    checkNoSecret(run, 'bob-password');
  }

  // 5. the client's listener is gone: the navigation fails, the outcome says where
  {
    const dead = http.createServer();
    await new Promise((r) => { dead.listen(0, '127.0.0.1', r); });
    const deadPort = dead.address().port;
    await new Promise((r) => { dead.close(r); });
    const req = authorizationRequest(idp.issuer);
    const url = new URL(req.url);
    url.searchParams.set('redirect_uri', `http://127.0.0.1:${deadPort}/callback`);
    const run = await runBrowser('deadlistener', url.toString(), {});
    timings.push(['deadlistener', run.ms]);
    check(run.code === 1 && run.result?.ok === false, 'deadlistener: exit 1, ok=false');
    check(/ERR_CONNECTION_REFUSED/.test(run.result?.error ?? ''), `deadlistener: error names the refused connection (${run.result?.error})`);
    check(run.result?.final_url?.startsWith(`http://127.0.0.1:${deadPort}/callback?code=REDACTED`), `deadlistener: final_url is the dead callback (${run.result?.final_url})`);
    check(run.result?.status === null, 'deadlistener: status null');
    check(!/code=(?!REDACTED)/.test(run.raw), 'deadlistener: no code in the outcome');
  }

  // 6. overall timeout
  {
    const req = authorizationRequest(idp.issuer);
    const run = await runBrowser('timeout', req.url, { TOKCTL_TEST_BROWSER_TIMEOUT: '1' });
    timings.push(['timeout', run.ms]);
    check(run.code === 1 && run.result?.ok === false && /timed out after 1 s/.test(run.result.error ?? ''), `timeout: exit 1, ok=false, error (${run.result?.error})`);
  }

  // 7. no profile directories left behind
  const after = leftoverProfiles();
  check([...after].every((d) => profilesBefore.has(d)), 'no temporary Chromium profile left behind');

  exitCode = failures === 0 ? 0 : 1;
} catch (e) {
  console.log(`FAIL selftest crashed: ${e.stack ?? e}`);
} finally {
  stopIdps();
  callback.close();
  console.log(`timings: ${timings.map(([n, ms]) => `${n} ${ms} ms`).join(', ')}`);
  console.log(failures === 0 && exitCode === 0 ? 'selftest: all checks passed' : `selftest: ${failures} check(s) failed (outputs in ${tmp})`);
  if (exitCode === 0) rmSync(tmp, { recursive: true, force: true });
}
process.exit(exitCode);
