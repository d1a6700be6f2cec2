//! Email: each request is mailed to the addresses its policy names, with one-time links to decide. A link only
//! opens a confirmation page (mail scanners follow links: a GET never decides); the page's button decides, once,
//! as the key of the person it was mailed to, on the action it was mailed for, until it expires.

use super::{Facts, Teller};
use crate::views::ApprovalView;
use crate::{EngineError, Paygent, Result};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use paygent_domain::event::EventKind;
use paygent_domain::{ApprovalStatus, Decision, DecisionKind, Role};
use paygent_store::Event;
use paygent_store::approvals;
use paygent_store::keys::{self, KeyRecord, Person};
use paygent_store::notifiers::{self, Channel, DecisionLink};
use sha2::{Digest, Sha256};
use std::time::Duration;
use uuid::Uuid;

/// The longest a link lives, however long its request may wait.
const LINK_HOURS: i64 = 24;
/// How many of a group's keys one read takes when an escalation mails the group.
const MEMBERS_PAGE: i64 = 100;

/// The mail server requests are mailed through, and where their links point.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The server's address as people's browsers reach it: links are `<public_url>/decide/<token>`.
    public_url: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("from", &self.from.to_string())
            .field("public_url", &self.public_url)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// `smtp_url` as lettre reads it: `smtp://host:25` (plain), `smtp://host:587?tls=required` (STARTTLS),
    /// `smtps://user:password@host:465`. Each exchange with the server is bounded to 30 s.
    pub fn new(
        smtp_url: &str,
        from: &str,
        public_url: &str,
    ) -> std::result::Result<Mailer, String> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
            .map_err(|e| format!("the SMTP URL: {e}"))?
            .timeout(Some(Duration::from_secs(30)))
            .build();
        let from = from
            .parse()
            .map_err(|e| format!("the sender {from:?}: {e}"))?;
        let public_url = reqwest::Url::parse(public_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| format!("the public URL {public_url:?} is not an http(s) URL"))?;
        Ok(Mailer {
            transport,
            from,
            public_url: public_url.as_str().trim_end_matches('/').to_owned(),
        })
    }

    /// Sends one mail. `Ok(false)` when it can never go (the server refused the address for good): passed over.
    async fn send(&self, to: &str, subject: String, body: String) -> Result<bool> {
        let Ok(to) = to.parse::<Mailbox>() else {
            tracing::warn!(to, "not a mailbox; the mail is passed over");
            return Ok(false);
        };
        let mail = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| EngineError::Invalid(format!("the mail: {e}")))?;
        match self.transport.send(mail).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_permanent() => {
                tracing::warn!(error = %e, "the mail server refused a mail for good; it is passed over");
                Ok(false)
            }
            Err(e) => Err(EngineError::Unavailable(format!("mailing: {e}"))),
        }
    }
}

impl Teller for Mailer {
    const CHANNEL: Channel = Channel::Email;

    async fn tell(&self, paygent: &Paygent, event: &Event) -> Result<()> {
        let id = event.subject();
        match (event.kind, id) {
            (EventKind::ApprovalRequired, Some(id)) => {
                paygent.mail_request(self, event.tenant_id, id).await
            }
            (EventKind::ApprovalEscalated, Some(id)) => {
                let group = event.payload["escalated_to"].as_str().unwrap_or_default();
                paygent.mail_group(self, event.tenant_id, id, group).await
            }
            _ => Ok(()),
        }
    }
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What a mailed link's confirmation page shows.
#[derive(Debug)]
pub struct LinkPage {
    pub request: ApprovalView,
    pub facts: Facts,
    /// The name of the key the link decides as.
    pub decider: String,
    pub expires_at: DateTime<Utc>,
}

impl Paygent {
    /// Mails a waiting request to each address its policy names that is a deciding key's (not the asker's).
    async fn mail_request(&self, mailer: &Mailer, tenant_id: Uuid, id: Uuid) -> Result<()> {
        let Some(record) = approvals::get(self.store.reader(), tenant_id, id).await? else {
            return Ok(());
        };
        let view = ApprovalView::from(record);
        if view.status != ApprovalStatus::Pending {
            return Ok(());
        }
        for address in self.notify_of(tenant_id, &view).await?.email {
            let key = self
                .store
                .key_of_person(tenant_id, Person::Email(&address), self.now())
                .await?;
            match key {
                Some(key) if key.role != Role::Agent && key.id != view.requested_by => {
                    self.mail_link(mailer, &view, &key, &address).await?;
                }
                _ => tracing::warn!(address, "no live deciding key has this address; not mailed"),
            }
        }
        Ok(())
    }

    /// Mails a request escalated to `group` to the people of that group who have an address (live deciding keys,
    /// not the asker's), a page of keys at a time.
    async fn mail_group(
        &self,
        mailer: &Mailer,
        tenant_id: Uuid,
        id: Uuid,
        group: &str,
    ) -> Result<()> {
        let Some(record) = approvals::get(self.store.reader(), tenant_id, id).await? else {
            return Ok(());
        };
        let view = ApprovalView::from(record);
        if view.status != ApprovalStatus::Pending {
            return Ok(());
        }
        let mut after = None;
        loop {
            let page = (after, MEMBERS_PAGE);
            let members = self
                .store
                .mailed_members(tenant_id, group, page, self.now());
            let members = members.await?;
            for key in members.iter() {
                if let Some(address) = key.email.as_deref().filter(|_| key.role != Role::Agent)
                    && key.id != view.requested_by
                {
                    self.mail_link(mailer, &view, key, address).await?;
                }
            }
            match members.last() {
                Some(last) if members.len() as i64 == MEMBERS_PAGE => after = Some(last.id),
                _ => return Ok(()),
            }
        }
    }

