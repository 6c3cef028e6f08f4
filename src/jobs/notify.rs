//! Job `hitl_notify`: POST one delivery (an event, to one channel) and record the
//! attempt; after a failure the job comes back with backoff, and after
//! `HITL_NOTIFY_MAX_ATTEMPTS` the delivery is `failed`, listed for a re-send.
//!
//! Every attempt carries the delivery's stable id (`X-Hitl-Delivery`), the time it was
//! signed (`X-Hitl-Timestamp`, Unix seconds) and `X-Hitl-Signature: v1=<hex
//! HMAC-SHA256(secret, timestamp + "." + body)>`. The POST happens outside any
//! transaction; the attempt and the job's completion commit together afterwards, fenced
//! on the claim. So a worker killed between the two leaves the job to be claimed again
//! and the receiver gets the same delivery id twice: receivers deduplicate on it.
//!
//! Only workers given a channels file run this kind (`Worker::with_notifier`): one
//! without the secrets cannot sign, and leaves the jobs to one that can.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::{ClaimedJob, Handled, Handler, JobContext, JobError, complete_with};
use crate::config::channels::{Channel, ChannelFormat};
use crate::persistence::jobs::Notify;
use crate::persistence::notifications::{
    self, AttemptResult, Delivery, NotifiedRequest, find_delivery, record_attempt,
};
use crate::persistence::{events, queue};
use crate::telemetry::metrics::metrics;

/// How this process sends notifications.
#[derive(Clone, Debug)]
pub struct NotifySettings {
    /// URLs channels may post to (matched like the agent allow-list).
    pub allowed_urls: Vec<String>,
    pub timeout: Duration,
    pub max_attempts: u32,
    /// Links to requests are built under it (`{origin}/console/requests/{id}`).
    pub public_url: Option<String>,
    /// The delay after the first failure; doubling up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

/// The channels and the HTTP client a worker delivers with.
pub struct Notifier {
    client: reqwest::Client,
    channels: Vec<Channel>,
    settings: NotifySettings,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl Notifier {
    /// A notifier for `channels` (already checked against the allow-list).
    pub fn new(channels: Vec<Channel>, settings: NotifySettings) -> Result<Arc<Self>, String> {
        crate::tls::install_provider();
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            // A receiver's redirect could lead anywhere the allow-list does not admit.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("the HTTP client cannot be built: {e}"))?;
        Ok(Arc::new(Self {
            client,
            channels,
            settings,
        }))
    }

    /// Whether `url` is under one of `allowed` (see `HITL_NOTIFY_ALLOWED_URLS`).
    pub fn url_allowed(allowed: &[String], url: &str) -> Result<(), String> {
        crate::engine::check_allowed_url(allowed, url).map_err(|why| {
            if why.starts_with("is not under") {
                "is not under an allowed notification URL (HITL_NOTIFY_ALLOWED_URLS)".into()
            } else {
                why
            }
        })
    }

    fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }

    fn backoff(&self, attempts: i32) -> Duration {
        let factor = 2u32.saturating_pow(u32::try_from(attempts.max(1) - 1).unwrap_or(0));
        self.settings
            .backoff_base
            .saturating_mul(factor)
            .min(self.settings.backoff_max)
    }

