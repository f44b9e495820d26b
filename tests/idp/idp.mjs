#!/usr/bin/env node
// A local OpenID Connect provider (oidc-provider) for tokctl's end-to-end tests and the
// README demo. It is deliberately a *test* IdP: fixed demo users, test-only endpoints under
// /test/, failure injection. Never expose it beyond 127.0.0.1.
//
//   node idp.mjs [config.json] [--port N]
//
// Prints one JSON line `{"issuer": "...", "port": N}` to stdout once listening, then one
// JSON line per event. Token values, secrets, passwords and codes are never printed.

import crypto from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import Provider, { errors } from 'oidc-provider';

const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const INTROSPECTOR = 'introspector';
const DAY = 24 * 60 * 60;

// ---------------------------------------------------------------------------------------
// Configuration

function parseArgs(argv) {
  const out = { configPath: undefined, port: undefined };
  for (let i = 0; i < argv.length; i += 1) {
    const a = argv[i];
    if (a === '--port') {
      out.port = Number(argv[i += 1]);
    } else if (a.startsWith('--port=')) {
      out.port = Number(a.slice('--port='.length));
    } else if (a === '-h' || a === '--help') {
      process.stderr.write('usage: node idp.mjs [config.json] [--port N]\n');
      process.exit(0);
    } else if (!out.configPath) {
      out.configPath = a;
    } else {
      die(`unexpected argument: ${a}`);
    }
  }
  if (out.port !== undefined && !(Number.isInteger(out.port) && out.port >= 0 && out.port < 65536)) {
    die('--port needs a number between 0 and 65535');
  }
  return out;
}

function die(msg) {
  process.stderr.write(`idp: ${msg}\n`);
  process.exit(2);
}

const DEFAULT_USERS = [
  { username: 'alice', password: 'alice-password', email: 'alice@example.test', name: 'Alice Example' },
  { username: 'bob', password: 'bob-password', email: 'bob@example.test', name: 'Bob Example' },
];

