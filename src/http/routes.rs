//! The one way to add an HTTP route. It records every (method, path) it registers, so the access
//! table can be checked against the routes the router really has, not a list kept by hand.

use axum::Router;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{delete, get, patch, post, put};

use crate::app::AppState;

pub struct Routes {
    router: Router<AppState>,
    table: Vec<(Method, &'static str)>,
}

impl Default for Routes {
    fn default() -> Self {
        Routes::new()
    }
}

impl Routes {
    pub fn new() -> Routes {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }

    pub fn get<H, T>(mut self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.router = self.router.route(path, get(handler));
        self.table.push((Method::GET, path));
        self
    }

    pub fn post<H, T>(mut self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.router = self.router.route(path, post(handler));
        self.table.push((Method::POST, path));
        self
    }

    /// A POST route whose body may be larger than the default limit (uploads).
    pub fn post_with_limit<H, T>(
        self,
        path: &'static str,
        handler: H,
        max_body_bytes: usize,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.limited(path, Method::POST, post(handler), max_body_bytes)
    }

    /// A PATCH route whose body may be larger than the default limit (upload chunks).
    pub fn patch_with_limit<H, T>(
        self,
        path: &'static str,
        handler: H,
        max_body_bytes: usize,
    ) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.limited(path, Method::PATCH, patch(handler), max_body_bytes)
    }

    fn limited(
        mut self,
        path: &'static str,
        method: Method,
        route: axum::routing::MethodRouter<AppState>,
        max_body_bytes: usize,
    ) -> Self {
        self.router = self.router.route(
            path,
            route.layer(axum::extract::DefaultBodyLimit::max(max_body_bytes)),
        );
        self.table.push((method, path));
        self
    }

    pub fn put<H, T>(mut self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.router = self.router.route(path, put(handler));
        self.table.push((Method::PUT, path));
        self
    }

    pub fn delete<H, T>(mut self, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        self.router = self.router.route(path, delete(handler));
        self.table.push((Method::DELETE, path));
        self
    }

    /// Every route registered so far.
    pub fn table(&self) -> &[(Method, &'static str)] {
        &self.table
    }

    pub fn into_router(self) -> Router<AppState> {
        self.router
    }
}
