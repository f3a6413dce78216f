//! The `Network` section: the subnets and security groups every Fargate task runs in.

use batchline::model::stack::Network;

use super::document::NetworkDoc;

/// Validates the `Network` section. It has no default: a stack cannot guess which VPC its
/// jobs belong in.
pub(super) fn resolve_network(doc: Option<&NetworkDoc>, problems: &mut Vec<String>) -> Network {
    let Some(n) = doc else {
        problems.push(
            "Network is required: give Subnets and SecurityGroups (the book's Deploy to AWS page shows how to find the default VPC's)"
                .into(),
        );
        return Network { subnets: vec![], security_groups: vec![], assign_public_ip: true };
    };
    let subnets = n.subnets.clone().unwrap_or_default();
    let security_groups = n.security_groups.clone().unwrap_or_default();
    if subnets.is_empty() {
        problems.push("Network.Subnets: give at least one subnet id".into());
    }
    if security_groups.is_empty() {
        problems.push("Network.SecurityGroups: give at least one security group id".into());
    }
    for id in &subnets {
        if !id.starts_with("subnet-") {
            problems.push(format!("Network.Subnets: {id:?} is not a subnet id (subnet-...)"));
        }
    }
    for id in &security_groups {
        if !id.starts_with("sg-") {
            problems.push(format!("Network.SecurityGroups: {id:?} is not a security group id (sg-...)"));
        }
    }
    Network { subnets, security_groups, assign_public_ip: n.assign_public_ip.unwrap_or(true) }
}
