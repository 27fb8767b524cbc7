//! `SearchItems`: the administrator reading items across tenants.
//!
//! With a database per tenant there is no tenant filter to drop: a search
//! across tenants opens their files one by one. So it is built to be
//! bounded and to leave the service as it found it:
//!
//! - tenants are read in order, at most `parallelism` at a time, and each
//!   tenant's matches are sent before the next tenant's;
//! - a tenant that is not open is read on a connection of its own
//!   ([`Registry::read_aside`]), so a search never pushes busy tenants out of
//!   the cache of open tenants;
//! - the response is a lazy stream: nothing is read ahead of what the client
//!   takes (HTTP/2 flow control pushes back), and when the client cancels,
//!   the stream is dropped and no further file is opened;
//! - the client's deadline covers the whole stream;
//! - a tenant that cannot be read is one error entry, and the others go on;
//! - every call is one admin event in the audit trail, written when the
//!   stream ends (or is cancelled), naming the tenants it read.

use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::stream::{self, BoxStream};
use tonic::Status;

use crate::api::stream::{Answer, Producer, Stopped};
use crate::audit::clip;
use crate::audit::{AdminCall, record_admin_call};
use crate::catalog::{Catalog, TenantRecord, TenantState, store};
use crate::deadline::{self, Deadline};
use crate::error::code_name;
use crate::error::{Error, Result, to_status};
use crate::ids::TenantId;
use crate::pb;
use crate::resources::items::service::to_pb;
use crate::resources::items::store::{self as items, MAX_TITLE_CHARS};
use crate::tenant::Registry;

const DEFAULT_LIMIT: usize = 10;
const MAX_LIMIT: usize = 1000;
const MAX_TENANT_IDS: usize = 1000;
/// Tenants read from the catalog at a time when searching all of them.
const CATALOG_PAGE: usize = 256;
/// The most tenant ids named in the audit record of one search; the count
/// is always exact.
const MAX_IDS_IN_RECORD: usize = 1000;

/// A validated search.
#[derive(Clone, Debug)]
pub struct Query {
    text: String,
    completed: Option<bool>,
    /// `None` for every active tenant.
    tenants: Option<Vec<TenantId>>,
    limit: usize,
}

impl Query {
    pub fn parse(request: pb::SearchItemsRequest) -> Result<Self> {
        let text = request.title_contains;
        if text.chars().count() > MAX_TITLE_CHARS {
            return Err(Error::invalid(
                "title_contains",
                format!("must be at most {MAX_TITLE_CHARS} characters"),
            ));
        }
        let limit = match request.limit_per_tenant {
            0 => DEFAULT_LIMIT,
            n if n < 0 => {
                return Err(Error::invalid("limit_per_tenant", "must not be negative"));
            }
            n => (n as usize).min(MAX_LIMIT),
        };
        let tenants = if request.tenant_ids.is_empty() {
            None
        } else {
            if request.tenant_ids.len() > MAX_TENANT_IDS {
                return Err(Error::invalid(
                    "tenant_ids",
                    format!(
                        "names {} tenants, more than {MAX_TENANT_IDS}: search in several calls, \
                         or leave it empty to search every active tenant",
                        request.tenant_ids.len()
                    ),
                ));
            }
            let mut ids: Vec<TenantId> = Vec::with_capacity(request.tenant_ids.len());
            for text in &request.tenant_ids {
                let id = TenantId::parse("tenant_ids", text)?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            Some(ids)
        };
        Ok(Query {
            text,
            completed: request.completed,
            tenants,
            limit,
        })
    }

    /// The search as the audit record describes it.
    fn describe(&self) -> String {
        let completed = match self.completed {
            None => "",
            Some(true) => ", completed",
            Some(false) => ", not completed",
        };
        let scope = match &self.tenants {
            None => "every active tenant".to_owned(),
            Some(ids) => format!("{} named tenants", ids.len()),
        };
        format!(
            "title_contains \"{}\"{completed}, {scope}",
            clip(&self.text)
        )
    }
}

/// A tenant to read: its id, and its catalog record if it has one.
struct Target {
    id: TenantId,
    record: Option<TenantRecord>,
}

/// What a search has done so far, for its audit record.
#[derive(Default)]
struct Trace {
    /// Every tenant the search tried to read, in order.
    read: Vec<TenantId>,
    /// Those of them that could not be read.
    failed: Vec<TenantId>,
    recorded: bool,
}

/// Writes the search's audit record once: when the stream ends, or, if the
/// client cancels it, when it is dropped.
struct Recorder {
    catalog: Catalog,
    description: String,
    trace: Arc<Mutex<Trace>>,
}

impl Recorder {
    fn call(&self, outcome: &str) -> Option<AdminCall> {
        let mut trace = self.trace.lock().expect("the trace lock is never poisoned");
        if std::mem::replace(&mut trace.recorded, true) {
            return None;
        }
        let named: Vec<String> = trace
            .read
            .iter()
            .take(MAX_IDS_IN_RECORD)
            .map(|id| id.to_string())
            .collect();
        let mut detail = format!(
            "{}; read {} tenants ({} failed): {}",
            self.description,
            trace.read.len(),
            trace.failed.len(),
            named.join(" ")
        );
        if trace.read.len() > MAX_IDS_IN_RECORD {
            detail.push_str(&format!(
                " and {} more",
                trace.read.len() - MAX_IDS_IN_RECORD
            ));
        }
        if !trace.failed.is_empty() {
            let failed: Vec<String> = trace
                .failed
                .iter()
                .take(MAX_IDS_IN_RECORD)
                .map(|id| id.to_string())
                .collect();
            detail.push_str(&format!("; failed: {}", failed.join(" ")));
        }
        Some(AdminCall {
            action: "SearchItems".into(),
            target: "tenants".into(),
            outcome: outcome.into(),
            detail,
        })
    }

