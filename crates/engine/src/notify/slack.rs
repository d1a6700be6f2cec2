//! Slack: each request a person must decide is posted to its policy's channel with Approve and Reject buttons;
//! a press comes back signed by Slack and decides as the key mapped to the Slack user who pressed it, on the
//! action the message showed; the message is then updated with who decided.

use crate::views::ApprovalView;
use crate::{Egress, EngineError, Paygent, Result};
use chrono::Utc;
use hmac::{Hmac, Mac};
use paygent_domain::Decision;
use paygent_domain::event::EventKind;
use paygent_store::Event;
use paygent_store::notifiers::{self, Channel, SlackMessage};
use paygent_store::{approvals, keys};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sha2::Sha256;
use std::collections::BTreeMap;
use uuid::Uuid;

/// How far a signed press's timestamp may be from now (Slack's advice: five minutes).
const SIGNATURE_WINDOW_SECONDS: i64 = 300;
/// What Slack answers when a message can never be posted or updated as asked: it is passed over, not retried.
const FOR_GOOD: [&str; 9] = [
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "msg_too_long",
    "invalid_blocks",
    "message_not_found",
    "cant_update_message",
    "edit_window_closed",
    "restricted_action",
];

/// The Slack app this server posts as and takes button presses from.
#[derive(Clone)]
pub struct SlackApp {
    /// The Web API's base: `https://slack.com/api`, or a stand-in's.
    pub api_url: String,
    /// The bot token (`xoxb-…`) messages are posted with.
    pub bot_token: SecretString,
    /// The secret Slack signs the requests it sends with.
    pub signing_secret: SecretString,
}

impl std::fmt::Debug for SlackApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackApp")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

impl SlackApp {
    pub fn new(api_url: &str, bot_token: &str, signing_secret: &str) -> SlackApp {
        SlackApp {
            api_url: api_url.to_owned(),
            bot_token: SecretString::from(bot_token),
            signing_secret: SecretString::from(signing_secret),
        }
    }

    /// Checks that Slack signed `body` at `timestamp` (`v0=` and the hex HMAC-SHA256 of `v0:timestamp:body`
    /// under the signing secret) within five minutes of `now` (Unix seconds).
    pub fn verify(&self, timestamp: &str, signature: &str, body: &[u8], now: i64) -> Result<()> {
        let at: i64 = timestamp.parse().map_err(|_| {
            EngineError::Unsigned("X-Slack-Request-Timestamp must be Unix seconds".into())
        })?;
        if (now - at).abs() > SIGNATURE_WINDOW_SECONDS {
            return Err(EngineError::Unsigned(format!(
                "the request was signed {} s from now; at most {SIGNATURE_WINDOW_SECONDS} s is taken",
                now - at
            )));
        }
        let given = signature
            .strip_prefix("v0=")
            .and_then(|h| hex::decode(h).ok())
            .ok_or_else(|| EngineError::Unsigned("X-Slack-Signature must be v0=<hex>".into()))?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(self.signing_secret.expose_secret().as_bytes())
                .map_err(|_| EngineError::Unsigned("no signing secret".into()))?;
        mac.update(format!("v0:{timestamp}:").as_bytes());
        mac.update(body);
        mac.verify_slice(&given)
            .map_err(|_| EngineError::Unsigned("the Slack signature does not match".into()))
    }

    /// Calls a Web API method. `None` when Slack refused it for good (a channel the app is not in, a message
    /// gone): that message is passed over. Any other refusal is an error, retried.
    async fn call(&self, egress: &Egress, method: &str, body: Value) -> Result<Option<Value>> {
        let url = format!("{}/{method}", self.api_url.trim_end_matches('/'));
        let auth = [(
            "authorization",
            format!("Bearer {}", self.bot_token.expose_secret()),
        )];
        let unavailable = |why: String| EngineError::Unavailable(format!("Slack {method}: {why}"));
        let answer = egress
            .post(&url, body.to_string(), &auth)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if answer.status != 200 {
            return Err(unavailable(format!("answered {}", answer.status)));
        }
        let reply: Value = serde_json::from_slice(&answer.body)
            .map_err(|e| unavailable(format!("answered no JSON: {e}")))?;
        if reply["ok"] == true {
            return Ok(Some(reply));
        }
        let error = reply["error"].as_str().unwrap_or("no error given");
        if FOR_GOOD.contains(&error) {
            tracing::warn!(
                method,
                error,
                "Slack refused a message for good; it is passed over"
            );
            return Ok(None);
        }
        Err(unavailable(error.to_owned()))
    }
}

