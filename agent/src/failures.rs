//! What the node fails to do, logged once when it starts, again every
//! [`REMIND_EVERY`] while it lasts, and once more when it is over (pure).
//! A pass runs every 2 s: a link the kernel refuses, or a task that cannot
//! get its sandbox, would otherwise log the same lines every 2 s for as long
//! as it lasts, and bury what else happens.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often a failure that lasts is logged again.
pub const REMIND_EVERY: Duration = Duration::from_secs(60);

/// How bad a failure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The node works around it (an assumption, a read that failed).
    Warning,
    /// Something the node was asked for is not done.
    Error,
}

/// What to log at the end of a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// A failure this pass met for the first time (or again after it was
    /// over).
    New(Severity, String),
    /// A failure every pass has met for `lasting`.
    Lasting(Severity, String, Duration),
    /// A failure the passes before met and this one did not.
    Over(String),
}

/// The failures of the last pass, with when each began and was last logged.
#[derive(Debug, Default)]
pub struct Failures {
    held: BTreeMap<String, Held>,
    this_pass: BTreeMap<String, Severity>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    began: Instant,
    logged: Instant,
}

impl Failures {
    /// Notes a failure of the pass under way.
    pub fn met(&mut self, severity: Severity, message: String) {
        let noted = self.this_pass.entry(message).or_insert(severity);
        *noted = (*noted).max(severity);
    }

    /// Ends the pass at `now`: what to log of the failures it met and of
    /// those it no longer met.
    pub fn end_pass(&mut self, now: Instant) -> Vec<Said> {
        let met = std::mem::take(&mut self.this_pass);
        let mut said = Vec::new();
        for message in self.held.keys().filter(|m| !met.contains_key(*m)) {
            said.push(Said::Over(message.clone()));
        }
        self.held.retain(|message, _| met.contains_key(message));
        for (message, severity) in met {
            match self.held.get_mut(&message) {
                Some(held) if now.duration_since(held.logged) >= REMIND_EVERY => {
                    held.logged = now;
                    said.push(Said::Lasting(severity, message, now.duration_since(held.began)));
                }
                Some(_) => {}
                None => {
                    self.held.insert(message.clone(), Held { began: now, logged: now });
                    said.push(Said::New(severity, message));
                }
            }
        }
        said
    }
}

/// Logs what [`Failures::end_pass`] returned.
pub fn log(said: &[Said]) {
    for entry in said {
        match entry {
            Said::New(Severity::Error, message) => tracing::error!("{message}"),
            Said::New(Severity::Warning, message) => tracing::warn!("{message}"),
            Said::Lasting(Severity::Error, message, lasting) => {
                tracing::error!("still failing after {}s: {message}", lasting.as_secs())
            }
            Said::Lasting(Severity::Warning, message, lasting) => {
                tracing::warn!("still so after {}s: {message}", lasting.as_secs())
            }
            Said::Over(message) => tracing::info!("cleared: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass(failures: &mut Failures, met: &[&str], now: Instant) -> Vec<Said> {
        for message in met {
            failures.met(Severity::Error, message.to_string());
        }
        failures.end_pass(now)
    }

    #[test]
    fn a_failure_is_logged_when_it_starts_every_minute_while_it_lasts_and_when_it_is_over() {
        let start = Instant::now();
        let mut failures = Failures::default();
        assert_eq!(pass(&mut failures, &["a"], start), [Said::New(Severity::Error, "a".into())]);
        assert_eq!(pass(&mut failures, &["a"], start + Duration::from_secs(2)), []);
        assert_eq!(pass(&mut failures, &["a"], start + Duration::from_secs(58)), []);
        let minute = start + REMIND_EVERY;
        assert_eq!(
            pass(&mut failures, &["a"], minute),
            [Said::Lasting(Severity::Error, "a".into(), REMIND_EVERY)]
        );
        assert_eq!(pass(&mut failures, &["a"], minute + Duration::from_secs(2)), []);
        assert_eq!(
            pass(&mut failures, &["b"], minute + Duration::from_secs(4)),
            [Said::Over("a".into()), Said::New(Severity::Error, "b".into())]
        );
        assert_eq!(pass(&mut failures, &[], minute + Duration::from_secs(6)), [Said::Over("b".into())]);
        assert_eq!(pass(&mut failures, &[], minute + Duration::from_secs(8)), []);
        assert_eq!(
            pass(&mut failures, &["a"], minute + Duration::from_secs(10)),
            [Said::New(Severity::Error, "a".into())],
            "a failure that comes back is new again"
        );
    }

    #[test]
    fn the_same_failure_met_twice_in_a_pass_is_said_once_at_its_worst() {
        let mut failures = Failures::default();
        failures.met(Severity::Warning, "x".into());
        failures.met(Severity::Error, "x".into());
        failures.met(Severity::Warning, "x".into());
        assert_eq!(failures.end_pass(Instant::now()), [Said::New(Severity::Error, "x".into())]);
    }
}
