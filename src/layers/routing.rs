//! The tower layer that admits a call: it authenticates the credential and,
//! for item calls, turns `x-tenant-id` into a verified tenant.
//!
//! It runs once, before any service code. What it admits, it records in the
//! request's extensions ([`Caller`], and [`VerifiedTenant`] for item calls); a
//! service method reads them with [`crate::auth::verified_tenant`] and so
//! cannot forget a check. What it refuses never reaches a service, and never touches a file.
//!
//! Which credential a method needs is decided by its path, deny by default:
//! only health and reflection are open; `tenantry.v1.ItemService` needs a
//! tenant API key of the tenant named in `x-tenant-id`, or the admin token
//! (an administrator acting for that tenant, which the item API records in
//! the audit trail); everything else, `tenantry.v1.TenantService` and any
//! unknown path, needs the admin token.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::body::Body;
use tower::{Layer, Service};

use crate::audit::clip;
use crate::audit::{AdminCall, record_admin_call};
use crate::auth::{Acting, Authenticator, Caller, VerifiedTenant};
use crate::catalog::TenantState;
use crate::error::code_name;
use crate::error::{Error, Result};
use crate::ids::TenantId;
use crate::layers::calls::CallSubject;
use crate::transport::log_summary::Subject;
use crate::weak_map::WeakMap;

pub const TENANT_HEADER: &str = "x-tenant-id";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    Open,
    Tenant,
    Admin,
}

impl Policy {
    fn of(path: &str) -> Self {
        const OPEN: [&str; 3] = [
            "/grpc.health.v1.Health/",
            "/grpc.reflection.v1.ServerReflection/",
            "/grpc.reflection.v1alpha.ServerReflection/",
        ];
        if OPEN.iter().any(|prefix| path.starts_with(prefix)) {
            Policy::Open
        } else if crate::resources::is_resource_method(path) {
            Policy::Tenant
        } else {
            Policy::Admin
        }
    }
}

#[derive(Clone)]
pub struct AdmissionLayer {
    auth: Authenticator,
    calls: TenantCalls,
}

impl AdmissionLayer {
    /// `tenant_max_calls`: the most item calls one tenant may have in flight.
    pub fn new(auth: Authenticator, tenant_max_calls: usize) -> Self {
        AdmissionLayer {
            auth,
            calls: TenantCalls {
                limit: tenant_max_calls.max(1),
                slots: Arc::new(WeakMap::default()),
            },
        }
    }
}

/// Each tenant's item calls in flight, bounded per tenant: a tenant that
/// sends more than its share is refused at once instead of queueing in front
/// of everybody else.
#[derive(Clone)]
struct TenantCalls {
    limit: usize,
    slots: Arc<WeakMap<TenantId, Semaphore>>,
}

impl TenantCalls {
    fn take(&self, tenant: VerifiedTenant) -> Result<OwnedSemaphorePermit> {
        let limit = self.limit;
        self.slots
            .get_or_make(tenant.id, || Semaphore::new(limit))
            .try_acquire_owned()
            .map_err(|_| {
                tracing::debug!(tenant = %tenant.id, actor = %tenant.actor(), limit, "refused a call over the tenant's concurrency limit");
                Error::ResourceExhausted(format!(
                    "tenant {} already has {limit} calls in flight, the most one tenant may have: \
                     wait for some to finish, or retry with backoff",
                    tenant.id
                ))
            })
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admission {
            inner,
            auth: self.auth.clone(),
            calls: self.calls.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    auth: Authenticator,
    calls: TenantCalls,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> Service<Request<B>> for Admission<S>
where
    S: Service<Request<B>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<std::result::Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let policy = Policy::of(request.uri().path());
        let mut inner = super::take_ready(&mut self.inner);
        if policy == Policy::Open {
            return Box::pin(inner.call(request));
        }
        let auth = self.auth.clone();
        let calls = self.calls.clone();
        // Who a refusal is counted against: the key a credential names,
        // then the tenant once verified.
        let subject = request.extensions().get::<CallSubject>().cloned();
        if let (Some(subject), Some(key_id)) = (
            &subject,
            request
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|value| crate::auth::claimed_key_id(value.as_bytes())),
        ) {
            subject.set(Subject::ApiKey(key_id));
        }
        Box::pin(async move {
            let admitted = admit(&auth, policy, request.uri().path(), request.headers())
                .await
                .and_then(|(caller, tenant)| {
                    if let (Some(subject), Some(tenant)) = (&subject, &tenant) {
                        subject.set(Subject::Tenant(tenant.id));
                    }
                    let slot = tenant.map(|tenant| calls.take(tenant)).transpose()?;
                    Ok((caller, tenant, slot))
                });
            match admitted {
                Ok((caller, tenant, _slot)) => {
                    let key_id = match caller {
                        Caller::Tenant { key_id, .. } => Some(key_id),
                        Caller::Admin => None,
                    };
                    crate::layers::calls::record_caller(
                        tenant.as_ref().map(|t| &t.id as &dyn std::fmt::Display),
                        key_id.as_ref(),
                    );
                    request.extensions_mut().insert(caller);
                    if let Some(tenant) = tenant {
                        request.extensions_mut().insert(tenant);
                    }
                    inner.call(request).await
                }
                Err(error) => Ok(tonic::Status::from(error).into_http()),
            }
        })
    }
}

