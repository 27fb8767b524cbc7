//! `tenantry bench`: a load generator that measures the server through the
//! generated client over real HTTP/2 connections, always next to a baseline
//! of `grpc.health.v1.Health/Check` (the transport's ceiling) measured in the
//! same run, against the same server, with the same client settings. Every
//! rate is printed in calls per second and as a ratio to that baseline.
//!
//! Each scenario is one command; see BENCHMARKS.md for what each measures
//! and the targets it checks.

mod load;
pub mod reference;
mod scenarios;
mod target;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;

pub use load::Load;
pub use reference::ReferenceArgs;

/// Why a benchmark could not run: printed as is.
#[derive(Debug)]
pub struct Failure(pub String);

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure(message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure(message.to_owned())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// A few seconds of every operation on a few tenants: checks that the
    /// harness works (what CI runs).
    Smoke,
    /// GetItem on open tenants (target: 0.70 of Health/Check, p99 < 5 ms),
    /// next to a bare tonic server doing the same point read.
    Hot,
    /// CreateItem spread over 100 tenants (target: 0.35 of Health/Check).
    Writes,
    /// CreateItem into a single tenant (target: 0.40 of Health/Check).
    WriteOne,
    /// GetItem over 10,000 tenants with room for 1,000 open (target: 0.05 of
    /// Health/Check), and the latency of a call that opens its tenant on a
    /// lightly loaded server (target: p50 < 0.7 ms).
    Cold,
    /// A mix of every operation over 1,000 tenants with a Zipf spread
    /// (target: 0.45 of Health/Check).
    Mixed,
    /// Resident memory and file descriptors of the server with 0, 1,000 and
    /// 10,000 idle open tenants (target: 100 KiB and 3 descriptors each).
    Footprint,
    /// One client creating tenants one after another (target: 2,000
    /// tenants/s), next to this disk's fsync latency.
    Create,
    /// 100 against 100,000 tenants in the catalog: the rate of creating
    /// them, start-up time (target < 2 s), GetTenant and ListTenants pages
    /// (target: at most 10% slower).
    Scale,
}

/// Settings of `tenantry bench`. Each scenario has its own defaults for the
/// options left out.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, default_value_t = Scenario::Hot)]
    pub scenario: Scenario,
    /// Tenants to create and call.
    #[arg(long)]
    pub tenants: Option<usize>,
    /// Items created in each tenant before the run.
    #[arg(long)]
    pub items: Option<usize>,
    /// How calls spread over tenants: `uniform`, or `zipf:S` with skew S
    /// (1.0 and above is skewed; tenant 0 is the hottest).
    #[arg(long)]
    pub spread: Option<Spread>,
    /// Operations and their weights, as `get=70,list=10,create=10,update=10`.
    #[arg(long)]
    pub mix: Option<Mix>,
    /// HTTP/2 connections the calls are spread over.
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// Calls in flight at once (one loop each).
    #[arg(long, default_value_t = 32)]
    pub in_flight: usize,
    /// Seconds of calls not counted before each measurement.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Seconds each measurement lasts.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Call a server already running there (admin token in
    /// TENANTRY_ADMIN_TOKEN) instead of starting one. Memory, file and
    /// restart figures need a server the benchmark starts.
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// A flag for the server the benchmark starts, e.g.
    /// `--server-arg=--tenant-connections=4`; repeat for more.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Tenants created at once while seeding.
    #[arg(long, default_value_t = 16)]
    pub seed_parallelism: usize,
}

impl BenchArgs {
    pub fn load(&self) -> Load {
        Load {
            connections: self.connections.max(1),
            in_flight: self.in_flight.max(1),
            warmup: Duration::from_secs_f64(self.warmup.max(0.0)),
            duration: Duration::from_secs_f64(self.duration.max(0.1)),
        }
    }
}

/// Runs a scenario and prints its figures. `Ok(false)` when the harness ran
/// but found something wrong with the server's answers (errors in a smoke
/// run); target misses are printed, not failures.
pub async fn run(args: BenchArgs) -> Result<bool, Failure> {
    match args.scenario {
        Scenario::Footprint => scenarios::footprint(&args).await,
        Scenario::Scale => scenarios::scale(&args).await,
        Scenario::Create => scenarios::create(&args).await,
        _ => scenarios::load(&args).await,
    }
}

