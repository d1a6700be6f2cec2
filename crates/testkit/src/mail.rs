//! A real SMTP server on loopback (aiosmtpd) that keeps the mails Paygent sends, for the email approval tests.

use paygent_engine::notify::email::Mailer;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// Where a test server's mailed links point: a name that resolves nowhere, so a test must map links to the
/// server it started (see [`MailSink::link`]).
pub const PUBLIC_URL: &str = "http://paygent.invalid";

pub struct MailSink {
    pub smtp_port: u16,
    url: String,
    _process: Child,
}

impl MailSink {
    pub async fn start() -> MailSink {
        let mut python = Command::new(crate::chain::peers_dir().join(".venv/bin/python"));
        python.arg(crate::chain::peers_dir().join("smtp-sink.py"));
        let (process, said, _) = crate::chain::peer(python, "the SMTP server", &json!({})).await;
        MailSink {
            smtp_port: said["smtp_port"].as_u64().expect("smtp_port") as u16,
            url: said["url"].as_str().expect("url").to_owned(),
            _process: process,
        }
    }

    /// A mailer that sends here, with links under [`PUBLIC_URL`].
    pub fn mailer(&self) -> Mailer {
        let smtp = format!("smtp://127.0.0.1:{}", self.smtp_port);
        Mailer::new(&smtp, "Paygent <paygent@example.test>", PUBLIC_URL).expect("a mailer")
    }

    /// The mails it kept, in arrival order: `[{from, to, subject, body}]`.
    pub async fn mails(&self) -> Vec<Value> {
        let resp = reqwest::get(format!("{}/mails", self.url))
            .await
            .expect("the SMTP server lists its mails");
        resp.json().await.expect("JSON")
    }

    /// Waits (at most 20 s) for a mail to `to` about request `id`, and answers it.
    pub async fn mail_to(&self, to: &str, id: &str) -> Value {
        let read = || async {
            let mails = self.mails().await;
            let found = mails.into_iter().find(|m| {
                m["to"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|a| a == to))
                    && m["body"].as_str().is_some_and(|b| b.contains(id))
            });
            found.unwrap_or(Value::Null)
        };
        let what = format!("a mail to {to} about {id}");
        crate::eventually(std::time::Duration::from_secs(20), &what, read, |m| {
            !m.is_null()
        })
        .await
    }

    /// The link in `mail` after `label` ("Approve:", "Reject:"), moved from [`PUBLIC_URL`] to `base`.
    pub fn link(mail: &Value, label: &str, base: &str) -> String {
        let body = mail["body"].as_str().unwrap_or_default();
        let line = body
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} link in {body}"));
        let url = line.trim_start_matches(label).trim();
        assert!(url.starts_with(PUBLIC_URL), "{url}");
        url.replacen(PUBLIC_URL, base, 1)
    }
}
