//! Caps on streaming connections (event streams now, WebSockets later): in
//! total and per client. A connection holds an [`Admission`] for its whole
//! life; dropping it frees the place and counts the connection closed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::StatusCode;

use crate::api::AppState;
use crate::config::RealtimeConfig;
use crate::error::{codes, ApiError};

/// Open streaming connections, in total and by client.
pub(crate) struct Limits {
    max_total: usize,
    /// 0: no per-client limit.
    max_per_ip: usize,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

impl Limits {
    pub(crate) fn new(config: &RealtimeConfig) -> Self {
        Self {
            max_total: config.max_connections,
            max_per_ip: config.max_connections_per_ip,
            open: Mutex::default(),
        }
    }

    /// A place for one more connection of `client` over `transport`, or the
    /// 429 / 503 to answer.
    pub(crate) fn admit(
        self: &Arc<Self>,
        client: IpAddr,
        transport: &'static str,
    ) -> Result<Admission, ApiError> {
        let client = crate::edge::rate_limit::client_key(client);
        {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            if open.total >= self.max_total {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    codes::REALTIME_FULL,
                    format!(
                        "the server holds its limit of {} streaming connections",
                        self.max_total
                    ),
                ));
            }
            let mine = open.by_ip.entry(client).or_default();
            if self.max_per_ip > 0 && *mine >= self.max_per_ip {
                return Err(ApiError {
                    retry_after: Some(1),
                    ..ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        codes::TOO_MANY_CONNECTIONS,
                        format!(
                            "this client holds its limit of {} streaming connections",
                            self.max_per_ip
                        ),
                    )
                });
            }
            *mine += 1;
            open.total += 1;
        }
        metrics::counter!("courier_realtime_connections_opened_total", "transport" => transport)
            .increment(1);
        Ok(Admission {
            limits: self.clone(),
            client,
            transport,
        })
    }

    /// Streaming connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

/// One admitted streaming connection.
pub(crate) struct Admission {
    limits: Arc<Limits>,
    client: IpAddr,
    transport: &'static str,
}

impl Drop for Admission {
    fn drop(&mut self) {
        {
            let mut open = self.limits.open.lock().unwrap_or_else(|e| e.into_inner());
            open.total -= 1;
            if let Some(n) = open.by_ip.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    open.by_ip.remove(&self.client);
                }
            }
        }
        metrics::counter!("courier_realtime_connections_closed_total", "transport" => self.transport)
            .increment(1);
    }
}

/// The client a request is counted under: the peer, or the client a trusted
/// proxy names (as for the rate limit).
pub(crate) struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        Ok(ClientIp(crate::edge::forwarded::client_ip(
            peer,
            &parts.headers,
            &s.realtime.trusted_proxies,
        )))
    }
}
