//! The file-transfer channels' tables (docs/FILES.md): each channel's lease (`file_lease`: the
//! one server taking its files, with an epoch that grows with every new holding) and the files
//! taken and not yet moved away (`file_taken`: one row per file version; `done` or `failed` is
//! committed before the file is moved, so a stop between the two moves it without a second
//! service call, and a file taken under an older epoch is handed again, marked redelivered).

use super::{BeginWrite, Result, Store};
use sqlx::Row;
use std::time::Duration;

/// Files per statement of a batched insert, update or delete (two bound values each).
const CHUNK: usize = 200;

/// `($a, $b), ($c, $d), …` for `n` pairs, numbered from `first`: only placeholders are
/// formatted into SQL, the values are bound.
fn pairs(n: usize, first: usize) -> String {
    (0..n)
        .map(|i| format!("(${}, ${})", first + 2 * i, first + 2 * i + 1))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a claim found for one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// Taken now: hand it to the service (`redelivered`: it was handed under an older epoch
    /// and its outcome never recorded).
    Take { redelivered: bool },
    /// Its outcome is recorded: only the move is left.
    Done,
    /// It failed, with this reason: only the move to the failed folder is left.
    Failed(String),
}

/// One file's outcome, to record.
#[derive(Debug, Clone)]
pub struct Outcome<'a> {
    pub path: &'a str,
    pub version: &'a str,
    /// `None`: done; `Some(reason)`: failed.
    pub failed: Option<&'a str>,
}

impl Store {
    /// Takes `channel`'s lease for `me` when it is free, expired or `me`'s own (a restart):
    /// the new epoch, or None when another server holds it.
    pub async fn file_lease_acquire(
        &self,
        channel: &str,
        me: &str,
        now: i64,
        ttl: Duration,
    ) -> Result<Option<i64>> {
        let until = now + ttl.as_millis() as i64;
        Ok(on_pool!(self, p => sqlx::query_scalar(
            "INSERT INTO file_lease (channel, holder, epoch, expires_at) VALUES ($1, $2, 1, $3) \
             ON CONFLICT (channel) DO UPDATE SET holder = excluded.holder, \
             expires_at = excluded.expires_at, epoch = file_lease.epoch + 1 \
             WHERE file_lease.holder = excluded.holder OR file_lease.expires_at < $4 \
             RETURNING epoch",
        )
        .bind(channel)
        .bind(me)
        .bind(until)
        .bind(now)
        .fetch_optional(p)
        .await?))
    }

    /// Renews `me`'s holding `epoch` of `channel`'s lease until `now + ttl`: false when it is
    /// no longer `me`'s (taken over after it expired, or released).
    pub async fn file_lease_renew(
        &self,
        channel: &str,
        me: &str,
        epoch: i64,
        now: i64,
        ttl: Duration,
    ) -> Result<bool> {
        let until = now + ttl.as_millis() as i64;
        let n = on_pool!(self, p => sqlx::query(
            "UPDATE file_lease SET expires_at = $4 WHERE channel = $1 AND holder = $2 AND epoch = $3",
        )
        .bind(channel)
        .bind(me)
        .bind(epoch)
        .bind(until)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    /// Hands the lease back (a clean stop, a channel deleted or moved off this server): it
    /// expires now. The row stays, so the epoch only ever grows.
    pub async fn file_lease_release(&self, channel: &str, me: &str, epoch: i64) -> Result<()> {
        on_pool!(self, p => sqlx::query(
            "UPDATE file_lease SET expires_at = 0 WHERE channel = $1 AND holder = $2 AND epoch = $3",
        )
        .bind(channel)
        .bind(me)
        .bind(epoch)
        .execute(p)
        .await
        .map(drop)?);
        Ok(())
    }

    /// Who holds `channel`'s lease: (holder, epoch, expires_at Unix ms).
    pub async fn file_lease(&self, channel: &str) -> Result<Option<(String, i64, i64)>> {
        Ok(on_pool!(self, p => {
            sqlx::query("SELECT holder, epoch, expires_at FROM file_lease WHERE channel = $1")
                .bind(channel)
                .fetch_optional(p)
                .await?
                .map(|r| -> Result<(String, i64, i64), sqlx::Error> {
                    Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))
                })
                .transpose()?
        }))
    }

