#![allow(unsafe_code)]
//! Safe, blocking wrappers for two Kafka admin APIs that the `rdkafka` crate
//! does not expose: AlterUserScramCredentials (upsertion only) and CreateAcls.
//!
//! Both call librdkafka's C admin API through `rdkafka-sys` on a private
//! result queue and block until the result arrives (or the timeout passes),
//! so run them inside `tokio::task::spawn_blocking`.
//!
//! Besides `allocator` (one `mallopt` call), this is the only module in the
//! workspace allowed to use `unsafe`. Every C
//! object created here is owned by an `Owned` guard, which destroys it
//! exactly once, on every path.

use std::collections::HashSet;
use std::ffi::{CStr, CString, c_char, c_int};
use std::ptr::{self, NonNull};
use std::time::{Duration, Instant};

use rdkafka::admin::AdminClient;
use rdkafka::client::ClientContext;
use rdkafka_sys as sys;

use crate::secret::Secret;

/// SCRAM iteration count. Kafka accepts 4096..=16384.
pub const SCRAM_ITERATIONS: i32 = 8192;

/// Kafka's SECURITY_DISABLED error code.
const SECURITY_DISABLED: c_int = sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_SECURITY_DISABLED as c_int;

/// Largest request timeout librdkafka accepts (one hour).
const MAX_REQUEST_TIMEOUT_MS: u128 = 3_600_000;

/// Extra time we wait on the queue beyond the request timeout, so that
/// librdkafka's own timeout result (which says what it was waiting for)
/// normally arrives before we give up ourselves.
const POLL_GRACE: Duration = Duration::from_secs(2);

/// Errors from this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input was rejected before anything was sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The whole request failed (not one item of it): for example
    /// librdkafka's own timeout, or no broker reachable.
    #[error("{operation} failed: {message} (error code {code})")]
    Request {
        operation: &'static str,
        code: i32,
        message: String,
    },
    /// No result arrived on the queue in time.
    #[error("{operation}: no result from librdkafka within {timeout:?}")]
    Timeout { operation: &'static str, timeout: Duration },
    /// librdkafka behaved in a way its documentation rules out.
    #[error("{operation}: unexpected result from librdkafka: {detail}")]
    Unexpected { operation: &'static str, detail: String },
}

/// Result alias for this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

// ---------------------------------------------------------------------------
// SCRAM credentials
// ---------------------------------------------------------------------------

/// A SCRAM user to create or update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScramUser {
    pub name: String,
    pub password: Secret,
}

/// SASL/SCRAM mechanism of a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramMechanism {
    Sha256,
    Sha512,
}

impl ScramMechanism {
    fn to_native(self) -> sys::rd_kafka_ScramMechanism_t {
        match self {
            ScramMechanism::Sha256 => sys::rd_kafka_ScramMechanism_t::RD_KAFKA_SCRAM_MECHANISM_SHA_256,
            ScramMechanism::Sha512 => sys::rd_kafka_ScramMechanism_t::RD_KAFKA_SCRAM_MECHANISM_SHA_512,
        }
    }
}