/// A button press, as Slack sends it: who pressed which button on which request's action.
struct Press {
    user: String,
    tenant_id: Uuid,
    approval_id: Uuid,
    digest: String,
    decision: Decision,
    /// Where Slack takes a reply that only the person who pressed sees.
    response_url: Option<String>,
}

impl Press {
    /// Reads the `payload` field of a `block_actions` interaction.
    fn parse(body: &[u8]) -> Result<Press> {
        let bad = |why: &str| EngineError::Invalid(format!("not a Paygent button press: {why}"));
        let payload = form_urlencoded::parse(body)
            .find(|(k, _)| k == "payload")
            .ok_or_else(|| bad("no payload field"))?
            .1;
        let payload: Value =
            serde_json::from_str(&payload).map_err(|_| bad("payload is not JSON"))?;
        if payload["type"] != "block_actions" {
            return Err(bad("only block_actions are taken"));
        }
        let user = payload["user"]["id"]
            .as_str()
            .ok_or_else(|| bad("no user"))?;
        let action = &payload["actions"][0];
        let mut value = action["value"].as_str().unwrap_or("").splitn(3, ':');
        let (tenant, approval, digest) = (value.next(), value.next(), value.next());
        let id = |part: Option<&str>| part.and_then(|p| p.parse::<Uuid>().ok());
        let (Some(tenant_id), Some(approval_id), Some(digest)) = (id(tenant), id(approval), digest)
        else {
            return Err(bad("the button names no request"));
        };
        let decision = match action["action_id"].as_str() {
            Some(super::slack_message::APPROVE) => Decision::Approve {
                comment: Some("approved in Slack".into()),
                standing: None,
            },
            Some(super::slack_message::REJECT) => Decision::Reject {
                reason: "rejected in Slack".into(),
            },
            _ => return Err(bad("an unknown button")),
        };
        Ok(Press {
            user: user.to_owned(),
            tenant_id,
            approval_id,
            digest: digest.to_owned(),
            decision,
            response_url: payload["response_url"].as_str().map(str::to_owned),
        })
    }
}

impl super::Teller for SlackApp {
    const CHANNEL: Channel = Channel::Slack;

    /// A new request is posted, a change to one updates its message.
    async fn tell(&self, paygent: &Paygent, event: &Event) -> Result<()> {
        let id = event.subject();
        let Some(id) = id else {
            return Ok(());
        };
        use EventKind as K;
        match event.kind {
            K::ApprovalRequired => paygent.post_request(self, event.tenant_id, id).await,
            K::ApprovalUpdated
            | K::ApprovalEscalated
            | K::Approved
            | K::Rejected
            | K::Edited
            | K::Expired
            | K::Cancelled => paygent.update_request(self, event.tenant_id, id).await,
            _ => Ok(()),
        }
    }
}

impl Paygent {
    /// Posts a request to its policy's channel, once.
    async fn post_request(&self, app: &SlackApp, tenant_id: Uuid, id: Uuid) -> Result<()> {
        let reader = || self.store.reader();
        if notifiers::message(reader(), tenant_id, id).await?.is_some() {
            return Ok(());
        }
        let Some(view) = approvals::get(reader(), tenant_id, id).await? else {
            return Ok(());
        };
        let view = ApprovalView::from(view);
        let Some(channel) = self.notify_of(tenant_id, &view).await?.slack_channel else {
            return Ok(());
        };
        let mut body = self.slack_message(tenant_id, &view).await?;
        body["channel"] = json!(channel);
        let Some(reply) = app.call(&self.egress, "chat.postMessage", body).await? else {
            return Ok(());
        };
        let posted = SlackMessage {
            approval_id: id,
            tenant_id,
            channel: reply["channel"].as_str().unwrap_or(&channel).to_owned(),
            ts: reply["ts"].as_str().unwrap_or_default().to_owned(),
        };
        notifiers::posted(self.store.writer(), &posted, self.now()).await?;
        Ok(())
    }