async fn admit(
    auth: &Authenticator,
    policy: Policy,
    path: &str,
    headers: &HeaderMap,
) -> Result<(Caller, Option<VerifiedTenant>)> {
    let authorization = headers
        .get_all(http::header::AUTHORIZATION)
        .iter()
        .map(|v| v.as_bytes());
    let (caller, grant) = auth.authenticate(authorization).await?;
    match (policy, caller) {
        (Policy::Admin, Caller::Admin) => Ok((caller, None)),
        (Policy::Admin, Caller::Tenant { key_id, .. }) => {
            tracing::debug!(%key_id, "refused a tenant api key on the admin api");
            Err(Error::PermissionDenied(
                "an API key cannot call the admin API: use the admin token",
            ))
        }
        (Policy::Tenant, Caller::Admin) => {
            let admitted = async {
                let requested = requested_tenant(headers)?;
                let state = auth.tenant_state(requested).await?;
                serving(requested, Acting::Admin, state)
            }
            .await;
            if let Err(error) = &admitted {
                // Admitted calls are recorded by the item API; this one ends here.
                let action = path.rsplit('/').next().unwrap_or_default().to_owned();
                let target = match headers.get(TENANT_HEADER).map(|v| v.to_str()) {
                    Some(Ok(text)) => format!("tenants/{}/items", clip(text)),
                    _ => "tenants".to_owned(),
                };
                let code = crate::error::to_status(error).code();
                let call = AdminCall {
                    action,
                    target,
                    outcome: code_name(code).into(),
                    detail: String::new(),
                };
                record_admin_call(auth.catalog(), call).await;
            }
            admitted.map(|tenant| (caller, Some(tenant)))
        }
        (Policy::Tenant, Caller::Tenant { tenant_id, key_id }) => {
            let requested = requested_tenant(headers)?;
            if requested != tenant_id {
                // The same answer whether or not the requested tenant exists.
                tracing::debug!(%key_id, key_tenant = %tenant_id, requested = %requested, "refused an api key for another tenant");
                return Err(Error::PermissionDenied(
                    "this API key does not act for the tenant named in x-tenant-id",
                ));
            }
            let state = grant.map(|g| g.tenant_state);
            serving(tenant_id, Acting::Key(key_id), state).map(|tenant| (caller, Some(tenant)))
        }
        (Policy::Open, _) => unreachable!("open calls are not admitted"),
    }
}

/// The tenant an item call acts for, if its state lets it be served.
fn serving(id: TenantId, acting: Acting, state: Option<TenantState>) -> Result<VerifiedTenant> {
    match state {
        Some(TenantState::Active) => Ok(VerifiedTenant { id, acting }),
        Some(TenantState::Suspended) => {
            Err(Error::FailedPrecondition("tenant is suspended".into()))
        }
        Some(TenantState::Provisioning | TenantState::Deleting | TenantState::Deleted) | None => {
            Err(Error::NotFound(format!("tenant {id} does not exist")))
        }
    }
}

/// The tenant named by `x-tenant-id`: exactly one value, a canonical UUID.
fn requested_tenant(headers: &HeaderMap) -> Result<TenantId> {
    let mut values = headers.get_all(TENANT_HEADER).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => {
            return Err(Error::invalid(
                TENANT_HEADER,
                "is required: send the id of the tenant to act for as `x-tenant-id` metadata",
            ));
        }
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                TENANT_HEADER,
                "must be sent once, not several times",
            ));
        }
        (Some(value), None) => value,
    };
    let text = value
        .to_str()
        .map_err(|_| Error::invalid(TENANT_HEADER, "must be ASCII text"))?;
    TenantId::parse(TENANT_HEADER, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_health_and_reflection_are_open_and_unknown_paths_need_the_admin() {
        assert_eq!(Policy::of("/grpc.health.v1.Health/Check"), Policy::Open);
        assert_eq!(
            Policy::of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Policy::Open
        );
        assert_eq!(
            Policy::of("/tenantry.v1.ItemService/GetItem"),
            Policy::Tenant
        );
        assert_eq!(
            Policy::of("/tenantry.v1.TenantService/CreateTenant"),
            Policy::Admin
        );
        assert_eq!(Policy::of("/tenantry.v2.Whatever/Do"), Policy::Admin);
        assert_eq!(Policy::of("/grpc.health.v1.HealthX/Check"), Policy::Admin);
    }
}
