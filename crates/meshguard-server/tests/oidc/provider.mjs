// A real OpenID provider for the OIDC login test: oidc-provider (npm) with its development
// login/consent pages, one confidential client, any password accepted for any user.
// Usage: node provider.mjs <port> <redirect_uri> <post_logout_redirect_uri>
import Provider from 'oidc-provider';

const [port, redirect, afterLogout] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [{
    client_id: 'meshguard',
    client_secret: 'mesh-client-secret',
    redirect_uris: [redirect],
    post_logout_redirect_uris: [afterLogout],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  features: { devInteractions: { enabled: true } },
  claims: { openid: ['sub'], email: ['email'] },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: `${id}@example.com` }),
  }),
  cookies: { keys: ['meshguard-test-cookie-key'] },
});
provider.listen(Number(port), '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
