//! Channels that reach people where they are (Slack, email). Each reads a tenant's durable event log from its
//! own cursor, as webhooks do, so a crash loses no message; one instance at a time holds a tenant's cursor.

pub mod email;
pub mod slack;
mod slack_message;

use crate::views::ApprovalView;
use crate::{Paygent, Result};
use chrono::{DateTime, Utc};
use paygent_store::Event;
use paygent_store::notifiers::{self, Channel, Cursor};
use paygent_store::policies;
use serde_json::Value;
use std::time::Duration;
use uuid::Uuid;

/// How long one instance holds a tenant's cursor while it tells people.
const LEASE_SECONDS: i64 = 60;
const TENANTS_PER_PASS: i64 = 50;
const EVENTS_PER_PASS: i64 = 100;

/// A channel: what it does with one of a tenant's events.
pub(crate) trait Teller: Clone + Send + Sync + 'static {
    const CHANNEL: Channel;
    fn tell(&self, paygent: &Paygent, event: &Event) -> impl Future<Output = Result<()>> + Send;
}

/// How many old rows one statement deletes.
const PRUNE_BATCH: i64 = 10_000;

impl Paygent {
    /// Deletes what people were told longer ago than `retention`: webhook delivery attempts, links expired that
    /// long, and where Slack messages are once their requests can no longer change. A batch per statement.
    pub async fn prune_told(&self, retention: chrono::Duration) -> Result<u64> {
        use paygent_store::notifiers::{Told, prune};
        let before = self.now() - retention;
        let longest_wait =
            chrono::Duration::seconds(paygent_domain::session::MAX_APPROVAL_TIMEOUT_SECONDS.into());
        let mut pruned = 0;
        for (told, cutoff) in [
            (Told::WebhookDeliveries, before),
            (Told::DecisionLinks, before),
            (Told::SlackMessages, before - longest_wait),
        ] {
            loop {
                let n = prune(&self.store, told, cutoff, PRUNE_BATCH).await?;
                pruned += n;
                if n < PRUNE_BATCH as u64 {
                    break;
                }
            }
        }
        Ok(pruned)
    }

    /// Where the request's policy tells people of it.
    pub(crate) async fn notify_of(
        &self,
        tenant_id: Uuid,
        view: &ApprovalView,
    ) -> Result<paygent_domain::rules::Notify> {
        let Some(context) = &view.context else {
            return Ok(Default::default());
        };
        let policy = policies::get(self.store.reader(), tenant_id, context.policy.id).await?;
        Ok(policy.map(|p| p.rules.notify.clone()).unwrap_or_default())
    }

    /// Runs `teller`'s passes as soon as this instance commits an event, and every `every`, until aborted.
    pub(crate) fn spawn_teller<T: Teller>(
        &self,
        teller: T,
        every: Duration,
        what: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_passes(every, what, move |paygent| {
            let teller = teller.clone();
            async move { paygent.tell_due(&teller).await }
        })
    }

    /// One pass: each due tenant's next events, the tenants side by side. Answers whether one took a whole
    /// page, so more may be waiting.
    pub(crate) async fn tell_due<T: Teller>(&self, teller: &T) -> Result<bool> {
        let reader = self.store.reader();
        let due = notifiers::due(reader, T::CHANNEL, self.now(), TENANTS_PER_PASS).await?;
        let passes =
            futures::future::join_all(due.into_iter().map(|c| self.tell_tenant(teller, c)));
        let full = passes.await.into_iter().collect::<Result<Vec<bool>>>()?;
        Ok(full.contains(&true))
    }

    /// Takes one tenant's cursor (unless another instance did), tells its next events in order until one
    /// fails (retried later, with backoff), and moves the cursor on.
    async fn tell_tenant<T: Teller>(&self, teller: &T, cursor: Cursor) -> Result<bool> {
        let now = self.now();
        let held = Cursor {
            next_attempt_at: now + chrono::Duration::seconds(LEASE_SECONDS),
            ..cursor.clone()
        };
        if !notifiers::advance(self.store.writer(), T::CHANNEL, &cursor, &held).await? {
            return Ok(false);
        }
        let events = self
            .store
            .events_after(cursor.tenant_id, cursor.delivered_seq, EVENTS_PER_PASS)
            .await?;
        let mut to = Cursor {
            next_attempt_at: now,
            ..cursor
        };
        for event in &events {
            if let Err(e) = teller.tell(self, event).await {
                tracing::warn!(error = %e, seq = event.seq, channel = ?T::CHANNEL, "telling people failed; retrying later");
                to.failures += 1;
                to.next_attempt_at = self.now() + crate::webhooks::backoff(to.failures);
                break;
            }
            (to.delivered_seq, to.failures) = (event.seq, 0);
        }
        notifiers::advance(self.store.writer(), T::CHANNEL, &held, &to).await?;
        Ok(events.len() as i64 == EVENTS_PER_PASS && to.failures == 0)
    }
}

/// What a person needs to decide a request, as plain text: each channel (and a link's page) marks it up its own
/// way.
#[derive(Debug)]
pub struct Facts {
    pub agent: String,
    /// The tool, in words: "transfer", "x402 payment".
    pub action: String,
    /// "25 USDC", when the action names an amount.
    pub amount: Option<String>,
    /// The USD value, to the cent.
    pub usd: String,
    pub payee: Option<String>,
    pub edited: bool,
    /// The agent's own words for it.
    pub words: Option<String>,
    /// Why a person is asked.
    pub reason: String,
    pub budget: String,
    pub deadline: DateTime<Utc>,
}

impl Facts {
    pub(crate) fn of(view: &ApprovalView) -> Facts {
        let args = view.effective_args();
        let text = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_owned);
        let context = view.context.as_ref();
        let budget = context.and_then(|c| c.budget_after.as_ref()).map(|b| {
            match (b.usd.available, b.usd.limit) {
                (Some(left), Some(limit)) => format!("${left} of ${limit} left today"),
                _ => "no daily limit".to_owned(),
            }
        });
        Facts {
            agent: context
                .and_then(|c| c.agent.name.clone())
                .unwrap_or_else(|| format!("Agent {}", view.requested_by)),
            action: view.tool.replace('_', " "),
            amount: text("amount")
                .zip(text("currency"))
                .map(|(a, c)| format!("{a} {c}")),
            usd: view.usd_value.round_dp(2).to_string(),
            payee: text("recipient"),
            edited: view.edited_args.is_some(),
            words: context.and_then(|c| c.description.clone()),
            reason: view.reason.clone(),
            budget: budget.unwrap_or_else(|| "not known".into()),
            deadline: view.deadline,
        }
    }

    /// "Ops Bot asks to transfer 25 USDC (about $25) to 0x1111…", with `strong` marking the amount up and
    /// `code` the payee, each given text already made safe by `quote`.
    pub fn headline(
        &self,
        quote: impl Fn(&str) -> String,
        strong: impl Fn(&str) -> String,
        code: impl Fn(&str) -> String,
    ) -> String {
        let amount = match &self.amount {
            Some(a) => format!("{} (about ${})", strong(&quote(a)), self.usd),
            None => format!("about {}", strong(&format!("${}", self.usd))),
        };
        let payee = self
            .payee
            .as_deref()
            .map_or_else(String::new, |p| format!(" to {}", code(&quote(p))));
        let edited = if self.edited { " (as edited)" } else { "" };
        format!(
            "{} asks to {} {amount}{payee}{edited}",
            quote(&self.agent),
            self.action
        )
    }
}