    async fn send(&self, channel: &Channel, delivery: &Delivery, body: &[u8]) -> AttemptResult {
        if let Err(why) = Self::url_allowed(&self.settings.allowed_urls, &channel.url) {
            return AttemptResult::Failed(format!("the channel's url {why}"));
        }
        let timestamp = Utc::now().timestamp().to_string();
        let request = self
            .client
            .post(&channel.url)
            .header("content-type", "application/json")
            .header("x-hitl-delivery", delivery.delivery_id.to_string())
            .header("x-hitl-event", &delivery.event)
            .header("x-hitl-timestamp", &timestamp)
            .header(
                "x-hitl-signature",
                signature(channel.secret.expose(), &timestamp, body),
            )
            .body(body.to_vec());
        match request.send().await {
            Ok(r) if r.status().is_success() => AttemptResult::Delivered,
            Ok(r) => AttemptResult::Failed(format!("HTTP {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => AttemptResult::Failed("timed out".into()),
            Err(e) if e.is_connect() => AttemptResult::Failed("could not connect".into()),
            Err(_) => AttemptResult::Failed("the request failed".into()),
        }
    }
}

/// Makes `channels` the published set, from which every process decides which channels
/// want an event (a process given the channels file does this at start).
pub async fn publish_channels(
    pool: &sqlx::PgPool,
    channels: &[Channel],
) -> Result<(), crate::persistence::PersistenceError> {
    let published: Vec<notifications::PublishedChannel<'_>> = channels
        .iter()
        .map(|c| notifications::PublishedChannel {
            name: &c.name,
            format: c.format.as_str(),
            events: &c.events,
            nodes: &c.nodes,
            groups: &c.groups,
            include_arguments: c.include_arguments,
            expiring_notice_seconds: c.expiring_notice_seconds,
        })
        .collect();
    notifications::publish_channels(pool, &published).await
}

/// `v1=` and the hex HMAC-SHA256 of `timestamp.body` under `secret`.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

/// `hitl_notify`.
pub(super) struct NotifyJob(pub Arc<Notifier>);

impl Handler for NotifyJob {
    type Payload = Notify;

    async fn run(
        &self,
        ctx: &JobContext,
        claimed: &ClaimedJob,
        Notify { delivery_id }: Notify,
    ) -> Result<Handled, JobError> {
        let notifier = &self.0;
        let mut conn = crate::db::session(&ctx.pool).await?;
        let Some(delivery) = find_delivery(&mut conn, delivery_id).await? else {
            return Err(JobError::Fatal(format!("delivery {delivery_id} not found")));
        };
        if delivery.status != "pending" {
            drop(conn);
            let tx = ctx.pool.begin().await?;
            return complete_with(ctx, tx, claimed).await;
        }
        let result = match notifier.channel(&delivery.channel) {
            None => {
                AttemptResult::Failed("the channel is not in this worker's channels file".into())
            }
            Some(channel) => {
                let body = body(&mut conn, notifier, channel, &delivery).await?;
                drop(conn);
                notifier.send(channel, &delivery, &body).await
            }
        };
        let mut tx = ctx.pool.begin().await?;
        let max = notifier.settings.max_attempts;
        let recorded = record_attempt(&mut tx, delivery_id, &result, max).await?;
        let outcome = match &recorded {
            Some((status, _)) if status == "delivered" => "delivered",
            Some((status, _)) if status == "failed" => "failed",
            Some(_) => "retried",
            None => "superseded",
        };
        let handled = match recorded {
            Some((status, attempts)) if status == "pending" => {
                let at = Utc::now()
                    + chrono::Duration::from_std(notifier.backoff(attempts)).unwrap_or_default();
                if queue::postpone(&mut tx, &claimed.id, &ctx.worker_id, at).await? {
                    tx.commit().await?;
                    Handled::Postponed
                } else {
                    tx.rollback().await?;
                    Handled::LostClaim
                }
            }
            _ => complete_with(ctx, tx, claimed).await?,
        };
        if handled != Handled::LostClaim {
            metrics().inc(
                "hitl_notifications_total",
                &[("channel", delivery.channel.as_str()), ("outcome", outcome)],
            );
            if outcome == "failed" {
                // The error is the kind the attempt met, never a body or a URL.
                tracing::warn!(
                    %delivery_id, channel = %delivery.channel, event = %delivery.event,
                    error = ?match &result { AttemptResult::Failed(e) => e.as_str(), _ => "" },
                    "notification delivery failed for good; list it with \
                     GET /api/notifications?status=failed and re-send it"
                );
            }
        }
        Ok(handled)
    }
}

/// The body sent for `delivery` to `channel`.
async fn body(
    conn: &mut sqlx::PgConnection,
    notifier: &Notifier,
    channel: &Channel,
    delivery: &Delivery,
) -> Result<Vec<u8>, JobError> {
    let event = events::event_by_id(conn, delivery.event_id).await?;
    let request = match &delivery.request_id {
        Some(id) => notifications::notified_request(conn, id).await?,
        None => None,
    };
    let link = request.as_ref().and_then(|r| {
        let origin = notifier.settings.public_url.as_deref()?;
        Some(format!("{origin}/console/requests/{}", r.request_id))
    });
    let doc = match channel.format {
        ChannelFormat::Json => {
            json_document(delivery, event.as_ref(), request.as_ref(), channel, link)
        }
        ChannelFormat::Slack => slack_document(delivery, request.as_ref(), channel, link),
    };
    Ok(serde_json::to_vec(&doc).unwrap_or_default())
}

/// A request as a notification shows it; tool arguments only when the channel asks.
fn request_json(r: &NotifiedRequest, channel: &Channel) -> Value {
    let items: Vec<Value> = r
        .items
        .0
        .iter()
        .map(|i| {
            let tool = i.tool.as_ref().map(|t| {
                if channel.include_arguments {
                    json!({ "name": t.name, "arguments": t.arguments })
                } else {
                    json!({ "name": t.name })
                }
            });
            json!({ "itemId": i.item_id, "kind": i.kind, "title": i.title, "tool": tool,
                    "responseTypes": i.response_types })
        })
        .collect();
    json!({
        "requestId": r.request_id,
        "nodeId": r.node_id,
        "prompt": r.operator_prompt,
        "status": r.status,
        "items": items,
        "deadline": r.expires_at,
        "onTimeout": r.on_timeout,
        "assignees": r.assignees.as_ref().map(|a| &a.0),
    })
}

/// The `json` format: the event as `/api/events` sends it, with the delivery's id and
/// channel, the request it is about and a link to it.
fn json_document(
    delivery: &Delivery,
    event: Option<&events::StreamEvent>,
    request: Option<&NotifiedRequest>,
    channel: &Channel,
    link: Option<String>,
) -> Value {
    let mut doc = event
        .and_then(|e| serde_json::to_value(e).ok())
        .unwrap_or_else(|| json!({ "eventId": delivery.event_id, "runId": delivery.run_id }));
    doc["event"] = delivery.event.clone().into();
    doc["deliveryId"] = delivery.delivery_id.to_string().into();
    doc["channel"] = channel.name.clone().into();
    doc["request"] = request.map_or(Value::Null, |r| request_json(r, channel));
    doc["link"] = link.map_or(Value::Null, Value::from);
    doc
}

/// Slack's escaping of text in `mrkdwn` and `plain_text`: `&`, `<` and `>` only.
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Cuts `text` to `max` characters (Slack refuses longer block texts).
fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    }
}

fn headline(event: &str) -> &'static str {
    match event {
        "request_raised" => "A decision is waiting",
        "request_claimed" => "A request was claimed",
        "request_released" => "A request was released",
        "claim_broken" => "A claim was overridden",
        "approval_recorded" => "An approval was recorded",
        "resumed" => "A request was answered",
        "removed" => "A run was removed",
        "expired" => "A request expired",
        "run_failed" => "A run failed",
        "run_completed" => "A run completed",
        "run_cancelled" => "A run was cancelled",
        "agent_unreachable" => "An agent is unreachable",
        "reminded" => "Reminder: a decision is still waiting",
        "escalated" => "Escalated: a decision is overdue",
        "request_expiring" => "A decision is due soon",
        _ => "HITL event",
    }
}

