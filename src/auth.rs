//! Credentials: the admin token and tenant API keys, and who a caller is.
//!
//! An API key's bearer token is `tenantry_<key id>_<secret>`: the key id (32
//! hex digits) finds the key in the catalog, the secret (256 random bits, 64
//! hex digits) proves possession. The catalog keeps only a SHA-256 of the
//! secret; a fast hash is the right one here because the secret is random and
//! long, not a password that could be guessed. Hashes are compared in constant
//! time. Verified keys are remembered in a small cache that every admin change
//! invalidates at once (see [`Authenticator::invalidate`]).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::future::Cache;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::catalog::{Catalog, KeyGrant, TenantState, store};
use crate::error::{Context, Error, Result};
use crate::ids::TenantId;
use crate::storage::data_dir::DataDir;

const KEY_PREFIX: &str = "tenantry_";

/// A secret string that never shows itself in `Debug` output or logs.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Who is calling, as proven by the credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Tenant { tenant_id: TenantId, key_id: Uuid },
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The admin token from the configuration, or else the one in
/// `<data-dir>/admin.token`, generated (mode 0600) on first start.
pub fn admin_token(
    configured: Option<&Secret>,
    token_file: Option<&std::path::Path>,
    data_dir: &DataDir,
) -> Result<Secret> {
    if let Some(token) = configured {
        return check_admin_token(token.expose().trim(), "TENANTRY_ADMIN_TOKEN");
    }
    if let Some(path) = token_file {
        let text = std::fs::read_to_string(path)
            .context(|| format!("reading the admin token file {}", path.display()))?;
        return check_admin_token(text.trim(), &path.display().to_string());
    }
    let path = data_dir.admin_token();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            tracing::info!(path = %path.display(), "admin token read from file");
            check_admin_token(text.trim(), &path.display().to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = format!("tenantry_admin_{}", random_hex::<32>());
            write_private_file(&path, &format!("{token}\n"))?;
            tracing::info!(path = %path.display(), "generated an admin token (mode 0600)");
            Ok(Secret::new(token))
        }
        Err(e) => Err(e).context(|| format!("reading the admin token file {}", path.display())),
    }
}

fn check_admin_token(token: &str, source: &str) -> Result<Secret> {
    if token.len() < 16 {
        return Err(Error::invalid(
            "admin token",
            format!(
                "the admin token from {source} is shorter than 16 characters; use a long random value"
            ),
        ));
    }
    if token.starts_with(KEY_PREFIX) && !token.starts_with("tenantry_admin_") {
        return Err(Error::invalid(
            "admin token",
            format!(
                "the admin token from {source} looks like a tenant API key; choose another value"
            ),
        ));
    }
    Ok(Secret::new(token))
}

fn write_private_file(path: &std::path::Path, contents: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .context(|| format!("writing {}", path.display()))
}

