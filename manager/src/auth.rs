//! Bearer-token checks on incoming gRPC requests.

use netctl_proto::AUTHORIZATION_HEADER;
use std::sync::Arc;
use tonic::{Request, Status};

/// An interceptor that admits only requests carrying `Bearer <token>`.
/// `what` names the token in the refusal ("admin token", "join token").
pub fn require_token(
    token: String,
    what: &'static str,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    let expected: Arc<str> = format!("Bearer {token}").into();
    move |request: Request<()>| {
        let presented = request.metadata().get(AUTHORIZATION_HEADER).map(|v| v.as_bytes());
        match presented {
            Some(value) if constant_time_eq(value, expected.as_bytes()) => Ok(request),
            Some(_) => {
                Err(Status::unauthenticated(format!("the {what} presented is not valid for this cluster")))
            }
            None => Err(Status::unauthenticated(format!("no {what} presented"))),
        }
    }
}

/// Compares two byte strings in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_header(value: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = value {
            request.metadata_mut().insert(AUTHORIZATION_HEADER, value.parse().unwrap());
        }
        request
    }

    #[test]
    fn only_the_right_bearer_token_passes() {
        let check = require_token("s3cret".into(), "admin token");
        assert!(check(with_header(Some("Bearer s3cret"))).is_ok());
        let wrong = check(with_header(Some("Bearer nope"))).unwrap_err();
        assert!(wrong.message().contains("not valid"), "{wrong}");
        let missing = check(with_header(None)).unwrap_err();
        assert!(missing.message().contains("no admin token"), "{missing}");
    }
}