const DEFAULT_CLIENTS = [
  {
    client_id: 'cc-basic',
    client_secret: 'cc-basic-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    client_id: 'cc-post',
    client_secret: 'cc-post-secret',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_post',
  },
  {
    client_id: 'device-cli',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: [DEVICE_GRANT, 'refresh_token'],
    response_types: [],
    redirect_uris: [],
  },
  {
    client_id: 'native-cli',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback'],
  },
  {
    client_id: 'password-cli',
    client_secret: 'password-cli-secret',
    grant_types: ['password', 'refresh_token'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'client_secret_basic',
  },
];

// Always present (the harness needs it); a config may override its metadata by id.
const INTROSPECTOR_CLIENT = {
  client_id: INTROSPECTOR,
  client_secret: 'introspector-secret',
  grant_types: [],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic',
};

const DEFAULT_RESOURCES = [
  { indicator: 'urn:tokctl:api', scope: 'api api:read api:write' },
  { indicator: 'http://127.0.0.1/api', scope: 'api api:read api:write' },
];

function positiveInt(v, name, dflt) {
  if (v === undefined || v === null) return dflt;
  if (!Number.isInteger(v) || v <= 0) die(`config: ${name} must be a positive whole number of seconds`);
  return v;
}

function loadConfig() {
  const args = parseArgs(process.argv.slice(2));
  let raw = {};
  if (args.configPath) {
    try {
      raw = JSON.parse(readFileSync(args.configPath, 'utf8'));
    } catch (e) {
      die(`cannot read config ${args.configPath}: ${e.message}`);
    }
  }
  const port = args.port ?? raw.port ?? 0;
  const accessTtl = positiveInt(raw.access_token_ttl, 'access_token_ttl', 60);
  const cfg = {
    port,
    accessTokenTtl: accessTtl,
    clientCredentialsTtl: positiveInt(raw.client_credentials_ttl, 'client_credentials_ttl', accessTtl),
    refreshTokenTtl: positiveInt(raw.refresh_token_ttl, 'refresh_token_ttl', 14 * DAY),
    rotateRefreshToken: raw.rotate_refresh_token ?? true,
    deviceCodeTtl: positiveInt(raw.device_code_ttl, 'device_code_ttl', 600),
    idTokenTtl: positiveInt(raw.id_token_ttl, 'id_token_ttl', 3600),
    // Not in oidc-provider's response by default; when set, added as `interval`.
    deviceInterval: positiveInt(raw.device_interval, 'device_interval', undefined),
    // When true, polls faster than the interval get `slow_down` (RFC 8628 §3.5).
    deviceSlowDown: raw.device_slow_down ?? false,
    consent: raw.consent ?? 'auto',
    users: raw.users ?? DEFAULT_USERS,
    clients: raw.clients ?? DEFAULT_CLIENTS,
    resources: raw.resources ?? DEFAULT_RESOURCES,
    tls: raw.tls,
    // Canary mode (security tests): issued access/refresh tokens, authorization and
    // device codes start with this per-test prefix, and the token endpoint keeps the
    // PKCE verifiers and ID tokens it saw for GET /test/captured. Off by default.
    tokenPrefix: raw.token_prefix,
  };
  if (cfg.tokenPrefix !== undefined && !(typeof cfg.tokenPrefix === 'string' && /^[A-Za-z0-9._~-]{1,64}$/.test(cfg.tokenPrefix))) {
    die('config: token_prefix must be 1-64 characters of [A-Za-z0-9._~-]');
  }
  if (!Number.isInteger(cfg.port) || cfg.port < 0 || cfg.port > 65535) die('config: port must be 0..65535');
  if (typeof cfg.rotateRefreshToken !== 'boolean') die('config: rotate_refresh_token must be a boolean');
  if (!['auto', 'click'].includes(cfg.consent)) die('config: consent must be "auto" or "click"');
  if (!Array.isArray(cfg.users) || !Array.isArray(cfg.clients) || !Array.isArray(cfg.resources)) {
    die('config: users, clients and resources must be arrays');
  }
  if (cfg.resources.length === 0) die('config: at least one resource is needed');
  if (!cfg.clients.some((c) => c.client_id === INTROSPECTOR)) {
    cfg.clients = [...cfg.clients, INTROSPECTOR_CLIENT];
  }
  return { cfg, defaulted: !args.configPath };
}

const { cfg, defaulted } = loadConfig();

const users = new Map(cfg.users.map((u) => [u.username, u]));
const resources = new Map(cfg.resources.map((r) => [r.indicator, {
  scope: r.scope ?? '',
  audience: r.audience ?? r.indicator,
  accessTokenFormat: r.format ?? 'opaque',
  accessTokenTTL: r.access_token_ttl ?? cfg.accessTokenTtl,
}]));
const DEFAULT_RESOURCE = cfg.resources[0].indicator;
const STATIC_SCOPES = new Set(['openid', 'offline_access', 'profile', 'email']);

// ---------------------------------------------------------------------------------------
// Event log (stdout) and statistics

function emit(event) {
  process.stdout.write(`${JSON.stringify({ ts: Date.now() / 1000, ...event })}\n`);
}

function freshStats() {
  const counter = () => ({ total: 0, ok: 0, by_grant_type: {}, by_client: {}, errors: {} });
  return {
    token: counter(),
    revocation: counter(),
    introspection: counter(),
    device_authorization: counter(),
    authorization: counter(),
    userinfo: counter(),
    discovery: counter(),
  };
}
let stats = freshStats();

function count(kind, { grantType, clientId, ok, error }) {
  const s = stats[kind];
  s.total += 1;
  if (ok) s.ok += 1;
  if (grantType) s.by_grant_type[grantType] = (s.by_grant_type[grantType] ?? 0) + 1;
  if (clientId) s.by_client[clientId] = (s.by_client[clientId] ?? 0) + 1;
  if (error) s.errors[error] = (s.errors[error] ?? 0) + 1;
}

// The client id is not secret; the secret half of a Basic header is never looked at here.
function basicClientId(req) {
  const h = req.headers.authorization;
  if (!h || !/^basic /i.test(h)) return undefined;
  try {
    const decoded = Buffer.from(h.slice(6).trim(), 'base64').toString('utf8');
    const i = decoded.indexOf(':');
    return i < 0 ? undefined : decodeURIComponent(decoded.slice(0, i).replace(/\+/g, '%20'));
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------
// Failure injection (POST /test/fail): the next `count` requests to an endpoint fail.

const ENDPOINT_PATHS = {
  token: '/token',
  revocation: '/token/revocation',
  introspection: '/token/introspection',
  device_authorization: '/device/auth',
  discovery: '/.well-known/openid-configuration',
  userinfo: '/me',
};
let failures = [];
// POST /test/device-display (terminal-safety tests): fields that replace what the device
// authorization response shows the user (user_code, verification_uri…). The IdP keeps the
// real values. Empty by default: responses are unchanged.
let deviceDisplay = {};
// Canary mode only: what the token endpoint received or issued that tests cannot see
// otherwise. Kept in memory and served on GET /test/captured, never written to the log.
const captured = { code_verifiers: [], id_tokens: [] };

function takeFailure(pathname) {
  const i = failures.findIndex((f) => f.path === pathname);
  if (i < 0) return undefined;
  const f = failures[i];
  if (f.count !== null) {
    f.count -= 1;
    if (f.count <= 0) failures.splice(i, 1);
  }
  return f;
}

// ---------------------------------------------------------------------------------------
// Small HTTP helpers for our own routes

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
  })[c]);
}

