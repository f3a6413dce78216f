//! Idempotency keys of API requests: the caller's `Idempotency-Key` (one request within its window, the caller's alone) or the request's own id.
//!
//! A caller's key is one request for [`KEY_WINDOW_MS`] from its first use; used again
//! after that, it is new work under the key's next *generation* (`<key>#2`, `#3`, ...).
//! Which generation is live is kept in the key's generation record, so a generation whose
//! claims or runs DynamoDB's TTL removed never looks unused again.

use std::future::Future;

use batchline::store::{ClaimStore, KeyGeneration};
use batchline::Error;

use super::http::{ApiError, HttpRequest};

pub use batchline::model::job_request::KEY_WINDOW_MS;

/// How often a key's generation record is read again after another request moved it.
const KEY_GENERATION_WRITES: usize = 8;

/// The idempotency key of an API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKey {
    /// The caller's `Idempotency-Key`: retries within [`KEY_WINDOW_MS`] are one request.
    Caller(String),
    /// No key given: this request alone (every POST without a key is new work).
    Request(String),
}

impl ApiKey {
    /// The key of the `generation`th use of a caller's key (a new one each window).
    pub fn generation(base: &str, generation: u32) -> String {
        if generation <= 1 {
            base.to_owned()
        } else {
            format!("{base}#{generation}")
        }
    }
}

/// The idempotency key of an API request: the `Idempotency-Key` header, the caller's own
/// (see [`caller_key`]), or else this request's own id (`fallback_id` when API Gateway gave
/// none).
pub fn idempotency_key(request: &HttpRequest, route: &str, fallback_id: &str) -> Result<ApiKey, ApiError> {
    match request.headers.get("idempotency-key") {
        Some(key) if key.is_empty() || key.len() > 255 => {
            Err(ApiError::bad_request("Idempotency-Key has 1 to 255 visible ASCII characters"))
        }
        Some(key) => Ok(ApiKey::Caller(caller_key(route, request.caller.as_deref(), key))),
        None => {
            let id = if request.request_id.is_empty() { fallback_id } else { &request.request_id };
            Ok(ApiKey::Request(format!("api:{route}:request:{id}")))
        }
    }
}

/// A caller's key as stored: scoped to the route and to the calling principal, so a key
/// one caller used — guessed or not — is never another's; and with `%` and `#` escaped, so
/// a literal key (`foo#2`) never reads as a later generation of another (`foo`, see
/// [`ApiKey::generation`]). A key of no principal (an API without an authorizer, as
/// locally) is scoped to the route only, as before.
pub fn caller_key(route: &str, caller: Option<&str>, key: &str) -> String {
    let key = key.replace('%', "%25").replace('#', "%23");
    match caller {
        Some(caller) => format!("api:{route}:caller:{caller}:key:{key}"),
        None => format!("api:{route}:key:{key}"),
    }
}

/// The key a request goes under: its own, or the live generation of the caller's (see
/// [`live_key`]; `first_use` says when a generation was first used, if ever).
pub async fn request_key<F, Fut>(key: ApiKey, store: &dyn ClaimStore, first_use: F) -> Result<String, Error>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Option<i64>, Error>>,
{
    match key {
        ApiKey::Request(key) => Ok(key),
        ApiKey::Caller(base) => live_key(store, &base, first_use).await,
    }
}

/// The generation of a caller's idempotency key that is live now. The key's generation
/// record says which ([`KeyGeneration`]): within its window, that one; past it, the next,
/// recorded conditionally so that two requests at once agree. A key without a record (its
/// first use, or last used before this release) is walked from its first generation: the
/// first whose first use (`first_use`, epoch ms, `None` if never used) is within the
/// window, or unused. The record outlives the key's claims and runs, so an older
/// generation whose items DynamoDB's TTL removed never looks unused again.
pub async fn live_key<F, Fut>(store: &dyn ClaimStore, base: &str, first_use: F) -> Result<String, Error>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Option<i64>, Error>>,
{
    let now = batchline::now_ms();
    for _ in 0..KEY_GENERATION_WRITES {
        let current = store.key_generation(base).await?;
        let next = match current {
            Some(live) if now - live.first_use_ms < KEY_WINDOW_MS => {
                return Ok(ApiKey::generation(base, live.generation))
            }
            Some(live) => KeyGeneration { generation: live.generation + 1, first_use_ms: now },
            None => first_live_generation(base, &first_use, now).await?,
        };
        if store.set_key_generation(base, current.as_ref(), &next).await? {
            return Ok(ApiKey::generation(base, next.generation));
        }
    }
    Err(Error::Contention(format!("the generation of idempotency key {base:?}")))
}

/// A key's live generation found from its items alone (see [`live_key`]).
async fn first_live_generation<F, Fut>(base: &str, first_use: &F, now: i64) -> Result<KeyGeneration, Error>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<Option<i64>, Error>>,
{
    let mut generation = 1;
    loop {
        match first_use(ApiKey::generation(base, generation)).await? {
            Some(at) if now - at >= KEY_WINDOW_MS => generation += 1,
            at => return Ok(KeyGeneration { generation, first_use_ms: at.unwrap_or(now) }),
        }
    }
}
