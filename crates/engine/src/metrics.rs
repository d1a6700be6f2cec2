//! What Paygent decides and does, counted and timed for Prometheus. Labels are the domain's own words (a
//! payment's status, a tool, a decision), never ids, so every series is bounded.

use paygent_domain::PaymentStatus;
use paygent_domain::approval::ApprovalStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Judged {
    /// What the guard made of the payment: `authorized`, `pending_approval`, `denied` or `failed`.
    outcome: &'static str,
    tool: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ended {
    /// `approved`, `rejected` or `expired`; for a rail, `executed` or `failed`; for a webhook, `delivered` or
    /// `failed`.
    outcome: &'static str,
}

/// Seconds, from a millisecond to two minutes: the guard's answer.
fn fast() -> Histogram {
    Histogram::new([
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
    ])
}

/// Seconds, from a second to a day: how long people take.
fn slow() -> Histogram {
    Histogram::new([
        1.0,
        5.0,
        15.0,
        60.0,
        300.0,
        900.0,
        3600.0,
        4.0 * 3600.0,
        86400.0,
    ])
}

/// The engine's series, shared by its clones.
pub struct Metrics {
    registry: Registry,
    guard: Family<Judged, Counter>,
    guard_seconds: Histogram,
    decisions: Family<Ended, Counter>,
    decision_seconds: Histogram,
    rails: Family<Ended, Counter>,
    fanout_lag_seconds: Histogram,
    webhooks: Family<Ended, Counter>,
    webhook_lag_seconds: Histogram,
    database_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Metrics {
            registry: Registry::with_prefix("paygent"),
            guard: Family::default(),
            guard_seconds: fast(),
            decisions: Family::default(),
            decision_seconds: slow(),
            rails: Family::default(),
            fanout_lag_seconds: fast(),
            webhooks: Family::default(),
            webhook_lag_seconds: fast(),
            database_errors: Counter::default(),
        };
        m.registered()
    }
}

impl Metrics {
    fn registered(mut self) -> Self {
        let r = &mut self.registry;
        r.register(
            "guard_decisions",
            "Payments the guard judged, by outcome and tool",
            self.guard.clone(),
        );
        r.register(
            "guard_seconds",
            "Time from a payment request to the guard's committed judgement",
            self.guard_seconds.clone(),
        );
        r.register(
            "approval_decisions",
            "Approval requests ended, by outcome",
            self.decisions.clone(),
        );
        r.register(
            "approval_decision_seconds",
            "Time from an approval request to its end",
            self.decision_seconds.clone(),
        );
        r.register(
            "rail_outcomes",
            "Payments a rail ended, by outcome",
            self.rails.clone(),
        );
        r.register(
            "event_fanout_lag_seconds",
            "Time from an event's commit to its hand-over to live subscribers",
            self.fanout_lag_seconds.clone(),
        );
        r.register(
            "webhook_deliveries",
            "Webhook delivery attempts, by outcome",
            self.webhooks.clone(),
        );
        r.register(
            "webhook_lag_seconds",
            "Time from an event's commit to its receiver's acceptance",
            self.webhook_lag_seconds.clone(),
        );
        r.register(
            "database_errors",
            "Database errors that were not the caller's input",
            self.database_errors.clone(),
        );
        self
    }

    pub(crate) fn guard_judged(&self, outcome: PaymentStatus, tool: &'static str, took: Duration) {
        let judged = Judged {
            outcome: outcome.as_str(),
            tool,
        };
        self.guard.get_or_create(&judged).inc();
        self.guard_seconds.observe(took.as_secs_f64());
    }

    pub(crate) fn approval_ended(&self, outcome: ApprovalStatus, waited: Duration) {
        let ended = Ended {
            outcome: outcome.as_str(),
        };
        self.decisions.get_or_create(&ended).inc();
        self.decision_seconds.observe(waited.as_secs_f64());
    }

    pub(crate) fn rail_ended(&self, outcome: PaymentStatus) {
        let ended = Ended {
            outcome: outcome.as_str(),
        };
        self.rails.get_or_create(&ended).inc();
    }

    pub(crate) fn fanned_out(&self, lag: Duration) {
        self.fanout_lag_seconds.observe(lag.as_secs_f64());
    }

    /// One delivery attempt: `lag` is from the event's commit, counted when the receiver took it.
    pub(crate) fn webhook_attempted(&self, delivered: bool, lag: Duration) {
        let outcome = if delivered { "delivered" } else { "failed" };
        self.webhooks.get_or_create(&Ended { outcome }).inc();
        if delivered {
            self.webhook_lag_seconds.observe(lag.as_secs_f64());
        }
    }

    pub fn database_error(&self) {
        self.database_errors.inc();
    }

    /// The series in the Prometheus text format, with `extra` lines (gauges read at scrape time) before the end.
    pub fn render(&self, extra: &str) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text.push_str(extra);
        prometheus_client::encoding::text::encode_eof(&mut text)
            .expect("writing to a String cannot fail");
        text
    }
}

/// The most pending requests a scrape counts: the gauge stays cheap however many there are.
const PENDING_COUNTED: i64 = 1_000_000;

impl crate::Paygent {
    /// Every series in the Prometheus (OpenMetrics) text format, with the gauges read now.
    pub async fn metrics_text(&self) -> crate::Result<String> {
        let pending =
            paygent_store::approvals::pending_count(self.store.reader(), PENDING_COUNTED).await?;
        let running = self.runners.lock().expect("runners").len();
        let waiting = self.store.writes_waiting();
        let gauges = format!(
            "# HELP paygent_pending_approvals Approval requests waiting on people, in every tenant (counted up to \
             {PENDING_COUNTED}).\n# TYPE paygent_pending_approvals gauge\npaygent_pending_approvals {pending}\n\
             # HELP paygent_executions_running Executions this instance is driving now.\n\
             # TYPE paygent_executions_running gauge\npaygent_executions_running {running}\n\
             # HELP paygent_writes_waiting Writes waiting now for their turn to join a commit.\n\
             # TYPE paygent_writes_waiting gauge\npaygent_writes_waiting {waiting}\n"
        );
        Ok(self.metrics.render(&gauges))
    }
}