function page(title, body, { error } = {}) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:sans-serif;max-width:28em;margin:2em auto}label,input,button{display:block;margin:.4em 0}</style>
</head><body${error ? ` data-error="${escapeHtml(error)}"` : ''}>
<h1>${escapeHtml(title)}</h1>
${body}
</body></html>`;
}

function send(res, status, contentType, body, headers = {}) {
  res.writeHead(status, {
    'Content-Type': contentType,
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    ...headers,
  });
  res.end(body);
}

const sendJson = (res, status, obj, headers) => send(res, status, 'application/json', JSON.stringify(obj), headers);
const sendHtml = (res, status, html) => send(res, status, 'text/html; charset=utf-8', html);

function readBody(req, limit = 64 * 1024) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > limit) {
        reject(new Error('request body too large'));
        req.destroy();
      } else {
        chunks.push(c);
      }
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function safeEqual(a, b) {
  const ha = crypto.createHash('sha256').update(String(a)).digest();
  const hb = crypto.createHash('sha256').update(String(b)).digest();
  return crypto.timingSafeEqual(ha, hb);
}

// ---------------------------------------------------------------------------------------
// Accounts

async function findAccount(_ctx, sub) {
  const user = users.get(sub);
  if (!user) return undefined;
  return {
    accountId: sub,
    async claims() {
      return {
        sub,
        preferred_username: sub,
        name: user.name ?? sub,
        email: user.email ?? `${sub}@example.test`,
        email_verified: true,
      };
    },
  };
}

// ---------------------------------------------------------------------------------------
// The password grant (ROPC, RFC 6749 §4.3): oidc-provider does not ship it.

async function passwordGrant(ctx) {
  const { client, params, provider } = ctx.oidc;
  if (!params.username || !params.password) {
    throw new errors.InvalidRequest("missing required parameter 'username' or 'password'");
  }
  const user = users.get(params.username);
  if (!user || !safeEqual(user.password, params.password)) {
    throw new errors.InvalidGrant('invalid resource owner credentials');
  }
  const indicator = params.resource ?? DEFAULT_RESOURCE;
  const rsInfo = resources.get(indicator);
  if (!rsInfo) throw new errors.InvalidTarget();
  const rsScopes = new Set(rsInfo.scope.split(' ').filter(Boolean));

  const requested = [...new Set((params.scope || 'openid').split(' ').filter(Boolean))];
  const oidcScopes = requested.filter((s) => STATIC_SCOPES.has(s));
  const apiScopes = requested.filter((s) => rsScopes.has(s));
  const scope = [...oidcScopes, ...apiScopes].join(' ');

  const account = await findAccount(ctx, user.username);
  ctx.oidc.entity('Account', account);
  const { accountId } = account;

  const grant = new provider.Grant({ accountId, clientId: client.clientId });
  if (oidcScopes.length) grant.addOIDCScope(oidcScopes.join(' '));
  if (apiScopes.length) grant.addResourceScope(indicator, apiScopes.join(' '));
  const grantId = await grant.save();
  ctx.oidc.entity('Grant', grant);

  const authTime = Math.floor(Date.now() / 1000);
  const at = new provider.AccessToken({
    accountId, client, grantId, gty: 'password', scope: apiScopes.join(' ') || undefined,
  });
  at.resourceServer = new provider.ResourceServer(indicator, rsInfo);
  ctx.oidc.entity('AccessToken', at);
  const accessToken = await at.save();

  let refreshToken;
  if (client.grantTypeAllowed('refresh_token')) {
    const rt = new provider.RefreshToken({
      accountId,
      authTime,
      client,
      grantId,
      gty: 'password',
      resource: indicator,
      rotations: 0,
      scope,
    });
    ctx.oidc.entity('RefreshToken', rt);
    refreshToken = await rt.save();
  }

  let idToken;
  if (oidcScopes.includes('openid')) {
    const token = new provider.IdToken({ ...await account.claims(), auth_time: authTime }, { ctx });
    token.scope = oidcScopes.join(' ');
    idToken = await token.issue({ use: 'idtoken' });
  }

  ctx.body = {
    access_token: accessToken,
    expires_in: at.expiration,
    token_type: at.tokenType,
    scope: scope || undefined,
    refresh_token: refreshToken,
    id_token: idToken,
  };
}

// ---------------------------------------------------------------------------------------
// Device flow pages (no external resources, so headless browsers stay offline)

const deviceFlowPages = {
  async userCodeInputSource(ctx, form, out, err) {
    let msg = 'Enter the code displayed on your device';
    let error;
    if (err && (err.userCode || err.name === 'NoCodeError')) {
      msg = 'The code you entered is incorrect. Try again';
      error = 'invalid_user_code';
    } else if (err && err.name === 'AbortedError') {
      msg = 'The sign-in request was interrupted';
      error = 'aborted';
    } else if (err) {
      msg = 'There was an error processing your request';
      error = out?.error ?? 'error';
    }
    ctx.body = page('Sign-in', `<p>${escapeHtml(msg)}</p>${form}<button type="submit" form="op.deviceInputForm">Continue</button>`, { error });
  },
  async userCodeConfirmSource(ctx, form, client, _deviceInfo, userCode) {
    const display = client.clientName || client.clientId;
    ctx.body = page('Confirm Device', `<p><strong>${escapeHtml(display)}</strong> wants to sign in.</p>
