//! The scenarios: what each one sets up, measures, prints and checks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::load::{Measured, Seeded, create_tenant, drive, item_call, request, seed};
use super::target::{Footprint, Target};
use super::{BenchArgs, Failure, Mix, Op, Scenario, Spread};
use tenantry::pb::item_service_client::ItemServiceClient;
use tenantry::pb::tenant_service_client::TenantServiceClient;
use tenantry::pb::{GetTenantRequest, ListTenantsRequest};
use tenantry::server::{FDS_PER_TENANT, RESERVED_FDS};

/// A ratio to the baseline that a scenario must reach.
struct Goal {
    /// The operation measured; `None` for every item call of the mix.
    op: Option<Op>,
    ratio: f64,
    p99: Option<Duration>,
}

struct Plan {
    tenants: usize,
    items: usize,
    spread: Spread,
    mix: Mix,
    server_args: Vec<String>,
    target: Option<Goal>,
}

fn plan(args: &BenchArgs) -> Plan {
    let (tenants, items, spread, mix, server_args, target) = match args.scenario {
        Scenario::Smoke => (
            3,
            5,
            Spread::Uniform,
            "get=60,list=10,create=20,update=10".parse().expect("a mix"),
            vec![],
            None,
        ),
        Scenario::Hot => (
            100,
            100,
            Spread::Uniform,
            Mix::only(Op::Get),
            vec![],
            Some(Goal {
                op: Some(Op::Get),
                ratio: 0.70,
                p99: Some(Duration::from_millis(5)),
            }),
        ),
        Scenario::Writes => (
            100,
            0,
            Spread::Uniform,
            Mix::only(Op::Create),
            vec![],
            Some(Goal {
                op: Some(Op::Create),
                ratio: 0.35,
                p99: None,
            }),
        ),
        Scenario::WriteOne => (
            1,
            0,
            Spread::Uniform,
            Mix::only(Op::Create),
            vec![],
            Some(Goal {
                op: Some(Op::Create),
                ratio: 0.40,
                p99: None,
            }),
        ),
        Scenario::Cold => (
            10_000,
            1,
            Spread::Uniform,
            Mix::only(Op::Get),
            vec!["--max-open-tenants=1000".into()],
            Some(Goal {
                op: Some(Op::Get),
                ratio: 0.05,
                p99: None,
            }),
        ),
        Scenario::Mixed | Scenario::Footprint | Scenario::Scale | Scenario::Create => (
            1000,
            20,
            Spread::Zipf(1.1),
            "get=70,list=10,create=10,update=10".parse().expect("a mix"),
            vec![],
            Some(Goal {
                op: None,
                ratio: 0.45,
                p99: None,
            }),
        ),
    };
    let mut server_args: Vec<String> = server_args;
    server_args.push("--metrics-listen=127.0.0.1:0".into());
    // A flag given with --server-arg replaces the scenario's own.
    let flag = |arg: &str| arg.split('=').next().unwrap_or(arg).to_owned();
    server_args.retain(|default| !args.server_args.iter().any(|a| flag(a) == flag(default)));
    server_args.extend(args.server_args.iter().cloned());
    Plan {
        tenants: args.tenants.unwrap_or(tenants),
        items: args.items.unwrap_or(items),
        spread: args.spread.clone().unwrap_or(spread),
        mix: args.mix.clone().unwrap_or(mix),
        server_args,
        target,
    }
}