/// Creates or updates (upserts) the SCRAM credentials of `users` for
/// `mechanism`, with [`SCRAM_ITERATIONS`] iterations.
///
/// The salt is left to librdkafka, which draws a fresh random 64-byte salt
/// per user from OpenSSL's `RAND_priv_bytes` (the `ssl` feature provides
/// OpenSSL; without it librdkafka rejects upsertions outright). The password
/// itself never leaves the process: librdkafka sends only the salted hash.
///
/// Returns one entry per input user, in input order: the user name and
/// `Ok(())` or the broker's error for that user. `Err` means the request as a
/// whole failed. Blocks for at most about `timeout`.
pub fn upsert_scram_users<C: ClientContext>(
    admin: &AdminClient<C>,
    users: &[ScramUser],
    mechanism: ScramMechanism,
    timeout: Duration,
) -> Result<Vec<(String, Result<(), String>)>> {
    const OP: &str = "AlterUserScramCredentials";
    if users.is_empty() {
        return Ok(Vec::new());
    }

    let mut seen = HashSet::new();
    let mut alterations = Vec::with_capacity(users.len());
    for user in users {
        if user.name.is_empty() {
            return Err(Error::InvalidArgument("empty SCRAM user name".into()));
        }
        if user.password.expose().is_empty() {
            return Err(Error::InvalidArgument(format!(
                "empty password for SCRAM user {:?}",
                user.name
            )));
        }
        if !seen.insert(user.name.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "SCRAM user {:?} listed twice",
                user.name
            )));
        }
        let name = c_string(&user.name, "SCRAM user name")?;
        let password = user.password.expose().as_bytes();
        // SAFETY: `name` is a valid NUL-terminated string and `password`
        // points to `password.len()` readable bytes; librdkafka copies both
        // before returning. A NULL salt with size 0 asks librdkafka to
        // generate a random salt. The returned alteration is owned by us and
        // freed by rd_kafka_UserScramCredentialAlteration_destroy.
        let alteration = unsafe {
            Owned::new(
                sys::rd_kafka_UserScramCredentialUpsertion_new(
                    name.as_ptr(),
                    mechanism.to_native(),
                    SCRAM_ITERATIONS,
                    password.as_ptr(),
                    password.len(),
                    ptr::null(),
                    0,
                ),
                sys::rd_kafka_UserScramCredentialAlteration_destroy,
            )
        }
        .ok_or_else(|| unexpected(OP, "rd_kafka_UserScramCredentialUpsertion_new returned NULL"))?;
        alterations.push(alteration);
    }
    let mut raw: Vec<*mut sys::rd_kafka_UserScramCredentialAlteration_t> =
        alterations.iter().map(Owned::as_ptr).collect();

    let event = run_admin_op(
        admin,
        OP,
        sys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_ALTERUSERSCRAMCREDENTIALS,
        sys::RD_KAFKA_EVENT_ALTERUSERSCRAMCREDENTIALS_RESULT,
        timeout,
        |rk, options, queue| {
            // SAFETY: `rk` is the live client handle, `raw` holds `raw.len()`
            // valid alterations (kept alive by `alterations`), `options` and
            // `queue` are live objects owned by run_admin_op. librdkafka
            // copies the alterations and options; ownership of none of them
            // passes to librdkafka.
            unsafe { sys::rd_kafka_AlterUserScramCredentials(rk, raw.as_mut_ptr(), raw.len(), options, queue) }
        },
    )?;
    // librdkafka holds copies now; ours are no longer needed.
    drop(raw);
    drop(alterations);

    if let Some((code, message)) = event.error() {
        return Err(Error::Request {
            operation: OP,
            code,
            message,
        });
    }
    // SAFETY: `event` is a live event of type ALTERUSERSCRAMCREDENTIALS_RESULT
    // (checked by run_admin_op), for which this accessor returns the event
    // itself viewed as a result, valid as long as the event.
    let result = unsafe { sys::rd_kafka_event_AlterUserScramCredentials_result(event.as_ptr()) };
    if result.is_null() {
        return Err(unexpected(OP, "event carries no AlterUserScramCredentials result"));
    }
    let mut count = 0usize;
    // SAFETY: `result` is valid (see above); librdkafka returns `count`
    // response pointers that live as long as `event`, which the slice borrows.
    let responses = unsafe {
        let array = sys::rd_kafka_AlterUserScramCredentials_result_responses(result, &mut count);
        result_array(&event, array, count)
    };

    let mut answered: Vec<(String, Result<(), String>)> = Vec::with_capacity(responses.len());
    for &response in responses {
        // SAFETY: `response` is an element of the result array (non-NULL,
        // alive as long as `event`); the returned strings and error object
        // are owned by it and only read here.
        let (user, outcome) = unsafe {
            let user = lossy(sys::rd_kafka_AlterUserScramCredentials_result_response_user(response));
            let outcome = match error_of(sys::rd_kafka_AlterUserScramCredentials_result_response_error(response)) {
                None => Ok(()),
                Some((code, message)) => Err(format!("{message} (error code {code})")),
            };
            (user, outcome)
        };
        answered.push((user.unwrap_or_default(), outcome));
    }
    drop(event);

    // Report in input order; the broker's order is not guaranteed.
    Ok(users
        .iter()
        .map(|user| {
            let outcome = match answered.iter().position(|(name, _)| *name == user.name) {
                Some(i) => answered.swap_remove(i).1,
                None => Err("the broker returned no result for this user".to_owned()),
            };
            (user.name.clone(), outcome)
        })
        .collect())
}

