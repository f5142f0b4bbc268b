//! Metrics of deploys: how many ended how, and how long they took, by action (a deploy
//! through the admin API or the pickup directory, a rollback, an undeploy). Recorded by
//! `deploy::deploy` (every path of a deploy goes through it) and by the admin API's
//! rollback and undeploy.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// What a deploy (or a rollback, an undeploy) did: the `outcome` label's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Stored and acknowledged by every worker and peer.
    Ok,
    /// Stored, but a worker or a peer did not acknowledge it (the report says which).
    Partial,
    /// Every module equalled its active version: nothing stored.
    Unchanged,
    /// Bad input (no modules, a bad name, a module listed twice, nothing to roll back to).
    Invalid,
    /// The check refused the code (an import error, a timeout, the worker died).
    Refused,
    /// Another change got in the way (the modules changed during the check, the check slot
    /// stayed busy): nothing stored.
    Conflict,
    /// No worker to check with, or the store unreachable.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Partial => "partial",
            Outcome::Unchanged => "unchanged",
            Outcome::Invalid => "invalid",
            Outcome::Refused => "refused",
            Outcome::Conflict => "conflict",
            Outcome::Error => "error",
        }
    }
}

/// The `action` label's values.
pub const ACTIONS: &[&str] = &["deploy", "rollback", "undeploy"];

/// A deploy's check runs user code under `deploy.check_timeout_ms` (10 s by default); most
/// deploys take tens of milliseconds.
const BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Done {
    action: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Action {
    action: &'static str,
}

pub struct DeployMetrics {
    count: Family<Done, Counter>,
    duration: Family<Action, Histogram, fn() -> Histogram>,
}

impl DeployMetrics {
    pub fn register(registry: &mut Registry) -> DeployMetrics {
        let count = Family::<Done, Counter>::default();
        let duration = Family::<Action, Histogram, fn() -> Histogram>::new_with_constructor(|| {
            Histogram::new(BUCKETS)
        });
        registry.register(
            "deploys",
            "Deploys, rollbacks and undeploys through this server, by action and outcome",
            count.clone(),
        );
        registry.register(
            "deploy_duration_seconds",
            "Time from a deploy's (rollback's, undeploy's) start until it was reported, whatever its outcome",
            duration.clone(),
        );
        for &action in ACTIONS {
            let _ = duration.get_or_create(&Action { action });
            for outcome in [Outcome::Ok, Outcome::Error] {
                let _ = count.get_or_create(&Done {
                    action,
                    outcome: outcome.as_str(),
                });
            }
        }
        DeployMetrics { count, duration }
    }

    /// Records one finished deploy, rollback or undeploy (`action`: one of [`ACTIONS`]).
    pub fn record(&self, action: &'static str, outcome: Outcome, took: Duration) {
        self.count
            .get_or_create(&Done {
                action,
                outcome: outcome.as_str(),
            })
            .inc();
        self.duration
            .get_or_create(&Action { action })
            .observe(took.as_secs_f64());
    }
}
