//! The route table: each method and path the API serves, and the handler that serves it.
//!
//! The template's `HttpApi` events are checked against [`ROUTES`] (a test holds the two
//! equal), so a new route is its handler in its resource's module plus one line here.
//! A path's `{id}` or `{name}` is the route's parameter; an `{id}` longer than any run or
//! job id is a 404 naming the limit, before anything is looked up.

use futures::future::BoxFuture;

use super::call::Call;
use super::http::{Answer, ApiError};
use super::{jobs, pipelines, runs, status};

pub type Handler = for<'a> fn(&'a Call<'a>) -> BoxFuture<'a, Answer>;

/// One route: a method, a path as the template writes it, and its handler.
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub handler: Handler,
}

/// Every route, as the template declares it to API Gateway.
pub const ROUTES: [Route; 10] = [
    Route { method: "POST", path: "/jobs", handler: |call| Box::pin(jobs::submit(call)) },
    Route { method: "GET", path: "/jobs", handler: |call| Box::pin(jobs::list(call)) },
    Route { method: "GET", path: "/jobs/{id}", handler: |call| Box::pin(jobs::get(call)) },
    Route { method: "DELETE", path: "/jobs/{id}", handler: |call| Box::pin(jobs::cancel(call)) },
    Route { method: "POST", path: "/pipelines/{name}/runs", handler: |call| Box::pin(pipelines::start_run(call)) },
    Route { method: "GET", path: "/runs", handler: |call| Box::pin(runs::list(call)) },
    Route { method: "GET", path: "/runs/{id}", handler: |call| Box::pin(runs::get(call)) },
    Route { method: "DELETE", path: "/runs/{id}", handler: |call| Box::pin(runs::cancel(call)) },
    Route { method: "POST", path: "/runs/{id}/redrive", handler: |call| Box::pin(runs::redrive(call)) },
    Route { method: "GET", path: "/status", handler: |call| Box::pin(status::get(call)) },
];

/// The longest run or job id the API looks up. Batchline's run ids are a pipeline name and
/// 16 hex digits, Batch's job ids 36 characters; a longer one names nothing, and past
/// DynamoDB's 2,048-byte key (or Batch's limits) its lookup would fail rather than find
/// nothing.
pub const MAX_ID_CHARS: usize = 256;

/// The route of `method` and `path`, and the path's parameter: 404 for a path no route
/// has, 405 (naming the methods it has) for a method it does not.
pub fn route(method: &str, path: &str) -> Result<(&'static Route, String), ApiError> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    let matching: Vec<(&'static Route, Option<(String, String)>)> =
        ROUTES.iter().filter_map(|route| Some((route, matches(route.path, &parts)?))).collect();
    let Some((route, param)) = matching.iter().find(|(route, _)| route.method == method) else {
        if matching.is_empty() {
            return Err(ApiError::not_found(format!("no route {method} {path}")));
        }
        let mut methods: Vec<&str> = matching.iter().map(|(route, _)| route.method).collect();
        methods.sort_unstable();
        let allowed = methods.join(", ");
        return Err(ApiError::new(405, "MethodNotAllowed", format!("{method} {path}: allowed methods are {allowed}")));
    };
    match param {
        Some((kind, id)) if kind == "id" => Ok((route, path_id(route.path, id)?)),
        Some((_, value)) => Ok((route, value.clone())),
        None => Ok((route, String::new())),
    }
}

/// Whether `parts` is a path of `pattern`: `Some` with the parameter (its name and value)
/// if the pattern has one.
fn matches(pattern: &str, parts: &[&str]) -> Option<Option<(String, String)>> {
    let pattern: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    if pattern.len() != parts.len() {
        return None;
    }
    let mut param = None;
    for (want, got) in pattern.iter().zip(parts) {
        match want.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
            Some(name) => param = Some((name.to_owned(), (*got).to_owned())),
            None if want == got => {}
            None => return None,
        }
    }
    Some(param)
}

/// An id from a route's path, or a 404 naming the limit when it is too long to be one.
/// The kind (job, run) is the path's first part.
fn path_id(pattern: &str, id: &str) -> Result<String, ApiError> {
    if id.chars().count() <= MAX_ID_CHARS {
        return Ok(id.to_owned());
    }
    let kind = pattern.trim_matches('/').split('/').next().unwrap_or_default().trim_end_matches('s');
    let start: String = id.chars().take(32).collect();
    Err(ApiError::not_found(format!("no {kind} {start}…: {kind} ids are at most {MAX_ID_CHARS} characters")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The route's place in the table and its parameter.
    fn routed(method: &str, path: &str) -> Result<(&'static str, String), ApiError> {
        route(method, path).map(|(route, param)| (route.path, param))
    }

    #[test]
    fn routes_and_their_errors() {
        assert_eq!(routed("POST", "/jobs").unwrap().0, "/jobs");
        assert_eq!(routed("GET", "/jobs/abc").unwrap(), ("/jobs/{id}", "abc".into()));
        assert_eq!(route("DELETE", "/jobs/abc").unwrap().0.method, "DELETE");
        assert_eq!(routed("POST", "/pipelines/nightly/runs").unwrap(), ("/pipelines/{name}/runs", "nightly".into()));
        assert_eq!(routed("GET", "/runs").unwrap().0, "/runs");
        assert_eq!(routed("DELETE", "/runs/r1").unwrap(), ("/runs/{id}", "r1".into()));
        assert_eq!(routed("POST", "/runs/r1/redrive").unwrap(), ("/runs/{id}/redrive", "r1".into()));
        assert_eq!(routed("GET", "/runs/r1/redrive").unwrap_err().status, 405);
        assert_eq!(routed("GET", "/jobs").unwrap().0, "/jobs");
        assert_eq!(routed("GET", "/status").unwrap().0, "/status");
        // an id longer than any run or job id is a 404 naming the limit, before any lookup
        let long = "r".repeat(3_000);
        for (method, path) in [
            ("GET", format!("/runs/{long}")),
            ("DELETE", format!("/runs/{long}")),
            ("POST", format!("/runs/{long}/redrive")),
            ("GET", format!("/jobs/{long}")),
            ("DELETE", format!("/jobs/{long}")),
        ] {
            let refused = routed(method, &path).unwrap_err();
            assert_eq!(refused.status, 404, "{method} {path}");
            assert!(refused.message.contains("ids are at most 256 characters"), "{}", refused.message);
            assert!(refused.message.len() < 200, "the id is not echoed whole");
        }
        assert_eq!(routed("GET", &format!("/runs/{}", "r".repeat(256))).unwrap().1, "r".repeat(256));
        assert_eq!(routed("PUT", "/jobs").unwrap_err().status, 405);
        assert_eq!(routed("GET", "/nothing").unwrap_err().status, 404);
    }
}
