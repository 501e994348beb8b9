//! What a request says besides its path: query parameters (percent-decoded,
//! booleans read as Go reads them), list continuation tokens, and what to do
//! with fields the schema does not know.

use std::collections::HashMap;

use base64::Engine;
use serde_json::{Value, json};

use crate::object;
use crate::openapi::OpenApi;
use crate::resources::Resource;
use crate::status::ApiError;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Query parameters, percent-decoded.
#[derive(Debug, Default)]
pub(super) struct Query(HashMap<String, String>);

impl Query {
    pub(super) fn parse(query: Option<&str>) -> Self {
        let mut map = HashMap::new();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(decode_component(k), decode_component(v));
        }
        Query(map)
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// A boolean as Go's `strconv.ParseBool` reads it (`true`, `True`, `1`, `t`, …).
    pub(super) fn flag(&self, key: &str) -> bool {
        matches!(
            self.get(key),
            Some("1" | "t" | "T" | "true" | "TRUE" | "True")
        )
    }

    pub(super) fn number(&self, key: &str) -> Result<Option<i64>> {
        self.get(key)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::bad_request(format!("invalid {key}: {v:?}")))
            })
            .transpose()
    }
}

/// A URL query component, decoded (`+` is a space, `%XX` a byte).
pub fn decode_component(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(high), Some(low)) => {
                    out.push(high * 16 + low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn hex(digit: u8) -> Option<u8> {
    char::from(digit).to_digit(16).map(|d| d as u8)
}

/// A list continuation: the revision the list is read at and the next key.
pub(super) fn encode_continue(revision: i64, next_key: &[u8]) -> String {
    let token = json!({"rv": revision, "start": String::from_utf8_lossy(next_key)});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token.to_string())
}

pub(super) fn decode_continue(token: &str) -> Result<(i64, Vec<u8>)> {
    let bad = || ApiError::bad_request("invalid continue token");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let value: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    let revision = value["rv"].as_i64().ok_or_else(bad)?;
    let start = value["start"].as_str().ok_or_else(bad)?;
    Ok((revision, start.as_bytes().to_vec()))
}

/// What to do with fields a request body's schema does not know
/// (`?fieldValidation=`; Kubernetes' default is `Warn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Validation {
    Ignore,
    Warn,
    Strict,
}

impl Validation {
    pub(super) fn from_query(query: &Query) -> Result<Self> {
        match query.get("fieldValidation") {
            None | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of Ignore, Warn or Strict, not {other:?}"
            ))),
        }
    }

    /// Refuses values of the wrong type; refuses, reports or drops unknown fields.
    pub(super) fn check(
        self,
        resource: &Resource,
        object: &mut Value,
        warnings: &mut Vec<String>,
    ) -> Result<()> {
        let refuse = |detail: String| {
            ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: {detail}",
                kind = resource.kind,
                version = resource.version,
            ))
        };
        let unknown = OpenApi::get().check(resource, object).map_err(refuse)?;
        if unknown.is_empty() {
            return Ok(());
        }
        if self == Self::Strict {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            return Err(refuse(format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
        for field in &unknown {
            object::remove_path(object, field);
            if self == Self::Warn {
                warnings.push(format!("unknown field {field:?}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_decoded() {
        let q = Query::parse(Some(
            "labelSelector=app%3Dweb%2Ctier+in+(a)&watch=true&limit=5",
        ));
        assert_eq!(q.get("labelSelector"), Some("app=web,tier in (a)"));
        assert!(q.flag("watch"));
        assert!(
            Query::parse(Some("watch=True")).flag("watch"),
            "as the Python client spells it"
        );
        assert!(!Query::parse(Some("watch=false")).flag("watch"));
        assert_eq!(q.number("limit").unwrap(), Some(5));
        assert!(Query::parse(Some("limit=x")).number("limit").is_err());
        assert_eq!(decode_component("100%"), "100%");
    }

    #[test]
    fn continue_tokens_round_trip_and_reject_garbage() {
        let token = encode_continue(42, b"/registry/pods/default/b\0");
        assert_eq!(
            decode_continue(&token).unwrap(),
            (42, b"/registry/pods/default/b\0".to_vec())
        );
        assert!(decode_continue("not a token!").is_err());
    }
}
