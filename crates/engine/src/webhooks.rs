//! Webhooks: a tenant's events delivered to endpoints its admins registered, signed as the Standard Webhooks
//! specification says, from the durable event log and in `seq` order, at least once.

use crate::events::LiveEvent;
use crate::{EngineError, Paygent, Result, require};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use paygent_domain::Principal;
use paygent_domain::audit::AuditAction;
use paygent_domain::event::EventKind;
use paygent_store::Event;
use paygent_store::webhooks::{self, Delivery, Progress, WebhookRecord};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a rotated-out secret goes on signing beside the new one.
const ROTATION_OVERLAP_HOURS: i64 = 24;
/// How long an endpoint may fail, retried all the while, before it is disabled.
const FAILING_FOR_HOURS: i64 = 24;
/// The longest wait between two attempts at a failing endpoint.
const MAX_BACKOFF_SECONDS: f64 = 3600.0;
/// How many webhooks one pass visits, and how many events it sends one endpoint.
const WEBHOOKS_PER_PASS: i64 = 50;
const EVENTS_PER_PASS: i64 = 100;

/// What an admin registers.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where deliveries are POSTed: an http(s) URL within the egress policy.
    #[schema(max_length = 2048, example = "https://hooks.example/paygent")]
    pub url: String,
    /// The event types it takes; all when absent or empty.
    pub events: Option<Vec<String>>,
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// A webhook as its admins see it. The secret is shown once: when it is made or rotated.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    /// `whsec_` and the base64 key that signs deliveries; only in the answer that made or rotated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The last event delivered (or passed over, not being subscribed).
    pub delivered_seq: i64,
    /// Failed attempts since the last delivery.
    pub failures: i64,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// The first failure since the last delivery.
    pub failing_since: Option<DateTime<Utc>>,
    /// Set once it failed for a day: nothing is sent until an admin enables it (`POST .../enable`).
    pub disabled_at: Option<DateTime<Utc>>,
}

impl From<WebhookRecord> for WebhookView {
    fn from(w: WebhookRecord) -> Self {
        WebhookView {
            id: w.id,
            url: w.url,
            events: w.events,
            description: w.description,
            secret: None,
            delivered_seq: w.delivered_seq,
            failures: w.failures,
            next_attempt_at: w.next_attempt_at,
            created_at: w.created_at,
            failing_since: w.failing_since,
            disabled_at: w.disabled_at,
        }
    }
}

/// One delivery attempt, as the delivery log shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub seq: i64,
    pub attempt: i64,
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status, when it answered.
    pub status: Option<i64>,
    pub error: Option<String>,
    pub latency_ms: i64,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        DeliveryView {
            seq: d.seq,
            attempt: d.attempt,
            at: d.at,
            status: d.status,
            error: d.error,
            latency_ms: d.latency_ms,
        }
    }
}

fn new_secret() -> String {
    format!("whsec_{}", B64.encode(rand::random::<[u8; 24]>()))
}

