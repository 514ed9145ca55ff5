//! Authentication in front of the services: the bearer token is checked from the HTTP/2 headers
//! before any request body is read or decoded, so a caller without a valid token costs the
//! server one hash and one map lookup, never a protobuf parse. The principal rides to the
//! handlers in the request's extensions; handlers then authorize by RPC and office.
//!
//! Health (`grpc.health.v1`), reflection and `StockService/GetServerInfo` stay open.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use tonic::codegen::http;
use tonic::{Request, Status};

use super::Principal;
use super::tokens::Authenticator;

/// The gRPC methods reachable without a token.
const OPEN_METHODS: &[&str] = &["/blangko.v1.StockService/GetServerInfo"];

/// Whether a request path needs a principal: every method of package blangko.v1 except the
/// open ones (health and reflection live in other packages).
pub fn needs_principal(path: &str) -> bool {
    path.starts_with("/blangko.v1.") && !OPEN_METHODS.contains(&path)
}

/// The tower layer (goes on the server builder).
#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
}

impl AuthLayer {
    /// A layer that authenticates with `auth`.
    pub fn new(auth: Arc<Authenticator>) -> Self {
        AuthLayer { auth }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
        }
    }
}

/// The service the layer wraps around the routes.
#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if needs_principal(request.uri().path()) {
            match self.auth.authenticate_headers(request.headers()) {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                }
                Err(status) => return Either::Left(ready(Ok(status.into_http()))),
            }
        }
        Either::Right(self.inner.call(request))
    }
}

/// The principal the layer authenticated for this request. Missing only if the layer is not
/// in front of the service, which is refused rather than treated as anonymous.
pub fn caller<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated principal for this call"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_blangko_methods_other_than_server_info_need_a_principal() {
        assert!(needs_principal("/blangko.v1.CounterService/Reserve"));
        assert!(needs_principal("/blangko.v1.StockService/GetStock"));
        assert!(needs_principal("/blangko.v1.Nope/Nope"));
        assert!(!needs_principal("/blangko.v1.StockService/GetServerInfo"));
        assert!(!needs_principal("/grpc.health.v1.Health/Check"));
        assert!(!needs_principal(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
    }
}
