//! Kubernetes' `Status` errors: the HTTP code, the machine-readable reason,
//! the message kubectl prints, and the fields at fault.

use serde_json::{Value, json};

use crate::resources::Resource;
use crate::storage::StoreError;

/// A field that failed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// Kubernetes' cause type: `FieldValueRequired`, `FieldValueInvalid`, …
    pub reason: &'static str,
    pub message: String,
    /// The field's path: `metadata.name`, `spec.replicas`, …
    pub field: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, value: &str, detail: &str) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: \"{value}\": {detail}"),
            field: field.into(),
        }
    }

    pub fn required(field: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: field.into(),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: &str) -> Self {
        Cause {
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {detail}"),
            field: field.into(),
        }
    }
}

/// An API error, answered as a `Status` object.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Box<Details>>,
}

/// What an error is about, and the fields at fault.
#[derive(Debug)]
pub struct Details {
    pub group: String,
    /// The resource (or, for `Invalid`, the kind).
    pub kind: String,
    pub name: String,
    pub causes: Vec<Cause>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn about(mut self, resource: &Resource, name: &str) -> Self {
        self.details = Some(Box::new(Details {
            group: resource.group.to_owned(),
            kind: resource.plural.to_owned(),
            name: name.to_owned(),
            causes: Vec::new(),
        }));
        self
    }

    /// A `409 Conflict` with a message of its own.
    pub fn conflict_because(message: impl Into<String>) -> Self {
        Self::new(409, "Conflict", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub fn not_found(resource: &Resource, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", resource.qualified()),
        )
        .about(resource, name)
    }

    /// A `404` for an object of a group Keelson serves without storing it
    /// (`podmetrics.metrics.k8s.io "web" not found`).
    pub fn not_found_in(group: &str, kind: &str, name: &str) -> Self {
        let mut error = Self::new(
            404,
            "NotFound",
            format!("{kind}.{group} \"{name}\" not found"),
        );
        error.details = Some(Box::new(Details {
            group: group.to_owned(),
            kind: kind.to_owned(),
            name: name.to_owned(),
            causes: Vec::new(),
        }));
        error
    }

    /// A path that names no resource.
    pub fn no_such_path() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub fn already_exists(resource: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", resource.qualified()),
        )
        .about(resource, name)
    }

    /// A write guarded on a `resourceVersion` that is no longer current.
    pub fn conflict(resource: &Resource, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                resource.qualified()
            ),
        )
        .about(resource, name)
    }

    pub fn invalid(resource: &Resource, name: &str, causes: Vec<Cause>) -> Self {
        let list: Vec<String> = causes
            .iter()
            .map(|c| format!("{}: {}", c.field, c.message))
            .collect();
        let mut error = Self::new(
            422,
            "Invalid",
            format!(
                "{} \"{name}\" is invalid: {}",
                kind_of(resource),
                if list.len() == 1 {
                    list[0].clone()
                } else {
                    format!("[{}]", list.join(", "))
                }
            ),
        );
        error.details = Some(Box::new(Details {
            group: resource.group.to_owned(),
            kind: resource.kind.to_owned(),
            name: name.to_owned(),
            causes,
        }));
        error
    }

    /// A patch that does not apply to the object.
    pub fn invalid_patch(message: impl Into<String>) -> Self {
        Self::new(422, "Invalid", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json (got {content_type:?})"
            ),
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    /// A `resourceVersion` the store has compacted away: clients relist.
    pub fn gone(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    /// A read that could not be served in time (`Timeout`, 504): the
    /// cache did not reach the asked version, or the request ran too long.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(504, "Timeout", message)
    }

    /// Too many requests in flight (`TooManyRequests`, 429): the client
    /// retries after the `Retry-After` the response carries.
    pub fn too_many_requests(message: impl Into<String>) -> Self {
        Self::new(429, "TooManyRequests", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "InternalError", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            let mut details = json!({ "name": d.name, "kind": d.kind });
            if !d.group.is_empty() {
                details["group"] = json!(d.group);
            }
            if !d.causes.is_empty() {
                details["causes"] = d
                    .causes
                    .iter()
                    .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                    .collect();
            }
            status["details"] = details;
        }
        status
    }
}

/// `ConfigMap`, or `Deployment.apps`, as Kubernetes names kinds in messages.
fn kind_of(resource: &Resource) -> String {
    if resource.group.is_empty() {
        resource.kind.to_owned()
    } else {
        format!("{}.{}", resource.kind, resource.group)
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Compacted { requested } => ApiError::gone(format!(
                "The resourceVersion for the provided list is too old (revision {requested} has been compacted)."
            )),
            StoreError::Request(status) if status.message().contains("request is too large") => {
                Self::new(413, "RequestEntityTooLarge", status.message())
            }
            StoreError::Request(status) if status.code() == tonic::Code::Unavailable => {
                ApiError::unavailable(format!("the store is unavailable: {}", status.message()))
            }
            other => ApiError::internal(format!("store error: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::find;

    #[test]
    fn invalid_names_the_fields() {
        let cm = find("", "v1", "configmaps").unwrap();
        let error = ApiError::invalid(
            cm,
            "Bad_Name",
            vec![Cause::invalid(
                "metadata.name",
                "Bad_Name",
                "a lowercase RFC 1123 subdomain",
            )],
        );
        let status = error.to_status();
        assert_eq!(status["code"], 422);
        assert_eq!(status["reason"], "Invalid");
        assert_eq!(status["details"]["causes"][0]["field"], "metadata.name");
        assert_eq!(
            status["message"],
            "ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"
        );
    }

    #[test]
    fn not_found_is_worded_as_kubernetes_words_it() {
        let deploy = find("apps", "v1", "deployments").unwrap();
        let status = ApiError::not_found(deploy, "web").to_status();
        assert_eq!(status["message"], "deployments.apps \"web\" not found");
        assert_eq!(status["details"]["group"], "apps");
    }
}
