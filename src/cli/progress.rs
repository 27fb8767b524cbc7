//! Progress of long work (migrations, exports, imports): a bar on standard
//! error when it is a terminal, and otherwise a plain line now and then (a
//! log file or a CI job has no use for a redrawn bar), and one at the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{BinaryBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Outcome;
use super::output::write_stdout;

/// Without a terminal, a line every this many bytes…
const BYTES_PER_LINE: u64 = 32 << 20;
/// …or tenants.
const TENANTS_PER_LINE: u64 = 100;

/// The progress of one piece of work, named `what` (`export`, `migrate`).
pub struct Progress {
    what: &'static str,
    unit: Unit,
    total: Option<u64>,
    done: u64,
    next_line: u64,
    started: Instant,
    bar: Option<ProgressBar>,
}

#[derive(Clone, Copy)]
enum Unit {
    Bytes,
    Tenants,
}

impl Progress {
    /// Work measured in bytes, `total` of them.
    pub fn bytes(what: &'static str, total: u64) -> Self {
        Progress::new(what, Unit::Bytes, Some(total))
    }

    /// Work measured in tenants, how many not known in advance.
    pub fn tenants(what: &'static str) -> Self {
        Progress::new(what, Unit::Tenants, None)
    }

    fn new(what: &'static str, unit: Unit, total: Option<u64>) -> Self {
        let bar = std::io::stderr()
            .is_terminal()
            .then(|| bar(what, unit, total));
        Progress {
            what,
            unit,
            total,
            done: 0,
            next_line: per_line(unit),
            started: Instant::now(),
            bar,
        }
    }

    /// Counts `amount` more done.
    pub fn advance(&mut self, amount: u64) {
        self.done += amount;
        match &self.bar {
            Some(bar) => bar.inc(amount),
            None if self.done >= self.next_line => {
                while self.next_line <= self.done {
                    self.next_line += per_line(self.unit);
                }
                eprintln!("{}: {}", self.what, self.amount());
            }
            None => {}
        }
    }

    /// Says more about the work on the bar, such as failures so far.
    pub fn set_message(&self, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(message);
        }
    }

    /// Prints a line of the command's output on standard output, without
    /// garbling the bar.
    pub fn print(&self, line: &str) -> Outcome {
        match &self.bar {
            Some(bar) => bar.suspend(|| write_stdout(line)),
            None => write_stdout(line),
        }
    }

    /// Ends the work: the bar goes away, or a last line says how much was
    /// done.
    pub fn finish(self) {
        match &self.bar {
            Some(bar) => bar.finish_and_clear(),
            None => eprintln!(
                "{}: {} in {:.1}s",
                self.what,
                self.amount(),
                self.started.elapsed().as_secs_f64()
            ),
        }
    }

    /// How much is done, and of how much.
    fn amount(&self) -> String {
        match (self.unit, self.total) {
            (Unit::Bytes, Some(total)) => format!(
                "{} of {} ({}%)",
                BinaryBytes(self.done),
                BinaryBytes(total),
                (self.done * 100).checked_div(total).unwrap_or(100)
            ),
            (Unit::Bytes, None) => BinaryBytes(self.done).to_string(),
            (Unit::Tenants, _) => format!("{} tenants", self.done),
        }
    }
}

fn per_line(unit: Unit) -> u64 {
    match unit {
        Unit::Bytes => BYTES_PER_LINE,
        Unit::Tenants => TENANTS_PER_LINE,
    }
}

fn bar(what: &'static str, unit: Unit, total: Option<u64>) -> ProgressBar {
    let template = match unit {
        Unit::Bytes => {
            "{prefix} {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, {eta} left)"
        }
        Unit::Tenants => "{spinner} {prefix}: {pos} tenants done {msg} ({elapsed})",
    };
    let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr())
        .with_style(ProgressStyle::with_template(template).expect("the templates are valid"))
        .with_prefix(what);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_say_how_much_of_what() {
        let mut export = Progress::bytes("export", 3 << 20);
        export.bar = None;
        export.done = 3 << 19;
        assert_eq!(export.amount(), "1.50 MiB of 3.00 MiB (50%)");
        let mut empty = Progress::bytes("import", 0);
        empty.bar = None;
        assert_eq!(empty.amount(), "0 B of 0 B (100%)");
        let mut migrate = Progress::tenants("migrate");
        migrate.bar = None;
        migrate.advance(7);
        assert_eq!(migrate.amount(), "7 tenants");
    }
}
