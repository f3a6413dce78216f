//! What a job costs: each task it ran priced by the capacity it ran on (Fargate or Fargate Spot), its architecture and its size, per second with Fargate's one-minute minimum.
//!
//! **Which capacity.** A Batch attempt names its ECS task (`taskArn`,
//! `arn:…:task/<cluster name>/<task id>`), and every compute environment has its own ECS
//! cluster (`ecsClusterArn`, which bootstrap publishes with the configuration). So the
//! cluster in the task's ARN names the compute environment, and its type tells Fargate from
//! Fargate Spot exactly. A task whose cluster matches none of the stack's compute
//! environments (an older task ARN format, an environment since replaced) is priced
//! on-demand, and the figure is marked an upper bound.
//!
//! **Rates** (USD, US East (N. Virginia), Linux): on-demand x86_64 $0.04048 per vCPU-hour and
//! $0.004445 per GB-hour, ARM64 $0.03238 and $0.00356; Fargate Spot (x86_64 only) $0.012648
//! and $0.001389 — a snapshot, since Spot prices move. Every rate can be overridden per stack
//! (`BATCHLINE_PRICE_*`, see the configuration).
//!
//! **Accuracy.** Fargate bills from the start of the image pull to the task's stop; Batch's
//! `startedAt` is when the container started, after the pull. The figure therefore misses
//! the pull time (seconds for a small image, a minute or more for a large one) and the
//! ephemeral storage above the free 20 GiB; it is an estimate, not the bill.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::batch_event::JobDetail;
use crate::model::fargate::Size;
use crate::model::stack::{ComputeType, StackConfig};
use crate::settings::PriceOverrides;

/// USD per vCPU-hour and per GB-hour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Prices {
    pub vcpu_hour: f64,
    pub gb_hour: f64,
}

pub const X86_64_PRICES: Prices = Prices { vcpu_hour: 0.04048, gb_hour: 0.004445 };
pub const ARM64_PRICES: Prices = Prices { vcpu_hour: 0.03238, gb_hour: 0.00356 };
pub const SPOT_X86_64_PRICES: Prices = Prices { vcpu_hour: 0.012648, gb_hour: 0.001389 };

/// Fargate bills at least this long per task.
const MINIMUM_BILLED_SECONDS: u64 = 60;

/// The rates a stack prices with: the built-in ones, with its overrides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub x86_64: Prices,
    pub arm64: Prices,
    pub spot: Prices,
}

impl Rates {
    pub fn with(overrides: &PriceOverrides) -> Rates {
        let over = |base: Prices, vcpu: Option<f64>, gb: Option<f64>| Prices {
            vcpu_hour: vcpu.unwrap_or(base.vcpu_hour),
            gb_hour: gb.unwrap_or(base.gb_hour),
        };
        Rates {
            x86_64: over(X86_64_PRICES, overrides.vcpu_hour, overrides.gb_hour),
            arm64: over(ARM64_PRICES, overrides.vcpu_hour, overrides.gb_hour),
            spot: over(SPOT_X86_64_PRICES, overrides.spot_vcpu_hour, overrides.spot_gb_hour),
        }
    }

    /// The rates for a task on `capacity` of `architecture` (x86_64 unless it says ARM64).
    /// Spot runs x86_64 only, so an ARM64 task is priced on-demand whatever it claims.
    fn for_task(&self, capacity: Capacity, architecture: Option<&str>) -> Prices {
        let arm = architecture.is_some_and(|a| a.eq_ignore_ascii_case("ARM64"));
        match (capacity, arm) {
            (_, true) => self.arm64,
            (Capacity::FargateSpot, false) => self.spot,
            (_, false) => self.x86_64,
        }
    }
}

/// Where a task ran, as far as its cluster tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Capacity {
    Fargate,
    FargateSpot,
    /// Not one of the stack's compute environments: priced on-demand, an upper bound.
    Unknown,
}

/// One task a job ran (one Batch attempt): the cluster it ran on and how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BilledTask {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    pub started_at: i64,
    pub stopped_at: i64,
}

