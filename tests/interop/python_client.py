#!/usr/bin/env python3
"""A Python client generated from proto/ with grpcio-tools, against a live server.

Usage: python_client.py ADDR ADMIN_TOKEN_FILE STUBS_DIR

STUBS_DIR holds the modules that `python -m grpc_tools.protoc -I proto
--python_out=STUBS_DIR --grpc_python_out=STUBS_DIR proto/tenantry/v1/*.proto`
wrote. As the administrator, the client creates two tenants and a key for
each; as the first tenant, it creates, reads, lists, updates and deletes an
item; then it checks that the first tenant's key is refused for the second
tenant, and that the second tenant's item cannot be read through the first.
Every answer is checked; the first mismatch ends the run with exit code 1.
"""

import sys
import uuid

import grpc
from google.protobuf import field_mask_pb2

TIMEOUT_SECS = 10


class Mismatch(Exception):
    pass


class Checks:
    def __init__(self) -> None:
        self.passed = 0

    def equal(self, what: str, got, expected) -> None:
        if got != expected:
            raise Mismatch(f"{what}: got {got!r}, expected {expected!r}")
        self.passed += 1

    def true(self, what: str, condition: bool) -> None:
        if not condition:
            raise Mismatch(what)
        self.passed += 1

    def refused(self, what: str, call, code: grpc.StatusCode) -> grpc.RpcError:
        try:
            answer = call()
        except grpc.RpcError as error:
            self.equal(f"{what}: status", error.code(), code)
            return error
        raise Mismatch(f"{what}: succeeded with {answer!r}, expected {code.name}")


def bearer(secret: str, tenant_id: str = "") -> list:
    metadata = [("authorization", f"Bearer {secret}")]
    if tenant_id:
        metadata.append(("x-tenant-id", tenant_id))
    return metadata