// ---------------------------------------------------------------------------
// ACLs
// ---------------------------------------------------------------------------

/// Kind of resource an ACL applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclResourceType {
    Topic,
    Group,
    /// The cluster itself; Kafka expects the resource name `kafka-cluster`
    /// (see [`AclSpec::CLUSTER_NAME`]).
    Cluster,
    TransactionalId,
}

/// How the resource name matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclPatternType {
    /// The name matches exactly (`*` matches every resource).
    Literal,
    /// The name is a prefix of the resources it matches.
    Prefixed,
}

/// Operation an ACL allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclOperation {
    All,
    Read,
    Write,
    Create,
    Delete,
    Alter,
    Describe,
    ClusterAction,
    DescribeConfigs,
    AlterConfigs,
    IdempotentWrite,
}

/// Whether an ACL allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AclPermission {
    Allow,
    Deny,
}

/// One ACL binding to create.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AclSpec {
    pub resource_type: AclResourceType,
    pub resource_name: String,
    pub pattern_type: AclPatternType,
    /// Principal such as `User:alice`.
    pub principal: String,
    /// Host the principal connects from; `*` for any.
    pub host: String,
    pub operation: AclOperation,
    pub permission: AclPermission,
}

impl AclSpec {
    /// Resource name of the cluster resource.
    pub const CLUSTER_NAME: &'static str = "kafka-cluster";

    /// Allows `User:{user}` to perform `operation` on the resource
    /// (literal name) from any host.
    pub fn allow_user(
        resource_type: AclResourceType,
        resource_name: impl Into<String>,
        user: &str,
        operation: AclOperation,
    ) -> Self {
        AclSpec {
            resource_type,
            resource_name: resource_name.into(),
            pattern_type: AclPatternType::Literal,
            principal: format!("User:{user}"),
            host: "*".to_owned(),
            operation,
            permission: AclPermission::Allow,
        }
    }

    /// The same ACL with a prefixed resource pattern.
    pub fn prefixed(mut self) -> Self {
        self.pattern_type = AclPatternType::Prefixed;
        self
    }
}

/// Outcome of creating one ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclOutcome {
    Created,
    /// The broker has no authorizer configured (SECURITY_DISABLED); the
    /// string is the broker's message.
    SecurityDisabled(String),
    /// Any other per-ACL error: message and error code.
    Failed(String),
}