/// Many tasks' billed time, summed by the cluster they ran on and their CPU architecture:
/// what a map records of its children (a handful of facts per array, never one per child).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BilledSum {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    pub tasks: u64,
    /// Billable seconds: each task's own, its one-minute minimum included, summed.
    pub seconds: u64,
}

/// Adds a job's tasks to `sums`, by cluster and architecture.
pub fn add_billed(sums: &mut Vec<BilledSum>, architecture: Option<&str>, tasks: &[BilledTask]) {
    for task in tasks {
        let seconds = billable_seconds(task.started_at, task.stopped_at);
        let same = |s: &&mut BilledSum| s.cluster == task.cluster && s.architecture.as_deref() == architecture;
        match sums.iter_mut().find(same) {
            Some(sum) => {
                sum.tasks += 1;
                sum.seconds += seconds;
            }
            None => sums.push(BilledSum {
                cluster: task.cluster.clone(),
                architecture: architecture.map(str::to_owned),
                tasks: 1,
                seconds,
            }),
        }
    }
}

/// The tasks a job ran, from its event or description: each attempt that started and
/// stopped (a job without attempts listed, its own start and stop).
pub fn billed_tasks(detail: &JobDetail) -> Vec<BilledTask> {
    let cluster = |task_arn: Option<&String>| task_arn.and_then(|arn| cluster_of_task(arn)).map(str::to_owned);
    let mut tasks: Vec<BilledTask> = detail
        .attempts()
        .iter()
        .filter_map(|attempt| {
            let task = attempt.container.as_ref().and_then(|c| c.task_arn.as_ref());
            Some(BilledTask {
                cluster: cluster(task),
                started_at: attempt.started_at?,
                stopped_at: attempt.stopped_at?,
            })
        })
        .collect();
    if tasks.is_empty() {
        if let (Some(started_at), Some(stopped_at)) = (detail.started_at, detail.stopped_at) {
            let task = detail.container.as_ref().and_then(|c| c.task_arn.as_ref());
            tasks.push(BilledTask { cluster: cluster(task), started_at, stopped_at });
        }
    }
    tasks
}

/// The cluster name in a task ARN (`arn:…:task/<cluster>/<id>`); `None` in the old format
/// (`task/<id>`), which does not name it.
pub fn cluster_of_task(task_arn: &str) -> Option<&str> {
    let resource = task_arn.split_once(":task/")?.1;
    let (cluster, _task) = resource.split_once('/')?;
    Some(cluster)
}

/// Which capacity each of the stack's ECS clusters is, by cluster name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Clusters(BTreeMap<String, Capacity>);

impl Clusters {
    pub fn of(config: &StackConfig) -> Clusters {
        Clusters(
            config
                .compute_environments
                .values()
                .filter_map(|ce| {
                    let name = ce.ecs_cluster_arn.as_deref()?.rsplit_once("cluster/")?.1;
                    let capacity = match ce.kind {
                        ComputeType::Fargate => Capacity::Fargate,
                        ComputeType::FargateSpot => Capacity::FargateSpot,
                    };
                    Some((name.to_owned(), capacity))
                })
                .collect(),
        )
    }

    fn capacity(&self, cluster: Option<&str>) -> Capacity {
        cluster.and_then(|name| self.0.get(name)).copied().unwrap_or(Capacity::Unknown)
    }
}

/// What pricing needs: the stack's clusters and its rates.
#[derive(Debug, Clone, PartialEq)]
pub struct Pricing {
    pub clusters: Clusters,
    pub rates: Rates,
}

/// One task's price.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskCost {
    pub usd: f64,
    pub billable_seconds: u64,
    pub capacity: Capacity,
}

/// A job's (or an attempt's) price: its tasks, their sum, and whether any was priced
/// on-demand for want of knowing its capacity.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    pub usd: f64,
    pub upper_bound: bool,
    pub tasks: Vec<TaskCost>,
}

impl Cost {
    pub fn add(&mut self, other: &Cost) {
        self.usd += other.usd;
        self.upper_bound |= other.upper_bound;
        self.tasks.extend(other.tasks.iter().cloned());
    }
}

/// USD for a task of `size` running `seconds`, at `prices`.
pub fn price_seconds(size: Size, seconds: u64, prices: Prices) -> f64 {
    let hourly = size.vcpu_f64() * prices.vcpu_hour + (size.memory_mib as f64 / 1024.0) * prices.gb_hour;
    hourly * seconds as f64 / 3600.0
}