    /// Shows a request's message as the request now stands.
    async fn update_request(&self, app: &SlackApp, tenant_id: Uuid, id: Uuid) -> Result<()> {
        let reader = || self.store.reader();
        let Some(posted) = notifiers::message(reader(), tenant_id, id).await? else {
            return Ok(());
        };
        let Some(view) = approvals::get(reader(), tenant_id, id).await? else {
            return Ok(());
        };
        let mut body = self
            .slack_message(tenant_id, &ApprovalView::from(view))
            .await?;
        body["channel"] = json!(posted.channel);
        body["ts"] = json!(posted.ts);
        app.call(&self.egress, "chat.update", body).await?;
        Ok(())
    }

    /// The message for a request, with the people who decided it so far by name.
    async fn slack_message(&self, tenant_id: Uuid, view: &ApprovalView) -> Result<Value> {
        let mut people = BTreeMap::new();
        let deciders = view.decision.iter().filter_map(|d| d.by);
        for id in deciders.chain(view.approvals.iter().map(|v| v.by)) {
            if let Some(key) = keys::any(self.store.reader(), tenant_id, id).await? {
                people.insert(id, super::slack_message::Person::from(key));
            }
        }
        Ok(super::slack_message::render(view, tenant_id, &people))
    }

    /// A button pressed in Slack: verified as Slack's, then decided as the key mapped to the Slack user who
    /// pressed it (refused when none is), on the very action the message showed.
    pub async fn slack_press(
        &self,
        timestamp: &str,
        signature: &str,
        body: &[u8],
    ) -> Result<ApprovalView> {
        let app = self
            .slack
            .as_ref()
            .ok_or(EngineError::NotFound("Slack app"))?;
        app.verify(timestamp, signature, body, Utc::now().timestamp())?;
        let press = Press::parse(body)?;
        let decided = self.press_as_person(&press).await;
        if let (Err(e), Some(url)) = (&decided, &press.response_url) {
            self.tell_presser(url.clone(), e);
        }
        decided
    }

    /// Decides a press as the key mapped to the Slack user who pressed, on the action the message showed.
    async fn press_as_person(&self, press: &Press) -> Result<ApprovalView> {
        let key = self
            .store
            .key_of_person(
                press.tenant_id,
                keys::Person::SlackUser(&press.user),
                self.now(),
            )
            .await?
            .ok_or_else(|| {
                EngineError::Forbidden(format!(
                    "Slack user {} is mapped to no live key of this tenant: ask an admin for one",
                    press.user
                ))
            })?;
        let who = key.principal();
        let decision = press.decision.clone();
        self.decide(&who, press.approval_id, decision, Some(&press.digest))
            .await
    }

    /// Tells the person whose press was refused why, in a reply only they see (Slack shows nothing else), in
    /// the background: Slack wants its answer within 3 s. Faults of Paygent's own are not spelled out.
    fn tell_presser(&self, url: String, refused: &EngineError) {
        let why = match refused {
            EngineError::Store(_) | EngineError::Unavailable(_) => {
                "Paygent could not decide it just now: try again, or decide in the inbox".to_owned()
            }
            e => format!("Paygent did not take that: {e}"),
        };
        let reply = json!({"response_type": "ephemeral", "replace_original": false, "text": why});
        let egress = self.egress.clone();
        tokio::spawn(async move {
            if let Err(e) = egress.post(&url, reply.to_string(), &[]).await {
                tracing::warn!(error = %e, "telling a Slack user why a press was refused failed");
            }
        });
    }
}
