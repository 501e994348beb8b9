//! etcd's answer to a message over the gRPC size limit.
//!
//! gRPC-Go (etcd's gRPC layer) refuses a request larger than its receive
//! limit with `ResourceExhausted "grpc: received message larger than max (N
//! vs. M)"`; tonic refuses it with `OutOfRange` and its own wording. Clients
//! written against etcd look for the former, so this layer rewrites tonic's
//! refusal — which arrives "trailers-only", in the response headers — into
//! etcd's. Nothing else is touched.

use tonic::codegen::http::{self, HeaderValue};

/// tonic's message: "Error, decoded message length too large: found N bytes, the limit is: M bytes".
const TONIC_PREFIX: &str = "Error, decoded message length too large: found ";

/// The response body of the gRPC routes.
type Body = tonic::body::Body;

/// A tower layer giving oversized requests gRPC-Go's status.
pub type OversizeLayer =
    tower::util::MapResponseLayer<fn(http::Response<Body>) -> http::Response<Body>>;

/// The layer for the client gRPC server.
pub fn oversize_layer() -> OversizeLayer {
    tower::util::MapResponseLayer::new(|mut response: http::Response<Body>| {
        rewrite(response.headers_mut());
        response
    })
}

/// Rewrites tonic's over-the-limit status in `headers` into gRPC-Go's.
fn rewrite(headers: &mut http::HeaderMap) {
    if headers.get("grpc-status").and_then(|v| v.to_str().ok()) != Some("11") {
        return;
    }
    let Some(message) = headers.get("grpc-message").and_then(|v| v.to_str().ok()) else {
        return;
    };
    let Some((found, limit)) = sizes(&percent_decode(message)) else {
        return;
    };
    let etcd = format!("grpc: received message larger than max ({found} vs. {limit})");
    if let Ok(message) = HeaderValue::from_str(&etcd) {
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        headers.insert("grpc-message", message);
    }
}

/// The two sizes in tonic's message, if that is what it is.
fn sizes(message: &str) -> Option<(u64, u64)> {
    let rest = message.strip_prefix(TONIC_PREFIX)?;
    let (found, rest) = rest.split_once(" bytes, the limit is: ")?;
    let limit = rest.strip_suffix(" bytes")?;
    Some((found.parse().ok()?, limit.parse().ok()?))
}

/// Decodes the `%XX` escapes gRPC uses in `grpc-message`.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tonics_refusal_becomes_grpc_gos() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("11"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static(
                "Error%2C%20decoded%20message%20length%20too%20large%3A%20found%202097162%20bytes%2C%20the%20limit%20is%3A%202097152%20bytes",
            ),
        );
        rewrite(&mut headers);
        assert_eq!(headers["grpc-status"], "8");
        assert_eq!(
            headers["grpc-message"],
            "grpc: received message larger than max (2097162 vs. 2097152)"
        );
    }

    #[test]
    fn other_statuses_are_left_alone() {
        let mut headers = http::HeaderMap::new();
        headers.insert("grpc-status", HeaderValue::from_static("11"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("etcdserver: mvcc: required revision is a future revision"),
        );
        let before = headers.clone();
        rewrite(&mut headers);
        assert_eq!(headers, before);
    }
}