def run(checks: Checks, addr: str, admin_token: str) -> None:
    from tenantry.v1 import items_pb2, items_pb2_grpc, tenants_pb2, tenants_pb2_grpc

    channel = grpc.insecure_channel(addr)
    tenants = tenants_pb2_grpc.TenantServiceStub(channel)
    items = items_pb2_grpc.ItemServiceStub(channel)
    admin = bearer(admin_token)

    # Two tenants and a key for each, through the admin API. The names are
    # unique to this run, so the script can share a server with others.
    suffix = uuid.uuid4().hex[:8]
    created = {}
    for name in ("initech", "umbrella"):
        tenant = tenants.CreateTenant(
            tenants_pb2.CreateTenantRequest(tenant=tenants_pb2.Tenant(name=f"{name}-{suffix}")),
            metadata=admin, timeout=TIMEOUT_SECS)
        checks.equal(f"{name}: state", tenant.state, tenants_pb2.TENANT_STATE_ACTIVE)
        checks.equal(f"{name}: id is a canonical UUID", str(uuid.UUID(tenant.id)), tenant.id)
        key = tenants.CreateApiKey(
            tenants_pb2.CreateApiKeyRequest(tenant_id=tenant.id, description="python client"),
            metadata=admin, timeout=TIMEOUT_SECS)
        checks.equal(f"{name}: key's tenant", key.tenant_id, tenant.id)
        checks.true(f"{name}: the key's secret looks like tenantry_<key id>_<secret>",
                    key.secret.startswith("tenantry_"))
        created[name] = (tenant.id, key.secret)
    (a_id, a_key), (b_id, b_key) = created["initech"], created["umbrella"]
    as_a, as_b = bearer(a_key, a_id), bearer(b_key, b_id)

    # Item CRUD as tenant A.
    item = items.CreateItem(
        items_pb2.CreateItemRequest(item=items_pb2.Item(title="Ship the client", description="in Python")),
        metadata=as_a, timeout=TIMEOUT_SECS)
    checks.equal("CreateItem: title", item.title, "Ship the client")
    checks.true("CreateItem: the server assigns id, etag and create_time",
                bool(item.id and item.etag and item.HasField("create_time")))

    read = items.GetItem(items_pb2.GetItemRequest(id=item.id), metadata=as_a, timeout=TIMEOUT_SECS)
    checks.equal("GetItem: the item as created", read, item)

    listed = items.ListItems(items_pb2.ListItemsRequest(page_size=10), metadata=as_a, timeout=TIMEOUT_SECS)
    checks.equal("ListItems: the new tenant's only item", [i.id for i in listed.items], [item.id])
    checks.equal("ListItems: no next page", listed.next_page_token, "")

    # Only the fields in the mask change: the new title is ignored.
    updated = items.UpdateItem(
        items_pb2.UpdateItemRequest(
            item=items_pb2.Item(id=item.id, title="ignored", completed=True, etag=item.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["completed"])),
        metadata=as_a, timeout=TIMEOUT_SECS)
    checks.equal("UpdateItem: completed", updated.completed, True)
    checks.equal("UpdateItem: title outside the mask is kept", updated.title, "Ship the client")
    checks.true("UpdateItem: the etag changes", updated.etag != item.etag)
    checks.refused(
        "UpdateItem with the etag read before the update",
        lambda: items.UpdateItem(
            items_pb2.UpdateItemRequest(
                item=items_pb2.Item(id=item.id, completed=False, etag=item.etag),
                update_mask=field_mask_pb2.FieldMask(paths=["completed"])),
            metadata=as_a, timeout=TIMEOUT_SECS),
        grpc.StatusCode.ABORTED)

    items.DeleteItem(items_pb2.DeleteItemRequest(id=item.id), metadata=as_a, timeout=TIMEOUT_SECS)
    checks.refused(
        "GetItem after DeleteItem",
        lambda: items.GetItem(items_pb2.GetItemRequest(id=item.id), metadata=as_a, timeout=TIMEOUT_SECS),
        grpc.StatusCode.NOT_FOUND)

    # Cross-tenant calls are refused.
    b_item = items.CreateItem(items_pb2.CreateItemRequest(item=items_pb2.Item(title="Umbrella only")),
                              metadata=as_b, timeout=TIMEOUT_SECS)
    error = checks.refused(
        "A's key with B's x-tenant-id",
        lambda: items.ListItems(items_pb2.ListItemsRequest(), metadata=bearer(a_key, b_id), timeout=TIMEOUT_SECS),
        grpc.StatusCode.PERMISSION_DENIED)
    checks.true(f"the refusal says why: {error.details()!r}", "does not act for the tenant" in error.details())
    checks.refused(
        "A's key reading B's item id in A's own tenant",
        lambda: items.GetItem(items_pb2.GetItemRequest(id=b_item.id), metadata=as_a, timeout=TIMEOUT_SECS),
        grpc.StatusCode.NOT_FOUND)
    checks.refused(
        "A's key on the admin API",
        lambda: tenants.ListTenants(tenants_pb2.ListTenantsRequest(), metadata=bearer(a_key), timeout=TIMEOUT_SECS),
        grpc.StatusCode.PERMISSION_DENIED)
    still = items.GetItem(items_pb2.GetItemRequest(id=b_item.id), metadata=as_b, timeout=TIMEOUT_SECS)
    checks.equal("B's item, read by B, is unchanged", still, b_item)
    channel.close()


def main() -> int:
    addr, token_file, stubs_dir = sys.argv[1], sys.argv[2], sys.argv[3]
    sys.path.insert(0, stubs_dir)
    admin_token = open(token_file, encoding="utf-8").read().strip()
    checks = Checks()
    try:
        run(checks, addr, admin_token)
    except Mismatch as mismatch:
        print(f"FAIL {mismatch}")
        print(f"python client: {checks.passed} passed, 1 failed (stopped at the first failure)")
        return 1
    except grpc.RpcError as error:
        print(f"FAIL a call failed: {error.code().name}: {error.details()}")
        print(f"python client: {checks.passed} passed, 1 failed (stopped at the first failure)")
        return 1
    print(f"python client: {checks.passed} passed, 0 failed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
