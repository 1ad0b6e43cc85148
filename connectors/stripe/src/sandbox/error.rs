//! Stripe's error responses: status, `type`, `code`, `param` and message, in Stripe's JSON
//! shape, so the connector's error handling is exercised against the real format.

use serde_json::{Map, Value};

use super::render::render_top;

/// An error response as Stripe sends it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    /// Stripe's `error.type`: `invalid_request_error` or `api_error`.
    pub(crate) kind: &'static str,
    pub(crate) code: Option<&'static str>,
    pub(crate) message: String,
    pub(crate) param: Option<String>,
}

impl ApiError {
    pub(crate) fn invalid(
        code: &'static str,
        message: impl Into<String>,
        param: impl Into<Option<String>>,
    ) -> ApiError {
        ApiError {
            status: 400,
            kind: "invalid_request_error",
            code: Some(code),
            message: message.into(),
            param: param.into(),
        }
    }

    /// A 400 `invalid_request_error` with no `code`.
    pub(crate) fn invalid_without_code(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            kind: "invalid_request_error",
            code: None,
            message: message.into(),
            param: None,
        }
    }

    /// `No such customer: 'cus_x'`. Status 404 for a path id, 400 for a parameter.
    pub(crate) fn no_such(object: &str, id: &str, param: &str) -> ApiError {
        ApiError {
            status: if param == "id" { 404 } else { 400 },
            kind: "invalid_request_error",
            code: Some("resource_missing"),
            message: format!("No such {object}: '{id}'"),
            param: Some(param.to_owned()),
        }
    }

    pub(crate) fn unknown_parameter(name: &str) -> ApiError {
        ApiError::invalid(
            "parameter_unknown",
            format!("Received unknown parameter: {name}"),
            name.to_owned(),
        )
    }

    pub(crate) fn unrecognized_url(method: &str, path: &str) -> ApiError {
        ApiError {
            status: 404,
            kind: "invalid_request_error",
            code: None,
            message: format!(
                "Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs \
                 or we can help at https://support.stripe.com/."
            ),
            param: None,
        }
    }

    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 500,
            kind: "api_error",
            code: None,
            message: message.into(),
            param: None,
        }
    }

    /// The response body: `{"error": {...}}`, pretty-printed.
    pub(crate) fn body(&self) -> Vec<u8> {
        let mut error = Map::new();
        if let Some(code) = self.code {
            error.insert("code".into(), code.into());
            error.insert(
                "doc_url".into(),
                format!(
                    "https://stripe.com/docs/error-codes/{}",
                    code.replace('_', "-")
                )
                .into(),
            );
        }
        error.insert("message".into(), self.message.clone().into());
        if let Some(param) = &self.param {
            error.insert("param".into(), param.clone().into());
        }
        error.insert("type".into(), self.kind.into());
        let mut body = Map::new();
        body.insert("error".into(), Value::Object(error));
        let mut out = render_top(&Value::Object(body));
        out.push(b'\n');
        out
    }
}