async fn target(args: &BenchArgs, server_args: &[String]) -> Result<Target, Failure> {
    match args.addr {
        Some(addr) => Target::external(addr),
        None => Target::spawn(server_args).await,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

/// The load scenarios: seed, (for `cold`) restart and time calls that open
/// their tenant, then the baseline and the workload.
pub async fn load(args: &BenchArgs) -> Result<bool, Failure> {
    let plan = plan(args);
    let load = if args.scenario == Scenario::Smoke {
        super::Load {
            warmup: Duration::from_millis(200),
            duration: Duration::from_secs(1),
            in_flight: args.in_flight.min(4),
            ..args.load()
        }
    } else {
        args.load()
    };
    let mut target = target(args, &plan.server_args).await?;
    println!(
        "tenantry bench {:?}: {} tenants x {} items, spread {}, mix {}; {} connections, {} in flight; {:?} warm-up + {:?}",
        args.scenario,
        plan.tenants,
        plan.items,
        plan.spread,
        plan.mix,
        load.connections,
        load.in_flight,
        load.warmup,
        load.duration
    );
    let (tenants, took) = seed(
        &target,
        plan.tenants,
        plan.items,
        true,
        args.seed_parallelism,
    )
    .await?;
    println!(
        "seeded {} tenants in {:.1} s ({:.0} tenants/s)",
        tenants.len(),
        took.as_secs_f64(),
        tenants.len() as f64 / took.as_secs_f64()
    );
    let tenants = Arc::new(tenants);

    if args.scenario == Scenario::Cold && target.pid().is_some() {
        let startup = target.restart().await?;
        println!(
            "restarted with every tenant closed: serving after {}",
            ms(startup)
        );
        opening_calls(&target, &tenants).await?;
    }

    let baseline = drive(&target, &load, tenants.clone(), &plan.spread, None).await?;
    let work = drive(
        &target,
        &load,
        tenants.clone(),
        &plan.spread,
        Some(&plan.mix),
    )
    .await?;
    let reference = match (args.scenario, args.addr) {
        (Scenario::Hot, None) => Some(bare_reference(&load, &plan, &tenants).await?),
        _ => None,
    };
    let base = baseline.rate(Op::Health);
    println!();
    println!(
        "{:<26} {:>10} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "operation", "calls/s", "x Health", "p50", "p99", "p99.9", "server CPU/call"
    );
    print_row("Health/Check", &baseline, Op::Health, base);
    let single = plan.mix.ops().count() == 1;
    for op in plan.mix.ops() {
        print_row(op.method(), &work, op, base);
    }
    if !single {
        println!(
            "{:<26} {:>10.0} {:>10.2} {:>43}",
            "all items",
            work.total_rate(),
            work.total_rate() / base,
            cpu_per_call(&work)
        );
    }
    if let Some(reference) = &reference {
        print_row("GetItem, bare reference", reference, Op::Get, base);
        println!(
            "the bare reference: a tonic server with no layers, the same point read on one SQLite file of {} items",
            plan.tenants * plan.items
        );
    }
    for (measured, phase) in [(&baseline, "baseline"), (&work, "workload")] {
        for ((op, code), n) in &measured.errors {
            println!(
                "errors: {n} {} calls failed with {:?} ({phase})",
                op.method(),
                tonic::Code::from(*code)
            );
        }
    }
    if let Some(open) = target.metric("tenantry_open_tenants").await {
        let hits = target
            .metric("tenantry_registry_hits_total")
            .await
            .unwrap_or(0.0);
        let misses = target
            .metric("tenantry_registry_misses_total")
            .await
            .unwrap_or(0.0);
        println!(
            "server: {open:.0} tenants open; registry hits {hits:.0}, misses {misses:.0} since start"
        );
    }
    if let Some(t) = &plan.target {
        let (rate, name) = match t.op {
            Some(op) => (work.rate(op), op.method()),
            None => (work.total_rate(), "all item calls"),
        };
        let ratio = rate / base;
        let mut met = ratio >= t.ratio && work.error_count() == 0;
        let mut line = format!(
            "target: {name} >= {:.2} x Health/Check: {ratio:.2}",
            t.ratio
        );
        if let Some((limit, op)) = t.p99.zip(t.op) {
            let p99 = work.quantile(op, 0.99).unwrap_or(Duration::MAX);
            met &= p99 < limit;
            line += &format!(", p99 {} (under {})", ms(p99), ms(limit));
        }
        println!("{line}: {}", if met { "met" } else { "MISSED" });
    }
    if args.scenario == Scenario::Smoke {
        let every_op_ran = plan.mix.ops().all(|op| work.rate(op) > 0.0) && base > 0.0;
        let clean = work.error_count() == 0 && baseline.error_count() == 0;
        println!(
            "smoke: {}",
            if every_op_ran && clean {
                "every operation answered, no errors"
            } else {
                "FAILED"
            }
        );
        return Ok(every_op_ran && clean);
    }
    Ok(true)
}

/// One operation's row; the server's CPU per call only where the phase ran
/// that operation alone.
fn print_row(name: &str, measured: &Measured, op: Op, base: f64) {
    let q = |q| measured.quantile(op, q).map_or("-".into(), ms);
    let cpu = match measured.latencies.len() {
        1 => cpu_per_call(measured),
        _ => String::new(),
    };
    println!(
        "{:<26} {:>10.0} {:>10.2} {:>10} {:>10} {:>10} {:>14}",
        name,
        measured.rate(op),
        measured.rate(op) / base,
        q(0.5),
        q(0.99),
        q(0.999),
        cpu
    );
}

fn cpu_per_call(measured: &Measured) -> String {
    measured
        .server_cpu_per_call()
        .map_or_else(String::new, |cpu| {
            format!("{:.1} µs", cpu.as_secs_f64() * 1e6)
        })
}

/// GetItem against the bare reference ([`super::reference`]), with the
/// same load, over as many items as the tenants hold, sent with the same
/// metadata as tenantry's calls (which it ignores).
async fn bare_reference(
    load: &super::Load,
    plan: &Plan,
    tenants: &[Seeded],
) -> Result<Measured, Failure> {
    let (reference, ids) = Target::spawn_reference(plan.tenants * plan.items).await?;
    let first = tenants.first().ok_or("no tenants")?;
    let one = Seeded {
        id: first.id.clone(),
        key: first.key.clone(),
        items: ids,
    };
    drive(
        &reference,
        load,
        Arc::new(vec![one]),
        &Spread::Uniform,
        Some(&Mix::only(Op::Get)),
    )
    .await
}

/// On a server that has just started, one call at a time to tenants that
/// are not open: each of these opens its tenant (and verifies its key for
/// the first time). Then the same call again, which finds it open.
async fn opening_calls(target: &Target, tenants: &[Seeded]) -> Result<(), Failure> {
    let mut client = ItemServiceClient::new(target.channel().await?);
    let mut rng = SmallRng::seed_from_u64(3);
    let count = tenants.len().min(1000);
    let (mut first, mut second) = (Vec::with_capacity(count), Vec::with_capacity(count));
    for tenant in &tenants[..count] {
        for samples in [&mut first, &mut second] {
            let began = Instant::now();
            item_call(&mut client, Op::Get, tenant, &mut rng, 0, 0)
                .await
                .map_err(|code| format!("GetItem failed with {code:?}"))?;
            samples.push(began.elapsed());
        }
    }
    first.sort();
    second.sort();
    let p50 = |s: &[Duration]| s[s.len() / 2];
    let p99 = |s: &[Duration]| s[(s.len() * 99 / 100).min(s.len() - 1)];
    println!(
        "one call at a time, {count} tenants: a call that opens its tenant p50 {} p99 {}; the next call p50 {} p99 {}",
        ms(p50(&first)),
        ms(p99(&first)),
        ms(p50(&second)),
        ms(p99(&second))
    );
    let limit = Duration::from_micros(700);
    println!(
        "target: a call that opens its tenant, lightly loaded, p50 under {}: {}",
        ms(limit),
        if p50(&first) < limit { "met" } else { "MISSED" }
    );
    Ok(())
}

/// Memory and descriptors with 0, 1,000 and 10,000 idle open tenants (or as
/// many as this process's open-file limit allows).
pub async fn footprint(args: &BenchArgs) -> Result<bool, Failure> {
    if args.addr.is_some() {
        return Err("footprint reads the server's /proc entry: leave out --addr".into());
    }
    let hard_limit = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map_err(|e| format!("reading the open-file limit: {e}"))?
        .1;
    // The server refuses a cache that could need more descriptors than it
    // may open.
    let fit = hard_limit.saturating_sub(RESERVED_FDS) / FDS_PER_TENANT;
    let wanted = args.tenants.unwrap_or(10_000) as u64;
    let top = wanted.min(fit / 100 * 100).max(1000);
    if top < wanted {
        println!(
            "this machine's open-file limit is {hard_limit}: at {FDS_PER_TENANT} per tenant, {top} open tenants is the most it can measure, not {wanted}"
        );
    }
    let mut server_args = vec![
        format!("--max-open-tenants={top}"),
        "--tenant-idle-secs=3600".into(),
        "--metrics-listen=127.0.0.1:0".into(),
    ];
    server_args.extend(args.server_args.iter().cloned());
    let mut target = Target::spawn(&server_args).await?;
    let (tenants, took) = seed(&target, top as usize, 1, true, args.seed_parallelism).await?;
    println!(
        "seeded {} tenants with a key and an item each in {:.1} s",
        tenants.len(),
        took.as_secs_f64()
    );
    target.restart().await?;
    let channel = target.channel().await?;
    let mut levels: Vec<usize> = vec![0, 1000.min(top as usize), top as usize];
    levels.dedup();
    println!(
        "{:>8} {:>10} {:>8} {:>16} {:>16}",
        "open", "RSS KiB", "fds", "KiB per tenant", "fds per tenant"
    );
    let mut base: Option<Footprint> = None;
    let mut last: Option<(usize, Footprint)> = None;
    let mut opened = 0;
    for level in levels {
        let mut calls = futures::stream::iter(opened..level)
            .map(|n| {
                let mut client = ItemServiceClient::new(channel.clone());
                let tenant = &tenants[n];
                async move {
                    let mut rng = SmallRng::seed_from_u64(n as u64);
                    item_call(&mut client, Op::Get, tenant, &mut rng, 0, 0).await
                }
            })
            .buffer_unordered(8);
        while let Some(answer) = calls.next().await {
            answer.map_err(|code| format!("GetItem failed with {code:?}"))?;
        }
        opened = level;
        let open = target
            .metric("tenantry_open_tenants")
            .await
            .unwrap_or(f64::NAN);
        let now = target
            .footprint()
            .ok_or_else(|| Failure::from("cannot read /proc for the server"))?;
        let (per_kib, per_fd) = match base {
            Some(b) if level > 0 => (
                format!(
                    "{:.1}",
                    (now.rss_kib as f64 - b.rss_kib as f64) / level as f64
                ),
                format!("{:.2}", (now.fds as f64 - b.fds as f64) / level as f64),
            ),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "{:>8} {:>10} {:>8} {:>16} {:>16}   (server reports {open:.0} open)",
            level, now.rss_kib, now.fds, per_kib, per_fd
        );
        last = Some((level, now));
        base.get_or_insert(now);
    }
    // Past what this machine's limit lets it measure: a line through the
    // last two levels, since each open tenant costs about the same.
    if let (Some(b), Some((level, now))) = (base, last)
        && (level as u64) < wanted
        && level > 0
    {
        let per_kib = (now.rss_kib as f64 - b.rss_kib as f64) / level as f64;
        let per_fd = (now.fds as f64 - b.fds as f64) / level as f64;
        println!(
            "{:>8} {:>10.0} {:>8.0} {:>16.1} {:>16.2}   (extrapolated from {level})",
            wanted,
            b.rss_kib as f64 + per_kib * wanted as f64,
            b.fds as f64 + per_fd * wanted as f64,
            per_kib,
            per_fd
        );
    }
    Ok(true)
}

/// A small catalog against a big one, measured in alternating rounds so that
/// the machine's noise falls on both alike.
pub async fn scale(args: &BenchArgs) -> Result<bool, Failure> {
    if args.addr.is_some() {
        return Err("scale starts and restarts its own servers: leave out --addr".into());
    }
    let big_count = args.tenants.unwrap_or(100_000);
    let small_count = 100.min(big_count);
    let server_args: Vec<String> = args.server_args.clone();
    let small = Target::spawn(&server_args).await?;
    let mut big = Target::spawn(&server_args).await?;
    let (small_tenants, _) = seed(&small, small_count, 0, false, args.seed_parallelism).await?;
    println!("creating {big_count} tenants (no keys, no items)...");
    let (big_tenants, took) = seed(&big, big_count, 0, false, args.seed_parallelism).await?;
    println!(
        "created {big_count} tenants in {:.1} s: {:.0} tenants/s",
        took.as_secs_f64(),
        big_count as f64 / took.as_secs_f64()
    );
    let startup = big.restart().await?;
    println!(
        "start-up with {big_count} tenants, from process start to SERVING: {} (target under 2 s: {})",
        ms(startup),
        if startup < Duration::from_secs(2) {
            "met"
        } else {
            "MISSED"
        }
    );

    let ids = |tenants: &[Seeded]| -> Vec<String> {
        tenants
            .iter()
            .map(|t| t.id.to_str().unwrap_or_default().to_owned())
            .collect()
    };
    let (small_ids, big_ids) = (ids(&small_tenants), ids(&big_tenants));
    let mut small_samples = Samples::default();
    let mut big_samples = Samples::default();
    for round in 0..10 {
        lookups(&small, &small_ids, round, &mut small_samples).await?;
        lookups(&big, &big_ids, round, &mut big_samples).await?;
    }
    println!(
        "{:<30} {:>14} {:>14} {:>8}",
        "p50 latency",
        format!("{small_count} tenants"),
        format!("{big_count} tenants"),
        "ratio"
    );
    let mut met = true;
    for (name, a, b) in [
        ("GetTenant", &mut small_samples.get, &mut big_samples.get),
        (
            "ListTenants page of 100",
            &mut small_samples.list,
            &mut big_samples.list,
        ),
    ] {
        let (pa, pb) = (median(a), median(b));
        let ratio = pb.as_secs_f64() / pa.as_secs_f64();
        met &= ratio <= 1.10;
        println!("{name:<30} {:>14} {:>14} {ratio:>8.2}", ms(pa), ms(pb));
    }
    println!(
        "target: at most 1.10 x the small catalog's latency: {}",
        if met { "met" } else { "MISSED" }
    );
    Ok(true)
}

#[derive(Default)]
struct Samples {
    get: Vec<Duration>,
    list: Vec<Duration>,
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// One round: 200 GetTenant calls of random tenants, then 20 pages of 100
/// tenants, from a position that moves with the round.
async fn lookups(
    target: &Target,
    ids: &[String],
    round: usize,
    samples: &mut Samples,
) -> Result<(), Failure> {
    use rand::Rng;
    let mut client = TenantServiceClient::new(target.channel().await?);
    let mut rng = SmallRng::seed_from_u64(round as u64);
    for _ in 0..200 {
        let id = ids[rng.random_range(0..ids.len())].clone();
        let began = Instant::now();
        client
            .get_tenant(request(GetTenantRequest { id }, &target.admin, None))
            .await
            .map_err(|s| format!("GetTenant: {s}"))?;
        samples.get.push(began.elapsed());
    }
    let mut token = String::new();
    let skip = round * ids.len() / 10 / 100;
    for page in 0..skip + 20 {
        let began = Instant::now();
        let answer = client
            .list_tenants(request(
                ListTenantsRequest {
                    page_size: 100,
                    page_token: token.clone(),
                    include_usage: false,
                },
                &target.admin,
                None,
            ))
            .await
            .map_err(|s| format!("ListTenants: {s}"))?
            .into_inner();
        if page >= skip {
            samples.list.push(began.elapsed());
        }
        token = answer.next_page_token;
        // Past the last page, start over from the first.
    }
    Ok(())
}

/// One client calling CreateTenant in a loop, each call waiting for its
/// answer, for `--duration` seconds after `--warmup`; and, for comparison,
/// how long this disk takes to make a small write durable.
pub async fn create(args: &BenchArgs) -> Result<bool, Failure> {
    let target = target(args, &args.server_args).await?;
    let mut client = TenantServiceClient::new(target.channel().await?);
    let load = args.load();
    let mut latencies = Vec::new();
    let began = Instant::now();
    let mut counted_from = None;
    for n in 0.. {
        let elapsed = began.elapsed();
        if elapsed >= load.warmup + load.duration {
            break;
        }
        let call = Instant::now();
        client
            .create_tenant(create_tenant(format!("create-{n}"), &target.admin))
            .await
            .map_err(|s| format!("CreateTenant: {s}"))?;
        if elapsed >= load.warmup {
            counted_from.get_or_insert(call);
            latencies.push(call.elapsed());
        }
    }
    let measured = counted_from.map_or(Duration::ZERO, |from| from.elapsed());
    let rate = latencies.len() as f64 / measured.as_secs_f64().max(f64::EPSILON);
    latencies.sort();
    let quantile = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .map_or("-".into(), ms)
    };
    println!(
        "CreateTenant, one client, one call at a time: {} tenants in {:.1} s, {rate:.0} tenants/s; p50 {} p99 {}",
        latencies.len(),
        measured.as_secs_f64(),
        quantile(0.5),
        quantile(0.99)
    );
    if let Some(fsync) = fsync_latency(&std::env::temp_dir()) {
        println!(
            "this disk: a 4 KiB write and fsync takes p50 {} ({:.0} a second, one after another)",
            ms(fsync),
            1.0 / fsync.as_secs_f64()
        );
    }
    println!(
        "target: CreateTenant >= 2000 tenants/s: {}",
        if rate >= 2000.0 { "met" } else { "MISSED" }
    );
    Ok(true)
}

/// The median time of 200 durable 4 KiB writes to a scratch file in `dir`.
fn fsync_latency(dir: &std::path::Path) -> Option<Duration> {
    use std::io::Write;
    let path = dir.join(format!("tenantry-fsync-{}", uuid::Uuid::new_v4().simple()));
    let mut file = std::fs::File::create(&path).ok()?;
    let block = [7u8; 4096];
    let mut samples = Vec::with_capacity(200);
    for _ in 0..200 {
        let began = Instant::now();
        file.write_all(&block).ok()?;
        file.sync_data().ok()?;
        samples.push(began.elapsed());
    }
    drop(file);
    std::fs::remove_file(&path).ok();
    Some(median(&mut samples))
}
