// A real OpenID Provider (panva's oidc-provider) for Portcullis's integration tests.
//
//   node provider.mjs --port 0 [--redirect URI]... [--post-logout-redirect URI]...
//                     [--access-token-ttl SECONDS] [--exchanged-token-ttl SECONDS]
//                     [--changing-groups] [--backchannel-logout URI] [--refresh-delay MS]
//                     [--exit-with-stdin]
//
// Listens on 127.0.0.1 only. The issuer is http://127.0.0.1:PORT (PORT 0 picks a free port).
// Prints exactly one line `READY <issuer>` on stdout once it accepts connections; everything
// else (oidc-provider's development warnings, errors) goes to stderr. Signing keys (one RS256, one
// ES256, one EdDSA on Ed25519) are generated fresh at every start. Access tokens (JWT or not) live
// --access-token-ttl seconds (default 300; lower it to exercise refresh before expiry). Exits on
// SIGTERM/SIGINT, and with --exit-with-stdin also when its stdin closes (so it never outlives a test
// process that died without cleaning up).
//
// With --backchannel-logout URI, the Back-Channel Logout feature is on and the `web` client has
// URI as its backchannel_logout_uri (with backchannel_logout_session_required, so its ID tokens
// carry `sid`): a logout at the provider (its end_session endpoint, confirmed) posts a logout
// token there and waits for the answer.
//
// With --refresh-delay MS, the refresh_token grant answers MS milliseconds after it has rotated
// the refresh token: a relying party that gives up on the answer has spent the old token anyway.
//
// Every token grant is logged to stderr, one line each: `grant.success GRANT_TYPE`,
// `grant.error GRANT_TYPE ERROR` (e.g. a rotated refresh token used again), `grant.revoked`.
//
// Clients:
//   ci-bot   secret ci-bot-secret   client_credentials, client_secret_post, scope "read write",
//            access tokens RS256 JWTs, extra claim groups: ["ci"]
//   svc-es   secret svc-es-secret   same, but access tokens signed ES256, groups: ["svc"]
//   svc-ed   secret svc-ed-secret   same, but access tokens signed EdDSA (Ed25519), groups: ["svc"]
//   web      secret web-secret      authorization_code + refresh_token, client_secret_basic,
//            redirect http://127.0.0.1/.portcullis/callback plus every --redirect (exact match);
//            a refresh token (issued with every code grant, like Okta's) is rotated on every use, and
//            the refresh_token grant returns a new refresh token and a new ID token
//   web-loopback  secret web-loopback-secret  same as web but application_type "native", so its
//            http://127.0.0.1 redirect URIs match on any port (RFC 8252 7.3)
//   exchanger  secret exchanger-secret  RFC 8693 token exchange only, client_secret_basic: a
//            subject_token that is one of this provider's JWT access tokens for
//            https://api.portcullis.test (any client's, or a signed-in user's) becomes an ES256
//            access token for audience https://other.portcullis.test with the same sub and groups,
//            act.sub "exchanger", living --exchanged-token-ttl seconds (default: the access token
//            TTL). Anything else is invalid_grant, invalid_target or invalid_request.
//
// Resources (RFC 8707): https://api.portcullis.test (the default when none is requested) and
// https://other.portcullis.test (to mint wrong-audience tokens). Anything else: invalid_target.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider, { errors } from 'oidc-provider';
import {
  SignJWT, createLocalJWKSet, importJWK, jwtVerify,
} from 'jose';

const API = 'https://api.portcullis.test';
const OTHER = 'https://other.portcullis.test';
const DEFAULT_CALLBACK = 'http://127.0.0.1/.portcullis/callback';
const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';

function usage(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.stderr.write('usage: node provider.mjs --port PORT [--redirect URI]... '
    + '[--post-logout-redirect URI]... [--access-token-ttl SECONDS] [--exchanged-token-ttl SECONDS] '
    + '[--changing-groups] [--backchannel-logout URI] [--refresh-delay MS] [--exit-with-stdin]\n');
  process.exit(2);
}

// A whole number of seconds, at least 1.
function seconds(raw, what) {
  if (!/^\d+$/.test(raw) || Number(raw) < 1) usage(`bad ${what} ${raw}`);
  return Number(raw);
}

