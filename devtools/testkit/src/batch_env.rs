//! A Fargate Batch environment in the emulator for tests: compute environment, queue, job definition.
//!
//! What bootstrap provisions in production, made directly with the SDK so tests of other
//! parts do not depend on bootstrap. Each call makes a new, uniquely named set.

use aws_config::SdkConfig;
use aws_sdk_batch::types::{
    AssignPublicIp, CeState, CeType, ComputeEnvironmentOrder, ComputeResource, ContainerProperties, CrType,
    JobDefinitionType, JqState, NetworkConfiguration, PlatformCapability, ResourceRequirement, ResourceType,
};
use batchline::Error;

use crate::emulator::{default_network, unique_name};

/// The names and ARNs of a test's Batch environment.
#[derive(Debug, Clone)]
pub struct BatchEnvironment {
    pub name: String,
    pub compute_environment_arn: String,
    pub queue_name: String,
    pub queue_arn: String,
    pub job_definition_name: String,
    pub job_definition_arn: String,
}

impl BatchEnvironment {
    /// Creates a FARGATE compute environment, a queue (priority 1) on it and a job
    /// definition of 0.25 vCPU / 512 MiB, as the recipe does.
    pub async fn create(sdk: &SdkConfig, prefix: &str) -> Result<Self, Error> {
        let batch = aws_sdk_batch::Client::new(sdk);
        let network = default_network();
        let name = unique_name(prefix);
        let environment = batch
            .create_compute_environment()
            .compute_environment_name(&name)
            .r#type(CeType::Managed)
            .state(CeState::Enabled)
            .compute_resources(
                ComputeResource::builder()
                    .r#type(CrType::Fargate)
                    .maxv_cpus(256)
                    .set_subnets(Some(network.subnets))
                    .set_security_group_ids(Some(network.security_groups))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Error::aws("CreateComputeEnvironment", e))?;
        let compute_environment_arn = environment.compute_environment_arn().unwrap_or_default().to_owned();
        let queue = batch
            .create_job_queue()
            .job_queue_name(&name)
            .state(JqState::Enabled)
            .priority(1)
            .compute_environment_order(
                ComputeEnvironmentOrder::builder().order(1).compute_environment(&compute_environment_arn).build(),
            )
            .send()
            .await
            .map_err(|e| Error::aws("CreateJobQueue", e))?;
        let definition = batch
            .register_job_definition()
            .job_definition_name(&name)
            .r#type(JobDefinitionType::Container)
            .platform_capabilities(PlatformCapability::Fargate)
            .container_properties(
                ContainerProperties::builder()
                    .image("public.ecr.aws/docker/library/python:3.12-alpine")
                    .command("python3")
                    .command("-c")
                    .command("print('hello from batchline')")
                    .execution_role_arn(format!("arn:aws:iam::{}:role/{name}-execution", crate::emulator::ACCOUNT_ID))
                    .resource_requirements(requirement(ResourceType::Vcpu, "0.25"))
                    .resource_requirements(requirement(ResourceType::Memory, "512"))
                    .network_configuration(
                        NetworkConfiguration::builder().assign_public_ip(AssignPublicIp::Enabled).build(),
                    )
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Error::aws("RegisterJobDefinition", e))?;
        Ok(BatchEnvironment {
            compute_environment_arn,
            queue_name: name.clone(),
            queue_arn: queue.job_queue_arn().unwrap_or_default().to_owned(),
            job_definition_name: name.clone(),
            job_definition_arn: definition.job_definition_arn().unwrap_or_default().to_owned(),
            name,
        })
    }
}

/// A Fargate resource requirement (`VCPU` or `MEMORY`).
pub fn requirement(kind: ResourceType, value: &str) -> ResourceRequirement {
    ResourceRequirement::builder().r#type(kind).value(value).build()
}
