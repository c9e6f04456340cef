//! Telling people how a backup went: a generic webhook (a JSON body; its `text` field also
//! makes it a Slack/Mattermost incoming webhook) and healthchecks.io-style pings (`URL/start`,
//! `URL` on success, `URL/fail`), each configured for the events it wants.
//!
//! A notification never changes a backup's outcome: every failure to deliver one (after a few
//! retries, each with a short timeout) is logged and otherwise ignored. The URLs are secrets
//! (a ping URL is enough to fake a success), so they are never logged; only their host is.
//!
//! Where it sits: An adapter at the edge of the library: uses only `format`, `text` and `error`.

use anyhow::Result;
use serde::Serialize;
use std::time::Duration;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    Start,
    Success,
    Failure,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }
}

/// The JSON body of a webhook, and what a ping's body says.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// `backup.start`, `backup.success` or `backup.failure`.
    pub event: String,
    /// One line for people (and for Slack-compatible webhooks).
    pub text: String,
    pub app: String,
    pub host: String,
    pub backup_id: Option<String>,
    pub error: Option<String>,
    pub volumes: Option<usize>,
    pub bytes_read: Option<u64>,
    pub bytes_stored: Option<u64>,
    pub duration_seconds: Option<f64>,
    pub downtime_seconds: Option<f64>,
    pub store: Option<String>,
    pub lifeboat_version: String,
}

impl Report {
    pub fn new(event: Event, app: &str) -> Self {
        Self {
            event: format!("backup.{}", event.name()),
            app: app.to_string(),
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            lifeboat_version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }
    }
}

/// The one summary line of a backup.
pub fn summary(
    manifest: &crate::format::Manifest,
    store: &str,
    took: std::time::Duration,
) -> String {
    let new = manifest.total_new();
    let stored = if new == manifest.total_stored() {
        crate::text::human_bytes(new)
    } else {
        format!(
            "{} new ({} reused)",
            crate::text::human_bytes(new),
            crate::text::human_bytes(manifest.total_stored() - new)
        )
    };
    format!(
        "backup {} of {}: {} volumes, {} read, {stored} stored, took {:.1} s, downtime {:.1} s, in {}",
        manifest.backup_id,
        manifest.app,
        manifest.volumes.len(),
        crate::text::human_bytes(manifest.total_tar()),
        took.as_secs_f64(),
        manifest.downtime_seconds,
        store
    )
}

struct Target {
    url: reqwest::Url,
    events: Vec<Event>,
}

/// The configured notification targets.
pub struct Notifier {
    client: reqwest::Client,
    webhook: Option<Target>,
    healthchecks: Option<Target>,
}

const ATTEMPTS: u32 = 3;

impl Notifier {
    /// `webhook_events` defaults to success and failure, `ping_events` to all three.
    pub fn new(
        webhook: Option<&str>,
        webhook_events: Option<Vec<Event>>,
        healthchecks: Option<&str>,
        ping_events: Option<Vec<Event>>,
        timeout: Duration,
    ) -> Result<Self> {
        let parse = |what: &str, text: &str| -> Result<reqwest::Url> {
            let url = reqwest::Url::parse(text).map_err(|e| {
                crate::error::usage(format!("{what}: not a URL ({e}); give http(s)://…"))
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(crate::error::usage(format!(
                    "{what}: only http:// and https:// URLs can be notified"
                )));
            }
            Ok(url)
        };
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("lifeboat/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            client,
            webhook: webhook
                .map(|u| parse("--webhook", u))
                .transpose()?
                .map(|url| Target {
                    url,
                    events: webhook_events.unwrap_or(vec![Event::Success, Event::Failure]),
                }),
            healthchecks: healthchecks
                .map(|u| parse("--healthchecks", u))
                .transpose()?
                .map(|url| Target {
                    url,
                    events: ping_events.unwrap_or(vec![
                        Event::Start,
                        Event::Success,
                        Event::Failure,
                    ]),
                }),
        })
    }

    /// Runs one backup (`work`, giving its manifest and the store's URL) between a start and a
    /// success or failure notification; returns what the work returned.
    pub async fn around<F>(&self, app: &str, work: F) -> Result<(crate::format::Manifest, String)>
    where
        F: std::future::Future<Output = Result<(crate::format::Manifest, String)>>,
    {
        self.send(Event::Start, &Report::new(Event::Start, app))
            .await;
        let started = std::time::Instant::now();
        let result = work.await;
        let event = if result.is_ok() {
            Event::Success
        } else {
            Event::Failure
        };
        let mut report = Report::new(event, app);
        report.duration_seconds = Some(started.elapsed().as_secs_f64());
        match &result {
            Ok((manifest, store)) => {
                report.text = format!("lifeboat: {}", summary(manifest, store, started.elapsed()));
                report.backup_id = Some(manifest.backup_id.clone());
                report.volumes = Some(manifest.volumes.len());
                report.bytes_read = Some(manifest.total_tar());
                report.bytes_stored = Some(manifest.total_stored());
                report.downtime_seconds = Some(manifest.downtime_seconds);
                report.store = Some(store.clone());
            }
            Err(error) => {
                report.text = format!("lifeboat: backup of {app} on {} FAILED", report.host);
                report.error = Some(format!("{error:#}"));
            }
        }
        self.send(event, &report).await;
        result
    }