/// The `slack` format: an incoming-webhook body with a fallback `text` and `blocks`
/// (header, the prompt, a fields section, one section per item, a link button).
fn slack_document(
    delivery: &Delivery,
    request: Option<&NotifiedRequest>,
    channel: &Channel,
    link: Option<String>,
) -> Value {
    let title = headline(&delivery.event);
    let mut blocks = vec![json!({
        "type": "header",
        "text": { "type": "plain_text", "text": cut(title, 150) }
    })];
    let mut fallback = title.to_owned();
    if let Some(r) = request {
        fallback = format!("{title}: {}", cut(&r.operator_prompt, 200));
        blocks.push(json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": cut(&slack_escape(&r.operator_prompt), 3000) }
        }));
        let mut fields = vec![
            json!({ "type": "mrkdwn", "text": format!("*Run*\n{}", slack_escape(delivery.run_id.as_str())) }),
            json!({ "type": "mrkdwn", "text": format!("*Node*\n{}", slack_escape(&r.node_id)) }),
        ];
        if let Some(at) = r.expires_at {
            let on = r.on_timeout.as_deref().unwrap_or("reject");
            fields.push(json!({ "type": "mrkdwn",
                "text": format!("*Deadline*\n{} (then {})", at.format("%Y-%m-%d %H:%M UTC"), slack_escape(on)) }));
        }
        blocks.push(json!({ "type": "section", "fields": fields }));
        // Slack allows 50 blocks; the rest of the items are counted, not shown.
        let shown = r.items.0.len().min(40);
        for item in &r.items.0[..shown] {
            let mut text = format!("• *{}*", slack_escape(&item.title));
            if let Some(tool) = &item.tool {
                text.push_str(&format!("\n`{}`", slack_escape(&tool.name)));
                if channel.include_arguments {
                    let args = serde_json::to_string(&tool.arguments).unwrap_or_default();
                    text.push_str(&format!("\n```{}```", slack_escape(&cut(&args, 2000))));
                }
            }
            blocks.push(json!({
                "type": "section",
                "text": { "type": "mrkdwn", "text": cut(&text, 3000) }
            }));
        }
        if r.items.0.len() > shown {
            blocks.push(json!({ "type": "context", "elements": [{ "type": "mrkdwn",
                "text": format!("and {} more items", r.items.0.len() - shown) }] }));
        }
    } else {
        blocks.push(json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": format!("Run {}", slack_escape(delivery.run_id.as_str())) }
        }));
    }
    if let Some(url) = link {
        blocks.push(json!({
            "type": "actions",
            "elements": [{
                "type": "button",
                "text": { "type": "plain_text", "text": "Open request" },
                "url": url,
                "action_id": "open_request"
            }]
        }));
    }
    json!({ "text": slack_escape(&fallback), "blocks": blocks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_documented_recipe() {
        // printf '%s' '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'secret-of-16-chars'
        let sig = signature("secret-of-16-chars", "1700000000", br#"{"a":1}"#);
        assert!(sig.starts_with("v1=") && sig.len() == 3 + 64, "{sig}");
        assert_ne!(
            sig,
            signature("secret-of-16-chars", "1700000001", br#"{"a":1}"#)
        );
    }

    #[test]
    fn slack_markup_is_escaped_and_texts_are_cut() {
        assert_eq!(
            slack_escape("<!channel> & <@U1|x>"),
            "&lt;!channel&gt; &amp; &lt;@U1|x&gt;"
        );
        assert_eq!(cut("abcdef", 4).chars().count(), 4);
        assert_eq!(cut("abc", 4), "abc");
    }
}
