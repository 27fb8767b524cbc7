//! Log lines a flood would repeat, counted and written as summaries.
//!
//! A flood of refused calls, refused connections or failing accepts must
//! not turn into a flood of log lines: formatting and writing a line costs
//! more than refusing the call, and a disk filled with logs is an outage of
//! its own. So refusals are never logged one by one: each is counted under
//! its kind, its status code and its subject (a tenant, an API key, a peer
//! address), and every interval one line per key says how many there were
//! ([`Summaries::count`]). Other failures are logged one by one while they
//! are few: [`Summaries::line_allowed`] grants a small budget of lines per
//! second, and what is over it is counted as well. The log therefore grows
//! by a bounded number of lines per second whatever arrives.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::ids::TenantId;

/// Most summary lines written per interval; the keys beyond them are
/// added up in one more line.
const MAX_LINES: usize = 20;
/// Individual lines allowed per second, and in one burst.
const LINES_PER_SECOND: f64 = 20.0;
const LINE_BURST: f64 = 50.0;

/// Who a counted event concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    Tenant(TenantId),
    ApiKey(uuid::Uuid),
    Peer(IpAddr),
    Unknown,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Tenant(id) => write!(f, "tenant {id}"),
            Subject::ApiKey(id) => write!(f, "api key {id}"),
            Subject::Peer(ip) => write!(f, "peer {ip}"),
            Subject::Unknown => f.write_str("unknown caller"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    what: &'static str,
    code: &'static str,
    subject: Subject,
}

/// The counters of one server. A cheap handle is an `Arc<Summaries>`.
pub struct Summaries {
    counts: Mutex<HashMap<Key, u64>>,
    budget: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Default for Summaries {
    fn default() -> Self {
        Summaries {
            counts: Mutex::default(),
            budget: Mutex::new(Bucket {
                tokens: LINE_BURST,
                refilled: Instant::now(),
            }),
        }
    }
}

impl Summaries {
    /// Counts one event of kind `what` (such as "refused call"), ended with
    /// `code`, concerning `subject`: logged in the next summary.
    pub fn count(&self, what: &'static str, code: &'static str, subject: Subject) {
        let key = Key {
            what,
            code,
            subject,
        };
        *self
            .counts
            .lock()
            .expect("the summary lock is never poisoned")
            .entry(key)
            .or_default() += 1;
    }

    /// Whether one more individual line may be logged now; if not, the
    /// caller counts the event instead.
    pub fn line_allowed(&self) -> bool {
        let mut bucket = self
            .budget
            .lock()
            .expect("the budget lock is never poisoned");
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * LINES_PER_SECOND).min(LINE_BURST);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Logs what was counted since the last flush, most frequent first, and
    /// starts counting afresh. Returns how many events it summarized.
    pub fn flush(&self, interval: Duration) -> u64 {
        let counts = std::mem::take(
            &mut *self
                .counts
                .lock()
                .expect("the summary lock is never poisoned"),
        );
        let mut counts: Vec<(Key, u64)> = counts.into_iter().collect();
        counts.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
        let total = counts.iter().map(|(_, n)| n).sum();
        let seconds = interval.as_secs_f64();
        for (key, count) in counts.iter().take(MAX_LINES) {
            tracing::warn!(
                target: "tenantry::summary",
                what = key.what,
                code = key.code,
                subject = %key.subject,
                count,
                seconds,
                "{} {} time(s) in the last {seconds} s",
                key.what,
                count
            );
        }
        if counts.len() > MAX_LINES {
            let rest: u64 = counts[MAX_LINES..].iter().map(|(_, n)| n).sum();
            tracing::warn!(
                target: "tenantry::summary",
                keys = counts.len() - MAX_LINES,
                count = rest,
                seconds,
                "and {rest} more event(s) of {} other kinds or callers",
                counts.len() - MAX_LINES
            );
        }
        total
    }

    /// Flushes every `interval`, until the task is dropped.
    pub async fn run(self: std::sync::Arc<Self>, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            self.flush(interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_kept_by_kind_code_and_subject_and_flushed_once() {
        let summaries = Summaries::default();
        let tenant = Subject::Tenant(TenantId::new_random());
        for _ in 0..1000 {
            summaries.count("refused call", "RESOURCE_EXHAUSTED", tenant);
        }
        summaries.count("refused call", "UNAUTHENTICATED", Subject::Unknown);
        assert_eq!(summaries.counts.lock().unwrap().len(), 2);
        assert_eq!(summaries.flush(Duration::from_secs(10)), 1001);
        assert_eq!(
            summaries.flush(Duration::from_secs(10)),
            0,
            "counting afresh"
        );
    }

    #[test]
    fn individual_lines_stop_after_a_burst() {
        let summaries = Summaries::default();
        let allowed = (0..10_000).filter(|_| summaries.line_allowed()).count();
        // The burst, and what the microseconds of the loop refilled.
        assert!(
            (LINE_BURST as usize..LINE_BURST as usize + 5).contains(&allowed),
            "{allowed}"
        );
    }
}