impl Pricing {
    /// A stack's pricing: its clusters and its rates with these overrides.
    pub fn of(stack: &StackConfig, overrides: &PriceOverrides) -> Pricing {
        Pricing { clusters: Clusters::of(stack), rates: Rates::with(overrides) }
    }

    /// Pricing without the stack's clusters: every task on-demand, an upper bound.
    pub fn on_demand(overrides: &PriceOverrides) -> Pricing {
        Pricing { clusters: Clusters::default(), rates: Rates::with(overrides) }
    }

    /// The price of the tasks a job of `size` ran.
    pub fn price(&self, size: Size, architecture: Option<&str>, tasks: &[BilledTask]) -> Cost {
        let mut cost = Cost::default();
        for task in tasks {
            let capacity = self.clusters.capacity(task.cluster.as_deref());
            let seconds = billable_seconds(task.started_at, task.stopped_at);
            let usd = price_seconds(size, seconds, self.rates.for_task(capacity, architecture));
            cost.usd += usd;
            cost.upper_bound |= capacity == Capacity::Unknown;
            cost.tasks.push(TaskCost { usd, billable_seconds: seconds, capacity });
        }
        cost
    }

    /// The price of summed tasks (a map's children) at `size`: one entry per sum.
    pub fn price_sums(&self, size: Size, sums: &[BilledSum]) -> Cost {
        let mut cost = Cost::default();
        for sum in sums {
            let capacity = self.clusters.capacity(sum.cluster.as_deref());
            let usd = price_seconds(size, sum.seconds, self.rates.for_task(capacity, sum.architecture.as_deref()));
            cost.usd += usd;
            cost.upper_bound |= capacity == Capacity::Unknown;
            cost.tasks.push(TaskCost { usd, billable_seconds: sum.seconds, capacity });
        }
        cost
    }

    /// The price of a job as its event or description reports it; `None` without a size,
    /// and for an array job's parent: its children ran the tasks (each priced by its own
    /// event or description), and the parent's own start and stop span them all, so
    /// pricing it as one task would be wrong by about the array's size.
    pub fn price_job(&self, detail: &JobDetail) -> Option<Cost> {
        if detail.is_array_parent() {
            return None;
        }
        Some(self.price(detail.size()?, detail.cpu_architecture(), &billed_tasks(detail)))
    }

    /// The on-demand price of `seconds` at `size`: what a budget plans with (the capacity
    /// a job will get is not known before it runs, so a plan assumes the dearer one).
    pub fn estimate(&self, size: Size, seconds: u64) -> f64 {
        price_seconds(size, seconds.max(MINIMUM_BILLED_SECONDS), self.rates.x86_64)
    }
}