function parseArgs(argv) {
  const opts = {
    port: undefined, redirects: [], postLogout: [], accessTokenTtl: 300, exchangedTokenTtl: undefined,
    exitWithStdin: false, changingGroups: false, backchannelLogout: undefined, refreshDelay: 0,
  };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    const value = () => {
      i += 1;
      if (i >= argv.length) usage(`${arg} needs a value`);
      return argv[i];
    };
    switch (arg) {
      case '--port': {
        const raw = value();
        const port = Number(raw);
        if (!/^\d+$/.test(raw) || port > 65535) usage(`bad port ${raw}`);
        opts.port = port;
        break;
      }
      case '--redirect': opts.redirects.push(value()); break;
      case '--post-logout-redirect': opts.postLogout.push(value()); break;
      case '--access-token-ttl': opts.accessTokenTtl = seconds(value(), 'access token TTL'); break;
      case '--exchanged-token-ttl': opts.exchangedTokenTtl = seconds(value(), 'exchanged token TTL'); break;
      case '--exit-with-stdin': opts.exitWithStdin = true; break;
      case '--changing-groups': opts.changingGroups = true; break;
      case '--backchannel-logout': opts.backchannelLogout = value(); break;
      case '--refresh-delay': {
        const raw = value();
        if (!/^\d+$/.test(raw)) usage(`bad refresh delay ${raw}`);
        opts.refreshDelay = Number(raw);
        break;
      }
      default: usage(`unknown argument ${arg}`);
    }
  }
  if (opts.port === undefined) usage('--port is required');
  opts.exchangedTokenTtl ??= opts.accessTokenTtl;
  return opts;
}

function signingKey(type, options, alg) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  const jwk = privateKey.export({ format: 'jwk' });
  const kid = `${alg.toLowerCase()}-${crypto.randomBytes(6).toString('hex')}`;
  return {
    ...jwk, kid, alg, use: 'sig',
  };
}

const opts = parseArgs(process.argv.slice(2));

const keys = [
  signingKey('rsa', { modulusLength: 2048 }, 'RS256'),
  signingKey('ec', { namedCurve: 'P-256' }, 'ES256'),
  signingKey('ed25519', {}, 'EdDSA'),
];

// Per-client access-token signing algorithm and extra claims.
const ACCESS_TOKEN_ALG = { 'svc-es': 'ES256', 'svc-ed': 'EdDSA' };
const GROUPS = { 'ci-bot': ['ci'], 'svc-es': ['svc'], 'svc-ed': ['svc'] };

const unique = (list) => [...new Set(list)];

const server = http.createServer();
server.on('clientError', (err, socket) => socket.destroy(err));

// Bind first: with --port 0 the issuer (which contains the port) is only known afterwards.
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(opts.port, '127.0.0.1', () => {
    server.off('error', reject);
    resolve();
  });
});
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const generation = {};
const provider = new Provider(issuer, {
  jwks: { keys },
  clients: [
    {
      client_id: 'ci-bot',
      client_secret: 'ci-bot-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_post',
      scope: 'read write',
    },
    {
      client_id: 'svc-es',
      client_secret: 'svc-es-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_post',
      scope: 'read write',
    },
    {
      client_id: 'svc-ed',
      client_secret: 'svc-ed-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_post',
      scope: 'read write',
    },
    {
      client_id: 'exchanger',
      client_secret: 'exchanger-secret',
      grant_types: [TOKEN_EXCHANGE],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'web',
      client_secret: 'web-secret',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: unique([DEFAULT_CALLBACK, ...opts.redirects]),
      post_logout_redirect_uris: unique(['http://127.0.0.1/', ...opts.postLogout]),
      scope: 'openid email profile groups offline_access read write',
      ...(opts.backchannelLogout === undefined ? {} : {
        backchannel_logout_uri: opts.backchannelLogout,
        backchannel_logout_session_required: true,
      }),
    },
    {
      client_id: 'web-loopback',
      client_secret: 'web-loopback-secret',
      application_type: 'native',
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      redirect_uris: unique([DEFAULT_CALLBACK, ...opts.redirects]),
      post_logout_redirect_uris: unique(['http://127.0.0.1/', ...opts.postLogout]),
      scope: 'openid email profile groups offline_access read write',
    },
  ],
  scopes: ['openid', 'offline_access', 'read', 'write', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  // Any login name typed into the development login form is an account.
  async findAccount(_ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          email: `${sub}@portcullis.test`,
          email_verified: true,
          name: sub,
          preferred_username: sub,
          // --changing-groups: every token issued names one more group (a promotion at the IdP).
          groups: opts.changingGroups ? ['users', `generation-${(generation[sub] = (generation[sub] ?? 0) + 1)}`] : ['users'],
        };
      },
    };
  },
  pkce: { required: () => true },
  // The relying parties it calls back (back-channel logout) listen on loopback, which
  // oidc-provider's guard against server-side request forgery refuses: this provider is a test
  // peer on loopback itself, so its outgoing requests go without the guard.
  fetch: (url, { dispatcher: _guard, ...options }) => globalThis.fetch(url, options),
  // --changing-groups: the groups go into the ID token itself (oidc-provider keeps scope claims
  // for userinfo by default), so a refresh's new ID token shows the change.
  conformIdTokenClaims: !opts.changingGroups,
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: opts.backchannelLogout !== undefined },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? API,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource, client) => {
        if (resource !== API && resource !== OTHER) {
          throw new errors.InvalidTarget(`unknown resource ${resource}`);
        }
        return {
          scope: 'read write',
          audience: resource,
          accessTokenFormat: 'jwt',
          accessTokenTTL: opts.accessTokenTtl,
          jwt: { sign: { alg: ACCESS_TOKEN_ALG[client?.clientId] ?? 'RS256' } },
        };
      },
    },
  },
  async extraTokenClaims(_ctx, token) {
    if (token.kind !== 'ClientCredentials') return undefined;
    const groups = GROUPS[token.clientId];
    return groups ? { groups } : undefined;
  },
  // web and web-loopback (the only clients with refresh tokens) get a new one at every use.
  rotateRefreshToken: true,
  // Like Okta and Keycloak, a refresh token comes with every code grant of a client allowed the
  // refresh_token grant (oidc-provider's default wants offline_access AND prompt=consent).
  async issueRefreshToken(_ctx, client) {
    return client.grantTypeAllowed('refresh_token');
  },
  ttl: {
    AccessToken: opts.accessTokenTtl,
    ClientCredentials: opts.accessTokenTtl,
    IdToken: 300,
    Grant: 3600,
    Session: 3600,
    Interaction: 600,
    AuthorizationCode: 60,
    RefreshToken: 3600,
  },
});