    async fn record(&self, outcome: &str) {
        if let Some(call) = self.call(outcome) {
            record_admin_call(&self.catalog, call).await;
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // Only a stream dropped before its end gets here with work to do.
        if let Some(call) = self.call("CANCELLED") {
            let catalog = self.catalog.clone();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { record_admin_call(&catalog, call).await });
            }
        }
    }
}

/// The stream of a search: each tenant's matches in turn, `parallelism`
/// tenants read at a time, until the end, the deadline, the client going
/// away, or the client not reading for `stall`. The search runs on a task
/// of its own ([`crate::api::stream`]), and each tenant is read on a task
/// of its own too, so a tenant is read to its end (and let go of) whether
/// or not the client keeps up.
pub fn search(
    registry: Registry,
    query: Query,
    parallelism: usize,
    deadline: Option<Arc<Deadline>>,
    stall: std::time::Duration,
) -> Answer<pb::SearchItemsResponse> {
    let (producer, answer) = crate::api::stream::open(stall);
    let recorder = Recorder {
        catalog: registry.catalog().clone(),
        description: query.describe(),
        trace: Arc::default(),
    };
    let trace = recorder.trace.clone();
    tokio::spawn(async move {
        let outcome = produce(registry, query, parallelism, deadline, trace, &producer).await;
        recorder.record(outcome).await;
    });
    answer
}

/// Reads the tenants and sends their matches; how the search ended.
async fn produce(
    registry: Registry,
    query: Query,
    parallelism: usize,
    deadline: Option<Arc<Deadline>>,
    trace: Arc<Mutex<Trace>>,
    producer: &Producer<pb::SearchItemsResponse>,
) -> &'static str {
    let query = Arc::new(query);
    let catalog = registry.catalog().clone();
    let mut reads = targets(catalog, &query)
        .map(|target| {
            let (registry, query, trace) = (registry.clone(), query.clone(), trace.clone());
            let deadline = deadline.clone();
            async move {
                let target = target?;
                let read = deadline::scope(deadline, read_one(registry, query, trace, target));
                Aborting(tokio::spawn(read))
                    .await
                    .map_err(|joined| Error::internal("searching a tenant", joined.to_string()))
            }
        })
        .buffered(parallelism.max(1));
    loop {
        let next = async {
            match &deadline {
                Some(deadline) => tokio::time::timeout_at(deadline.at(), reads.next()).await,
                None => Ok(reads.next().await),
            }
        };
        // Tenants with nothing to send send nothing: a client gone is
        // noticed while they are read, not at the next match.
        let next = tokio::select! {
            next = next => next,
            () = producer.gone() => return "CANCELLED",
        };
        let batch = match next {
            Err(_) => {
                producer.end_with(deadline_passed());
                return "DEADLINE_EXCEEDED";
            }
            Ok(None) => return "OK",
            // The catalog could not be read.
            Ok(Some(Err(error))) => {
                let status = to_status(&error);
                let code = code_name(status.code());
                producer.end_with(status);
                return code;
            }
            Ok(Some(Ok(batch))) => batch,
        };
        for response in batch {
            match producer.send(response).await {
                Ok(()) => {}
                Err(Stopped::Gone) => return "CANCELLED",
                Err(Stopped::Stalled) => return "UNAVAILABLE",
            }
        }
    }
}

