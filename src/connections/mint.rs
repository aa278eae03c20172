//! The token request that renews a connection, by its kind: a refresh-token grant (`oauth2`),
//! a client-credentials grant (RFC 6749 §4.4) or a JWT bearer grant (RFC 7523 §2.1) with an
//! assertion signed here.
//!
//! Owns the form fields and which client authenticates; sending and classifying the answer is
//! [`super::token`]'s. It must never log or return the private key or a client secret.

use super::assertion::{Claims, Signer};
use super::credential::{Held, Kind};
use super::token::OAuthClient;
use super::Connection;

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A renewal request: the client that authenticates it and its form fields.
pub struct Renewal {
    pub client: OAuthClient,
    pub form: Vec<(String, String)>,
}

/// The request that gets `grant` a new access token, or why there is none (a config error: the
/// connection's kind and stored secret do not fit the integration).
pub fn renewal(client: &OAuthClient, grant: &Connection, now_ms: i64) -> Result<Renewal, String> {
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    let spec = &client.rules.credentials;
    match (grant.kind, &grant.held) {
        (Kind::Oauth2, _) => {
            let refresh = grant.refresh_token.as_ref().map_or("", |t| t.expose());
            Ok(Renewal {
                client: client.clone(),
                form: vec![
                    pair("grant_type", "refresh_token"),
                    pair("refresh_token", refresh),
                ],
            })
        }
        (
            Kind::Oauth2ClientCredentials,
            Some(Held::ClientCredentials {
                client_id,
                client_secret,
            }),
        ) => {
            let params = spec.oauth2_client_credentials.as_ref().map(|m| &m.params);
            let mut form = vec![pair("grant_type", "client_credentials")];
            form.extend(params.into_iter().flatten().map(|(k, v)| pair(k, v)));
            // The connection's own scopes replace the rule file's.
            if !grant.scopes.is_empty() {
                form.retain(|(k, _)| k != "scope");
                form.push(pair("scope", &grant.scopes));
            }
            let mut client =
                client.with_credentials(client_id.as_deref(), client_secret.as_deref());
            if let Some(url) = client.urls.mint.clone() {
                client.token_url = url;
            }
            if !client.configured() {
                return Err("no client_id: give it with the connection or in the config".into());
            }
            Ok(Renewal { client, form })
        }
        (Kind::JwtBearer, Some(held @ Held::JwtBearer { .. })) => {
            let assertion = assertion(client, grant, held, now_ms)?;
            let params = spec.jwt_bearer.as_ref().map(|j| &j.params);
            let mut form = vec![
                pair("grant_type", JWT_BEARER),
                pair("assertion", &assertion),
            ];
            form.extend(params.into_iter().flatten().map(|(k, v)| pair(k, v)));
            // The assertion authenticates the request; no client id or secret goes with it.
            Ok(Renewal {
                client: client.with_no_client(),
                form,
            })
        }
        (kind, _) => Err(format!(
            "a `{}` connection has nothing grantd can renew it with",
            kind.as_str()
        )),
    }
}

/// Signs the RFC 7523 assertion: `iss` the key's issuer, `sub` the user it acts for (Google
/// domain-wide delegation), `aud` the rule file's audience or the token URL, a short `exp`.
fn assertion(
    client: &OAuthClient,
    grant: &Connection,
    held: &Held,
    now_ms: i64,
) -> Result<String, String> {
    let Held::JwtBearer {
        private_key,
        key_id,
        issuer,
        subject,
    } = held
    else {
        unreachable!("called with a JWT bearer secret");
    };
    let spec = client
        .rules
        .credentials
        .jwt_bearer
        .clone()
        .unwrap_or_default();
    let aud = match &spec.audience {
        Some(a) => a.clone(),
        None => client.token_url.fill(&grant.metadata, &client.urls.hosts)?,
    };
    let signer = Signer::new(private_key, spec.algorithm, key_id.as_deref())?;
    let iat = now_ms / 1000;
    signer.sign(&Claims {
        iss: issuer.clone(),
        sub: subject.clone(),
        aud,
        // The connection's own scopes first (each service account asks for what it needs).
        scope: Some(grant.scopes.clone())
            .filter(|s| !s.is_empty())
            .or(spec.scope.clone()),
        iat,
        exp: iat + spec.lifetime,
        jti: jti(),
    })
}

fn jti() -> String {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the OS random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
