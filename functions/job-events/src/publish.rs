//! PutMetricData: planned datums as the CloudWatch API takes them, sent once per delivery.
//!
//! CloudWatch has no idempotency: a call whose reply is lost has counted its datums, and
//! the events' redelivery counts them again. That is the one place Batchline's metrics are
//! at-least-once (see the book's Guarantees, docs/src/explanations/guarantees.md). The SDK's own retries are off for this
//! call so that they add no more: a failed call releases its events' claims and their
//! messages are redelivered, which is the one retry.

use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
use batchline::model::metrics::Datum;
use batchline::Error;

/// Sends one planned call's datums.
pub async fn put_metric_data(
    cloudwatch: &aws_sdk_cloudwatch::Client,
    namespace: &str,
    datums: &[Datum],
) -> Result<(), Error> {
    let datums: Vec<MetricDatum> = datums.iter().map(to_sdk).collect();
    cloudwatch
        .put_metric_data()
        .namespace(namespace)
        .set_metric_data(Some(datums))
        .customize()
        .config_override(
            aws_sdk_cloudwatch::config::Builder::default()
                .retry_config(aws_sdk_cloudwatch::config::retry::RetryConfig::disabled()),
        )
        .send()
        .await
        .map_err(|e| Error::aws("PutMetricData", e))?;
    Ok(())
}

fn to_sdk(datum: &Datum) -> MetricDatum {
    MetricDatum::builder()
        .metric_name(datum.metric)
        .set_dimensions(Some(
            datum
                .dimensions
                .iter()
                .map(|(name, value)| Dimension::builder().name(*name).value(value).build())
                .collect(),
        ))
        .unit(StandardUnit::from(datum.unit.as_str()))
        .timestamp(DateTime::from_millis(datum.timestamp_ms))
        .set_values(Some(datum.values.clone()))
        .set_counts(Some(datum.counts.clone()))
        .build()
}