/// Creates the given ACL bindings.
///
/// Returns one outcome per input ACL, in input order. A broker without an
/// authorizer answers every binding with [`AclOutcome::SecurityDisabled`].
/// `Err` means the request as a whole failed. Blocks for at most about
/// `timeout`.
pub fn create_acls<C: ClientContext>(
    admin: &AdminClient<C>,
    acls: &[AclSpec],
    timeout: Duration,
) -> Result<Vec<AclOutcome>> {
    const OP: &str = "CreateAcls";
    if acls.is_empty() {
        return Ok(Vec::new());
    }

    let mut bindings = Vec::with_capacity(acls.len());
    for (i, acl) in acls.iter().enumerate() {
        let name = c_string(&acl.resource_name, "ACL resource name")?;
        let principal = c_string(&acl.principal, "ACL principal")?;
        let host = c_string(&acl.host, "ACL host")?;
        let mut errstr: [c_char; 512] = [0; 512];
        // SAFETY: the strings are valid NUL-terminated strings that
        // librdkafka copies; `errstr` is a writable buffer of the stated
        // size that librdkafka NUL-terminates. The returned binding (NULL on
        // invalid input) is owned by us and freed by rd_kafka_AclBinding_destroy.
        let binding = unsafe {
            Owned::new(
                sys::rd_kafka_AclBinding_new(
                    acl.resource_type.to_native(),
                    name.as_ptr(),
                    acl.pattern_type.to_native(),
                    principal.as_ptr(),
                    host.as_ptr(),
                    acl.operation.to_native(),
                    acl.permission.to_native(),
                    errstr.as_mut_ptr(),
                    errstr.len(),
                ),
                sys::rd_kafka_AclBinding_destroy,
            )
        };
        match binding {
            Some(binding) => bindings.push(binding),
            None => {
                // SAFETY: librdkafka wrote a NUL-terminated message into the
                // zero-initialised buffer (or left it empty).
                let message = unsafe { CStr::from_ptr(errstr.as_ptr()) }
                    .to_string_lossy()
                    .into_owned();
                return Err(Error::InvalidArgument(format!("ACL #{i} ({acl:?}): {message}")));
            }
        }
    }
    let mut raw: Vec<*mut sys::rd_kafka_AclBinding_t> = bindings.iter().map(Owned::as_ptr).collect();

    let event = run_admin_op(
        admin,
        OP,
        sys::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_CREATEACLS,
        sys::RD_KAFKA_EVENT_CREATEACLS_RESULT,
        timeout,
        |rk, options, queue| {
            // SAFETY: `rk` is the live client handle, `raw` holds `raw.len()`
            // valid bindings (kept alive by `bindings`), `options` and
            // `queue` are live objects owned by run_admin_op. librdkafka
            // copies the bindings and options; ownership stays with us.
            unsafe { sys::rd_kafka_CreateAcls(rk, raw.as_mut_ptr(), raw.len(), options, queue) }
        },
    )?;
    drop(raw);
    drop(bindings);

    if let Some((code, message)) = event.error() {
        return if code == SECURITY_DISABLED {
            Ok(acls
                .iter()
                .map(|_| AclOutcome::SecurityDisabled(message.clone()))
                .collect())
        } else {
            Err(Error::Request {
                operation: OP,
                code,
                message,
            })
        };
    }
    // SAFETY: `event` is a live CREATEACLS_RESULT event (checked by
    // run_admin_op); the result is the event itself, valid as long as it.
    let result = unsafe { sys::rd_kafka_event_CreateAcls_result(event.as_ptr()) };
    if result.is_null() {
        return Err(unexpected(OP, "event carries no CreateAcls result"));
    }
    let mut count = 0usize;
    // SAFETY: `result` is valid; librdkafka returns `count` result pointers
    // that live as long as `event`, which the slice borrows.
    let results = unsafe {
        let array = sys::rd_kafka_CreateAcls_result_acls(result, &mut count);
        result_array(&event, array, count)
    };
    if results.len() != acls.len() {
        return Err(unexpected(
            OP,
            &format!("{} results for {} ACLs", results.len(), acls.len()),
        ));
    }
    // librdkafka keeps the results in request order.
    let outcomes = results
        .iter()
        .map(|&acl_result| {
            // SAFETY: `acl_result` is a non-NULL element of the result array,
            // alive as long as `event`; its error (NULL on success) is owned
            // by it and only read here.
            match unsafe { error_of(sys::rd_kafka_acl_result_error(acl_result)) } {
                None => AclOutcome::Created,
                Some((SECURITY_DISABLED, message)) => AclOutcome::SecurityDisabled(message),
                Some((code, message)) => AclOutcome::Failed(format!("{message} (error code {code})")),
            }
        })
        .collect();
    drop(event);
    Ok(outcomes)
}

