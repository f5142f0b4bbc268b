//! Transactions and streams a worker holds open between calls. Each belongs to the worker
//! that opened it (a call from another worker naming it finds nothing); calls on one are
//! serialised by its lock; an idle one is rolled back / closed by the client's reaper.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sqlx::mysql::MySql;
use sqlx::pool::PoolConnection;
use sqlx::postgres::Postgres;
use sqlx::sqlite::Sqlite;
use sqlx::{AssertSqlSafe, Database, Executor};
use tokio::sync::mpsc;

use super::Failure;
use super::values::Col;

/// A pooled connection inside `BEGIN`. Dropped while still open (abandoned, or after a
/// failed `COMMIT`/`ROLLBACK` or a client-side timeout) it is closed, not returned to the
/// pool: closing it makes the server roll the transaction back.
#[derive(Debug)]
pub struct Held<DB: Database> {
    pub conn: PoolConnection<DB>,
    open: bool,
}

impl<DB: Database> Held<DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    /// `conn`, on which `BEGIN` just succeeded.
    pub fn begun(conn: PoolConnection<DB>) -> Held<DB> {
        Held { conn, open: true }
    }

    /// `COMMIT` or `ROLLBACK`; the connection goes back to the pool when it succeeded.
    pub async fn end(mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(&mut *self.conn)
            .await?;
        self.open = false;
        Ok(())
    }
}

impl<DB: Database> Drop for Held<DB> {
    fn drop(&mut self) {
        if self.open {
            self.conn.close_on_drop();
        }
    }
}

/// An open transaction's connection, per engine.
#[derive(Debug)]
pub enum TxConn {
    Pg(Held<Postgres>),
    My(Held<MySql>),
    Lite(Held<Sqlite>),
}

impl TxConn {
    async fn end(self, sql: &'static str) -> Result<(), sqlx::Error> {
        match self {
            TxConn::Pg(t) => t.end(sql).await,
            TxConn::My(t) => t.end(sql).await,
            TxConn::Lite(t) => t.end(sql).await,
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.end("COMMIT").await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.end("ROLLBACK").await
    }
}

/// The lock a transaction's calls (and a stream inside it) take; `None` once it ended.
pub type TxLock = Arc<tokio::sync::Mutex<Option<TxConn>>>;

#[derive(Debug)]
pub struct TxSlot {
    pub worker: u32,
    pub conn: TxLock,
    last_used: AtomicU64,
}

/// What a stream's task sends: the columns first, then rows (each a JSON array), then
/// `Done` (or a failure).
#[derive(Debug)]
pub enum Msg {
    Header(Vec<Col>),
    Row(Vec<u8>),
    Done,
    Failed(Failure),
}

#[derive(Debug)]
pub struct StreamRx {
    pub rx: mpsc::Receiver<Msg>,
    /// A message read ahead (to tell whether a full batch was the last one).
    pub pending: Option<Msg>,
    pub batch: usize,
}

#[derive(Debug)]
pub struct StreamSlot {
    pub worker: u32,
    /// The transaction it reads inside, if any.
    pub tx: Option<u64>,
    pub rx: Arc<tokio::sync::Mutex<StreamRx>>,
    last_used: AtomicU64,
}

/// Transaction and stream ids, unique in the process: a stale id (a `Transaction` object
/// kept across a live edit, which makes a new client) never names another client's session.
/// Stays far below 2^53 (JSON-safe).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// How many gone workers are remembered (worker ids only grow; a session opened by a call
/// still in flight when its worker went comes soon after).
const GONE_KEPT: usize = 1024;

/// A client's open transactions and streams.
#[derive(Debug)]
pub struct Sessions {
    epoch: Instant,
    /// Workers gone (the latest [`GONE_KEPT`]): a session a call of theirs opens afterwards
    /// is ended at once.
    gone: Mutex<VecDeque<u32>>,
    txs: Mutex<HashMap<u64, Arc<TxSlot>>>,
    streams: Mutex<HashMap<u64, Arc<StreamSlot>>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Sessions {
            epoch: Instant::now(),
            gone: Mutex::new(VecDeque::new()),
            txs: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
        }
    }
}

impl Sessions {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Worker `worker` is gone: remembered, so that a session its calls in flight open
    /// later is not kept.
    pub fn mark_gone(&self, worker: u32) {
        let mut g = self.gone.lock().expect("gone lock");
        if !g.contains(&worker) {
            if g.len() >= GONE_KEPT {
                g.pop_front();
            }
            g.push_back(worker);
        }
    }

    fn is_gone(&self, worker: u32) -> bool {
        self.gone.lock().expect("gone lock").contains(&worker)
    }

    /// Registers an open transaction; when its worker is gone, hands the connection back
    /// (to roll back) instead.
    pub fn add_tx(&self, worker: u32, conn: TxConn) -> Result<u64, TxConn> {
        if self.is_gone(worker) {
            return Err(conn);
        }
        let id = next_id();
        let slot = Arc::new(TxSlot {
            worker,
            conn: Arc::new(tokio::sync::Mutex::new(Some(conn))),
            last_used: AtomicU64::new(self.now_ms()),
        });
        self.txs.lock().expect("txs lock").insert(id, slot);
        // The worker may have gone between the check and the insert.
        if self.is_gone(worker) {
            roll_back_all(self.take(Some(worker), None));
        }
        Ok(id)
    }

