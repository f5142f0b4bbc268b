//! Pub/sub definitions (docs/PUBSUB.md): topics, subscriptions and endpoints (who may
//! publish and subscribe where), as plain data with their validation; and a message as the
//! broker and the store keep it. No I/O.

use serde::{Deserialize, Serialize};

use crate::model::object::InvalidObject;

/// The longest topic name or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 200;
/// The most messages one delivery batch may carry.
pub const MAX_BATCH: u32 = 1000;
/// Priorities run from 1 (lowest) to 9 (highest), 5 by default (Zato's).
pub const PRIORITY_MIN: u8 = 1;
pub const PRIORITY_MAX: u8 = 9;
/// The longest ack timeout and retry wait of a subscription, ms (a day).
pub const MAX_WAIT_MS: u64 = 86_400_000;
/// The longest first retry wait of a subscription, ms (an hour).
pub const MAX_BACKOFF_MS: u64 = 3_600_000;
/// The largest retry multiplier of a subscription.
pub const MAX_MULTIPLIER: u32 = 100;
/// The most delivery attempts a subscription's retry may allow.
pub const MAX_ATTEMPTS: u32 = 1_000_000;
pub const PRIORITY_DEFAULT: u8 = 5;

/// What a topic does with a publish that would take it past its depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// The publish is refused (`full`, HTTP 429): nothing already queued is lost.
    #[default]
    Refuse,
    /// The publish is accepted and each subscription past the depth drops its oldest
    /// messages (counted as overflowed), as a ring buffer does.
    Overflow,
}

/// What a topic does with a message published while it has no subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnNoSubs {
    /// GD messages are kept (until they expire) for the topic's first subscription;
    /// non-GD ones are dropped.
    #[default]
    Keep,
    /// The message is accepted and dropped (counted), GD or not.
    Drop,
}

/// A topic: `/`-separated path (`/orders/new`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topic {
    pub name: String,
    /// Whether a message is guaranteed-delivery (kept in the store) unless its publish says
    /// otherwise.
    #[serde(default = "yes")]
    pub has_gd: bool,
    /// The most GD messages one subscription of the topic may have waiting.
    #[serde(default = "default_depth_gd")]
    pub max_depth_gd: u64,
    /// The most non-GD messages one subscription may have waiting (in memory).
    #[serde(default = "default_depth_non_gd")]
    pub max_depth_non_gd: u64,
    #[serde(default)]
    pub on_full: OnFull,
    /// A message's lifetime unless its publish gives one, ms; none: it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration_ms: Option<u64>,
    #[serde(default)]
    pub on_no_subs: OnNoSubs,
    /// The largest message data accepted, bytes.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

fn yes() -> bool {
    true
}
fn default_depth_gd() -> u64 {
    100_000
}
fn default_depth_non_gd() -> u64 {
    10_000
}
fn default_max_message() -> u64 {
    1024 * 1024
}
fn one() -> u32 {
    1
}
fn default_ack_timeout() -> u64 {
    30_000
}

/// How a subscription's messages reach the subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeliveryKind {
    /// A service of this cluster is invoked with each batch (`self.channel.type ==
    /// 'pubsub'`); a reply below 400 acknowledges the batch.
    Service { service: String },
    /// Each batch is POSTed (or sent with `method`) to a REST outgoing connection (`conn`,
    /// which carries its auth) at `path`, or to a plain `url` without auth; an answer
    /// below 300 acknowledges the batch.
    Push {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conn: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default = "default_push_method")]
        method: String,
    },
    /// The subscriber fetches (`get_messages`, `POST /pubsub/messages/get`) and acks.
    Pull,
    /// Each batch is sent to a connected WebSocket client (`ws.<server>.<hex>`, on whichever
    /// server holds it) as one message; queued to its socket acknowledges the batch. Made
    /// by a service for the client it is handling (`subscribe(…, use_current_wsx=True)`);
    /// it ends with the client's connection.
    Websocket { client_id: String },
}

fn default_push_method() -> String {
    "POST".into()
}

/// Redelivery after a failed delivery: waits `backoff_ms`, times `multiplier` after each
/// further failure, at most `max_backoff_ms`; after `max_attempts` deliveries (0: no
/// limit) the message goes to the dead letters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_ms: u64,
    #[serde(default = "two")]
    pub multiplier: u32,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            max_attempts: default_attempts(),
            backoff_ms: default_backoff(),
            max_backoff_ms: default_max_backoff(),
            multiplier: two(),
        }
    }
}

