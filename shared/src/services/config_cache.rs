//! The stack configuration bootstrap published, cached per container.
//!
//! A container reads it on first use and again after [`REFRESH_AFTER`], so a `sam deploy`
//! that changes pipelines or triggers reaches running functions within a minute without
//! reading the table on every event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::RwLock;
use tracing::warn;

use crate::model::cost::Pricing;
use crate::model::stack::StackConfig;
use crate::settings::PriceOverrides;
use crate::store::ConfigStore;
use crate::Error;

pub const REFRESH_AFTER: Duration = Duration::from_secs(60);

pub struct ConfigCache {
    store: Arc<dyn ConfigStore>,
    cached: RwLock<Option<(Instant, Arc<StackConfig>)>>,
}

impl ConfigCache {
    pub fn new(store: Arc<dyn ConfigStore>) -> Self {
        ConfigCache { store, cached: RwLock::new(None) }
    }

    /// The configuration, from the cache when fresh; [`Error::NotDeployed`] before bootstrap has published one.
    pub async fn get(&self) -> Result<Arc<StackConfig>, Error> {
        if let Some((read_at, config)) = self.cached.read().await.as_ref() {
            if read_at.elapsed() < REFRESH_AFTER {
                return Ok(config.clone());
            }
        }
        let config = Arc::new(self.store.load_config().await?.ok_or(Error::NotDeployed)?);
        *self.cached.write().await = Some((Instant::now(), config.clone()));
        Ok(config)
    }

    /// The configuration read anew from the table (and cached): for a decision a stale one
    /// (up to [`REFRESH_AFTER`] old) must not make, such as refusing work after a deploy.
    pub async fn fresh(&self) -> Result<Arc<StackConfig>, Error> {
        let config = Arc::new(self.store.load_config().await?.ok_or(Error::NotDeployed)?);
        *self.cached.write().await = Some((Instant::now(), config.clone()));
        Ok(config)
    }

    /// How the stack prices jobs (its clusters, these rates); on-demand, as an upper bound,
    /// when its configuration cannot be read — a cost is no reason to hold work back.
    pub async fn pricing(&self, overrides: &PriceOverrides) -> Pricing {
        match self.get().await {
            Ok(stack) => Pricing::of(&stack, overrides),
            Err(err) => {
                warn!(error = %err, "no configuration: costs are priced on-demand, as upper bounds");
                Pricing::on_demand(overrides)
            }
        }
    }
}