/// Seconds Fargate bills for a task that ran from `started_at` to `stopped_at` (ms):
/// per second, rounded up, at least a minute.
pub fn billable_seconds(started_at: i64, stopped_at: i64) -> u64 {
    let millis = u64::try_from(stopped_at.saturating_sub(started_at)).unwrap_or(0);
    millis.div_ceil(1000).max(MINIMUM_BILLED_SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fargate::Quarters;

    const ONE_VCPU_2GB: Size = Size { vcpu: Quarters(4), memory_mib: 2048 };

    fn pricing() -> Pricing {
        Pricing {
            clusters: Clusters(BTreeMap::from([
                ("AWSBatch-main".to_owned(), Capacity::Fargate),
                ("AWSBatch-spot".to_owned(), Capacity::FargateSpot),
            ])),
            rates: Rates::with(&PriceOverrides::default()),
        }
    }

    fn task(cluster: Option<&str>, seconds: i64) -> BilledTask {
        BilledTask { cluster: cluster.map(str::to_owned), started_at: 1_000, stopped_at: 1_000 + seconds * 1000 }
    }

    #[test]
    fn an_array_parent_is_not_priced_as_one_task_its_children_are() {
        let job = |array: serde_json::Value| {
            let value = serde_json::json!({"id": "e", "detail-type": "Batch Job State Change", "source": "aws.batch",
                "detail": {"jobId": "p", "status": "SUCCEEDED", "startedAt": 0, "stoppedAt": 3_600_000,
                           "arrayProperties": array,
                           "container": {"resourceRequirements": [{"type": "VCPU", "value": "1"}, {"type": "MEMORY", "value": "2048"}]}}});
            crate::model::batch_event::JobStateChangeEvent::from_value(value).unwrap().detail
        };
        let pricing = pricing();
        // a 1,000-child array's parent spans an hour: not one task for an hour
        assert_eq!(pricing.price_job(&job(serde_json::json!({"size": 1000}))), None);
        let child = pricing.price_job(&job(serde_json::json!({"index": 7}))).unwrap();
        assert!(child.usd > 0.0);
    }

    #[test]
    fn the_cluster_in_a_task_arn_names_its_capacity() {
        assert_eq!(cluster_of_task("arn:aws:ecs:us-east-1:123456789012:task/AWSBatch-spot/abc"), Some("AWSBatch-spot"));
        assert_eq!(cluster_of_task("arn:aws:ecs:us-east-1:123456789012:task/abc"), None, "the old format");
        let pricing = pricing();
        assert_eq!(pricing.clusters.capacity(Some("AWSBatch-spot")), Capacity::FargateSpot);
        assert_eq!(pricing.clusters.capacity(Some("elsewhere")), Capacity::Unknown);
    }

    #[test]
    fn spot_tasks_are_priced_at_spot_rates_and_on_demand_ones_at_on_demand_rates() {
        let pricing = pricing();
        let hour = 3600;
        let on_demand = pricing.price(ONE_VCPU_2GB, None, &[task(Some("AWSBatch-main"), hour)]);
        assert!((on_demand.usd - (0.04048 + 2.0 * 0.004445)).abs() < 1e-9, "{on_demand:?}");
        assert!(!on_demand.upper_bound);
        let spot = pricing.price(ONE_VCPU_2GB, Some("X86_64"), &[task(Some("AWSBatch-spot"), hour)]);
        assert!((spot.usd - (0.012648 + 2.0 * 0.001389)).abs() < 1e-9, "{spot:?}");
        assert_eq!(spot.tasks[0].capacity, Capacity::FargateSpot);
        let arm = pricing.price(ONE_VCPU_2GB, Some("ARM64"), &[task(Some("AWSBatch-main"), hour)]);
        assert!((arm.usd - (0.03238 + 2.0 * 0.00356)).abs() < 1e-9, "{arm:?}");
    }

    #[test]
    fn an_unmatched_task_is_priced_on_demand_as_an_upper_bound_and_tasks_add_up() {
        let pricing = pricing();
        let cost = pricing.price(ONE_VCPU_2GB, None, &[task(None, 3600), task(Some("AWSBatch-spot"), 3600)]);
        assert!(cost.upper_bound);
        assert_eq!(cost.tasks[0].capacity, Capacity::Unknown);
        let expected = (0.04048 + 2.0 * 0.004445) + (0.012648 + 2.0 * 0.001389);
        assert!((cost.usd - expected).abs() < 1e-9, "{cost:?}");
    }

    #[test]
    fn billing_is_per_second_rounded_up_with_a_one_minute_minimum() {
        assert_eq!(billable_seconds(0, 5_000), 60);
        assert_eq!(billable_seconds(0, 90_001), 91);
        assert_eq!(billable_seconds(10, 0), 60, "a clock that went back bills the minimum");
    }

    #[test]
    fn overrides_replace_the_built_in_rates() {
        let overrides = PriceOverrides {
            vcpu_hour: Some(1.0),
            gb_hour: Some(0.0),
            spot_vcpu_hour: Some(0.5),
            ..PriceOverrides::default()
        };
        let rates = Rates::with(&overrides);
        assert_eq!(rates.x86_64, Prices { vcpu_hour: 1.0, gb_hour: 0.0 });
        assert_eq!(rates.arm64, Prices { vcpu_hour: 1.0, gb_hour: 0.0 });
        assert_eq!(rates.spot, Prices { vcpu_hour: 0.5, gb_hour: SPOT_X86_64_PRICES.gb_hour });
    }
}
