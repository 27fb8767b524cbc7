//! A call's deadline, and its point of no return.
//!
//! A client told DEADLINE_EXCEEDED "nothing was changed" must find nothing
//! changed, later too; a client told OK must find its change made. Between
//! the two lies one instant per call where its work becomes permanent (a
//! commit, an operation recorded in the catalog), and the deadline and that
//! instant race. [`Deadline`] decides the race once, atomically:
//!
//! - work that has changed nothing yet calls [`Deadline::check`], which
//!   fails once the deadline has passed;
//! - work about to become permanent calls [`Deadline::commit`] first: it
//!   fails if the deadline expired, and otherwise nothing can expire the
//!   call any more, so its caller will hear the real outcome;
//! - an operation that goes on by itself once recorded (a delete, a
//!   restore) calls [`Deadline::commit_operation`]: past the deadline, its
//!   caller hears that the outcome is unknown, with the operation's id to
//!   look it up by;
//! - the limits layer calls [`Deadline::expire`] when the deadline passes,
//!   and answers according to what it finds.
//!
//! The deadline of the call being served travels with it as a task-local
//! ([`current`]), and into blocking work as a value.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::time::Instant;

use crate::error::{Error, Result};

const OPEN: u8 = 0;
const EXPIRED: u8 = 1;
const COMMITTED: u8 = 2;

/// The deadline of one call. Shared as an `Arc`.
#[derive(Debug)]
pub struct Deadline {
    at: Instant,
    state: AtomicU8,
    /// The operation a commit handed the call's outcome to, if any.
    operation: OnceLock<uuid::Uuid>,
}

/// What the call had done when its deadline passed.
#[derive(Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Nothing permanent: nothing will be, the caller may be told so.
    NothingDone,
    /// Its work is being committed: its outcome is moments away.
    Committing,
    /// It handed its work to an operation that goes on by itself.
    Operation(uuid::Uuid),
}

impl Deadline {
    pub fn new(at: Instant) -> Arc<Self> {
        Arc::new(Deadline {
            at,
            state: AtomicU8::new(OPEN),
            operation: OnceLock::new(),
        })
    }

    pub fn at(&self) -> Instant {
        self.at
    }

    /// Fails if the deadline has passed (and the call committed nothing):
    /// for work that has not changed anything yet.
    pub fn check(&self) -> Result<()> {
        if self.state.load(Ordering::Acquire) == EXPIRED
            || (Instant::now() >= self.at && self.expire() == Expiry::NothingDone)
        {
            return Err(exceeded());
        }
        Ok(())
    }

    /// Passes the point of no return: fails if the deadline has passed, and
    /// otherwise the call can no longer expire, so its caller will hear how
    /// the work ended. Committing twice is fine.
    pub fn commit(&self) -> Result<()> {
        if Instant::now() >= self.at {
            self.expire();
        }
        match self
            .state
            .compare_exchange(OPEN, COMMITTED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(()),
            Err(COMMITTED) => Ok(()),
            Err(_) => Err(exceeded()),
        }
    }

    /// [`Deadline::commit`] for work handed to operation `id`, which goes on
    /// whatever the caller does: past the deadline, the caller hears that
    /// the outcome is unknown and how to look it up.
    pub fn commit_operation(&self, id: uuid::Uuid) -> Result<()> {
        let _ = self.operation.set(id);
        self.commit()
    }

    /// The deadline has passed (or the caller went away): marks the call
    /// expired unless it committed, and says which.
    pub fn expire(&self) -> Expiry {
        match self
            .state
            .compare_exchange(OPEN, EXPIRED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(EXPIRED) => Expiry::NothingDone,
            Err(_) => match self.operation.get() {
                Some(id) => Expiry::Operation(*id),
                None => Expiry::Committing,
            },
        }
    }
}

fn exceeded() -> Error {
    Error::DeadlineExceeded(
        "the call's deadline passed before it was done; nothing was changed".into(),
    )
}

tokio::task_local! {
    static CURRENT: Option<Arc<Deadline>>;
}

/// The deadline of the call being served, if it has one.
pub fn current() -> Option<Arc<Deadline>> {
    CURRENT.try_with(Clone::clone).ok().flatten()
}

/// Runs `f` with `deadline` as the deadline of the call (`None`: without
/// one, such as the audit record written after a call's work).
pub async fn scope<F: Future>(deadline: Option<Arc<Deadline>>, f: F) -> F::Output {
    CURRENT.scope(deadline, f).await
}

/// [`Deadline::check`] of an optional deadline.
pub fn check(deadline: Option<&Deadline>) -> Result<()> {
    deadline.map_or(Ok(()), Deadline::check)
}

/// [`Deadline::commit`] of an optional deadline.
pub fn commit(deadline: Option<&Deadline>) -> Result<()> {
    deadline.map_or(Ok(()), Deadline::commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_commit_before_the_deadline_wins_and_the_call_can_no_longer_expire() {
        let deadline = Deadline::new(Instant::now() + Duration::from_secs(60));
        deadline.check().unwrap();
        deadline.commit().unwrap();
        assert_eq!(deadline.expire(), Expiry::Committing);
        deadline.commit().unwrap();
    }

    #[tokio::test]
    async fn once_expired_nothing_can_commit() {
        let deadline = Deadline::new(Instant::now() + Duration::from_secs(60));
        assert_eq!(deadline.expire(), Expiry::NothingDone);
        assert!(deadline.check().is_err());
        assert!(deadline.commit().is_err());
        assert!(deadline.commit_operation(uuid::Uuid::new_v4()).is_err());
    }

    #[tokio::test]
    async fn a_passed_deadline_expires_on_its_own_at_the_next_check() {
        let deadline = Deadline::new(Instant::now());
        assert!(deadline.check().is_err());
        assert_eq!(deadline.expire(), Expiry::NothingDone);
        let deadline = Deadline::new(Instant::now());
        assert!(deadline.commit().is_err(), "too late to commit");
    }

    #[tokio::test]
    async fn an_operation_committed_in_time_is_named_when_the_deadline_passes() {
        let deadline = Deadline::new(Instant::now() + Duration::from_secs(60));
        let id = uuid::Uuid::new_v4();
        deadline.commit_operation(id).unwrap();
        assert_eq!(deadline.expire(), Expiry::Operation(id));
    }
}
