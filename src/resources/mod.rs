//! The resources a tenant's database holds, each in a folder of its own:
//! its schema (its share of the tenant database, [`Part`]), its store (SQL
//! over one tenant's connection, below the tenant registry) and its service
//! (the gRPC methods, above it).
//!
//! A resource is registered by one line in [`RESOURCES`]; from there the
//! server serves its service, admission lets a tenant's credentials call
//! it, reflection and health list it, and its migrations join the tenant
//! database's schema ([`tenant_schema`]) at the versions they were released
//! as. The README's development section lists the steps.

use std::sync::LazyLock;

use tonic::service::Routes;

use crate::storage::schema::{Part, Schema};
use crate::tenant::Registry;

pub mod items;
#[cfg(feature = "test-resource")]
pub mod notes;

/// What the server needs to know of a resource.
pub struct Resource {
    /// Its gRPC service's full name (`tenantry.v1.ItemService`): every
    /// method of it is a tenant's call, admitted with the tenant's
    /// credentials and routed to the tenant's file.
    pub service: &'static str,
    /// Its share of the tenant database.
    pub schema: &'static Part,
    /// Adds its service to the server's routes.
    pub serve: fn(Routes, &Serving) -> Routes,
}

/// What a resource's service is built with.
pub struct Serving {
    pub registry: Registry,
    /// The largest request message the server accepts.
    pub max_message_bytes: usize,
}

/// Every resource the server serves.
pub static RESOURCES: &[Resource] = &[
    items::RESOURCE,
    #[cfg(feature = "test-resource")]
    notes::RESOURCE,
];

/// The tenant database's schema: the audit trail's share and every
/// resource's, in the order their versions were released.
pub fn tenant_schema() -> &'static Schema {
    static SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
        Schema::assemble(
            std::iter::once(&crate::audit::TRAIL).chain(RESOURCES.iter().map(|r| r.schema)),
        )
    });
    &SCHEMA
}

/// Whether `path` (`/package.Service/Method`) is a method of a resource.
pub fn is_resource_method(path: &str) -> bool {
    RESOURCES.iter().any(|resource| {
        path.strip_prefix('/')
            .and_then(|rest| rest.strip_prefix(resource.service))
            .is_some_and(|method| method.starts_with('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_schema_runs_items_then_the_trail_in_released_order() {
        let order: Vec<_> = tenant_schema()
            .migrations()
            .iter()
            .map(|m| m.description)
            .take(3)
            .collect();
        assert_eq!(order, ["items", "items.due_time", "audit trail of writes"]);
    }

    #[test]
    fn only_methods_of_a_registered_service_are_resource_methods() {
        assert!(is_resource_method("/tenantry.v1.ItemService/GetItem"));
        assert!(!is_resource_method("/tenantry.v1.ItemServiceX/GetItem"));
        assert!(!is_resource_method("/tenantry.v1.ItemService"));
        assert!(!is_resource_method("tenantry.v1.ItemService/GetItem"));
        assert!(!is_resource_method(
            "/tenantry.v1.TenantService/CreateTenant"
        ));
    }
}