fn random_hex<const N: usize>() -> String {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A newly made API key: the token to hand out once, and the hash to keep.
pub struct NewApiKey {
    pub id: Uuid,
    pub token: Secret,
    pub secret_sha256: [u8; 32],
}

impl NewApiKey {
    pub fn generate() -> Self {
        let id = Uuid::new_v4();
        let secret = random_hex::<32>();
        NewApiKey {
            id,
            token: Secret::new(format!("{KEY_PREFIX}{}_{secret}", id.simple())),
            secret_sha256: sha256(secret.as_bytes()),
        }
    }
}

/// The key id an `authorization` header names, if it holds an API key
/// (valid or not): who a refusal is counted against.
pub fn claimed_key_id(header: &[u8]) -> Option<Uuid> {
    let text = std::str::from_utf8(header).ok()?;
    let (_, token) = text.split_once(' ')?;
    parse_api_key(token.trim()).map(|(id, _)| id)
}

/// Splits an API key token into its key id and secret, if it has the shape.
fn parse_api_key(token: &str) -> Option<(Uuid, &str)> {
    let rest = token.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let valid_hex = |s: &str, len| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid_hex(id, 32) || !valid_hex(secret, 64) {
        return None;
    }
    Some((Uuid::try_parse(id).ok()?, secret))
}

/// A grant as cached, with the catalog generation it was read at.
#[derive(Clone)]
struct CachedGrant {
    grant: Arc<KeyGrant>,
    generation: u64,
}

/// Verifies credentials. A cheap, clone-able handle.
#[derive(Clone)]
pub struct Authenticator {
    admin_sha256: [u8; 32],
    catalog: Catalog,
    grants: Cache<Uuid, CachedGrant>,
    /// Bumped by every admin change. A cached grant read at an older
    /// generation is not trusted, which also covers a lookup that was in
    /// flight while the change happened.
    generation: Arc<AtomicU64>,
}

const INVALID_CREDENTIAL: &str =
    "invalid credential: the bearer token is not a valid admin token or API key";

impl Authenticator {
    pub fn new(admin_token: &Secret, catalog: Catalog, cache_ttl: Duration) -> Self {
        Authenticator {
            admin_sha256: sha256(admin_token.expose().as_bytes()),
            catalog,
            grants: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cache_ttl)
                .build(),
            generation: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Every cached grant is stale from now on: call after any admin change
    /// to keys or tenants.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.grants.invalidate_all();
    }

    /// Verifies the `authorization` header values of a call.
    pub async fn authenticate<'a>(
        &self,
        mut values: impl Iterator<Item = &'a [u8]>,
    ) -> Result<(Caller, Option<Arc<KeyGrant>>)> {
        let header = match (values.next(), values.next()) {
            (None, _) => {
                return Err(Error::Unauthenticated(
                    "missing credential: send the metadata `authorization: Bearer <token>`",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(Error::Unauthenticated(
                    "more than one authorization header: send exactly one",
                ));
            }
            (Some(value), None) => value,
        };
        let token = std::str::from_utf8(header)
            .ok()
            .and_then(|text| {
                let (scheme, token) = text.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or(Error::Unauthenticated(
                "malformed authorization header: expected `Bearer <token>`",
            ))?;

        if let Some((key_id, secret)) = parse_api_key(token) {
            let grant = self.grant(key_id).await?;
            let matches: bool = sha256(secret.as_bytes()).ct_eq(&grant.secret_sha256).into();
            if !matches || grant.revoked {
                tracing::debug!(key_id = %key_id, "refused an api key: wrong secret or revoked");
                return Err(Error::Unauthenticated(INVALID_CREDENTIAL));
            }
            let caller = Caller::Tenant {
                tenant_id: grant.tenant_id,
                key_id,
            };
            return Ok((caller, Some(grant)));
        }
        if bool::from(sha256(token.as_bytes()).ct_eq(&self.admin_sha256)) {
            return Ok((Caller::Admin, None));
        }
        tracing::debug!("refused a bearer token that is neither the admin token nor an api key");
        Err(Error::Unauthenticated(INVALID_CREDENTIAL))
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The state of a tenant the admin acts for, read from the catalog (not
    /// cached: admin calls are few); `None` if there is no such tenant.
    pub async fn tenant_state(&self, id: TenantId) -> Result<Option<TenantState>> {
        self.catalog
            .read(move |conn| Ok(store::get_tenant(conn, id)?.map(|t| t.state)))
            .await
    }

    async fn grant(&self, key_id: Uuid) -> Result<Arc<KeyGrant>> {
        let current = self.generation.load(Ordering::SeqCst);
        if let Some(cached) = self.grants.get(&key_id).await
            && cached.generation == current
        {
            return Ok(cached.grant);
        }
        let catalog = self.catalog.clone();
        let found = catalog
            .read(move |conn| store::key_grant(conn, key_id))
            .await?;
        let Some(grant) = found else {
            tracing::debug!(key_id = %key_id, "refused an api key that does not exist");
            return Err(Error::Unauthenticated(INVALID_CREDENTIAL));
        };
        let grant = Arc::new(grant);
        let cached = CachedGrant {
            grant: grant.clone(),
            generation: current,
        };
        self.grants.insert(key_id, cached).await;
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_back_to_its_id_and_secret() {
        let key = NewApiKey::generate();
        let (id, secret) = parse_api_key(key.token.expose()).expect("parses");
        assert_eq!(id, key.id);
        assert_eq!(sha256(secret.as_bytes()), key.secret_sha256);
        assert_eq!(secret.len(), 64, "256 bits of secret");
    }

    #[test]
    fn malformed_keys_do_not_parse() {
        let key = NewApiKey::generate();
        let token = key.token.expose();
        for bad in [
            &token[..token.len() - 1],
            &token[KEY_PREFIX.len()..],
            "tenantry_",
            "tenantry_zz_zz",
            &token.replace('_', "-"),
        ] {
            assert!(parse_api_key(bad).is_none(), "{bad:?} parsed");
        }
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let secret = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(..)");
    }
}

/// A tenant the caller has proven it may act for, and that is active.
#[derive(Clone, Copy, Debug)]
pub struct VerifiedTenant {
    pub id: TenantId,
    pub acting: Acting,
}

/// Who acts for a verified tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acting {
    /// One of the tenant's own API keys.
    Key(uuid::Uuid),
    /// The administrator, for support and investigations: audited.
    Admin,
}

impl VerifiedTenant {
    /// The caller as the audit trail names it.
    pub fn actor(&self) -> String {
        match self.acting {
            Acting::Key(key_id) => format!("keys/{key_id}"),
            Acting::Admin => "admin".to_owned(),
        }
    }
}

/// The verified tenant of an item call, as recorded by the layer.
pub fn verified_tenant<T>(request: &tonic::Request<T>) -> Result<VerifiedTenant> {
    request
        .extensions()
        .get::<VerifiedTenant>()
        .copied()
        .ok_or_else(|| {
            Error::internal(
                "routing an item call",
                "the call reached the service without a verified tenant",
            )
        })
}