fn default_attempts() -> u32 {
    10
}
fn default_backoff() -> u64 {
    100
}
fn default_max_backoff() -> u64 {
    60_000
}
fn two() -> u32 {
    2
}

/// A subscription: its own queue of a topic's (or a pattern's topics') messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    /// Its name: generated (`sk.` and 24 lower-case hex digits) or given by the operator.
    pub sub_key: String,
    /// A topic name, or a pattern whose `*` matches any run of characters (`/orders/*`).
    pub topic: String,
    /// The endpoint (identity) that made it, when one did; services' and the admin's
    /// subscriptions have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub delivery: DeliveryKind,
    #[serde(default = "one")]
    pub batch_size: u32,
    #[serde(default)]
    pub retry: Retry,
    /// Where a message goes after `retry.max_attempts` failed deliveries (besides the
    /// subscription's own dead letters, which can be requeued).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Pull: a message fetched and not acked within this is delivered again, ms.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout_ms: u64,
    /// When it was made (Unix ms): a topic it matches later is delivered from its messages
    /// published since then.
    #[serde(default)]
    pub created_at_ms: i64,
    /// Who made it: `service:<name>`, `endpoint:<name>`, `admin:<identity>` (a service's
    /// `get_messages(topic_name=…)` uses its own pull subscription to that topic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

/// Who may publish and subscribe where: the identity is a security definition (a REST
/// caller the definition let in), the permissions Zato's `pub=` / `sub=` lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub name: String,
    /// The security definition whose callers this endpoint is.
    pub security: String,
    /// `pub=<pattern>` and `sub=<pattern>` lines (`pub=/orders/*`).
    #[serde(default)]
    pub topic_patterns: Vec<String>,
}

/// What an endpoint asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Publish,
    Subscribe,
}

/// A message as the broker and the store keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    /// Its place in the topic's log (1, 2, …): GD only; 0 for a non-GD message.
    pub seq: i64,
    /// `zpsm` and 24 lower-case hex digits: unique across the cluster.
    pub msg_id: String,
    /// Unix ms.
    pub pub_time_ms: i64,
    /// Unix ms; none: never.
    pub expires_at_ms: Option<i64>,
    pub priority: u8,
    pub has_gd: bool,
    pub mime_type: String,
    pub correl_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub ext_client_id: Option<String>,
    /// Who published: `service:<name>`, `endpoint:<name>`, `admin:<identity>`.
    pub published_by: String,
    pub data: bytes::Bytes,
}

impl Message {
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|t| t <= now_ms)
    }
}

/// Whether `name` is a valid topic name: starts with `/`, at most [`MAX_TOPIC_LEN`] bytes,
/// segments of `A-Z a-z 0-9 . _ -` (no empty segment, no `*`).
pub fn check_topic_name(name: &str) -> Result<(), InvalidObject> {
    check_path(name, false).map_err(|why| InvalidObject(format!("topic name {name:?}: {why}")))
}

/// Whether `pattern` is a valid topic pattern: a topic name whose segments may hold `*`.
pub fn check_pattern(pattern: &str) -> Result<(), InvalidObject> {
    check_path(pattern, true)
        .map_err(|why| InvalidObject(format!("topic pattern {pattern:?}: {why}")))
}

fn check_path(s: &str, star: bool) -> Result<(), &'static str> {
    if !s.starts_with('/') {
        return Err("must start with /");
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err("is longer than 200 bytes");
    }
    if s.len() == 1 {
        return Err("names no topic");
    }
    for seg in s[1..].split('/') {
        if seg.is_empty() {
            return Err("has an empty segment");
        }
        // "." and ".." read as path steps (in a URL, a log or a file name made of the
        // topic): a topic name is never one.
        if seg == "." || seg == ".." {
            return Err("has a . or .. segment");
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b) || (star && b == b'*'))
        {
            return Err(if star {
                "may hold only A-Z a-z 0-9 . _ - * and /"
            } else {
                "may hold only A-Z a-z 0-9 . _ - and /"
            });
        }
    }
    Ok(())
}