    /// Claims `files` (path, version) for `me` under `epoch`, in one transaction that first
    /// checks (and, on PostgreSQL, locks) the lease: None when the lease is no longer `me`'s
    /// holding `epoch`, else what each file is (see [`Claimed`]).
    pub async fn files_claim(
        &self,
        channel: &str,
        me: &str,
        epoch: i64,
        files: &[(String, String)],
        now: i64,
    ) -> Result<Option<Vec<Claimed>>> {
        Ok(on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            // An UPDATE, not a SELECT: it holds the lease row until COMMIT, so a takeover
            // waits for this claim instead of racing it.
            let held = sqlx::query(
                "UPDATE file_lease SET expires_at = expires_at \
                 WHERE channel = $1 AND holder = $2 AND epoch = $3 AND expires_at > $4",
            )
            .bind(channel)
            .bind(me)
            .bind(epoch)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !held {
                return Ok(None);
            }
            // New files (nearly all of them): one multi-row insert per chunk, which says
            // which rows it made; the others are looked at one by one below.
            let mut inserted: std::collections::HashSet<(String, String)> =
                std::collections::HashSet::new();
            for chunk in files.chunks(CHUNK) {
                let sql = sqlx::AssertSqlSafe(format!(
                    "INSERT INTO file_taken (channel, path, version, state, epoch, holder, taken_at) \
                     SELECT $1, v.column1, v.column2, 'taken', $2, $3, $4 FROM (VALUES {}) AS v \
                     WHERE true ON CONFLICT (channel, path, version) DO NOTHING \
                     RETURNING path, version",
                    pairs(chunk.len(), 5)
                ));
                let mut q = sqlx::query(sql).bind(channel).bind(epoch).bind(me).bind(now);
                for (path, version) in chunk {
                    q = q.bind(path).bind(version);
                }
                for row in q.fetch_all(&mut *tx).await? {
                    inserted.insert((row.try_get(0)?, row.try_get(1)?));
                }
            }
            let mut out = Vec::with_capacity(files.len());
            for (path, version) in files {
                if inserted.contains(&(path.clone(), version.clone())) {
                    out.push(Claimed::Take { redelivered: false });
                    continue;
                }
                // Taken before and not recorded: under an older holding (a crash, a lost
                // lease) it may have been handed; under this one it was claimed and then
                // put back before its call. The update is fenced on the state and epoch
                // read, so an outcome recorded meanwhile is seen, not overwritten; a row
                // forgotten meanwhile is inserted again.
                loop {
                    let new = sqlx::query(
                        "INSERT INTO file_taken (channel, path, version, state, epoch, holder, taken_at) \
                         VALUES ($1, $2, $3, 'taken', $4, $5, $6) \
                         ON CONFLICT (channel, path, version) DO NOTHING",
                    )
                    .bind(channel)
                    .bind(path)
                    .bind(version)
                    .bind(epoch)
                    .bind(me)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                        == 1;
                    if new {
                        out.push(Claimed::Take { redelivered: false });
                        break;
                    }
                    let Some(row) = sqlx::query(
                        "SELECT state, epoch, reason FROM file_taken \
                         WHERE channel = $1 AND path = $2 AND version = $3",
                    )
                    .bind(channel)
                    .bind(path)
                    .bind(version)
                    .fetch_optional(&mut *tx)
                    .await?
                    else {
                        continue;
                    };
                    let state: String = row.try_get(0)?;
                    let row_epoch: i64 = row.try_get(1)?;
                    let reason: Option<String> = row.try_get(2)?;
                    match state.as_str() {
                        "done" => out.push(Claimed::Done),
                        "failed" => out.push(Claimed::Failed(reason.unwrap_or_default())),
                        _ => {
                            let n = sqlx::query(
                                "UPDATE file_taken SET epoch = $4, holder = $5, taken_at = $6 \
                                 WHERE channel = $1 AND path = $2 AND version = $3 \
                                 AND state = 'taken' AND epoch = $7",
                            )
                            .bind(channel)
                            .bind(path)
                            .bind(version)
                            .bind(epoch)
                            .bind(me)
                            .bind(now)
                            .bind(row_epoch)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                            if n == 0 {
                                continue;
                            }
                            out.push(Claimed::Take {
                                redelivered: row_epoch != epoch,
                            });
                        }
                    }
                    break;
                }
            }
            tx.commit().await?;
            Some(out)
        }))
    }

    /// Records outcomes of files taken under `epoch`, in one transaction: for each, whether it
    /// was recorded (false: the file was taken again under a newer epoch, after this server
    /// lost the lease; it must not be moved).
    pub async fn files_finish(
        &self,
        channel: &str,
        epoch: i64,
        outcomes: &[Outcome<'_>],
    ) -> Result<Vec<bool>> {
        Ok(on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            // The files done (nearly all of them): one update per chunk, which says which
            // rows it changed; each failure with its own reason.
            let mut done: std::collections::HashSet<(String, String)> =
                std::collections::HashSet::new();
            let ok: Vec<&Outcome<'_>> = outcomes.iter().filter(|o| o.failed.is_none()).collect();
            for chunk in ok.chunks(CHUNK) {
                let sql = sqlx::AssertSqlSafe(format!(
                    "UPDATE file_taken SET state = 'done' \
                     WHERE channel = $1 AND epoch = $2 AND state = 'taken' \
                     AND (path, version) IN (VALUES {}) RETURNING path, version",
                    pairs(chunk.len(), 3)
                ));
                let mut q = sqlx::query(sql).bind(channel).bind(epoch);
                for o in chunk {
                    q = q.bind(o.path).bind(o.version);
                }
                for row in q.fetch_all(&mut *tx).await? {
                    done.insert((row.try_get(0)?, row.try_get(1)?));
                }
            }
            let mut recorded = Vec::with_capacity(outcomes.len());
            for o in outcomes {
                let Some(reason) = o.failed else {
                    recorded.push(done.contains(&(o.path.to_owned(), o.version.to_owned())));
                    continue;
                };
                let n = sqlx::query(
                    "UPDATE file_taken SET state = 'failed', reason = $5 \
                     WHERE channel = $1 AND path = $2 AND version = $3 AND epoch = $4 \
                     AND state = 'taken'",
                )
                .bind(channel)
                .bind(o.path)
                .bind(o.version)
                .bind(epoch)
                .bind(reason)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                recorded.push(n == 1);
            }
            tx.commit().await?;
            recorded
        }))
    }

    /// Forgets, in one transaction, files moved away (`moved`: rows with their outcome
    /// recorded) and files claimed under `epoch` by `me` and never handed (`unhanded`: a
    /// stop before their call; still `taken` under that epoch, or the row is another
    /// holder's now and stays).
    pub async fn files_forget(
        &self,
        channel: &str,
        me: &str,
        epoch: i64,
        moved: &[(String, String)],
        unhanded: &[(String, String)],
    ) -> Result<()> {
        if moved.is_empty() && unhanded.is_empty() {
            return Ok(());
        }
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            for chunk in moved.chunks(CHUNK) {
                let sql = sqlx::AssertSqlSafe(format!(
                    "DELETE FROM file_taken WHERE channel = $1 AND state <> 'taken' \
                     AND (path, version) IN (VALUES {})",
                    pairs(chunk.len(), 2)
                ));
                let mut q = sqlx::query(sql).bind(channel);
                for (path, version) in chunk {
                    q = q.bind(path).bind(version);
                }
                q.execute(&mut *tx).await?;
            }
            for (path, version) in unhanded {
                sqlx::query(
                    "DELETE FROM file_taken WHERE channel = $1 AND path = $2 AND version = $3 \
                     AND state = 'taken' AND epoch = $4 AND holder = $5",
                )
                .bind(channel)
                .bind(path)
                .bind(version)
                .bind(epoch)
                .bind(me)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?
        });
        Ok(())
    }

    /// Forgets `channel`'s rows of files taken before `before` (Unix ms) and never recorded:
    /// files that went away before a holder could hand them again (a row with an outcome
    /// stays until its file is moved).
    pub async fn files_prune(&self, channel: &str, before: i64) -> Result<u64> {
        Ok(on_pool!(self, p => sqlx::query(
            "DELETE FROM file_taken WHERE channel = $1 AND state = 'taken' AND taken_at < $2",
        )
        .bind(channel)
        .bind(before)
        .execute(p)
        .await?
        .rows_affected()))
    }

    /// Files of `channel` taken and not yet moved away, by state.
    pub async fn files_taken_counts(&self, channel: &str) -> Result<Vec<(String, i64)>> {
        on_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT state, COUNT(*) FROM file_taken WHERE channel = $1 GROUP BY state ORDER BY state",
            )
            .bind(channel)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| -> Result<(String, i64)> { Ok((r.try_get(0)?, r.try_get(1)?)) })
                .collect::<Result<Vec<_>>>()
        })
    }
}
