//! PutMetricData: planned datums as the CloudWatch API takes them.

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