/// An item operation the load generator calls, or the baseline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Health,
    Get,
    List,
    Create,
    Update,
}

impl Op {
    pub fn method(self) -> &'static str {
        match self {
            Op::Health => "Health/Check",
            Op::Get => "GetItem",
            Op::List => "ListItems",
            Op::Create => "CreateItem",
            Op::Update => "UpdateItem",
        }
    }
}

/// How calls spread over tenants.
#[derive(Clone, Debug, PartialEq)]
pub enum Spread {
    Uniform,
    Zipf(f64),
}

impl FromStr for Spread {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "uniform" {
            return Ok(Spread::Uniform);
        }
        let skew = text
            .strip_prefix("zipf:")
            .ok_or_else(|| format!("`{text}`: expected `uniform` or `zipf:S`"))?;
        match skew.parse::<f64>() {
            Ok(s) if s > 0.0 && s.is_finite() => Ok(Spread::Zipf(s)),
            _ => Err(format!("`{skew}`: the Zipf skew must be a positive number")),
        }
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Spread::Uniform => f.write_str("uniform"),
            Spread::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

/// Item operations with integer weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix {
    weights: Vec<(Op, u32)>,
    total: u32,
}

impl Mix {
    pub fn only(op: Op) -> Self {
        Mix {
            weights: vec![(op, 1)],
            total: 1,
        }
    }

    pub fn pick(&self, rng: &mut SmallRng) -> Op {
        if self.weights.len() == 1 {
            return self.weights[0].0;
        }
        let mut roll = rng.random_range(0..self.total);
        for &(op, weight) in &self.weights {
            if roll < weight {
                return op;
            }
            roll -= weight;
        }
        unreachable!("the roll is below the total weight")
    }

    pub fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        self.weights.iter().map(|&(op, _)| op)
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut weights = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}`: expected operation=weight"))?;
            let op = match name.trim() {
                "get" => Op::Get,
                "list" => Op::List,
                "create" => Op::Create,
                "update" => Op::Update,
                other => {
                    return Err(format!(
                        "`{other}`: the operations are get, list, create and update"
                    ));
                }
            };
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("`{weight}`: a weight is a whole number"))?;
            if weights.iter().any(|&(o, _)| o == op) {
                return Err(format!("`{name}` appears twice"));
            }
            if weight > 0 {
                weights.push((op, weight));
            }
        }
        let total = weights.iter().map(|&(_, w)| w).sum();
        if total == 0 {
            return Err("the mix needs at least one operation with a weight above 0".into());
        }
        Ok(Mix { weights, total })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(op, w)| {
                let name = match op {
                    Op::Get => "get",
                    Op::List => "list",
                    Op::Create => "create",
                    Op::Update => "update",
                    Op::Health => "health",
                };
                format!("{name}={w}")
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mixes_parse_and_pick_by_weight() {
        let mix: Mix = "get=3, create=1,update=0".parse().unwrap();
        assert_eq!(mix.to_string(), "get=3,create=1");
        let mut rng = SmallRng::seed_from_u64(1);
        let gets = (0..4000).filter(|_| mix.pick(&mut rng) == Op::Get).count();
        assert!((2700..3300).contains(&gets), "{gets} of 4000 were gets");
        for bad in ["", "get", "get=x", "get=0", "read=1", "get=1,get=2"] {
            assert!(bad.parse::<Mix>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn spreads_parse() {
        assert_eq!("uniform".parse::<Spread>().unwrap(), Spread::Uniform);
        assert_eq!("zipf:1.1".parse::<Spread>().unwrap(), Spread::Zipf(1.1));
        for bad in ["zipf", "zipf:", "zipf:-1", "zipf:nan", "normal"] {
            assert!(bad.parse::<Spread>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_zipf_spread_favours_the_first_tenants() {
        let picker = load::Picker::new(1000, &Spread::Zipf(1.1)).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let picks: Vec<usize> = (0..10_000).map(|_| picker.pick(&mut rng)).collect();
        assert!(picks.iter().all(|&p| p < 1000));
        let first_ten = picks.iter().filter(|&&p| p < 10).count();
        assert!(
            first_ten > 3000,
            "only {first_ten} of 10,000 picks in the first 10"
        );
    }
}