/// A spawned task, aborted if nobody waits for it any more.
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Future for Aborting<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn deadline_passed() -> Status {
    to_status(&Error::DeadlineExceeded(
        "the call's deadline passed before the search was done: \
         search fewer tenants, or set a longer deadline"
            .into(),
    ))
}

/// The tenants to read, in order: the ones named, or every active tenant by
/// name, read from the catalog a page at a time as the search goes.
fn targets(catalog: Catalog, query: &Query) -> BoxStream<'static, Result<Target>> {
    match query.tenants.clone() {
        Some(ids) => stream::once(async move {
            catalog
                .read(move |conn| {
                    ids.into_iter()
                        .map(|id| {
                            let record = store::get_tenant(conn, id)?;
                            Ok(Target { id, record })
                        })
                        .collect::<Result<Vec<_>>>()
                })
                .await
        })
        .flat_map(|targets| match targets {
            Ok(targets) => stream::iter(targets.into_iter().map(Ok)).boxed(),
            Err(error) => stream::once(async { Err(error) }).boxed(),
        })
        .boxed(),
        None => stream::unfold(Some(String::new()), move |after| {
            let catalog = catalog.clone();
            async move {
                let after = after?;
                let page = catalog
                    .read(move |conn| store::list_tenants(conn, Some(&after), CATALOG_PAGE))
                    .await;
                match page {
                    Ok(page) if page.is_empty() => None,
                    Ok(page) => {
                        let next = (page.len() == CATALOG_PAGE)
                            .then(|| page.last().map(|t| t.name.clone()))
                            .flatten();
                        Some((Ok(page), next))
                    }
                    Err(error) => Some((Err(error), None)),
                }
            }
        })
        .flat_map(|page| match page {
            Ok(page) => stream::iter(
                page.into_iter()
                    .filter(|t| t.state == TenantState::Active)
                    .map(|record| {
                        Ok(Target {
                            id: record.id,
                            record: Some(record),
                        })
                    }),
            )
            .boxed(),
            Err(error) => stream::once(async { Err(error) }).boxed(),
        })
        .boxed(),
    }
}

/// One tenant's matches, or the one entry saying why it could not be read.
async fn read_one(
    registry: Registry,
    query: Arc<Query>,
    trace: Arc<Mutex<Trace>>,
    target: Target,
) -> Vec<pb::SearchItemsResponse> {
    let Target { id, record } = target;
    let name = record
        .as_ref()
        .filter(|r| r.state.is_visible())
        .map(|r| r.name.clone());
    let found = match &name {
        None => Err(crate::error::tenant_not_found(id)),
        Some(_) => {
            let search = items::Search::new(&query.text, query.completed, query.limit);
            registry
                .read_aside_in_steps(id, search, |conn, search| search.step(conn))
                .await
                .map(|(search, _)| search.found)
        }
    };
    let tenant_id = id.to_string();
    let tenant_name = name.unwrap_or_default();
    {
        let mut trace = trace.lock().expect("the trace lock is never poisoned");
        trace.read.push(id);
        if found.is_err() {
            trace.failed.push(id);
        }
    }
    match found {
        Ok(items) => items
            .iter()
            .map(|item| pb::SearchItemsResponse {
                tenant_id: tenant_id.clone(),
                tenant_name: tenant_name.clone(),
                item: Some(to_pb(item)),
                ..Default::default()
            })
            .collect(),
        Err(error) => {
            let status = to_status(&error);
            tracing::warn!(tenant = %id, error = %crate::error::error_chain(&error), "search could not read a tenant");
            vec![pb::SearchItemsResponse {
                tenant_id,
                tenant_name,
                item: None,
                error_code: code_name(status.code()).into(),
                error_message: status.message().into(),
            }]
        }
    }
}
