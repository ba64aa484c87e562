// A real OpenID provider for the OIDC login test: oidc-provider (npm) with its development
// login/consent pages, one confidential client, any password accepted for any user. Refresh
// tokens are issued to the client (it has the refresh_token grant), token revocation (RFC 7009)
// and RP-initiated logout (on by default) are enabled; ID and access tokens live <ttl> seconds.
// Usage: node provider.mjs <port> <redirect_uri> <post_logout_redirect_uri> [ttl]
import Provider from 'oidc-provider';

const [port, redirect, afterLogout, ttlArg] = process.argv.slice(2);
const ttl = Number(ttlArg || 3600);
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: 'meshguard',
    client_secret: 'mesh-client-secret',
    redirect_uris: [redirect],
    post_logout_redirect_uris: [afterLogout],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  features: { devInteractions: { enabled: true }, revocation: { enabled: true } },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: { IdToken: ttl, AccessToken: ttl },
  claims: { openid: ['sub'], email: ['email'] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@example.com` }),
  }),
  cookies: { keys: ['meshguard-test-cookie-key'] },
});
// Refused grants (refresh after revocation, replayed codes) are printed for the test log.
provider.on('grant.error', (ctx, err) => {
  console.error(`grant.error: ${err.message}: ${err.error_detail || ''}`);
});
provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
