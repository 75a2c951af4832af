//! Request extractors whose rejections are problem documents with stable codes,
//! in place of axum's plain-text defaults.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::error::{codes, ApiError};

/// A JSON request body. A missing or blank body reads as `{}`, so endpoints whose
/// fields are all optional can be called without one.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(ct) = req.headers().get(CONTENT_TYPE) {
            if !is_json(ct.as_bytes()) {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    codes::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "expected a JSON body (application/json), got '{}'",
                        String::from_utf8_lossy(ct.as_bytes())
                    ),
                ));
            }
        }
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(json_error)
    }
}

/// `application/json`, or any `+json` type, with or without parameters. Also
/// `application/x-www-form-urlencoded`, because that is what `curl -d '{…}'`
/// sends, and a form body would fail as JSON with a clear message anyway.
fn is_json(content_type: &[u8]) -> bool {
    let Ok(ct) = std::str::from_utf8(content_type) else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence == "application/x-www-form-urlencoded"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Sorts serde's complaints into the codes clients can act on.
pub fn json_error(e: serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Io => ApiError::bad_request(
            codes::MALFORMED_JSON,
            format!("the body is not valid JSON: {e}"),
        ),
        Category::Eof => ApiError::bad_request(
            codes::MALFORMED_JSON,
            format!("the JSON body ends too early (truncated?): {e}"),
        ),
        Category::Data if e.to_string().starts_with("unknown field") => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::UNKNOWN_FIELD,
            e.to_string(),
        ),
        Category::Data => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::INVALID_FIELD,
            e.to_string(),
        ),
    }
}

/// The request body as bytes, with the body limit and read failures reported
/// as problems.
#[derive(Debug, Clone, Default)]
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Bytes::from_request(req, state).await {
            Ok(bytes) => Ok(RawBody(bytes)),
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    codes::BODY_TOO_LARGE,
                    "the request body is larger than the server's body limit",
                ))
            }
            Err(rejection) => Err(ApiError::bad_request(
                codes::MALFORMED_JSON,
                format!("cannot read the request body: {}", rejection.body_text()),
            )),
        }
    }
}

/// A topic or subscription name from the path, checked against the naming rules
/// before any engine sees it.
#[derive(Debug, Clone)]
pub struct Name(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|r| {
                ApiError::from(courier_core::Error::InvalidName {
                    name: parts.uri.path().to_owned(),
                    reason: if r.status().is_client_error() {
                        "the path segment is not valid UTF-8"
                    } else {
                        "cannot read the path"
                    },
                })
            })?;
        courier_core::error::validate_name(&name)?;
        Ok(Name(name))
    }
}

/// Query parameters, refused with `invalid_query`.
#[derive(Debug, Clone, Default)]
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| QueryParams(q))
            .map_err(|r| ApiError::bad_request(codes::INVALID_QUERY, r.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/merge-patch+json",
        ] {
            assert!(is_json(ok.as_bytes()), "{ok}");
        }
        for bad in ["text/plain", "application/xml", "json", "application/jsonx"] {
            assert!(!is_json(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn serde_errors_map_to_codes() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            a: u32,
        }
        let code = |s: &str| json_error(serde_json::from_str::<T>(s).unwrap_err()).code;
        assert_eq!(code("{\"a\": 1"), codes::MALFORMED_JSON);
        assert_eq!(code("{a: 1}"), codes::MALFORMED_JSON);
        assert_eq!(code("{\"a\": 1, \"b\": 2}"), codes::UNKNOWN_FIELD);
        assert_eq!(code("{\"a\": \"x\"}"), codes::INVALID_FIELD);
        assert_eq!(code("{}"), codes::INVALID_FIELD);
    }
}
