//! The response future of [`Csrf`](super::Csrf).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use pin_project_lite::pin_project;

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
    }
}

impl<B, E> Future for ResponseFuture<B, E> {
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx)
    }
}