impl AclResourceType {
    fn to_native(self) -> sys::rd_kafka_ResourceType_t {
        use sys::rd_kafka_ResourceType_t as T;
        match self {
            AclResourceType::Topic => T::RD_KAFKA_RESOURCE_TOPIC,
            AclResourceType::Group => T::RD_KAFKA_RESOURCE_GROUP,
            // librdkafka's BROKER (4) is Kafka's CLUSTER resource type.
            AclResourceType::Cluster => T::RD_KAFKA_RESOURCE_BROKER,
            AclResourceType::TransactionalId => T::RD_KAFKA_RESOURCE_TRANSACTIONAL_ID,
        }
    }
}

impl AclPatternType {
    fn to_native(self) -> sys::rd_kafka_ResourcePatternType_t {
        use sys::rd_kafka_ResourcePatternType_t as T;
        match self {
            AclPatternType::Literal => T::RD_KAFKA_RESOURCE_PATTERN_LITERAL,
            AclPatternType::Prefixed => T::RD_KAFKA_RESOURCE_PATTERN_PREFIXED,
        }
    }
}

impl AclOperation {
    fn to_native(self) -> sys::rd_kafka_AclOperation_t {
        use sys::rd_kafka_AclOperation_t as T;
        match self {
            AclOperation::All => T::RD_KAFKA_ACL_OPERATION_ALL,
            AclOperation::Read => T::RD_KAFKA_ACL_OPERATION_READ,
            AclOperation::Write => T::RD_KAFKA_ACL_OPERATION_WRITE,
            AclOperation::Create => T::RD_KAFKA_ACL_OPERATION_CREATE,
            AclOperation::Delete => T::RD_KAFKA_ACL_OPERATION_DELETE,
            AclOperation::Alter => T::RD_KAFKA_ACL_OPERATION_ALTER,
            AclOperation::Describe => T::RD_KAFKA_ACL_OPERATION_DESCRIBE,
            AclOperation::ClusterAction => T::RD_KAFKA_ACL_OPERATION_CLUSTER_ACTION,
            AclOperation::DescribeConfigs => T::RD_KAFKA_ACL_OPERATION_DESCRIBE_CONFIGS,
            AclOperation::AlterConfigs => T::RD_KAFKA_ACL_OPERATION_ALTER_CONFIGS,
            AclOperation::IdempotentWrite => T::RD_KAFKA_ACL_OPERATION_IDEMPOTENT_WRITE,
        }
    }
}

impl AclPermission {
    fn to_native(self) -> sys::rd_kafka_AclPermissionType_t {
        use sys::rd_kafka_AclPermissionType_t as T;
        match self {
            AclPermission::Allow => T::RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW,
            AclPermission::Deny => T::RD_KAFKA_ACL_PERMISSION_TYPE_DENY,
        }
    }
}

// ---------------------------------------------------------------------------
// Plumbing
// ---------------------------------------------------------------------------

/// The rdkafka-sys declarations of these two functions return
/// `rd_kafka_resp_err_t`, a Rust enum. Broker error codes pass through
/// librdkafka unchanged, so a code that enum does not list (a newer Kafka
/// error, or a non-standard broker) would be an invalid enum value, which is
/// undefined behaviour. These declarations of the same C symbols return the
/// `int` the C ABI actually uses.
mod ffi {
    use std::ffi::c_int;

    use rdkafka_sys::{rd_kafka_error_t, rd_kafka_event_t};

    #[allow(clashing_extern_declarations)]
    unsafe extern "C" {
        pub(super) fn rd_kafka_error_code(error: *const rd_kafka_error_t) -> c_int;
        pub(super) fn rd_kafka_event_error(rkev: *mut rd_kafka_event_t) -> c_int;
    }
}

