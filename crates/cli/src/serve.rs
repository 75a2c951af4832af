use std::io::Write;

use courier_server::Config;

use crate::args::ServeArgs;
use crate::{exit, Failure};

/// Loads the config (file, env, flags), opens the engine, serves until SIGTERM or Ctrl-C.
pub(crate) async fn serve(args: ServeArgs) -> Result<(), Failure> {
    let mut config =
        Config::load(args.config.as_deref()).map_err(|e| Failure::usage(e.to_string()))?;
    if let Some(listen) = args.listen {
        config.server.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config
            .engine
            .set_embedded("data_dir", dir.display().to_string());
    }
    if let Some(format) = args.log_format {
        config.log.format = format;
    }
    if let Some(level) = args.log_level {
        config.log.level = level;
    }
    config
        .validate()
        .map_err(|e| Failure::usage(e.to_string()))?;
    crate::engines::check(&config.engine)?;
    courier_server::init_tracing(&config.log);

    let listener = listen(config.server.listen).map_err(|e| {
        Failure::new(
            exit::FAILED,
            format!("cannot listen on {}: {e}", config.server.listen),
        )
    })?;
    let engine = crate::engines::open(&config.engine).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::new(exit::FAILED, e.to_string()))?;
    // One stable line on stdout (logs go to stderr), so scripts and tests that ask
    // for port 0 learn the real address.
    println!("courier listening on http://{addr}");
    let _ = std::io::stdout().flush();

    courier_server::run(config, engine, listener, courier_server::shutdown_signal())
        .await
        .map_err(|e| Failure::new(exit::FAILED, e.to_string()))
}

/// Connections the kernel queues for `accept`. `TcpListener::bind` asks for
/// 128, and past that the kernel drops SYNs, which clients resend
/// only after a second: a burst of browsers (ten thousand reconnecting after
/// a restart, or joining at once) then takes seconds to get in. The kernel
/// caps this at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Listens on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as `bind` sets it).
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
