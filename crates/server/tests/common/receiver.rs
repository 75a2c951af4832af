//! A real HTTP service that receives pushes: it records every request and
//! answers as the test tells it to, and can be stopped and started again on
//! the same port (a consumer going down and coming back).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use tokio::sync::oneshot;

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn attempt(&self) -> u32 {
        self.header("courier-attempt").unwrap().parse().unwrap()
    }
    pub fn id(&self) -> String {
        self.header("ce-id").unwrap().to_string()
    }
}

/// How to answer.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
    pub fn ok() -> Self {
        Self::status(204)
    }
    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Behaviour = Arc<dyn Fn(&Received, &[Received]) -> Answer + Send + Sync>;

#[derive(Clone)]
struct Shared {
    log: Arc<Mutex<Vec<Received>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    shared: Shared,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    /// A receiver that answers 204 to everything.
    pub async fn start() -> Self {
        Self::start_at(
            "127.0.0.1:0".parse().unwrap(),
            Self::shared(|_, _| Answer::ok()),
        )
        .await
    }

    /// A receiver answering with `behaviour(request, earlier requests)`.
    pub async fn with(
        behaviour: impl Fn(&Received, &[Received]) -> Answer + Send + Sync + 'static,
    ) -> Self {
        Self::start_at("127.0.0.1:0".parse().unwrap(), Self::shared(behaviour)).await
    }

    fn shared(
        behaviour: impl Fn(&Received, &[Received]) -> Answer + Send + Sync + 'static,
    ) -> Shared {
        Shared {
            log: Arc::default(),
            behaviour: Arc::new(Mutex::new(Arc::new(behaviour))),
        }
    }

    async fn start_at(addr: SocketAddr, shared: Shared) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            shared,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(
        &self,
        behaviour: impl Fn(&Received, &[Received]) -> Answer + Send + Sync + 'static,
    ) {
        *self.shared.behaviour.lock() = Arc::new(behaviour);
    }

    pub fn log(&self) -> Vec<Received> {
        self.shared.log.lock().clone()
    }

    /// Stops listening (connections refused from now on); the log stays.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port, with the same log and behaviour.
    pub async fn restart(mut self) -> Self {
        self.stop().await;
        let shared = self.shared.clone();
        // The port was just freed; another process could take it, which
        // would fail the bind loudly rather than pass wrongly.
        Self::start_at(self.addr, shared).await
    }
}

async fn handle(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let received = Received {
        headers,
        body,
        at: Instant::now(),
    };
    let answer = {
        let mut log = s.log.lock();
        let behaviour = s.behaviour.lock().clone();
        let answer = behaviour(&received, &log);
        log.push(received);
        answer
    };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut response = (StatusCode::from_u16(answer.status).unwrap(), answer.body).into_response();
    for (name, value) in answer.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}