// RFC 8693 token exchange, which oidc-provider leaves to the deployment: verify the subject token
// as one of our own JWT access tokens for the API, issue one for the other resource.
const publicKeys = createLocalJWKSet({
  keys: keys.map(({
    d, p, q, dp, dq, qi, ...pub
  }) => pub),
});
const exchangeKey = keys[1];
const exchangeSigner = await importJWK(exchangeKey, 'ES256');
provider.registerGrantType(TOKEN_EXCHANGE, async (ctx) => {
  const { params, client } = ctx.oidc;
  if (params.subject_token_type !== ACCESS_TOKEN_TYPE && params.subject_token_type !== JWT_TOKEN_TYPE) {
    throw new errors.InvalidRequest('subject_token_type must be access_token or jwt');
  }
  if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('only access tokens are issued');
  }
  const audience = params.audience ?? OTHER;
  if (audience !== OTHER) throw new errors.InvalidTarget(`no exchange for audience ${audience}`);
  let subject;
  try {
    ({ payload: subject } = await jwtVerify(params.subject_token, publicKeys, { issuer, audience: API }));
  } catch (err) {
    throw new errors.InvalidGrant(`subject_token does not verify (${err.code ?? err.message})`);
  }
  const now = Math.floor(Date.now() / 1000);
  const claims = {
    sub: subject.sub,
    client_id: client.clientId,
    act: { sub: client.clientId },
    ...(subject.groups ? { groups: subject.groups } : {}),
    ...(params.scope ? { scope: params.scope } : {}),
  };
  const accessToken = await new SignJWT(claims)
    .setProtectedHeader({ alg: 'ES256', kid: exchangeKey.kid, typ: 'at+jwt' })
    .setIssuer(issuer)
    .setAudience(audience)
    .setIssuedAt(now)
    .setExpirationTime(now + opts.exchangedTokenTtl)
    .setJti(crypto.randomUUID())
    .sign(exchangeSigner);
  ctx.body = {
    access_token: accessToken,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: opts.exchangedTokenTtl,
  };
}, ['subject_token', 'subject_token_type', 'requested_token_type', 'audience', 'scope', 'actor_token', 'actor_token_type']);

// Errors the provider reports to a client are normal in negative tests; log them to stderr.
provider.on('server_error', (_ctx, err) => process.stderr.write(`server_error: ${err?.stack ?? err}\n`));
provider.on('backchannel.error', (_ctx, err, client) => process.stderr.write(`backchannel logout to ${client.clientId} failed: ${err?.stack ?? err}\n`));
provider.on('end_session.error', (_ctx, err) => process.stderr.write(`end_session.error: ${err?.stack ?? err}\n`));

// Token grants, for tests that count them (one refresh per session across replicas).
provider.on('grant.success', (ctx) => process.stderr.write(`grant.success ${ctx.oidc.params?.grant_type}\n`));
provider.on('grant.error', (ctx, err) => process.stderr.write(`grant.error ${ctx.oidc?.params?.grant_type} ${err?.error ?? err?.message ?? err}\n`));
provider.on('grant.revoked', () => process.stderr.write('grant.revoked\n'));

if (opts.refreshDelay > 0) {
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.oidc?.params?.grant_type === 'refresh_token') {
      await new Promise((resolve) => { setTimeout(resolve, opts.refreshDelay); });
    }
  });
}
server.on('request', provider.callback());

let stopping = false;
function stop(why) {
  if (stopping) return;
  stopping = true;
  process.stderr.write(`provider.mjs: stopping (${why})\n`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
if (opts.exitWithStdin) {
  process.stdin.on('end', () => stop('stdin closed'));
  process.stdin.on('error', () => stop('stdin error'));
  process.stdin.resume();
}

process.stdout.write(`READY ${issuer}\n`);
