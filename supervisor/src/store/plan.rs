//! A config import's changes ([`Plan`]), applied in one transaction with one version bump
//! across every table of the store. Building and validating the plan is the import's
//! (`admin/config_io.rs`); this file writes it.

use super::{Change, Module, Result, Store, StoreError, bump, now_ms};
use super::{validate_module_name, validate_secret_name};
use crate::model::channel::Channel;
use crate::model::job::JobDef;

use super::channels::{gate_columns, insert_channel};
use super::modules::insert_versions;
use super::objects::{job_as_stored, upsert_cache_def, upsert_job, upsert_security};
use super::secrets::upsert_secret;

/// Every change of a config import, applied in one transaction with one version bump.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Channels to create, or to update in place (keeping their routing order) when one of
    /// that name exists.
    pub put_channels: Vec<Channel>,
    pub delete_channels: Vec<String>,
    /// (name, sealed value) to create or replace.
    pub put_secrets: Vec<(String, String)>,
    pub delete_secrets: Vec<String>,
    /// Security definitions to create or replace (secret material sealed), and to delete.
    pub put_security: Vec<crate::model::security::SecurityDef>,
    pub delete_security: Vec<String>,
    /// Cache definitions to create or replace, and to delete (by name).
    pub put_caches: Vec<oxbus_cache::CacheDef>,
    pub delete_caches: Vec<String>,
    /// Scheduler jobs to create or replace (`start_date` left out: see
    /// [`JobDef::as_stored`]), and to delete (by name).
    pub put_jobs: Vec<JobDef>,
    pub delete_jobs: Vec<String>,
    /// (name, source): a new active version each.
    pub deploy_modules: Vec<(String, String)>,
    pub undeploy_modules: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.put_channels.is_empty()
            && self.delete_channels.is_empty()
            && self.put_secrets.is_empty()
            && self.delete_secrets.is_empty()
            && self.put_security.is_empty()
            && self.delete_security.is_empty()
            && self.put_caches.is_empty()
            && self.delete_caches.is_empty()
            && self.put_jobs.is_empty()
            && self.delete_jobs.is_empty()
            && self.deploy_modules.is_empty()
            && self.undeploy_modules.is_empty()
    }
}

impl Store {
    /// Applies a whole plan in one transaction with one config version: every change or none.
    /// Returns the module versions it deployed. The caller validates the plan first (channels
    /// route unambiguously, modules were checked in a worker, secrets are sealed).
    pub async fn apply(&self, plan: &Plan, by: &str) -> Result<Change<Vec<Module>>> {
        for (name, _) in &plan.deploy_modules {
            validate_module_name(name)?;
        }
        for (name, _) in &plan.put_secrets {
            validate_secret_name(name)?;
        }
        for d in &plan.put_caches {
            d.validate()
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        for d in &plan.put_jobs {
            d.validate()
                .map_err(|e| StoreError::Invalid(e.to_string()))?;
        }
        let at = now_ms();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for name in &plan.delete_channels {
                sqlx::query("DELETE FROM channels WHERE name = $1").bind(name).execute(&mut *tx).await?;
            }
            for c in &plan.put_channels {
                // In place when it exists: a channel keeps its place in the routing order.
                let name = c.name.clone().unwrap_or_else(|| c.url_path.clone());
                let methods = serde_json::to_string(&c.methods).expect("a list of strings");
                let (security, allow_from, rate_limit) = gate_columns(c);
                let services = serde_json::to_string(&c.services).expect("a list of strings");
                let updated = sqlx::query(
                    "UPDATE channels SET url_path = $2, methods = $3, service = $4, data_format = $5, \
                     security = $6, allow_from = $7, rate_limit = $8, channel_type = $9, services = $10 \
                     WHERE name = $1",
                )
                .bind(&name)
                .bind(&c.url_path)
                .bind(&methods)
                .bind(&c.service)
                .bind(c.data_format.as_str())
                .bind(security)
                .bind(allow_from)
                .bind(rate_limit)
                .bind(c.channel_type.as_str())
                .bind(&services)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if updated == 0 {
                    insert_channel!(tx, c, &name);
                }
            }
            // Definitions before channels are written and after they are deleted would need
            // two passes; there are no foreign keys, so one order serves: the import checked
            // that every channel's definition exists in the resulting config.
            for name in &plan.delete_security {
                sqlx::query("DELETE FROM security_defs WHERE name = $1").bind(name).execute(&mut *tx).await?;
            }
            for d in &plan.put_security {
                upsert_security!(tx, d, by);
            }
            for name in &plan.delete_caches {
                sqlx::query("DELETE FROM cache_defs WHERE name = $1").bind(name).execute(&mut *tx).await?;
            }
            for d in &plan.put_caches {
                upsert_cache_def!(tx, d, by);
            }
            for name in &plan.delete_jobs {
                sqlx::query("DELETE FROM jobs WHERE name = $1").bind(name).execute(&mut *tx).await?;
            }
            for d in &plan.put_jobs {
                let (d, _) = job_as_stored!(tx, d);
                upsert_job!(tx, &d, by);
            }
            for name in &plan.delete_secrets {
                sqlx::query("DELETE FROM secrets WHERE name = $1").bind(name).execute(&mut *tx).await?;
            }
            for (name, sealed) in &plan.put_secrets {
                upsert_secret!(tx, name, sealed, by);
            }
            for name in &plan.undeploy_modules {
                sqlx::query("UPDATE service_modules SET active = FALSE WHERE name = $1 AND active")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM module_services WHERE module = $1")
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            }
            let deployed = insert_versions!(tx, &plan.deploy_modules, by, at);
            let config_version = bump(&mut tx).await?;
            tx.commit().await?;
            Ok(Change { config_version, value: deployed })
        })
    }
}