    /// Mails one person a fresh link, unless they were mailed about this request already.
    async fn mail_link(
        &self,
        mailer: &Mailer,
        view: &ApprovalView,
        key: &KeyRecord,
        address: &str,
    ) -> Result<()> {
        let token = B64URL.encode(rand::random::<[u8; 32]>());
        let now = self.now();
        let link = DecisionLink {
            token_hash: token_hash(&token),
            tenant_id: key.tenant_id,
            approval_id: view.id,
            key_id: key.id,
            digest: view.digest.clone(),
            expires_at: view.deadline.min(now + chrono::Duration::hours(LINK_HOURS)),
            used_at: None,
        };
        if !notifiers::prepare(self.store.writer(), &link, now).await? {
            return Ok(());
        }
        let url = format!("{}/decide/{token}", mailer.public_url);
        let (subject, body) = compose(&Facts::of(view), view, &url, link.expires_at);
        if mailer.send(address, subject, body).await? {
            notifiers::sent(self.store.writer(), &link.token_hash, self.now()).await?;
        }
        Ok(())
    }

    /// The request a mailed link decides, for its confirmation page: reading it decides nothing. A used or
    /// expired link is gone (410).
    pub async fn decision_link(&self, token: &str) -> Result<LinkPage> {
        let link = self.live_link(token).await?;
        let request = self.load_approval(link.tenant_id, link.approval_id).await?;
        let decider = keys::any(self.store.reader(), link.tenant_id, link.key_id).await?;
        let request = ApprovalView::from(request);
        Ok(LinkPage {
            facts: Facts::of(&request),
            request,
            decider: decider.map_or_else(|| link.key_id.to_string(), |k| k.name),
            expires_at: link.expires_at,
        })
    }

    async fn live_link(&self, token: &str) -> Result<DecisionLink> {
        let found = match token.len() {
            1..=100 => notifiers::link(self.store.reader(), &token_hash(token)).await?,
            _ => None,
        };
        let link = found.ok_or(EngineError::NotFound("link"))?;
        if let Some(at) = link.used_at {
            return Err(EngineError::Gone(format!(
                "this link was used at {at}: it decides once"
            )));
        }
        if link.expires_at <= self.now() {
            return Err(EngineError::Gone(format!(
                "this link expired at {}",
                link.expires_at
            )));
        }
        Ok(link)
    }

    /// Decides by a mailed link, as the key of the person it was mailed to, on the action it was mailed for.
    /// The link is spent first, by one conditional update: it decides once, whatever happens next.
    pub async fn decide_by_link(
        &self,
        token: &str,
        kind: DecisionKind,
        reason: Option<String>,
    ) -> Result<ApprovalView> {
        let link = self.live_link(token).await?;
        let decision = link_decision(kind, reason)?;
        if !notifiers::spend(self.store.writer(), &link.token_hash, self.now()).await? {
            return Err(EngineError::Gone("this link was used or expired".into()));
        }
        let key = self
            .store
            .key_by_id(link.key_id, self.now())
            .await?
            .ok_or_else(|| {
                EngineError::Forbidden("the key this link decides as is revoked".into())
            })?;
        let who = key.principal();
        self.decide(&who, link.approval_id, decision, Some(&link.digest))
            .await
    }
}

/// What a link's button decides: an approval, or a rejection with the person's reason (or a default one).
fn link_decision(kind: DecisionKind, reason: Option<String>) -> Result<Decision> {
    match kind {
        DecisionKind::Approve => Ok(Decision::Approve {
            comment: Some("approved by email".into()),
            standing: None,
        }),
        DecisionKind::Reject => Ok(Decision::Reject {
            reason: reason
                .filter(|r| !r.trim().is_empty())
                .unwrap_or_else(|| "rejected by email".into()),
        }),
        DecisionKind::Edit => Err(EngineError::Invalid(
            "a link approves or rejects; edits are made in the inbox".into(),
        )),
    }
}

/// The subject and plain-text body of a request's mail.
fn compose(
    facts: &Facts,
    view: &ApprovalView,
    url: &str,
    expires: DateTime<Utc>,
) -> (String, String) {
    let plain = |t: &str| t.to_owned();
    let headline = facts.headline(plain, plain, plain);
    let subject = format!("Decide: {headline}");
    let words = facts.words.as_deref().unwrap_or("nothing");
    let body = format!(
        "{headline}.\n\n\
         The agent says: {words}\n\
         Why you are asked: {}\n\
         Budget: {}\n\
         Decide by: {}\n\n\
         Approve: {url}?decision=approve\n\
         Reject:  {url}?decision=reject\n\n\
         Each link opens a page where you confirm: opening it decides nothing. It decides once, until {}, and only \
         this exact action ({}) of request {}.\n",
        facts.reason,
        facts.budget,
        facts.deadline.to_rfc2822(),
        expires.to_rfc2822(),
        view.digest,
        view.id,
    );
    (subject, body)
}