<p>The following code should be displayed on your device: <code>${escapeHtml(userCode)}</code></p>
${form}
<button autofocus type="submit" form="op.deviceConfirmForm">Continue</button>
<button type="submit" form="op.deviceConfirmForm" value="yes" name="abort">Abort</button>`);
  },
  async successSource(ctx) {
    ctx.body = page('Sign-in Success', '<p>Your sign-in was successful, you can now close this page.</p>');
  },
};

async function renderError(ctx, out) {
  ctx.type = 'html';
  ctx.body = page('Error', `<p>${escapeHtml(out.error)}: ${escapeHtml(out.error_description ?? '')}</p>`, { error: out.error });
}

// ---------------------------------------------------------------------------------------
// The provider

function buildProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: cfg.clients,
    findAccount,
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      email: ['email', 'email_verified'],
    },
    scopes: [...STATIC_SCOPES],
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      deviceFlow: { enabled: true, ...deviceFlowPages },
      introspection: {
        enabled: true,
        // oidc-provider's own rule, stated here: confidential clients see any token,
        // public clients only their own.
        async allowedPolicy(_ctx, client, token) {
          return !(client.clientAuthMethod === 'none' && token.clientId !== client.clientId);
        },
      },
      revocation: {
        enabled: true,
        // The harness's introspector may revoke anything, to simulate an IdP-side revocation.
        async allowedPolicy(_ctx, client, token) {
          if (client.clientId === INTROSPECTOR || token.clientId === client.clientId) return true;
          if (client.clientAuthMethod === 'none') return false;
          throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
        },
      },
      resourceIndicators: {
        enabled: true,
        // Every token is for a configured resource, so scopes such as `api` are kept and
        // all access tokens are opaque and introspectable.
        async defaultResource(_ctx, _client, oneOf) {
          if (oneOf) return Array.isArray(oneOf) ? oneOf[0] : oneOf;
          return DEFAULT_RESOURCE;
        },
        async useGrantedResource() { return true; },
        async getResourceServerInfo(_ctx, indicator) {
          const info = resources.get(indicator);
          if (!info) throw new errors.InvalidTarget();
          return info;
        },
      },
    },
    clientBasedCORS: () => false,
    // Tokens outlive the browser session that created them (a CLI has no session).
    expiresWithSession: async () => false,
    // Refresh tokens for every client allowed the grant, no `offline_access` dance needed.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    rotateRefreshToken: cfg.rotateRefreshToken,
    renderError,
    ttl: {
      AccessToken: cfg.accessTokenTtl,
      ClientCredentials: cfg.clientCredentialsTtl,
      RefreshToken: cfg.refreshTokenTtl,
      DeviceCode: cfg.deviceCodeTtl,
      IdToken: cfg.idTokenTtl,
      AuthorizationCode: 60,
      Interaction: 3600,
      Session: DAY,
      Grant: Math.max(cfg.refreshTokenTtl, 14 * DAY),
    },
  });

  if (cfg.tokenPrefix) {
    // oidc-provider names opaque tokens and codes by their id (jti), so a prefixed id is
    // a prefixed value, and lookups by value keep working.
    for (const [model, tag] of [['AccessToken', 'AT'], ['ClientCredentials', 'CC'], ['RefreshToken', 'RT'], ['AuthorizationCode', 'CODE'], ['DeviceCode', 'DC']]) {
      const proto = provider[model].prototype;
      const original = proto.generateTokenId;
      proto.generateTokenId = function prefixed() {
        return `${cfg.tokenPrefix}-${tag}-${original.call(this)}`;
      };
    }
  }

  provider.registerGrantType('password', passwordGrant, ['username', 'password', 'scope', 'resource']);

  provider.on('grant.error', (ctx, err) => {
    ctx.state.errorDetail = err.error_detail ?? err.error_description;
  });
  provider.on('authorization.success', (ctx) => {
    count('authorization', { clientId: ctx.oidc.client?.clientId, ok: true });
    emit({ event: 'authorization', client_id: ctx.oidc.client?.clientId, ok: true });
  });
  provider.on('authorization.error', (ctx, err) => {
    count('authorization', { clientId: ctx.oidc.client?.clientId, ok: false, error: err.error });
    emit({
      event: 'authorization', client_id: ctx.oidc.client?.clientId, ok: false, error: err.error, error_detail: err.error_detail,
    });
  });
  provider.on('grant.revoked', () => emit({ event: 'grant_revoked' }));
  provider.on('server_error', (_ctx, err) => emit({ event: 'server_error', message: String(err?.message ?? err) }));

  // Logs and counts one line per request to the endpoints tests care about.
  provider.use(async (ctx, next) => {
    const kind = Object.keys(ENDPOINT_PATHS).find((k) => ENDPOINT_PATHS[k] === ctx.path);
    const f = kind && takeFailure(ctx.path);
    if (f) {
      await injectFailure(ctx, kind, f);
      return;
    }
    if (kind === 'token' && ctx.method === 'POST' && cfg.deviceSlowDown) {
      if (await slowDown(ctx)) return;
    }
    await next();
    if (!kind) {
      if (ctx.oidc?.route === 'code_verification' && ctx.method === 'POST') {
        emit({ event: 'device_verification', status: ctx.status });
      } else if (ctx.oidc?.route === 'device_resume') {
        emit({ event: 'device_login', client_id: ctx.oidc?.client?.clientId, status: ctx.status, ok: ctx.status < 400 });
      }
      return;
    }
    if (kind === 'device_authorization' && cfg.deviceInterval && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
      ctx.body.interval = cfg.deviceInterval;
    }
    if (kind === 'device_authorization' && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
      Object.assign(ctx.body, deviceDisplay);
    }
    const body = ctx.body && typeof ctx.body === 'object' && !Buffer.isBuffer(ctx.body) ? ctx.body : {};
    const ok = ctx.status < 400;
    const params = ctx.oidc?.params ?? {};
    const entry = {
      grantType: kind === 'token' ? params.grant_type : undefined,
      clientId: ctx.oidc?.client?.clientId ?? params.client_id ?? basicClientId(ctx.req),
      ok,
      error: ok ? undefined : body.error,
    };
    count(kind, entry);
    const line = {
      event: kind, status: ctx.status, ok, client_id: entry.clientId,
    };
    if (entry.grantType) line.grant_type = entry.grantType;
    if (!ok) {
      line.error = body.error;
      if (ctx.state.errorDetail) line.error_detail = ctx.state.errorDetail;
    }
    if (kind === 'token' && ok) line.refresh_token_issued = typeof body.refresh_token === 'string';
    if (kind === 'token' && cfg.tokenPrefix) {
      if (typeof params.code_verifier === 'string') captured.code_verifiers.push(params.code_verifier);
      if (ok && typeof body.id_token === 'string') captured.id_tokens.push(body.id_token);
    }
    if (kind === 'introspection' && ok) line.active = body.active === true;
    if (kind === 'revocation') line.token_type_hint = params.token_type_hint;
    if (kind !== 'discovery') emit(line);
  });

  return provider;
}

async function injectFailure(ctx, kind, f) {
  // Parse just enough of the form to count the request like a real one.
  let form = new URLSearchParams();
  if (ctx.method === 'POST') {
    try {
      form = new URLSearchParams(await readBody(ctx.req));
    } catch {
      // an unreadable body still gets the injected answer
    }
  }
  if (f.delay_ms) await new Promise((r) => { setTimeout(r, f.delay_ms); });
  const clientId = form.get('client_id') ?? basicClientId(ctx.req);
  const grantType = kind === 'token' ? form.get('grant_type') ?? undefined : undefined;
  ctx.status = f.status;
  if (f.retry_after !== undefined) ctx.set('Retry-After', String(f.retry_after));
  if (f.location !== undefined) ctx.set('Location', f.location);
  ctx.set('Cache-Control', 'no-store');
  if (f.body === 'html') {
    ctx.type = 'html';
    ctx.body = '<html><body>injected failure</body></html>';
  } else {
    ctx.body = { error: f.error, error_description: f.error_description ?? 'injected by the test IdP' };
  }
  count(kind, { grantType, clientId, ok: false, error: f.error });
  emit({
    event: kind, status: f.status, ok: false, client_id: clientId, grant_type: grantType, error: f.error, injected: true,
  });
}

// RFC 8628 §3.5 enforcement, optional. Keyed by a hash so no device code is kept in clear.
const lastPoll = new Map();
async function slowDown(ctx) {
  const interval = cfg.deviceInterval ?? 5;
  // oidc-provider accepts an already read body from `req.body` (it warns once on stderr).
  const raw = await readBody(ctx.req);
  ctx.req.body = raw;
  const form = new URLSearchParams(raw);
  if (form.get('grant_type') !== DEVICE_GRANT || !form.get('device_code')) return false;
  const key = crypto.createHash('sha256').update(form.get('device_code')).digest('hex');
  const now = Date.now();
  const prev = lastPoll.get(key);
  if (prev && now - prev.at < prev.interval * 1000 - 200) {
    lastPoll.set(key, { at: now, interval: prev.interval + 5 });
    ctx.status = 400;
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { error: 'slow_down', error_description: 'you are polling too quickly' };
    const clientId = form.get('client_id') ?? basicClientId(ctx.req);
    count('token', { grantType: DEVICE_GRANT, clientId, error: 'slow_down' });
    emit({
      event: 'token', status: 400, ok: false, client_id: clientId, grant_type: DEVICE_GRANT, error: 'slow_down',
    });
    return true;
  }
  lastPoll.set(key, { at: now, interval: prev?.interval ?? interval });
  return false;
}

// ---------------------------------------------------------------------------------------
// Interaction routes: a login form and consent (automatic, or one click).

function loginPage(uid, clientId, { error, username } = {}) {
  return page('Sign-in', `<p>Sign in to continue to <strong>${escapeHtml(clientId)}</strong>.</p>
