// An OAuth 2.0 authorization server for grantd's connect-flow tests, written by someone else:
// panva/oidc-provider (an OpenID Certified implementation) does every protocol check: exact
// redirect URIs, PKCE S256, single-use codes (a reused code revokes everything issued from
// it), refresh-token rotation (a reused refresh token revokes the grant), and both
// client_secret_basic (form-urlencoded parts) and client_secret_post.
//
// What this file adds is only what a browser user and a test need:
//   GET  /interaction/:uid     the "user": logs in as login_hint (or alice@example.test) and
//                              consents to the requested scopes, with no form to fill in; a
//                              login_hint starting with `declines` says no (access_denied)
//   POST /test/revoke?account= the user revokes grantd's access (all grants of the account)
//   GET  /test/stats           token-endpoint calls so far, by grant_type
//   GET  /test/active?token=   whether an access token is still honoured (revocation tests)
//   GET  /test/grants?account= how many of an account's grants are still alive
// It prints `listening <port>` once ready. Configuration comes from the environment:
//   AUTHZ_CLIENTS  JSON array of oidc-provider client metadata
//   AUTHZ_ACCESS_TTL  access-token lifetime in seconds (default 3600)
import http from 'node:http';
import Provider from 'oidc-provider';

const clients = JSON.parse(process.env.AUTHZ_CLIENTS || '[]');
const accessTtl = Number(process.env.AUTHZ_ACCESS_TTL || 3600);
const grantsByAccount = new Map();
const tokenCalls = {};

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const { port } = server.address();

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients,
  scopes: ['openid', 'offline_access', 'email', 'api.read'],
  claims: { email: ['email'] },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    clientCredentials: { enabled: true },
  },
  // Refresh tokens for every code (without requiring offline_access), rotated on every use.
  issueRefreshToken: async () => true,
  rotateRefreshToken: true,
  pkce: { required: () => true },
  ttl: { AccessToken: accessTtl, ClientCredentials: accessTtl, AuthorizationCode: 60, RefreshToken: 86400, Grant: 86400, Interaction: 600, Session: 3600 },
  findAccount: async (_ctx, sub) => ({ accountId: sub, claims: async () => ({ sub, email: sub }) }),
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['grantd-test-cookie-key'] },
});
provider.proxy = false;

provider.use(async (ctx, next) => {
  if (ctx.path === '/token' && ctx.method === 'POST') {
    await next();
    const gty = ctx.oidc?.params?.grant_type || 'unknown';
    tokenCalls[gty] = (tokenCalls[gty] || 0) + 1;
    return;
  }
  if (ctx.path.startsWith('/interaction/')) {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { params, prompt } = details;
    const accountId = params.login_hint || 'alice@example.test';
    if (accountId.startsWith('declines')) {
      await provider.interactionFinished(ctx.req, ctx.res, {
        error: 'access_denied', error_description: 'The user did not allow access',
      }, { mergeWithLastSubmission: false });
      ctx.respond = false;
      return;
    }
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (params.scope) grant.addOIDCScope(params.scope);
    const grantId = await grant.save();
    if (!grantsByAccount.has(accountId)) grantsByAccount.set(accountId, new Set());
    grantsByAccount.get(accountId).add(grantId);
    await provider.interactionFinished(ctx.req, ctx.res, {
      login: { accountId },
      consent: { grantId },
    }, { mergeWithLastSubmission: false });
    ctx.respond = false;
    return;
  }
  if (ctx.path === '/test/revoke' && ctx.method === 'POST') {
    const account = ctx.query.account;
    const ids = [...(grantsByAccount.get(account) || [])];
    for (const id of ids) {
      await provider.AccessToken.revokeByGrantId(id);
      await provider.RefreshToken.revokeByGrantId(id);
      await provider.Grant.adapter.destroy(id);
    }
    grantsByAccount.delete(account);
    ctx.body = { revoked: ids.length };
    return;
  }
  if (ctx.path === '/test/active') {
    // Whether the server still honours an access token (client-credentials or user), as its
    // own stores say: what a resource server's introspection would answer.
    const token = String(ctx.query.token || '');
    const found = (await provider.ClientCredentials.find(token)) || (await provider.AccessToken.find(token));
    ctx.body = { active: Boolean(found && !found.isExpired) };
    return;
  }
  if (ctx.path === '/test/grants') {
    // How many of an account's grants the server still holds (a revoked refresh token takes
    // its whole grant with it).
    const ids = [...(grantsByAccount.get(String(ctx.query.account)) || [])];
    const live = await Promise.all(ids.map((id) => provider.Grant.find(id)));
    ctx.body = { live: live.filter(Boolean).length };
    return;
  }
  if (ctx.path === '/test/stats') {
    ctx.body = { token_calls: tokenCalls };
    return;
  }
  await next();
});

server.on('request', provider.callback());
console.log(`listening ${port}`);
