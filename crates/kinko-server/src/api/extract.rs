//! The JSON body extractor. axum's own `Json` answers bad input with plain text and serde's messages,
//! which can quote submitted values (a password sent as a number would be echoed). This one checks the
//! content type, the size, the syntax and every field itself, and answers with problem+json naming the
//! field and never the value.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::problem::{FieldError, Problem};

/// Request bodies are small JSON objects; anything bigger is refused with 413 before parsing.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// A request body: a JSON object whose members are all required strings, listed in `FIELDS`.
/// Every kinko request body is of this shape on purpose: amounts travel as decimal strings, and a
/// JSON number where a string belongs is an error rather than a silent conversion.
pub trait JsonBody: DeserializeOwned {
    const FIELDS: &'static [&'static str];
}

pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: JsonBody,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        check_content_type(req.headers().get(header::CONTENT_TYPE))?;
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", "request body too large")
                    .detail(format!("request bodies are limited to {BODY_LIMIT_BYTES} bytes"))
            } else {
                Problem::new(StatusCode::BAD_REQUEST, "unreadable-body", "request body could not be read")
            }
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            Problem::new(StatusCode::BAD_REQUEST, "malformed-json", "malformed JSON").detail(format!(
                "JSON syntax error at line {} column {}",
                e.line(),
                e.column()
            ))
        })?;
        check_fields(&value, T::FIELDS)?;
        // Every member is a string now, so this cannot fail for the bodies kinko defines; should it, the
        // message is not shown because serde may quote values.
        serde_json::from_value(value).map(ApiJson).map_err(|_| {
            Problem::validation(vec![FieldError::new("body", "does not match the documented request schema")])
        })
    }
}

fn check_content_type(value: Option<&header::HeaderValue>) -> Result<(), Problem> {
    let unsupported = || {
        Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "unsupported media type")
            .detail("send the body as application/json")
    };
    let value = value.and_then(|v| v.to_str().ok()).ok_or_else(unsupported)?;
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let ok = essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
    if ok { Ok(()) } else { Err(unsupported()) }
}

/// Each listed member present and a string; no other members. Unknown members are refused because a
/// misspelt field in a money-moving request must not be silently ignored.
fn check_fields(value: &Value, fields: &[&str]) -> Result<(), Problem> {
    let Some(object) = value.as_object() else {
        return Err(Problem::validation(vec![FieldError::new("body", "must be a JSON object")]));
    };
    let mut errors = Vec::new();
    for &field in fields {
        match object.get(field) {
            None | Some(Value::Null) => errors.push(FieldError::new(field, "is required")),
            Some(Value::String(_)) => {}
            Some(_) => errors.push(FieldError::new(field, "must be a JSON string")),
        }
    }
    for key in object.keys() {
        if !fields.contains(&key.as_str()) {
            errors.push(FieldError::new(truncate(key), "is not a known field"));
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(Problem::validation(errors)) }
}

/// Field names are echoed back; bound them.
fn truncate(key: &str) -> String {
    const FIELD_NAME_ECHO_MAX: usize = 64;
    key.chars().take(FIELD_NAME_ECHO_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a3_json_numbers_and_unknown_members_are_named() {
        let v: Value = serde_json::json!({"amount": 5, "asset": "ETH", "extra": "x"});
        let p = check_fields(&v, &["asset", "amount", "destination"]).unwrap_err();
        let fields: Vec<_> = p.body.errors.iter().map(|e| (e.field.as_str(), e.reason.as_str())).collect();
        assert_eq!(
            fields,
            [("amount", "must be a JSON string"), ("destination", "is required"), ("extra", "is not a known field")]
        );
        assert!(check_fields(&serde_json::json!([1]), &["a"]).is_err());
    }

    /// M1, U7: only JSON bodies are accepted by the API.
    #[test]
    fn content_types() {
        let ok = |s: &'static str| check_content_type(Some(&header::HeaderValue::from_static(s))).is_ok();
        assert!(ok("application/json"));
        assert!(ok("Application/JSON; charset=utf-8"));
        assert!(ok("application/merge-patch+json"));
        assert!(!ok("text/plain"));
        assert!(!ok("application/x-www-form-urlencoded"));
        assert!(check_content_type(None).is_err());
    }
}
