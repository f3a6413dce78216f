//! What a route's handler is given: the request, the path's parameter, the clients, the invocation and the stack configuration.

use batchline::model::stack::StackConfig;
use batchline::store::Holder;

use super::http::HttpRequest;
use crate::Clients;

/// What a handler is given.
pub struct Call<'a> {
    pub request: &'a HttpRequest,
    /// The path's `{id}` or `{name}` (empty for a route without one).
    pub param: String,
    pub clients: &'a Clients,
    /// The invocation serving the request.
    pub holder: &'a Holder,
    pub stack: &'a StackConfig,
}