    /// Worker `worker`'s transaction `id`, marked used now.
    pub fn tx(&self, worker: u32, id: u64) -> Option<Arc<TxSlot>> {
        let slot = self.txs.lock().expect("txs lock").get(&id).cloned()?;
        (slot.worker == worker).then(|| {
            slot.last_used.store(self.now_ms(), Ordering::Relaxed);
            slot
        })
    }

    pub fn touch_tx(&self, slot: &TxSlot) {
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Marks transaction `id` used now (a stream inside it was read).
    pub fn touch_tx_id(&self, id: u64) {
        if let Some(slot) = self.txs.lock().expect("txs lock").get(&id) {
            slot.last_used.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    pub fn remove_tx(&self, id: u64) {
        self.txs.lock().expect("txs lock").remove(&id);
    }

    /// Registers an open stream; `None` when its worker is gone (the receiver is dropped,
    /// which ends the stream's task).
    pub fn add_stream(
        &self,
        worker: u32,
        tx: Option<u64>,
        rx: StreamRx,
    ) -> Option<(u64, Arc<StreamSlot>)> {
        if self.is_gone(worker) {
            return None;
        }
        let id = next_id();
        let slot = Arc::new(StreamSlot {
            worker,
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
            last_used: AtomicU64::new(self.now_ms()),
        });
        self.streams
            .lock()
            .expect("streams lock")
            .insert(id, slot.clone());
        if self.is_gone(worker) {
            roll_back_all(self.take(Some(worker), None));
            return None;
        }
        Some((id, slot))
    }

    pub fn stream(&self, worker: u32, id: u64) -> Option<Arc<StreamSlot>> {
        let slot = self
            .streams
            .lock()
            .expect("streams lock")
            .get(&id)
            .cloned()?;
        (slot.worker == worker).then(|| {
            slot.last_used.store(self.now_ms(), Ordering::Relaxed);
            slot
        })
    }

    pub fn touch_stream(&self, slot: &StreamSlot) {
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Removes a stream: dropping its receiver ends its task at its next row.
    pub fn remove_stream(&self, id: u64) {
        self.streams.lock().expect("streams lock").remove(&id);
    }

    /// The open stream reading inside transaction `tx`, if any.
    pub fn stream_in_tx(&self, tx: u64) -> Option<u64> {
        self.streams
            .lock()
            .expect("streams lock")
            .iter()
            .find(|(_, s)| s.tx == Some(tx))
            .map(|(id, _)| *id)
    }

    /// Takes out every session of `worker` (all of them when `None`) and, with `idle_ms`,
    /// only those idle that long and not in a call. Returns the transactions to roll back;
    /// the streams are dropped here.
    pub fn take(&self, worker: Option<u32>, idle_ms: Option<u64>) -> Vec<TxLock> {
        let now = self.now_ms();
        let stale = |last: &AtomicU64| {
            idle_ms.is_none_or(|idle| now.saturating_sub(last.load(Ordering::Relaxed)) >= idle)
        };
        let mine = |w: u32| worker.is_none_or(|x| x == w);
        let mut out = Vec::new();
        // Transactions a stream reads inside: busy while it is open (its `next` calls do
        // not lock the transaction once the rows are read ahead).
        let streaming: Vec<u64> = self
            .streams
            .lock()
            .expect("streams lock")
            .values()
            .filter_map(|s| s.tx)
            .collect();
        self.txs.lock().expect("txs lock").retain(|id, s| {
            // A transaction in a call (or streaming) is not idle.
            let busy = idle_ms.is_some() && (s.conn.try_lock().is_err() || streaming.contains(id));
            let go = mine(s.worker) && stale(&s.last_used) && !busy;
            if go {
                out.push(s.conn.clone());
            }
            !go
        });
        self.streams.lock().expect("streams lock").retain(|_, s| {
            let busy = idle_ms.is_some() && s.rx.try_lock().is_err();
            !(mine(s.worker) && stale(&s.last_used) && !busy)
        });
        out
    }

    /// Open transactions and streams (for tests and figures).
    pub fn open(&self) -> (usize, usize) {
        (
            self.txs.lock().expect("txs lock").len(),
            self.streams.lock().expect("streams lock").len(),
        )
    }
}

/// Rolls back transactions taken out of [`Sessions`], in the background.
pub fn roll_back_all(txs: Vec<TxLock>) {
    if txs.is_empty() {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        // No runtime (a test's teardown): dropping them queues each rollback.
        return;
    };
    for lock in txs {
        rt.spawn(async move {
            let conn = lock.lock().await.take();
            if let Some(c) = conn
                && let Err(e) = c.rollback().await
            {
                tracing::warn!(error = %e, "rolling back an abandoned SQL transaction failed");
            }
        });
    }
}