${error ? '<p class="error">Invalid username or password.</p>' : ''}
<form id="login-form" method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
<label>Username <input required type="text" name="username" value="${escapeHtml(username ?? '')}" autofocus></label>
<label>Password <input required type="password" name="password"></label>
<button type="submit" id="login-submit">Sign in</button>
</form>
<form id="abort-form" method="post" action="/interaction/${escapeHtml(uid)}/abort">
<button type="submit" id="abort-submit">Cancel</button>
</form>`, { error });
}

function consentPage(uid, clientId, details) {
  const scopes = [
    ...(details.missingOIDCScope ?? []),
    ...Object.values(details.missingResourceScopes ?? {}).flat(),
  ];
  return page('Authorize', `<p><strong>${escapeHtml(clientId)}</strong> asks for: ${escapeHtml(scopes.join(' ') || '(no scopes)')}</p>
<form id="consent-form" method="post" action="/interaction/${escapeHtml(uid)}/confirm">
<button type="submit" id="consent-submit">Allow</button>
</form>
<form id="abort-form" method="post" action="/interaction/${escapeHtml(uid)}/abort">
<button type="submit" id="abort-submit">Deny</button>
</form>`);
}

async function grantConsent(provider, req, res, interaction) {
  const { prompt: { details }, params, session: { accountId } } = interaction;
  let { grantId } = interaction;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId, clientId: params.client_id });
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const saved = await grant.save();
  const consent = {};
  if (!grantId) {
    grantId = saved;
    consent.grantId = grantId;
  }
  emit({ event: 'consent', client_id: params.client_id, account: accountId });
  await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
}

async function interactionRoutes(provider, req, res, pathname) {
  const m = /^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/.exec(pathname);
  if (!m) return sendHtml(res, 404, page('Not Found', '<p>no such page</p>', { error: 'not_found' }));
  const [, uid, action] = m;
  let interaction;
  try {
    interaction = await provider.interactionDetails(req, res);
  } catch (e) {
    return sendHtml(res, 400, page('Error', `<p>${escapeHtml(e.error ?? 'invalid_request')}: the sign-in session was not found or expired.</p>`, { error: e.error ?? 'invalid_request' }));
  }
  if (interaction.uid !== uid) {
    return sendHtml(res, 400, page('Error', '<p>interaction mismatch</p>', { error: 'invalid_request' }));
  }
  const clientId = interaction.params.client_id;
  const promptName = interaction.prompt.name;

  if (req.method === 'GET' && !action) {
    if (promptName === 'login') return sendHtml(res, 200, loginPage(uid, clientId));
    if (promptName === 'consent') {
      if (cfg.consent === 'auto') return grantConsent(provider, req, res, interaction);
      return sendHtml(res, 200, consentPage(uid, clientId, interaction.prompt.details));
    }
    return sendHtml(res, 400, page('Error', `<p>unsupported prompt ${escapeHtml(promptName)}</p>`, { error: 'invalid_request' }));
  }
  if (req.method !== 'POST') return sendHtml(res, 405, page('Error', '<p>method not allowed</p>', { error: 'invalid_request' }));

  const form = new URLSearchParams(await readBody(req));
  if (action === 'abort') {
    emit({ event: 'login_aborted', client_id: clientId });
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }
  if (action === 'login' && promptName === 'login') {
    const username = form.get('username') ?? '';
    const user = users.get(username);
    const ok = !!user && safeEqual(user.password, form.get('password') ?? '');
    emit({
      event: 'login', client_id: clientId, username, ok,
    });
    if (!ok) return sendHtml(res, 200, loginPage(uid, clientId, { error: 'invalid_credentials', username }));
    return provider.interactionFinished(req, res, {
      login: { accountId: username },
    }, { mergeWithLastSubmission: false });
  }
  if (action === 'confirm' && promptName === 'consent') {
    return grantConsent(provider, req, res, interaction);
  }
  return sendHtml(res, 400, page('Error', '<p>unexpected form for this step</p>', { error: 'invalid_request' }));
}

// ---------------------------------------------------------------------------------------
// Test-only routes

async function testRoutes(req, res, pathname) {
  if (req.method === 'GET' && pathname === '/test/stats') return sendJson(res, 200, stats);
  if (req.method === 'POST' && pathname === '/test/reset-stats') {
    stats = freshStats();
    return sendJson(res, 200, { ok: true });
  }
  if (req.method === 'POST' && pathname === '/test/mark') {
    // Written to the event log before the answer: once the caller has the answer, every
    // earlier event is in the pipe too.
    const id = new URL(req.url, 'http://x').searchParams.get('id');
    emit({ event: 'mark', id });
    return sendJson(res, 200, { ok: true });
  }
  if (req.method === 'POST' && pathname === '/test/fail') {
    // {"endpoint":"token","status":503,"count":1,"error":"temporarily_unavailable",
    //  "retry_after":1,"delay_ms":0,"body":"json"|"html","location":"<url>",
    //  "error_description":"<text>"}; count null = until cleared.
    let spec;
    try {
      spec = JSON.parse(await readBody(req));
    } catch {
      return sendJson(res, 400, { error: 'invalid_request', error_description: 'body must be JSON' });
    }
    const path = ENDPOINT_PATHS[spec.endpoint ?? 'token'];
    if (!path) return sendJson(res, 400, { error: 'invalid_request', error_description: `unknown endpoint; one of ${Object.keys(ENDPOINT_PATHS).join(', ')}` });
    const status = spec.status ?? 503;
    failures.push({
      path,
      status,
      count: spec.count === null ? null : (spec.count ?? 1),
      error: spec.error ?? (status >= 500 ? 'temporarily_unavailable' : 'invalid_request'),
      retry_after: spec.retry_after,
      delay_ms: spec.delay_ms ?? 0,
      body: spec.body ?? 'json',
      location: spec.location,
      error_description: spec.error_description,
    });
    return sendJson(res, 200, { ok: true });
  }
  if (req.method === 'POST' && pathname === '/test/device-display') {
    // {"user_code":"...","verification_uri":"..."}: shown instead of the real values.
    try {
      deviceDisplay = JSON.parse(await readBody(req));
    } catch {
      return sendJson(res, 400, { error: 'invalid_request', error_description: 'body must be JSON' });
    }
    return sendJson(res, 200, { ok: true });
  }
  if (req.method === 'GET' && pathname === '/test/captured' && cfg.tokenPrefix) return sendJson(res, 200, captured);
  if (req.method === 'POST' && pathname === '/test/clear-failures') {
    failures = [];
    return sendJson(res, 200, { ok: true });
  }
  return sendJson(res, 404, { error: 'not_found' });
}

// ---------------------------------------------------------------------------------------
// Server

function createServer() {
  if (!cfg.tls) return { server: http.createServer(), scheme: 'http' };
  try {
    const server = https.createServer({
      cert: readFileSync(cfg.tls.cert_file),
      key: readFileSync(cfg.tls.key_file),
    });
    return { server, scheme: 'https' };
  } catch (e) {
    return die(`cannot load TLS certificate or key: ${e.message}`);
  }
}

const { server, scheme } = createServer();
server.on('error', (e) => die(`cannot listen on 127.0.0.1:${cfg.port}: ${e.message}`));
server.listen(cfg.port, '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `${scheme}://127.0.0.1:${port}`;
  const provider = buildProvider(issuer);
  const callback = provider.callback();
  server.on('request', async (req, res) => {
    const { pathname } = new URL(req.url, issuer);
    try {
      if (pathname.startsWith('/test/')) return await testRoutes(req, res, pathname);
      if (pathname.startsWith('/interaction/')) return await interactionRoutes(provider, req, res, pathname);
      return await callback(req, res);
    } catch (e) {
      emit({ event: 'server_error', message: String(e?.message ?? e) });
      if (!res.headersSent) return sendJson(res, 500, { error: 'server_error' });
      return res.destroy();
    }
  });
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
  if (defaulted) {
    process.stderr.write(`idp: issuer ${issuer}
idp: users: ${cfg.users.map((u) => u.username).join(', ')} (password: <name>-password)
idp: clients: ${cfg.clients.map((c) => c.client_id).join(', ')}
idp: resources: ${cfg.resources.map((r) => r.indicator).join(', ')}
`);
  }
});

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
