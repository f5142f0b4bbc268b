//! The services list's figures: `GET /v1/services/stats` covers every service on every
//! server (over the cluster bus), which with a thousand services and three servers costs the
//! servers tens of milliseconds and answers most of a megabyte. Figures over 1, 5 and 15
//! minutes need no fresher view than a few seconds (RabbitMQ's console collects every 5 s),
//! so the list shows the last document fetched, fetches a new one in the background once it
//! is [`FRESH`] old (one fetch at a time, whoever asks), and says how old what it shows is.
//! Only the first list after start waits for a fetch. A service's own page asks for its
//! figures directly, fresh.

use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::{Api, ApiError};

/// How old the document may be before a new one is fetched.
pub const FRESH: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct Figures {
    last: Mutex<Option<(Instant, Arc<Value>)>>,
    /// Held while a fetch runs.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

impl Figures {
    /// The figures and their age: the last document if there is one (a background fetch
    /// started when it is stale), else a fetch waited for. `api` is the asking user's.
    pub async fn get(self: &Arc<Self>, api: Api) -> Result<(Arc<Value>, Duration), ApiError> {
        let last = self.last.lock().expect("figures").clone();
        match last {
            Some((at, doc)) => {
                if at.elapsed() >= FRESH
                    && let Ok(guard) = self.fetching.clone().try_lock_owned()
                {
                    let me = self.clone();
                    tokio::spawn(async move {
                        let _one = guard;
                        let _ = me.fetch(&api).await;
                    });
                }
                Ok((doc, at.elapsed()))
            }
            None => {
                let _one = self.fetching.lock().await;
                if let Some((at, doc)) = self.last.lock().expect("figures").clone() {
                    return Ok((doc, at.elapsed()));
                }
                let doc = self.fetch(&api).await?;
                Ok((doc, Duration::ZERO))
            }
        }
    }

    async fn fetch(&self, api: &Api) -> Result<Arc<Value>, ApiError> {
        let doc = Arc::new(api.get("/v1/services/stats").await?);
        *self.last.lock().expect("figures") = Some((Instant::now(), doc.clone()));
        Ok(doc)
    }
}
