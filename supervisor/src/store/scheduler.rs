//! The scheduler's tables: the leader's lease (`scheduler_lease`), each job's next due time
//! (`job_state`) and the run history (`job_runs`). SQL only: who leads, when a job is due and
//! what a run does are the scheduler runtime's (`scheduler/`).

use crate::store::BeginWrite;
use serde::Serialize;
use sqlx::Row;
use std::collections::HashMap;
use std::time::Duration;

use super::{Result, Store};

/// Runs kept per job.
pub const RUNS_KEPT: i64 = 100;

/// A job's stored schedule state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    /// The fingerprint of the schedule the due time was computed from.
    pub schedule: String,
    /// Unix ms; -1: no further run.
    pub next_due: i64,
}

/// A due run to claim: the job, its schedule, when it was due, the due time after it.
pub struct Claim {
    pub name: String,
    pub schedule: String,
    pub due: i64,
    pub next: i64,
}

/// One run of a job, as history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    pub job: String,
    /// `schedule` or `manual` (execute now).
    pub trigger: String,
    /// When it was due (Unix ms; scheduled runs).
    pub due: Option<i64>,
    /// When the service was started (Unix ms).
    pub started: i64,
    pub server: String,
    pub duration_ms: Option<i64>,
    /// `ok`, `error` or `skipped` (overlap: the previous run was still going).
    pub outcome: String,
    pub error: Option<String>,
    pub cid: Option<String>,
}

impl Store {
    /// Takes or renews the lease for `me`: true when `me` holds it until `now + ttl`.
    pub async fn take_lease(&self, me: &str, now: i64, ttl: Duration) -> Result<bool> {
        let until = now + ttl.as_millis() as i64;
        let n = on_pool!(self, p => sqlx::query(
            "INSERT INTO scheduler_lease (id, holder, expires_at) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE scheduler_lease.holder = excluded.holder OR scheduler_lease.expires_at < $3",
        )
        .bind(me)
        .bind(until)
        .bind(now)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    /// Hands the lease back (a clean stop), so that another server leads at once.
    pub async fn release_lease(&self, me: &str) -> Result<()> {
        on_pool!(self, p => sqlx::query("DELETE FROM scheduler_lease WHERE id = 1 AND holder = $1")
            .bind(me)
            .execute(p)
            .await
            .map(drop)?);
        Ok(())
    }

    /// Who leads, and until when (Unix ms), if anybody does.
    pub async fn lease(&self) -> Result<Option<(String, i64)>> {
        Ok(on_pool!(self, p => {
            sqlx::query("SELECT holder, expires_at FROM scheduler_lease WHERE id = 1")
                .fetch_optional(p)
                .await?
                .map(|r| -> Result<(String, i64), sqlx::Error> { Ok((r.try_get(0)?, r.try_get(1)?)) })
                .transpose()?
        }))
    }

    /// Every job's stored schedule state, by job name.
    pub async fn job_states(&self) -> Result<HashMap<String, JobState>> {
        on_pool!(self, p => {
            let rows = sqlx::query("SELECT name, schedule, next_due FROM job_state")
                .fetch_all(p)
                .await?;
            let mut out = HashMap::with_capacity(rows.len());
            for r in rows {
                out.insert(
                    r.try_get::<String, _>(0)?,
                    JobState {
                        schedule: r.try_get(1)?,
                        next_due: r.try_get(2)?,
                    },
                );
            }
            Ok(out)
        })
    }

    /// Sets a job's schedule state unless it already has this schedule; the state now stored.
    pub async fn plan_job(&self, name: &str, schedule: &str, next_due: i64) -> Result<JobState> {
        on_pool!(self, p => {
            sqlx::query(
                "INSERT INTO job_state (name, schedule, next_due, fired) VALUES ($1, $2, $3, 0) \
                 ON CONFLICT (name) DO UPDATE SET schedule = excluded.schedule, \
                 next_due = excluded.next_due, fired = 0 WHERE job_state.schedule <> excluded.schedule",
            )
            .bind(name)
            .bind(schedule)
            .bind(next_due)
            .execute(p)
            .await?;
            let r = sqlx::query("SELECT schedule, next_due FROM job_state WHERE name = $1")
                .bind(name)
                .fetch_one(p)
                .await?;
            Ok(JobState {
                schedule: r.try_get(0)?,
                next_due: r.try_get(1)?,
            })
        })
    }

    /// Deletes a job's schedule state (the job is gone).
    pub async fn delete_job_state(&self, name: &str) -> Result<()> {
        on_pool!(self, p => sqlx::query("DELETE FROM job_state WHERE name = $1")
            .bind(name)
            .execute(p)
            .await
            .map(drop)?);
        Ok(())
    }

    /// Claims due runs in one transaction, each moving its job's next due time on: for each,
    /// true for exactly one caller per due time (one fsync for all of them).
    pub async fn claim_runs(&self, claims: &[Claim]) -> Result<Vec<bool>> {
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            let mut won = Vec::with_capacity(claims.len());
            for c in claims {
                let n = sqlx::query(
                    "UPDATE job_state SET next_due = $4, fired = fired + 1 \
                     WHERE name = $1 AND schedule = $2 AND next_due = $3",
                )
                .bind(&c.name)
                .bind(&c.schedule)
                .bind(c.due)
                .bind(c.next)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                won.push(n == 1);
            }
            tx.commit().await?;
            Ok(won)
        })
    }

    /// Appends a run and keeps the last [`RUNS_KEPT`] of its job.
    pub async fn record_run(&self, run: &Run) -> Result<()> {
        self.record_runs(std::slice::from_ref(run)).await
    }

    /// Appends runs in one transaction and keeps the last [`RUNS_KEPT`] of each of their jobs.
    pub async fn record_runs(&self, runs: &[Run]) -> Result<()> {
        let mut jobs: Vec<&str> = runs.iter().map(|r| r.job.as_str()).collect();
        jobs.sort_unstable();
        jobs.dedup();
        on_pool!(self, p => {
            let mut tx = p.begin_write().await?;
            for run in runs {
                sqlx::query(
                    "INSERT INTO job_runs (job, trigger, due, started, server, duration_ms, outcome, error) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&run.job)
                .bind(&run.trigger)
                .bind(run.due)
                .bind(run.started)
                .bind(&run.server)
                .bind(run.duration_ms)
                .bind(&run.outcome)
                .bind(&run.error)
                .execute(&mut *tx)
                .await?;
            }
            for job in jobs {
                sqlx::query(
                    "DELETE FROM job_runs WHERE job = $1 AND id <= \
                     (SELECT id FROM job_runs WHERE job = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
                )
                .bind(job)
                .bind(RUNS_KEPT)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await
        })?;
        Ok(())
    }

    /// The last `limit` runs of `job`, newest first.
    pub async fn runs(&self, job: &str, limit: i64) -> Result<Vec<Run>> {
        on_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT job, trigger, due, started, server, duration_ms, outcome, error \
                 FROM job_runs WHERE job = $1 ORDER BY id DESC LIMIT $2",
            )
            .bind(job)
            .bind(limit)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(Run {
                        job: r.try_get(0)?,
                        trigger: r.try_get(1)?,
                        due: r.try_get(2)?,
                        started: r.try_get(3)?,
                        server: r.try_get(4)?,
                        duration_ms: r.try_get(5)?,
                        outcome: r.try_get(6)?,
                        error: r.try_get(7)?,
                        cid: None,
                    })
                })
                .collect::<Result<Vec<Run>, sqlx::Error>>()
                .map_err(super::StoreError::from)
        })
    }
}