    pub fn is_empty(&self) -> bool {
        self.webhook.is_none() && self.healthchecks.is_none()
    }

    /// Sends `report` as `event` to every target that wants it. Never fails. Error text (hook
    /// output, commands) leaves with its URLs cut to their hosts and bounded in size.
    pub async fn send(&self, event: Event, report: &Report) {
        let mut report = report.clone();
        report.error = report
            .error
            .map(|e| crate::text::bounded(&crate::text::redact_urls(&e), 4096));
        report.text = crate::text::bounded(&crate::text::redact_urls(&report.text), 1024);
        let report = &report;
        if let Some(target) = self.webhook.as_ref().filter(|t| t.events.contains(&event)) {
            match serde_json::to_vec(report) {
                Ok(body) => {
                    self.deliver("webhook", &target.url, body, "application/json")
                        .await
                }
                Err(e) => tracing::warn!("cannot encode the webhook body: {e}"),
            }
        }
        if let Some(target) = self
            .healthchecks
            .as_ref()
            .filter(|t| t.events.contains(&event))
        {
            let url = ping_url(&target.url, event);
            let body = match &report.error {
                Some(error) => format!("{}\n{error}", report.text),
                None => report.text.clone(),
            };
            self.deliver("healthchecks ping", &url, body.into_bytes(), "text/plain")
                .await;
        }
    }

    async fn deliver(&self, what: &str, url: &reqwest::Url, body: Vec<u8>, content_type: &str) {
        let host = url.host_str().unwrap_or("?").to_string();
        for attempt in 1..=ATTEMPTS {
            let sent = self
                .client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body.clone())
                .send()
                .await;
            let problem = match sent {
                Ok(response) if response.status().is_success() => return,
                Ok(response) => format!("HTTP {}", response.status()),
                // Without the URL: it is a secret.
                Err(e) => describe(&e),
            };
            if attempt == ATTEMPTS {
                tracing::warn!(%host, "could not deliver the {what} ({problem}); the backup's outcome is unchanged");
            } else {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
        }
    }
}

fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if detail.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {detail}")
    }
}

/// healthchecks.io's convention: `/start` and `/fail` appended to the check's URL.
fn ping_url(base: &reqwest::Url, event: Event) -> reqwest::Url {
    let suffix = match event {
        Event::Start => "/start",
        Event::Success => "",
        Event::Failure => "/fail",
    };
    let mut url = base.clone();
    let path = format!("{}{suffix}", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_urls_follow_healthchecks_conventions() {
        let base = reqwest::Url::parse("https://hc-ping.com/abc-123/").unwrap();
        assert_eq!(
            ping_url(&base, Event::Start).as_str(),
            "https://hc-ping.com/abc-123/start"
        );
        assert_eq!(
            ping_url(&base, Event::Success).as_str(),
            "https://hc-ping.com/abc-123"
        );
        assert_eq!(
            ping_url(&base, Event::Failure).as_str(),
            "https://hc-ping.com/abc-123/fail"
        );
    }

    #[test]
    fn bad_urls_are_usage_errors() {
        let err = Notifier::new(Some("ftp://x"), None, None, None, Duration::from_secs(1))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--webhook"), "{err}");
        assert!(
            Notifier::new(None, None, Some("not a url"), None, Duration::from_secs(1)).is_err()
        );
    }

    #[tokio::test]
    async fn a_failing_target_is_retried_then_given_up_not_fatal() {
        // A webhook that answers 500 to everything, counting what it got.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let posts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        std::thread::spawn({
            let posts = std::sync::Arc::clone(&posts);
            move || {
                use std::io::{Read, Write};
                for stream in listener.incoming() {
                    let mut stream = stream.unwrap();
                    let mut request = [0u8; 65536];
                    let n = stream.read(&mut request).unwrap_or(0);
                    if request[..n].starts_with(b"POST /hook ") {
                        posts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    let _ = stream.write_all(
                        b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                }
            }
        });
        let notifier = Notifier::new(
            Some(&format!("http://127.0.0.1:{port}/hook")),
            None,
            None,
            None,
            Duration::from_secs(5),
        )
        .unwrap();
        // Returns after its retries: a failed notification never fails the backup.
        notifier
            .send(Event::Failure, &Report::new(Event::Failure, "app"))
            .await;
        assert_eq!(
            posts.load(std::sync::atomic::Ordering::SeqCst),
            ATTEMPTS as usize,
            "every attempt reached the webhook"
        );

        // Nothing listens: the same, without hanging.
        let nobody = Notifier::new(
            Some("http://127.0.0.1:9/hook"),
            None,
            None,
            None,
            Duration::from_millis(200),
        )
        .unwrap();
        nobody
            .send(Event::Failure, &Report::new(Event::Failure, "app"))
            .await;
    }
}
