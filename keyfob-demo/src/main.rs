//! `cargo run --release -p keyfob-demo`: see `shared/spec/demo-http.md`.

use std::process::ExitCode;

use keyfob_demo::config::Config;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(reason) => {
            eprintln!("keyfob-demo: {reason}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "migrate") {
        let args = keyfob_demo::migrate::Args::parse(args.skip(1))?;
        let report = keyfob_demo::migrate::run(args).await?;
        println!("migrated: {report}");
        return Ok(());
    }
    let config = Config::from_args(args, |k| std::env::var(k).ok())?;
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
    axum::serve(listener, demo.router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| format!("server error: {e}"))
}