/// The `webhook-signature` value for one message: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`
/// under each secret's key.
pub fn signature(secrets: &[&str], id: &str, timestamp: i64, body: &str) -> String {
    secrets
        .iter()
        .filter_map(|s| B64.decode(s.trim_start_matches("whsec_")).ok())
        .filter_map(|key| Hmac::<Sha256>::new_from_slice(&key).ok())
        .map(|mut mac| {
            mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
            format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The event types a new webhook takes, once its URL is an http(s) one `egress` lets through (by address; names
/// resolve at delivery, where the policy applies again) and the rest is in bounds.
fn validate(new: &NewWebhook, egress: &crate::EgressPolicy) -> Result<Vec<String>> {
    let url = reqwest::Url::parse(&new.url)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && new.url.len() <= 2048)
        .ok_or_else(|| EngineError::Invalid("url must be an http(s) URL".into()))?;
    egress
        .check_url(&url)
        .map_err(|e| EngineError::Invalid(e.to_string()))?;
    if new
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 500)
    {
        return Err(EngineError::Invalid(
            "description is limited to 500 characters".into(),
        ));
    }
    let events = new.events.clone().unwrap_or_default();
    if let Some(bad) = events.iter().find(|e| EventKind::parse(e).is_none()) {
        return Err(EngineError::Invalid(format!(
            "{bad:?} is not an event type"
        )));
    }
    Ok(events)
}

impl Paygent {
    /// Registers a webhook; it takes the tenant's events from now on. Admins only.
    pub async fn create_webhook(&self, who: &Principal, new: NewWebhook) -> Result<WebhookView> {
        require(who.is_admin(), "only admins manage webhooks")?;
        let events = validate(&new, self.egress.policy())?;
        let mut tx = self.begin_as(who).await?;
        let now = tx.now();
        let record = WebhookRecord {
            id: paygent_domain::time::uuid_at(now),
            tenant_id: who.tenant_id,
            url: new.url,
            events,
            description: new.description,
            secret: new_secret(),
            previous_secret: None,
            previous_until: None,
            delivered_seq: tx.events_before(),
            failures: 0,
            next_attempt_at: now,
            created_by: who.key_id,
            created_at: now,
            failing_since: None,
            disabled_at: None,
        };
        webhooks::insert(&mut tx, &record).await?;
        let data = serde_json::json!({"url": record.url, "events": record.events,
            "description": record.description});
        audit(&mut tx, who, AuditAction::WebhookCreated, record.id, data).await?;
        tx.commit().await?;
        let secret = record.secret.clone();
        Ok(WebhookView {
            secret: Some(secret),
            ..record.into()
        })
    }

    /// The tenant's webhooks, a page at a time. Admins only.
    pub async fn webhooks(&self, who: &Principal, page: crate::Page) -> Result<Vec<WebhookView>> {
        require(who.is_admin(), "only admins manage webhooks")?;
        let limit = page.limit.clamp(1, crate::MAX_PAGE);
        let list = webhooks::list(self.store.reader(), who.tenant_id, page.after, limit).await?;
        Ok(list.into_iter().map(Into::into).collect())
    }

    pub async fn delete_webhook(&self, who: &Principal, id: Uuid) -> Result<()> {
        require(who.is_admin(), "only admins manage webhooks")?;
        let mut tx = self.begin_as(who).await?;
        if !webhooks::delete(&mut tx, id).await? {
            return Err(EngineError::NotFound("webhook"));
        }
        audit(
            &mut tx,
            who,
            AuditAction::WebhookDeleted,
            id,
            serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// A new secret; the old one signs beside it for a day, so receivers can switch without losing any.
    pub async fn rotate_webhook_secret(&self, who: &Principal, id: Uuid) -> Result<WebhookView> {
        require(who.is_admin(), "only admins manage webhooks")?;
        let mut tx = self.begin_as(who).await?;
        let (secret, until) = (
            new_secret(),
            tx.now() + chrono::Duration::hours(ROTATION_OVERLAP_HOURS),
        );
        if !webhooks::rotate(&mut tx, id, &secret, until).await? {
            return Err(EngineError::NotFound("webhook"));
        }
        let data = serde_json::json!({"previous_until": until});
        audit(&mut tx, who, AuditAction::WebhookSecretRotated, id, data).await?;
        tx.commit().await?;
        let record = webhooks::get(self.store.reader(), who.tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("webhook"))?;
        Ok(WebhookView {
            secret: Some(secret),
            ..record.into()
        })
    }

    /// A webhook's delivery attempts, newest first, the page before `(seq, attempt)`. Admins only.
    pub async fn webhook_deliveries(
        &self,
        who: &Principal,
        id: Uuid,
        before: Option<(i64, i64)>,
        limit: i64,
    ) -> Result<Vec<DeliveryView>> {
        require(who.is_admin(), "only admins manage webhooks")?;
        webhooks::get(self.store.reader(), who.tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("webhook"))?;
        let limit = limit.clamp(1, crate::MAX_PAGE);
        let list = webhooks::deliveries(self.store.reader(), id, before, limit).await?;
        Ok(list.into_iter().map(Into::into).collect())
    }

    /// Delivers what is due to every webhook as soon as this instance commits an event, and every `every` (for
    /// other instances' events and retries), until the task is aborted.
    pub fn spawn_webhooks(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        self.spawn_passes(every, "delivering webhooks", |paygent| async move {
            paygent.deliver_due().await
        })
    }

    /// One pass: each due webhook gets its next events, in order, until one fails; the webhooks side by side,
    /// so a pass takes as long as its slowest receiver, not all of them in turn.
    /// Answers whether an endpoint took a whole page, so more may be waiting.
    pub async fn deliver_due(&self) -> Result<bool> {
        let due = webhooks::due(self.store.reader(), self.now(), WEBHOOKS_PER_PASS).await?;
        let passes = futures::future::join_all(due.iter().map(|w| self.deliver_to(w))).await;
        let full = passes.into_iter().collect::<Result<Vec<bool>>>()?;
        Ok(full.contains(&true))
    }

    /// Sends one webhook its next page of events; answers whether it took them all.
    async fn deliver_to(&self, w: &WebhookRecord) -> Result<bool> {
        let events = self
            .store
            .events_after(w.tenant_id, w.delivered_seq, EVENTS_PER_PASS)
            .await?;
        let now = self.now();
        let mut progress = Progress {
            from: w.delivered_seq,
            to: w.delivered_seq,
            failures: w.failures,
            next_attempt_at: now,
            failing_since: w.failing_since,
        };
        let whole_page = events.len() as i64 == EVENTS_PER_PASS;
        for event in events {
            let wanted = w.events.is_empty() || w.events.iter().any(|e| e == event.kind.as_str());
            if wanted && !self.send(w, &event, progress.failures + 1).await? {
                progress.failures += 1;
                progress.next_attempt_at = now + backoff(progress.failures);
                progress.failing_since = w.failing_since.or(Some(now));
                break;
            }
            (progress.to, progress.failures, progress.failing_since) = (event.seq, 0, None);
        }
        webhooks::progress(self.store.writer(), w.id, &progress).await?;
        match progress.failing_since {
            Some(since) if now - since >= chrono::Duration::hours(FAILING_FOR_HOURS) => {
                self.disable(w, &progress).await?;
                Ok(false)
            }
            Some(_) => Ok(false),
            None => Ok(whole_page),
        }
    }

    /// Disables a webhook that kept failing, and tells the tenant's admins (`webhook_disabled`).
    async fn disable(&self, w: &WebhookRecord, progress: &Progress) -> Result<()> {
        let mut tx = self.store.begin(w.tenant_id, self.now()).await?;
        let now = tx.now();
        if webhooks::disable(&mut tx, w.id, Some(now)).await? {
            let data = serde_json::json!({"id": w.id, "url": w.url, "failures": progress.failures,
                "failing_since": progress.failing_since, "delivered_seq": progress.to});
            tx.audit(
                "system",
                AuditAction::WebhookDisabled,
                &format!("webhook:{}", w.id),
                None,
                data.clone(),
            )
            .await?;
            tx.event(EventKind::WebhookDisabled, None, data).await?;
            tracing::warn!(webhook = %w.id, "a webhook kept failing for a day and is disabled");
        }
        self.publish(tx.commit().await?);
        Ok(())
    }

    /// Enables a disabled webhook: it is due at once and goes on from where it stopped. Admins only.
    pub async fn enable_webhook(&self, who: &Principal, id: Uuid) -> Result<WebhookView> {
        require(who.is_admin(), "only admins manage webhooks")?;
        let mut tx = self.begin_as(who).await?;
        let changed = webhooks::disable(&mut tx, id, None).await?;
        if changed {
            audit(
                &mut tx,
                who,
                AuditAction::WebhookEnabled,
                id,
                serde_json::json!({}),
            )
            .await?;
        }
        tx.commit().await?;
        let record = webhooks::get(self.store.reader(), who.tenant_id, id)
            .await?
            .ok_or(EngineError::NotFound("webhook"))?;
        if !changed {
            return Err(EngineError::Conflict("the webhook is not disabled".into()));
        }
        Ok(record.into())
    }

    /// Sends one event, signed, and logs the attempt; answers whether the receiver took it (2xx).
    async fn send(&self, w: &WebhookRecord, event: &Event, attempt: i64) -> Result<bool> {
        let body = LiveEvent::from(event.clone()).wire().to_owned();
        let id = format!("msg_{}_{}", event.tenant_id.simple(), event.seq);
        // The wall clock, not the engine's: receivers check it against theirs (within minutes).
        let timestamp = Utc::now().timestamp();
        let mut secrets = vec![w.secret.as_str()];
        if let (Some(previous), Some(until)) = (&w.previous_secret, w.previous_until)
            && until > self.now()
        {
            secrets.push(previous);
        }
        let headers = [
            ("webhook-id", id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            (
                "webhook-signature",
                signature(&secrets, &id, timestamp, &body),
            ),
        ];
        let started = Instant::now();
        let answer = self.egress.post(&w.url, body, &headers).await;
        let (status, error) = match &answer {
            Ok(fetched) => (Some(i64::from(fetched.status)), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let delivery = Delivery {
            webhook_id: w.id,
            seq: event.seq,
            attempt,
            at: self.now(),
            status,
            error,
            latency_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
        };
        let delivered = status.is_some_and(|s| (200..300).contains(&s));
        let committed = paygent_domain::time::parse(&event.created_at);
        let lag = committed.and_then(|at| (self.now() - at).to_std().ok());
        // Counted before it is logged: whoever reads the log finds it counted.
        self.metrics
            .webhook_attempted(delivered, lag.unwrap_or_default());
        webhooks::record(self.store.writer(), &delivery).await?;
        Ok(delivered)
    }
}

/// Records an admin's change to a webhook in the tenant's audit trail (never its secret).
async fn audit(
    tx: &mut paygent_store::WriteTx,
    who: &Principal,
    action: AuditAction,
    id: Uuid,
    data: serde_json::Value,
) -> Result<()> {
    let subject = format!("webhook:{id}");
    Ok(tx.audit(&who.actor(), action, &subject, None, data).await?)
}

/// Exponential, from two seconds to an hour, with up to a fifth more at random so endpoints that failed together
/// are not retried together.
pub(crate) fn backoff(failures: i64) -> chrono::Duration {
    let base = 2f64
        .powi(i32::try_from(failures.clamp(1, 30)).unwrap_or(30))
        .min(MAX_BACKOFF_SECONDS);
    let jittered = base * (1.0 + rand::random::<f64>() / 5.0);
    chrono::Duration::milliseconds((jittered * 1000.0) as i64)
}
