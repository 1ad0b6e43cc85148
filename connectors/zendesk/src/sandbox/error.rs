//! Zendesk's error responses, in its JSON shapes (`{"error": "RecordNotFound",
//! "description": "Not found"}`, or a bare `{"error": "Couldn't authenticate you"}`), so
//! the connector's error handling is exercised against the real format.

use serde_json::{Map, Value};

/// An error response as Zendesk sends it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    /// Zendesk's `error`: a code such as `RecordNotFound`, or a sentence.
    pub(crate) error: String,
    pub(crate) description: Option<String>,
    /// Sent as `{"error": {"title": error, "message": description}}`, the shape of
    /// Zendesk's 403 (see the contract fixture `error_forbidden.json`).
    pub(crate) titled: bool,
}

impl ApiError {
    pub(crate) fn new(status: u16, error: &str, description: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error: error.to_owned(),
            description: Some(description.into()),
            titled: false,
        }
    }

    pub(crate) fn unauthorized() -> ApiError {
        ApiError {
            status: 401,
            error: "Couldn't authenticate you".to_owned(),
            description: None,
            titled: false,
        }
    }

    /// 403, as Zendesk refuses an endpoint the account's plan does not include (or a page
    /// the user may not see): `{"error": {"title": "Forbidden", "message": …}}`, as the
    /// contract fixture `error_forbidden.json` records it
    /// (https://developer.zendesk.com/api-reference/introduction/responses/). The message
    /// is Zendesk's "Access Denied" text, which it shows for "a feature that isn't
    /// available on your current plan level"
    /// (https://support.zendesk.com/hc/en-us/articles/4408820790426).
    pub(crate) fn forbidden() -> ApiError {
        ApiError {
            titled: true,
            ..ApiError::new(
                403,
                "Forbidden",
                "You do not have access to this page. Please contact the account owner of \
                 this help desk for further help.",
            )
        }
    }

    pub(crate) fn not_found() -> ApiError {
        ApiError::new(404, "RecordNotFound", "Not found")
    }

    pub(crate) fn invalid_endpoint() -> ApiError {
        ApiError::new(404, "InvalidEndpoint", "Not found")
    }

    /// A bad parameter value (`start_time` too recent, `per_page` out of range).
    pub(crate) fn invalid_value(description: impl Into<String>) -> ApiError {
        ApiError::new(400, "InvalidValue", description)
    }

    /// A bad `page[size]`, `page[after]` or export `cursor`.
    pub(crate) fn invalid_pagination(description: impl Into<String>) -> ApiError {
        ApiError::new(400, "InvalidPaginationParameter", description)
    }

    /// A write that does not fit the object.
    pub(crate) fn record_invalid(description: impl Into<String>) -> ApiError {
        ApiError::new(422, "RecordInvalid", description)
    }

    /// 429, for the account's limit or the exports' own.
    pub(crate) fn rate_limited(export: bool) -> ApiError {
        ApiError::new(
            429,
            "APIRateLimitExceeded",
            if export {
                "Number of allowed incremental export API requests per minute exceeded"
            } else {
                "Number of allowed API requests per minute exceeded"
            },
        )
    }

    pub(crate) fn internal(status: u16) -> ApiError {
        ApiError::new(
            status,
            "InternalError",
            if status == 503 {
                "Service temporarily unavailable; try again later"
            } else {
                "Something went wrong"
            },
        )
    }

    /// The response body.
    pub(crate) fn body(&self) -> Vec<u8> {
        if self.titled {
            let body = serde_json::json!({"error": {
                "title": self.error,
                "message": self.description.as_deref().unwrap_or_default(),
            }});
            return serde_json::to_vec(&body).unwrap_or_default();
        }
        let mut out = Map::new();
        out.insert("error".into(), Value::String(self.error.clone()));
        if let Some(description) = &self.description {
            out.insert("description".into(), Value::String(description.clone()));
        }
        serde_json::to_vec(&Value::Object(out)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tributary_sdk::http::vendor_message;

    #[test]
    fn bodies_read_back_as_zendesk_messages() {
        assert_eq!(
            vendor_message(&ApiError::unauthorized().body()),
            "Couldn't authenticate you"
        );
        assert_eq!(
            vendor_message(&ApiError::not_found().body()),
            "RecordNotFound: Not found"
        );
        assert_eq!(
            vendor_message(&ApiError::forbidden().body()),
            "You do not have access to this page. Please contact the account owner of this \
             help desk for further help."
        );
        // Byte for byte the contract fixture's shape.
        let fixture: Value =
            serde_json::from_str(include_str!("../../fixtures/contract/error_forbidden.json"))
                .unwrap();
        let ours: Value = serde_json::from_slice(&ApiError::forbidden().body()).unwrap();
        assert_eq!(ours, fixture);
        assert_eq!(
            vendor_message(&ApiError::rate_limited(true).body()),
            "APIRateLimitExceeded: Number of allowed incremental export API requests per minute exceeded"
        );
    }
}
