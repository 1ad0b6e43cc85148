//! Salesforce's error responses, in its two shapes: the REST API's
//! `[{"message": …, "errorCode": …}]` and the OAuth endpoint's
//! `{"error": …, "error_description": …}`.

use serde_json::json;

/// An error answer of the REST API.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn invalid_session() -> ApiError {
        ApiError::new(401, "INVALID_SESSION_ID", "Session expired or invalid")
    }

    pub(crate) fn limit_exceeded() -> ApiError {
        ApiError::new(
            403,
            "REQUEST_LIMIT_EXCEEDED",
            "TotalRequests Limit exceeded.",
        )
    }

    pub(crate) fn not_found() -> ApiError {
        ApiError::new(404, "NOT_FOUND", "The requested resource does not exist")
    }

    pub(crate) fn not_found_object(object: &str) -> ApiError {
        ApiError::new(
            404,
            "NOT_FOUND",
            format!("The requested resource does not exist: {object}"),
        )
    }

    pub(crate) fn malformed(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "MALFORMED_QUERY", message)
    }

    pub(crate) fn invalid_type(object: &str) -> ApiError {
        ApiError::new(
            400,
            "INVALID_TYPE",
            format!(
                "sObject type '{object}' is not supported. If you are attempting to use a custom \
                 object, be sure to append the '__c' after the entity name."
            ),
        )
    }

    pub(crate) fn invalid_field(object: &str, field: &str) -> ApiError {
        ApiError::new(
            400,
            "INVALID_FIELD",
            format!(
                "No such column '{field}' on entity '{object}'. If you are attempting to use a \
                 custom field, be sure to append the '__c' after the custom field name."
            ),
        )
    }

    pub(crate) fn entity_deleted(id: &str) -> ApiError {
        ApiError::new(404, "ENTITY_IS_DELETED", format!("entity is deleted: {id}"))
    }

    pub(crate) fn body(&self) -> Vec<u8> {
        json!([{"message": self.message, "errorCode": self.code}])
            .to_string()
            .into_bytes()
    }
}

/// An error answer of the OAuth token endpoint.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OAuthError {
    pub(crate) status: u16,
    pub(crate) error: &'static str,
    pub(crate) description: String,
}

impl OAuthError {
    pub(crate) fn new(error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: 400,
            error,
            description: description.into(),
        }
    }

    pub(crate) fn body(&self) -> Vec<u8> {
        json!({"error": self.error, "error_description": self.description})
            .to_string()
            .into_bytes()
    }
}
