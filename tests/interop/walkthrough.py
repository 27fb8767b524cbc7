#!/usr/bin/env python3
"""Runs the grpcurl walkthrough of README.md, verbatim, and checks each step.

The walkthrough is the README's code blocks tagged ```sh walkthrough=<step>.
They run in order in one bash process (so variables carry from step to step),
from the server's working directory, with the README's address replaced by the
server's real one. Each step's output and exit code are checked against the
expectations below; a step missing from the README, or an unexpected answer,
fails the run.
"""

import re
import subprocess
import sys

README_ADDR = "127.0.0.1:50051"
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

# step -> (must succeed?, patterns its output must match)
EXPECTED = {
    "admin-token": (True, [r"^admin token loaded$"]),
    "list-services": (True, [r"(?m)^tenantry\.v1\.ItemService$", r"(?m)^tenantry\.v1\.TenantService$",
                             r"(?m)^grpc\.health\.v1\.Health$", r"(?m)^grpc\.reflection\.v1\.ServerReflection$"]),
    "describe": (True, [r"rpc CreateItem \( \.tenantry\.v1\.CreateItemRequest \) returns \( \.tenantry\.v1\.Item \)"]),
    "create-tenants": (True, [rf"^acme={UUID} globex={UUID}$"]),
    "create-keys": (True, [r"^tenantry_[0-9a-f]{32}_[0-9a-f]{64}$"]),
    "create-items": (True, [r'"title": "Buy milk"', r'"title": "Call the bank"', r'"etag": "r1"']),
    "list-items": (True, [r'"title": "Call the bank"[\s\S]*"title": "Buy milk"', r'"completed": true']),
    "other-tenant": (True, [r"^\{\s*\}$"]),
    "refused": (False, [r"Code: PermissionDenied", r"does not act for the tenant"]),
    "list-tenants": (True, [r'"name": "acme"[\s\S]*"name": "globex"']),
    "admin-acts": (True, [r"^Buy printer paper$"]),
    "admin-usage": (True, [r"^acme: 2 items\nglobex: 1 items$"]),
    "admin-search": (True, [r"^acme: Buy milk\nglobex: Buy printer paper$"]),
    "tenant-scoped": (True, [r"^Call the bank\nBuy milk\nBuy printer paper$"]),
    "suspend": (False, [r"(?m)^TENANT_STATE_SUSPENDED$", r"Code: FailedPrecondition", r"tenant is suspended"]),
    "resume": (True, [r"^TENANT_STATE_ACTIVE$"]),
    "backup": (True, [rf"(?m)^backups/{UUID}/\d{{8}}T\d{{6}}\.\d{{6}}Z\.db$", r"(?m)^ok\nBuy milk\nCall the bank$"]),
    "restore": (True, [r"^Call the bank\nBuy milk$"]),
    "delete": (True, [rf"(?m)^\{{\s*\}}\n{UUID}\.\d{{8}}T\d{{6}}\.\d{{6}}Z\.db$"]),
    "audit": (True, [r"^RestoreTenant by admin OK\nBackupTenant by admin OK\nCreateItem by keys OK\nCreateItem by keys OK\nCreateApiKey by admin OK$"]),
}

BLOCK = re.compile(r"^```sh walkthrough=([a-z-]+)\n(.*?)^```$", re.M | re.S)


def main() -> int:
    readme, addr, workdir = sys.argv[1], sys.argv[2], sys.argv[3]
    blocks = BLOCK.findall(open(readme, encoding="utf-8").read())
    names = [name for name, _ in blocks]
    if names != list(EXPECTED):
        print(f"README walkthrough steps are {names}, expected {list(EXPECTED)}")
        return 1

    script = ["set -u"]
    for index, (name, body) in enumerate(blocks):
        script.append(f"echo '@@begin {index}@@'")
        script.append("{\n" + body.replace(README_ADDR, addr) + "\n} 2>&1")
        script.append(f"echo \"@@end {index} $?@@\"")
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=workdir,
                            capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr

    failures = 0
    for index, (name, _) in enumerate(blocks):
        match = re.search(rf"@@begin {index}@@\n(.*?)@@end {index} (\d+)@@", output, re.S)
        if not match:
            print(f"FAIL {name}: the step did not run to its end\n{output}")
            return 1
        text, code = match.group(1).strip(), int(match.group(2))
        must_succeed, patterns = EXPECTED[name]
        problems = []
        if must_succeed and code != 0:
            problems.append(f"exit code {code}, expected 0")
        if not must_succeed and code == 0:
            problems.append("succeeded, expected a refusal")
        problems += [f"no match for {p!r}" for p in patterns if not re.search(p, text)]
        status = "ok  " if not problems else "FAIL"
        print(f"{status} {name}")
        for problem in problems:
            failures += 1
            print(f"     {problem}")
        if problems:
            print("     output:\n" + "\n".join("       " + line for line in text.splitlines()))
    print(f"walkthrough: {len(blocks)} steps, {failures} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
