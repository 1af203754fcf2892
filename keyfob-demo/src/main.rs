//! `cargo run --release -p keyfob-demo`: see `docs/demo-http.md`.

// Outside tests, a failure is an error the operator reads, never a panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::process::ExitCode;

use clap::error::ErrorKind;
use keyfob_demo::config::{one_line, Cli, Command, Config};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = match Cli::from_args(std::env::args_os()) {
        Ok(cli) => cli,
        // `--help` and `--version` print to stdout and succeed.
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("keyfob-demo: {} (see --help)", one_line(&e));
            return ExitCode::from(2);
        }
    };
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("keyfob-demo: {reason}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    if let Some(Command::Migrate(args)) = cli.command {
        args.check()?;
        let report = keyfob_demo::migrate::run(args).await?;
        println!("migrated: {report}");
        return Ok(());
    }
    let config = Config::from(cli.serve);
    let demo = keyfob_demo::build(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.addr))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    if !config.insecure_cookies && !addr.ip().is_loopback() {
        eprintln!(
            "keyfob-demo: warning: cookies are Secure but {addr} is not loopback; \
             browsers send them only over HTTPS (put TLS in front, or pass --insecure-cookies)"
        );
    }
    println!(
        "keyfob-demo listening on http://{addr} (store: {})",
        demo.store_name
    );
    // With the peer address, which a login records (cut to its network).
    let app = demo
        .router
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("server error: {e}"))
}