/// Owns one librdkafka object and destroys it exactly once, on drop.
struct Owned<T> {
    ptr: NonNull<T>,
    destroy: unsafe extern "C" fn(*mut T),
}

impl<T> Owned<T> {
    /// Takes ownership of `ptr`; `None` if it is NULL.
    ///
    /// # Safety
    /// A non-NULL `ptr` must be a live object that the caller owns, nothing
    /// else may destroy it, and `destroy` must be the function that frees it.
    unsafe fn new(ptr: *mut T, destroy: unsafe extern "C" fn(*mut T)) -> Option<Self> {
        NonNull::new(ptr).map(|ptr| Owned { ptr, destroy })
    }

    fn as_ptr(&self) -> *mut T {
        self.ptr.as_ptr()
    }
}

impl<T> Drop for Owned<T> {
    fn drop(&mut self) {
        // SAFETY: by the contract of `Owned::new` we own the object and
        // `destroy` frees it; drop runs once, so it is freed exactly once.
        unsafe { (self.destroy)(self.ptr.as_ptr()) }
    }
}

impl Owned<sys::rd_kafka_event_t> {
    /// The event's request-level error, if any: code and message.
    fn error(&self) -> Option<(c_int, String)> {
        // SAFETY: the event is live; both calls only read it, and the
        // returned string (if any) lives as long as the event.
        unsafe {
            let code = ffi::rd_kafka_event_error(self.as_ptr());
            if code == 0 {
                return None;
            }
            let message =
                lossy(sys::rd_kafka_event_error_string(self.as_ptr())).unwrap_or_else(|| format!("error code {code}"));
            Some((code, message))
        }
    }
}

/// Submits one admin request on a private queue and waits for its result
/// event, which is returned if it has the `expected` type.
///
/// `submit` receives the client handle, the admin options and the queue; it
/// must enqueue exactly one admin request whose result goes to that queue.
fn run_admin_op<C: ClientContext>(
    admin: &AdminClient<C>,
    operation: &'static str,
    for_api: sys::rd_kafka_admin_op_t,
    expected: c_int,
    timeout: Duration,
    submit: impl FnOnce(*mut sys::rd_kafka_t, *const sys::rd_kafka_AdminOptions_t, *mut sys::rd_kafka_queue_t),
) -> Result<Owned<sys::rd_kafka_event_t>> {
    let rk = admin.inner().native_ptr();

    // SAFETY: `rk` is the live client handle (borrowed through `admin`);
    // the new options object is ours and freed by rd_kafka_AdminOptions_destroy.
    let options = unsafe {
        Owned::new(
            sys::rd_kafka_AdminOptions_new(rk, for_api),
            sys::rd_kafka_AdminOptions_destroy,
        )
    }
    .ok_or_else(|| unexpected(operation, "rd_kafka_AdminOptions_new returned NULL"))?;

    let timeout_ms = c_int::try_from(timeout.as_millis().min(MAX_REQUEST_TIMEOUT_MS)).unwrap_or(c_int::MAX);
    let mut errstr: [c_char; 512] = [0; 512];
    // SAFETY: `options` is live; `errstr` is a writable buffer of the stated
    // size that librdkafka NUL-terminates.
    let set = unsafe {
        sys::rd_kafka_AdminOptions_set_request_timeout(options.as_ptr(), timeout_ms, errstr.as_mut_ptr(), errstr.len())
    };
    if set != sys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        // SAFETY: see above; the buffer is NUL-terminated.
        let message = unsafe { CStr::from_ptr(errstr.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        return Err(Error::InvalidArgument(format!(
            "request timeout {timeout:?}: {message}"
        )));
    }

    // SAFETY: `rk` is live; the new queue is ours and freed by
    // rd_kafka_queue_destroy. If we give up before the result arrives,
    // destroying the queue disables it and librdkafka discards the late
    // result itself (the request holds its own reference to the queue).
    let queue = unsafe { Owned::new(sys::rd_kafka_queue_new(rk), sys::rd_kafka_queue_destroy) }
        .ok_or_else(|| unexpected(operation, "rd_kafka_queue_new returned NULL"))?;

    submit(rk, options.as_ptr(), queue.as_ptr());
    // librdkafka copied the options when the request was created.
    drop(options);

    // librdkafka enforces the request timeout itself and then posts a
    // timed-out result; the grace period lets that result arrive.
    let deadline = Instant::now() + timeout + POLL_GRACE;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Error::Timeout { operation, timeout });
        }
        // Round up so that we never busy-loop on sub-millisecond remainders.
        let wait_ms = c_int::try_from(remaining.as_millis().saturating_add(1)).unwrap_or(c_int::MAX);
        // SAFETY: `queue` is live; a returned event is ours and freed by
        // rd_kafka_event_destroy.
        let event = unsafe {
            Owned::new(
                sys::rd_kafka_queue_poll(queue.as_ptr(), wait_ms),
                sys::rd_kafka_event_destroy,
            )
        };
        let Some(event) = event else { continue };
        // SAFETY: `event` is live; this only reads its type.
        let kind = unsafe { sys::rd_kafka_event_type(event.as_ptr()) };
        if kind != expected {
            // SAFETY: `event` is live; the name is a static string.
            let name = unsafe { lossy(sys::rd_kafka_event_name(event.as_ptr())) };
            return Err(unexpected(
                operation,
                &format!(
                    "event of type {kind} ({}) on the result queue",
                    name.unwrap_or_default()
                ),
            ));
        }
        return Ok(event);
    }
}