/// Whether `topic` matches `pattern`: `*` matches any run of characters, `/` included
/// (Zato's patterns: `/orders/*` matches `/orders/new` and `/orders/eu/new`); a pattern
/// without `*` matches only itself.
pub fn matches(pattern: &str, topic: &str) -> bool {
    let p = pattern.as_bytes();
    let t = topic.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

impl Topic {
    pub fn validate(&self) -> Result<(), InvalidObject> {
        check_topic_name(&self.name)?;
        if self.max_depth_gd == 0 || self.max_depth_non_gd == 0 {
            return Err(InvalidObject(format!(
                "topic {}: max_depth_gd and max_depth_non_gd must be at least 1",
                self.name
            )));
        }
        if self.expiration_ms == Some(0) {
            return Err(InvalidObject(format!(
                "topic {}: expiration_ms must be at least 1 (leave it out for none)",
                self.name
            )));
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > 16 * 1024 * 1024 {
            return Err(InvalidObject(format!(
                "topic {}: max_message_bytes must be from 1 to 16777216",
                self.name
            )));
        }
        Ok(())
    }
}

/// Whether `key` is a valid sub_key: 1–64 characters of `a-z A-Z 0-9 . _ -`.
pub fn check_sub_key(key: &str) -> Result<(), InvalidObject> {
    if key.is_empty()
        || key.len() > 64
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(InvalidObject(format!(
            "sub_key {key:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(())
}

impl Subscription {
    pub fn validate(&self) -> Result<(), InvalidObject> {
        let who = &self.sub_key;
        check_sub_key(who)?;
        check_pattern(&self.topic)?;
        if self.batch_size == 0 || self.batch_size > MAX_BATCH {
            return Err(InvalidObject(format!(
                "subscription {who}: batch_size must be from 1 to {MAX_BATCH}"
            )));
        }
        let r = &self.retry;
        if r.backoff_ms == 0 || r.max_backoff_ms < r.backoff_ms || r.multiplier == 0 {
            return Err(InvalidObject(format!(
                "subscription {who}: retry needs backoff_ms >= 1, max_backoff_ms >= backoff_ms \
                 and multiplier >= 1"
            )));
        }
        // Caps that keep the delivery's deadline arithmetic (now + a wait, in i64 ms) far
        // from overflowing, and a failing message's retries finite in practice.
        if r.backoff_ms > MAX_BACKOFF_MS {
            return Err(InvalidObject(format!(
                "subscription {who}: retry.backoff_ms must be at most {MAX_BACKOFF_MS}"
            )));
        }
        if r.max_backoff_ms > MAX_WAIT_MS {
            return Err(InvalidObject(format!(
                "subscription {who}: retry.max_backoff_ms must be at most {MAX_WAIT_MS}"
            )));
        }
        if r.multiplier > MAX_MULTIPLIER {
            return Err(InvalidObject(format!(
                "subscription {who}: retry.multiplier must be at most {MAX_MULTIPLIER}"
            )));
        }
        if r.max_attempts > MAX_ATTEMPTS {
            return Err(InvalidObject(format!(
                "subscription {who}: retry.max_attempts must be at most {MAX_ATTEMPTS}"
            )));
        }
        if let Some(dl) = &self.dead_letter_topic {
            check_topic_name(dl)?;
            if crate::model::pubsub::matches(&self.topic, dl) {
                return Err(InvalidObject(format!(
                    "subscription {who}: dead_letter_topic {dl} is one of the topics it \
                     subscribes to"
                )));
            }
        }
        if self.ack_timeout_ms == 0 || self.ack_timeout_ms > MAX_WAIT_MS {
            return Err(InvalidObject(format!(
                "subscription {who}: ack_timeout_ms must be from 1 to {MAX_WAIT_MS}"
            )));
        }
        match &self.delivery {
            DeliveryKind::Service { service } if service.is_empty() => Err(InvalidObject(format!(
                "subscription {who}: delivery.service is empty"
            ))),
            DeliveryKind::Websocket { client_id }
                if crate::model::websocket::client_server(client_id).is_none() =>
            {
                Err(InvalidObject(format!(
                    "subscription {who}: delivery.client_id {client_id:?} is not a WebSocket client id (ws.<server>.<16 hex digits>)"
                )))
            }
            DeliveryKind::Push {
                conn, url, method, ..
            } => {
                if conn.is_some() == url.is_some() {
                    return Err(InvalidObject(format!(
                        "subscription {who}: a push delivery needs either conn (a REST \
                         outgoing connection) or url, not both"
                    )));
                }
                if let Some(u) = url
                    && !(u.starts_with("http://") || u.starts_with("https://"))
                {
                    return Err(InvalidObject(format!(
                        "subscription {who}: delivery.url must be http:// or https://"
                    )));
                }
                if !["POST", "PUT", "PATCH"].contains(&method.as_str()) {
                    return Err(InvalidObject(format!(
                        "subscription {who}: delivery.method must be POST, PUT or PATCH"
                    )));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

impl Endpoint {
    pub fn validate(&self) -> Result<(), InvalidObject> {
        if self.name.is_empty() || self.name.len() > 200 {
            return Err(InvalidObject(
                "endpoint name must be 1-200 characters".into(),
            ));
        }
        if self.security.is_empty() {
            return Err(InvalidObject(format!(
                "endpoint {}: security (a security definition) is required",
                self.name
            )));
        }
        for line in &self.topic_patterns {
            self.parse_line(line)?;
        }
        Ok(())
    }

    fn parse_line<'a>(&self, line: &'a str) -> Result<(Access, &'a str), InvalidObject> {
        let (access, pattern) = if let Some(p) = line.strip_prefix("pub=") {
            (Access::Publish, p)
        } else if let Some(p) = line.strip_prefix("sub=") {
            (Access::Subscribe, p)
        } else {
            return Err(InvalidObject(format!(
                "endpoint {}: topic pattern {line:?} must be pub=<pattern> or sub=<pattern>",
                self.name
            )));
        };
        check_pattern(pattern)?;
        Ok((access, pattern))
    }

    /// Whether this endpoint may do `access` on `topic`.
    pub fn allows(&self, access: Access, topic: &str) -> bool {
        self.topic_patterns.iter().any(|line| {
            self.parse_line(line)
                .is_ok_and(|(a, p)| a == access && matches(p, topic))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_zato() {
        assert!(matches("/orders/*", "/orders/new"));
        assert!(matches("/orders/*", "/orders/eu/new"));
        assert!(!matches("/orders/*", "/orders"));
        assert!(!matches("/orders/*", "/invoices/new"));
        assert!(matches("/a", "/a"));
        assert!(!matches("/a", "/ab"));
        assert!(matches("/*/new", "/orders/new"));
        assert!(!matches("/*/new", "/orders/old"));
        assert!(matches("*", "/x"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_topic_name("/orders/new").is_ok());
        for bad in [
            "orders", "/", "/a//b", "/a/", "/a b", "/a/*", "/a/./b", "/..", "/a/..",
        ] {
            assert!(check_topic_name(bad).is_err(), "{bad}");
        }
        assert!(check_pattern("/a/*").is_ok());
        assert!(check_pattern("/a/../*").is_err());
        assert!(check_topic_name("/a/.b/..c").is_ok());
    }

    #[test]
    fn subscription_caps() {
        let ok = Subscription {
            sub_key: "sk.caps".into(),
            topic: "/caps".into(),
            endpoint: None,
            delivery: DeliveryKind::Pull,
            batch_size: 1,
            retry: Retry::default(),
            dead_letter_topic: None,
            ack_timeout_ms: MAX_WAIT_MS,
            created_at_ms: 0,
            created_by: None,
        };
        ok.validate().unwrap();
        let bad = |f: &dyn Fn(&mut Subscription)| {
            let mut s = ok.clone();
            f(&mut s);
            s.validate().is_err()
        };
        assert!(bad(&|s| s.ack_timeout_ms = MAX_WAIT_MS + 1));
        assert!(bad(&|s| s.retry.backoff_ms = MAX_BACKOFF_MS + 1));
        assert!(bad(&|s| s.retry.max_backoff_ms = MAX_WAIT_MS + 1));
        assert!(bad(&|s| s.retry.multiplier = MAX_MULTIPLIER + 1));
        assert!(bad(&|s| s.retry.max_attempts = MAX_ATTEMPTS + 1));
        assert!(!bad(&|s| {
            s.retry.backoff_ms = MAX_BACKOFF_MS;
            s.retry.max_backoff_ms = MAX_WAIT_MS;
            s.retry.multiplier = MAX_MULTIPLIER;
            s.retry.max_attempts = MAX_ATTEMPTS;
        }));
    }

    #[test]
    fn endpoint_permissions() {
        let e = Endpoint {
            name: "crm".into(),
            security: "crm-basic".into(),
            topic_patterns: vec!["pub=/orders/*".into(), "sub=/invoices/*".into()],
        };
        e.validate().unwrap();
        assert!(e.allows(Access::Publish, "/orders/new"));
        assert!(!e.allows(Access::Subscribe, "/orders/new"));
        assert!(e.allows(Access::Subscribe, "/invoices/x"));
        let bad = Endpoint {
            topic_patterns: vec!["publish=/x".into()],
            ..e
        };
        assert!(bad.validate().is_err());
    }
}
