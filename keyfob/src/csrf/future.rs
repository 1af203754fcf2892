//! The response future of [`Csrf`](super::Csrf).

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use http::{Method, Response};
use pin_project_lite::pin_project;

use super::{service::log_refusal, Refusal};
use crate::store::BoxFuture;

pin_project! {
    /// The response future of [`Csrf`](super::Csrf).
    ///
    /// ```
    /// fn assert_future<F: std::future::Future>() {}
    /// assert_future::<keyfob::csrf::ResponseFuture<axum::body::Body, std::convert::Infallible>>();
    /// ```
    pub struct ResponseFuture<B, E> {
        #[pin]
        pub(super) inner: tower_http::csrf::ResponseFuture<BoxFuture<'static, Result<Response<B>, E>>>,
        pub(super) route: Option<(Method, Box<str>)>,
    }
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        if let Ok(res) = &out {
            let ext = res.extensions();
            if ext.get::<tower_http::csrf::ProtectionError>().is_some() {
                if let Some(refusal) = ext.get::<Refusal>() {
                    let route = this.route.as_ref().map(|(m, p)| (m, &**p));
                    log_refusal(refusal.reason(), route);
                }
            }
        }
        Poll::Ready(out)
    }
}