/// Views a result array owned by `event` as a slice (empty if NULL); the
/// slice borrows `event`, so it cannot outlive it.
///
/// # Safety
/// `array` must be NULL or point to `count` initialised element pointers
/// that librdkafka keeps alive as long as `event`.
unsafe fn result_array<T>(_event: &Owned<sys::rd_kafka_event_t>, array: *mut *const T, count: usize) -> &[*const T] {
    if array.is_null() || count == 0 {
        return &[];
    }
    // SAFETY: guaranteed by the caller's contract; the lifetime is bounded
    // by the borrow of the owning event.
    unsafe { std::slice::from_raw_parts(array.cast_const(), count) }
}

/// Code and message of a librdkafka error object; `None` for NULL or code 0.
///
/// # Safety
/// `error` must be NULL or a live `rd_kafka_error_t`.
unsafe fn error_of(error: *const sys::rd_kafka_error_t) -> Option<(c_int, String)> {
    if error.is_null() {
        return None;
    }
    // SAFETY: `error` is live (caller's contract); both calls only read it and
    // the string lives as long as the error object.
    unsafe {
        let code = ffi::rd_kafka_error_code(error);
        if code == 0 {
            return None;
        }
        let message = lossy(sys::rd_kafka_error_string(error))
            .filter(|m| !m.is_empty() && m != "(null)")
            .unwrap_or_else(|| format!("error code {code}"));
        Some((code, message))
    }
}

/// Copies a C string (lossily), `None` for NULL.
///
/// # Safety
/// `s` must be NULL or a valid NUL-terminated string.
unsafe fn lossy(s: *const c_char) -> Option<String> {
    if s.is_null() {
        None
    } else {
        // SAFETY: non-NULL and NUL-terminated by the caller's contract.
        Some(unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
    }
}

fn c_string(value: &str, what: &str) -> Result<CString> {
    CString::new(value).map_err(|_| Error::InvalidArgument(format!("{what} {value:?} contains a NUL byte")))
}

fn unexpected(operation: &'static str, detail: &str) -> Error {
    Error::Unexpected {
        operation,
        detail: detail.to_owned(),
    }
}
